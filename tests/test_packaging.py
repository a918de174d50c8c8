# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Bundle archives: bit-for-bit round trip, and refusal of tampered and path-escaping archives."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from autoreg_monai.bundle import compose_workflow
from autoreg_monai.packaging import MANIFEST, bundle_files, fetch_bundle, package_bundle, sha256_of

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bundle(tmp_path):
    """A copy of the brain_t1 bundle with a search and training leftover that must not be packed."""
    folder = tmp_path / "src" / "brain_t1"
    shutil.copytree(REPO_ROOT / "bundles" / "brain_t1", folder, ignore=shutil.ignore_patterns("search", "train"))
    (folder / "models" / "train").mkdir()
    (folder / "models" / "train" / "checkpoint_3.pt").write_bytes(b"not shipped")
    return folder


def test_package_then_fetch_round_trips_bit_for_bit(bundle, tmp_path):
    archive, digest = package_bundle(bundle, tmp_path / "dist" / "brain_t1.zip")
    assert digest == sha256_of(archive)
    assert (tmp_path / "dist" / "brain_t1.zip.sha256").read_text() == f"{digest}  brain_t1.zip\n"
    files = bundle_files(bundle)
    assert "models/model.pt" in files and "configs/inference.json" in files and "LICENSE" in files
    assert not any(f.startswith("models/train") for f in files)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([f"brain_t1/{MANIFEST}"] + [f"brain_t1/{f}" for f in files])
    again, second = package_bundle(bundle, tmp_path / "dist2" / "brain_t1.zip")
    assert second == digest  # the same bundle packs to the same bytes
    fetched = fetch_bundle(archive, tmp_path / "bundles")
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert fetched == tmp_path / "bundles" / f"brain_t1_v{version}" / "bundles" / "brain_t1"
    for relative in files:
        assert (fetched / relative).read_bytes() == (bundle / relative).read_bytes(), relative
    assert fetch_bundle(archive.as_uri(), tmp_path / "bundles", sha256=digest) == fetched  # same files: kept


def _rewrite(archive: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            name, data = edit(info.filename, src.read(info))
            dst.writestr(name, data)
    return target


def test_tampered_archives_are_refused(bundle, tmp_path):
    archive, digest = package_bundle(bundle, tmp_path / "brain_t1.zip")
    flipped = tmp_path / "flipped" / "brain_t1.zip"
    flipped.parent.mkdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 check of the archive failed"):
        fetch_bundle(flipped, tmp_path / "out", sha256=digest)
    with pytest.raises(ValueError, match="refused|corrupt|not a zip"):
        fetch_bundle(flipped, tmp_path / "out")  # no archive hash given: the per-file hashes catch it
    model = _rewrite(
        archive,
        tmp_path / "model_swapped.zip",
        lambda n, d: (n, d[:-1] + bytes([d[-1] ^ 1]) if n.endswith("model.pt") else d),
    )
    with pytest.raises(ValueError, match="SHA-256 of brain_t1/models/model.pt does not match SHA256SUMS"):
        fetch_bundle(model, tmp_path / "out")
    assert not list((tmp_path / "out").glob("brain_t1_v*"))


@pytest.mark.parametrize(
    "member, message",
    [("brain_t1/../../evil.txt", "points outside"), ("/tmp/evil.txt", "absolute path")],
)
def test_path_escaping_archives_are_refused(bundle, tmp_path, member, message):
    archive, _ = package_bundle(bundle, tmp_path / "brain_t1.zip")
    slip = tmp_path / "slip.zip"
    shutil.copy(archive, slip)
    with zipfile.ZipFile(slip, "a") as zf:
        zf.writestr(member, b"owned")
    with pytest.raises(ValueError, match=message):
        fetch_bundle(slip, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize("version", ["../../../escaped", "0.5/../../x", ".hidden", "1" * 80])
def test_a_metadata_version_that_is_not_a_version_is_refused(bundle, tmp_path, version):
    """A re-packed bundle (valid SHA256SUMS) whose version would lead the folder name outside --out."""
    metadata = bundle / "configs" / "metadata.json"
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "version": version}))
    archive, _ = package_bundle(bundle, tmp_path / "brain_t1.zip")
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(ValueError, match=r"refused, metadata version .* is not a version number"):
        fetch_bundle(archive, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain_t1.zip", "brain_t1.zip.sha256", "deep", "src"]
    assert [p for p in out.rglob("*")] == []  # nothing unpacked, not even in --out


def test_oversized_and_bomb_archives_are_refused(bundle, tmp_path):
    archive, _ = package_bundle(bundle, tmp_path / "brain_t1.zip")
    with pytest.raises(ValueError, match=r"unpacks to \d+ MiB, over the 1 MiB allowed \(--max_unpacked_mb"):
        fetch_bundle(archive, tmp_path / "out", max_unpacked_mb=1)
    assert fetch_bundle(archive, tmp_path / "out", max_unpacked_mb=20).is_dir()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("brain_t1/models/model.pt", bytes(300 * 2**20))  # 300 MiB of zeros, packed to ~300 KiB
    assert bomb.stat().st_size < 2 * 2**20
    with pytest.raises(ValueError, match=r"model.pt' unpacks to \d+x its packed size \(a zip bomb"):
        fetch_bundle(bomb, tmp_path / "out2", max_unpacked_mb=1000)
    with pytest.raises(ValueError, match="over the 512 MiB allowed"):
        big = tmp_path / "big.zip"
        with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i in range(3):
                zf.writestr(f"brain_t1/models/part{i}.pt", bytes(200 * 2**20))
        fetch_bundle(big, tmp_path / "out3")
    assert not (tmp_path / "out2").exists() or list((tmp_path / "out2").rglob("*.pt")) == []


def test_bundles_without_weights_or_archives_without_manifest(tmp_path, bundle):
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ValueError, match="the bundle has no models/model.pt"):
        package_bundle(bundle, tmp_path / "x.zip")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("brain_t1/configs/metadata.json", "{}")
    with pytest.raises(ValueError, match="has no SHA256SUMS"):
        fetch_bundle(plain, tmp_path / "out")
    with pytest.raises(ValueError, match="bundle archive not found"):
        fetch_bundle(tmp_path / "missing.zip", tmp_path / "out")


def test_a_fetched_bundle_composes_the_same_workflows_as_its_source(tmp_path):
    """No path of the source survives in what a fetched bundle runs: it is complete wherever it is unpacked."""
    source = REPO_ROOT / "bundles" / "brain_t1"
    archive, _ = package_bundle(source, tmp_path / "brain_t1.zip")
    fetched = fetch_bundle(archive, tmp_path / "elsewhere")
    for workflow in ("search", "train", "evaluate", "inference"):
        mine, theirs = (compose_workflow(b, workflow, quiet=True).parser.get() for b in (source, fetched))
        assert mine.pop("bundle_root") == str(source) and theirs.pop("bundle_root") == str(fetched)
        assert mine == theirs, workflow

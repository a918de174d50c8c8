# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Distributable bundle archives with a SHA-256 of every file, and their verified unpacking.

An archive is a zip holding one top folder ``<name>/`` (MONAI's bundle archive layout, so
``monai.bundle download --url file://...`` can read it too) with the bundle's configs, docs, licence, its
shipped ``models/genotype.json`` and ``models/model.pt``, and ``SHA256SUMS``: one ``<sha256>  <path>``
line per file, the format ``sha256sum -c`` checks. The bundle's own files are stored unchanged, so a
packed and fetched bundle is byte-identical to the original.

MONAI's ``monai.bundle download`` checks no hash and keeps an existing folder of the same name, so an
update never arrives; :func:`fetch_bundle` instead downloads with ``monai.apps.utils.download_url`` (the
archive's own SHA-256 checked when given), refuses members with absolute paths, ``..`` or links, checks
every file against ``SHA256SUMS`` and unpacks into ``<out>/<name>_v<version>/bundles/<name>/`` (version
from the bundle's metadata) through a temporary folder renamed at the end: versions sit side by side and the
bundle folder keeps its name, the repository's layout (a bundle runs from any folder; nothing depends on it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from monai.apps.utils import download_url

from autoreg_monai.utils.atomic import atomic_write

__all__ = ["MANIFEST", "bundle_files", "fetch_bundle", "package_bundle", "sha256_of"]

MANIFEST = "SHA256SUMS"
"""Name of the per-file hash list at the top of an archived bundle."""

_SHIPPED = ("configs", "docs", "LICENSE", "models/genotype.json", "models/model.pt", "models/README.md")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entries get one timestamp, so the same bundle packs to the same bytes


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(bundle: str | Path) -> list[str]:
    """The files a distributable bundle holds, as sorted POSIX paths relative to the bundle folder.

    Configs, docs, ``LICENSE`` and the shipped ``models/genotype.json``, ``models/model.pt`` (and
    ``models/README.md``); never search or training checkpoints, logs or results.

    Raises:
        ValueError: the folder is not a bundle (no ``configs/metadata.json``) or has no trained weights.
    """
    root = Path(bundle)
    if not (root / "configs" / "metadata.json").is_file():
        raise ValueError(f"{root}: not a bundle (no configs/metadata.json)")
    for needed in ("models/genotype.json", "models/model.pt", "LICENSE"):
        if not (root / needed).is_file():
            raise ValueError(f"{root}: the bundle has no {needed}; run its search and train workflows first")
    files = []
    for entry in _SHIPPED:
        path = root / entry
        if path.is_file():
            files.append(entry)
        elif path.is_dir():
            files.extend(p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file())
    return sorted(files)


def _metadata(folder: Path) -> dict:
    try:
        return json.loads((folder / "configs" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / 'configs' / 'metadata.json'}: unreadable bundle metadata ({error})") from error


def package_bundle(bundle: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write ``bundle`` as a distributable zip archive (atomically) and return its path and SHA-256.

    The archive's SHA-256 is also written next to it as ``<out>.sha256`` (``sha256sum`` format), for
    :func:`fetch_bundle` and for publishing alongside the download link.
    """
    root = Path(bundle)
    name = root.resolve().name
    files = bundle_files(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = "".join(f"{sha256_of(root / f)}  {f}\n" for f in files)
    with atomic_write(out, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for relative in [MANIFEST, *files]:
                info = zipfile.ZipInfo(f"{name}/{relative}", date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                data = manifest.encode() if relative == MANIFEST else (root / relative).read_bytes()
                archive.writestr(info, data)
    digest = sha256_of(out)
    with atomic_write(out.with_name(out.name + ".sha256"), "w") as handle:
        handle.write(f"{digest}  {out.name}\n")
    return out, digest


MAX_MEMBERS = 2000
"""Most files a bundle archive may hold."""

MAX_UNPACKED_MB = 512
"""Default cap on the unpacked size of a bundle archive, MiB (the shipped bundles are 1-7 MiB)."""

MAX_COMPRESSION_RATIO = 100
"""Largest unpacked/packed size ratio of a member over 1 MiB (weights compress about 1.1x, JSON about 5x)."""

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*")


def _safe_members(
    archive: zipfile.ZipFile, source: str, max_unpacked_mb: float = MAX_UNPACKED_MB
) -> tuple[str, list[zipfile.ZipInfo]]:
    """The archive's top folder and file members, refusing anything that could write outside it or fill a disk."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > MAX_MEMBERS:
        raise ValueError(
            f"{source}: refused, the archive holds {len(members)} files (a bundle has at most {MAX_MEMBERS})"
        )
    total = sum(m.file_size for m in members)
    if total > max_unpacked_mb * 2**20:
        raise ValueError(
            f"{source}: refused, the archive unpacks to {total / 2**20:.0f} MiB, over the {max_unpacked_mb:g} MiB "
            "allowed (--max_unpacked_mb to allow more)"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > 2**20 and ratio > MAX_COMPRESSION_RATIO:
            raise ValueError(
                f"{source}: refused, member {member.filename!r} unpacks to {ratio:.0f}x its packed size (a zip "
                f"bomb; bundle files compress at most {MAX_COMPRESSION_RATIO}x)"
            )
    tops = set()
    for member in archive.infolist():
        path = PurePosixPath(member.filename)
        if member.filename.startswith(("/", "\\")) or path.is_absolute() or (path.parts and ":" in path.parts[0]):
            raise ValueError(f"{source}: refused, member {member.filename!r} has an absolute path")
        if ".." in path.parts or "\\" in member.filename:
            raise ValueError(f"{source}: refused, member {member.filename!r} points outside the archive folder")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise ValueError(f"{source}: refused, member {member.filename!r} is a symbolic link")
        if path.parts:
            tops.add(path.parts[0])
    if len(tops) == 1 and not _SAFE_NAME.fullmatch(next(iter(tops))):
        raise ValueError(f"{source}: refused, the archive's top folder {next(iter(tops))!r} is not a bundle name")
    if len(tops) != 1 or any(len(PurePosixPath(m.filename).parts) < 2 for m in members):
        raise ValueError(f"{source}: not a bundle archive (expected one top folder, found {sorted(tops)})")
    return tops.pop(), members


def _expected_hash(source: str, sha256: str | None) -> str | None:
    """The archive hash to check: given, or read from a ``.sha256`` file next to a local archive."""
    if sha256 is not None:
        return sha256.strip().lower()
    if urlparse(source).scheme in ("", "file"):
        side = Path(urlparse(source).path if source.startswith("file:") else source)
        side = side.with_name(side.name + ".sha256")
        if side.is_file():
            return side.read_text().split()[0].lower()
    return None


def fetch_bundle(
    source: str | Path, out: str | Path, sha256: str | None = None, max_unpacked_mb: float = MAX_UNPACKED_MB
) -> Path:
    """Download (or copy) a bundle archive, verify it and unpack it into ``<out>/<name>_v<version>/bundles/<name>/``.

    Args:
        source: an archive file, or a ``file://``, ``http://`` or ``https://`` URL.
        out: the folder that receives the versioned bundle folder.
        sha256: the archive's expected SHA-256; default: the ``<archive>.sha256`` file next to a local
            archive, if there is one (the per-file hashes inside are checked in any case).
        max_unpacked_mb: cap on the unpacked size, MiB.

    Returns:
        the unpacked bundle folder; one already there with the same files is kept.

    Raises:
        ValueError: naming the source, for a download or hash failure, an archive member with an absolute
            path, ``..`` or a link, more files or more unpacked bytes than the caps, a member packed like a
            zip bomb, a top folder or metadata version that is not a plain name (nothing is written outside
            ``out``), a file whose SHA-256 differs from ``SHA256SUMS`` (or missing from it), or a different
            bundle already unpacked under the same name and version.
    """
    source = str(source)
    url = source if urlparse(source).scheme in ("file", "http", "https") else Path(source).resolve().as_uri()
    if url.startswith("file:") and not Path(urlparse(url).path).is_file():
        raise ValueError(f"{source}: bundle archive not found")
    expected = _expected_hash(source, sha256)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as work:
        archive_path = Path(work) / "bundle.zip"
        try:
            with warnings.catch_warnings():  # without an archive hash, MONAI warns; the files are checked below
                warnings.filterwarnings("ignore", message="No hash value provided")
                download_url(url, archive_path, hash_val=expected, hash_type="sha256", progress=False)
        except Exception as error:  # MONAI raises HashCheckError, URLError, RuntimeError...
            raise ValueError(f"{source}: download or SHA-256 check of the archive failed ({error})") from error
        try:
            archive = zipfile.ZipFile(archive_path)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{source}: not a zip archive") from error
        with archive:
            top, members = _safe_members(archive, source, max_unpacked_mb)
            names = {m.filename: m for m in members}
            manifest_name = f"{top}/{MANIFEST}"
            if manifest_name not in names:
                raise ValueError(f"{source}: refused, the archive has no {MANIFEST} (not made by autoreg package)")
            listed = {}
            for line in archive.read(manifest_name).decode().splitlines():
                digest, _, relative = line.partition("  ")
                listed[f"{top}/{relative}"] = digest
            staging = Path(work) / top
            staging.mkdir()
            (staging / MANIFEST).write_bytes(archive.read(manifest_name))  # kept: `sha256sum -c SHA256SUMS`
            for member in members:
                if member.filename == manifest_name:
                    continue
                if member.filename not in listed:
                    raise ValueError(f"{source}: refused, {member.filename} is not listed in {MANIFEST}")
                try:
                    data = archive.read(member)
                except (zipfile.BadZipFile, zlib.error) as error:
                    raise ValueError(f"{source}: refused, {member.filename} is corrupt ({error})") from error
                if hashlib.sha256(data).hexdigest() != listed[member.filename]:
                    raise ValueError(f"{source}: refused, SHA-256 of {member.filename} does not match {MANIFEST}")
                target = staging / PurePosixPath(member.filename).relative_to(top)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            missing = sorted(set(listed) - set(names))
            if missing:
                raise ValueError(f"{source}: refused, files listed in {MANIFEST} are missing: {missing}")
        version = str(_metadata(staging).get("version", "0"))
        if not _SAFE_NAME.fullmatch(version) or len(version) > 64:
            raise ValueError(f"{source}: refused, metadata version {version[:80]!r} is not a version number")
        destination = out / f"{top}_v{version}" / "bundles" / top
        if destination.exists():
            same = all(
                (destination / p).is_file() and sha256_of(destination / p) == sha256_of(staging / p)
                for p in (q.relative_to(staging) for q in staging.rglob("*") if q.is_file())
            )
            if not same:
                raise ValueError(
                    f"{destination}: a different bundle of the same name and version is already there; "
                    "remove it or fetch into another folder"
                )
            return destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(destination))
    return destination

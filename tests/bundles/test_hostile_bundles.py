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
"""Hostile bundles: payloads planted in every file of a bundle copy never run; a trusted bundle's wiring does.

An untrusted bundle contributes data only (validated settings, genotype, weights-only model files): nothing in
its configs is evaluated, so every payload class below stays inert under ``autoreg register``, after
``autoreg package`` + ``fetch``, and (tests/label/test_label_task.py) in the MONAI Label task.
"""

from __future__ import annotations

import json
import logging.config
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HOSTILE_CLASSES, PickledPayload, hostile_values, plant_hostile_payloads
from monai.bundle import ConfigParser

from autoreg_monai.bundle import check_bundle, compose_workflow
from autoreg_monai.packaging import MANIFEST, sha256_of

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("warped.nii.gz", "ddf.nii.gz", "jacobian.nii.gz")


def _copy(tmp_path: Path, name: str = "mine") -> Path:
    bundle = tmp_path / "elsewhere" / name
    shutil.copytree(REPO_ROOT / "bundles" / "brain_t1", bundle, ignore=shutil.ignore_patterns("search", "train"))
    return bundle


def _register(autoreg_main, scans: dict[str, str], bundle: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return autoreg_main(
        "register", "--fixed", scans["fixed"], "--moving", scans["moving"], "--bundle", str(bundle),
        "--out", str(out), "--prealign", "none", "--refine", "1", *extra,
    )  # fmt: skip


def test_every_payload_class_runs_when_monai_evaluates_it(tmp_path):
    """The payloads are real: MONAI's parser (and Python's logging configuration) run each of them."""
    bundle, markers = _copy(tmp_path), tmp_path / "markers"
    plant_hostile_payloads(bundle, markers)
    for name, value in hostile_values(bundle, markers).items():
        parser = ConfigParser({"imports": ["$import os", "$import torch.utils.collect_env"], "x": value})
        parser.get_parsed_content("x")
        assert (markers / name).exists(), name
    logging.config.fileConfig(bundle / "configs" / "logging.conf", disable_existing_loggers=False)
    assert (markers / "logging_conf").exists()
    assert len(HOSTILE_CLASSES) + 1 >= 10


def test_a_hostile_bundle_registers_and_none_of_its_payloads_runs(
    hostile_bundle, phantom_scans, tmp_path, autoreg_main
):
    bundle, markers = hostile_bundle
    out = tmp_path / "out"
    code, stdout, err = _register(autoreg_main, phantom_scans, bundle, out)
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"moving_to_fixed_{o}" for o in OUTPUTS)
    assert sorted(p.name for p in markers.iterdir()) == []
    code, stdout, err = autoreg_main("info", "--bundle", str(bundle))
    assert code == 0 and "brain_t1" in stdout, err[-2000:]
    assert sorted(p.name for p in markers.iterdir()) == []


def test_a_packaged_and_fetched_hostile_bundle_registers_and_none_of_its_payloads_runs(
    hostile_bundle, phantom_scans, tmp_path, autoreg_main
):
    bundle, markers = hostile_bundle
    archive = tmp_path / "dist" / "hostile.zip"
    code, _, err = autoreg_main("package", "--bundle", str(bundle), "--out", str(archive), "--quiet")
    assert code == 0, err[-2000:]
    code, stdout, err = autoreg_main("fetch", "--source", str(archive), "--out", str(tmp_path / "fetched"))
    assert code == 0, err[-2000:]
    fetched = Path(stdout.strip().splitlines()[-1].removeprefix("bundle ready in "))
    assert (fetched / "configs" / "extra" / "payload.json").is_file()  # the payloads came along
    out = tmp_path / "out"
    code, _, err = _register(autoreg_main, phantom_scans, fetched, out, "--quiet")
    assert code == 0, err[-3000:]
    assert len(list(out.iterdir())) == len(OUTPUTS)
    assert sorted(p.name for p in markers.iterdir()) == []


@pytest.mark.parametrize("name", HOSTILE_CLASSES)
def test_a_payload_in_the_settings_or_the_genotype_is_refused_naming_the_file(tmp_path, name):
    bundle, markers = _copy(tmp_path), tmp_path / "markers"
    markers.mkdir()
    value = hostile_values(bundle, markers)[name]
    settings_file, genotype_file = bundle / "configs" / "scenario.json", bundle / "models" / "genotype.json"
    settings, genotype = json.loads(settings_file.read_text()), json.loads(genotype_file.read_text())
    for key in ("similarity", "spatial_size", "payload"):  # as a setting's value, and as a setting of its own
        settings_file.write_text(json.dumps({**settings, key: value}))
        with pytest.raises(ValueError, match=f"{settings_file}: refused, not valid scenario settings"):
            check_bundle(bundle)
    settings_file.write_text(json.dumps(settings))
    for changed in ({**genotype, "payload": value}, {**genotype, "loss_weights": [value, 1, 1, 1]}):
        genotype_file.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=f"{genotype_file}: not a valid genotype file"):
            check_bundle(bundle)
    assert sorted(p.name for p in markers.iterdir()) == []


def test_a_payload_in_the_settings_is_refused_by_register_before_any_work(tmp_path, phantom_scans, autoreg_main):
    bundle, markers = _copy(tmp_path), tmp_path / "markers"
    markers.mkdir()
    settings_file = bundle / "configs" / "scenario.json"
    settings = json.loads(settings_file.read_text())
    settings["similarity"] = hostile_values(bundle, markers)["builtin_import"]
    settings_file.write_text(json.dumps(settings))
    out = tmp_path / "out"
    code, _, err = _register(autoreg_main, phantom_scans, bundle, out, "--trust_bundle")  # trusted or not
    assert code == 1 and f"{settings_file}: refused, not valid scenario settings (similarity: " in err, err[-2000:]
    assert "Traceback" not in err and not out.exists() and not list(markers.iterdir())


@pytest.mark.parametrize("weights", ["model.pt", "extra.pt"])
def test_pickled_code_in_a_model_file_is_refused_trusted_or_not(tmp_path, phantom_scans, autoreg_main, weights):
    bundle, marker = _copy(tmp_path), tmp_path / "marker_pickle"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({**state, "payload": PickledPayload(marker)}, bundle / "models" / weights)
    for trusted in ([], ["--trust_bundle"]):
        out = tmp_path / f"out{len(trusted)}"
        code, _, err = _register(autoreg_main, phantom_scans, bundle, out, "--quiet", *trusted)
        assert code == 1, err[-2000:]
        assert f"{weights}: it holds pickled Python objects, not only weights; refused without running them" in err
        assert not marker.exists() and not out.exists()
    script = f"import torch; torch.load({str(bundle / 'models' / weights)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", script], capture_output=True)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_a_trusted_bundle_with_custom_wiring_runs_it(tmp_path, phantom_scans, autoreg_main):
    """``--trust_bundle``: the bundle's own inference.json ids apply, ``$`` expressions included."""
    bundle, marker = _copy(tmp_path), tmp_path / "marker_trusted"
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["imports"].append("$import pathlib")
    config["refine_steps"] = "$1 + 2"
    config["initialize"] = ["$monai.utils.set_determinism(seed=@seed)", f"$pathlib.Path('{marker}').touch()"]
    config_file.write_text(json.dumps(config))
    assert compose_workflow(bundle, "inference", quiet=True).parser["refine_steps"] == 10  # untrusted: data only
    out = tmp_path / "out"
    code, stdout, err = autoreg_main(
        "register", "--fixed", phantom_scans["fixed"], "--moving", phantom_scans["moving"], "--bundle", str(bundle),
        "--out", str(out), "--prealign", "none", "--trust_bundle",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "for 3 steps" in stdout and marker.exists()


def test_a_bundle_file_linking_outside_the_bundle_is_refused(tmp_path, phantom_scans, autoreg_main):
    """models/model.pt as a symbolic link to a file elsewhere is not loaded from an untrusted bundle."""
    bundle = _copy(tmp_path)
    elsewhere = tmp_path / "elsewhere.pt"
    shutil.move(bundle / "models" / "model.pt", elsewhere)
    (bundle / "models" / "model.pt").symlink_to(elsewhere)
    (bundle / "configs" / "inside.json").symlink_to(bundle / "configs" / "scenario.json")  # inside: fine
    out = tmp_path / "out"
    code, _, err = _register(autoreg_main, phantom_scans, bundle, out, "--quiet")
    assert code == 1, err[-2000:]
    assert f"model.pt: refused, a link to {elsewhere}, outside the bundle" in err and "inside.json" not in err
    assert not out.exists()


def test_a_fetched_bundle_whose_files_changed_is_refused(tmp_path):
    bundle = _copy(tmp_path)
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    lines = [f"{sha256_of(p)}  {p.relative_to(bundle).as_posix()}" for p in files]
    (bundle / MANIFEST).write_text("\n".join(lines) + "\n")
    check_bundle(bundle)  # as fetched: passes
    genotype = bundle / "models" / "genotype.json"
    genotype.write_text(genotype.read_text().replace("conv_3x3", "conv_5x5", 1))
    with pytest.raises(ValueError, match="genotype.json: changed since the bundle was fetched"):
        check_bundle(bundle)
    genotype.unlink()
    with pytest.raises(ValueError, match="genotype.json: listed in .*SHA256SUMS but missing"):
        check_bundle(bundle)

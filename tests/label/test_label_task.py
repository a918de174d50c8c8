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
"""The MONAI Label infer task called directly (no server): outputs per request, the JSON result, strict weights.

Runs only where MONAI Label is installed (the ``label`` extra); skipped in the main test environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")

from autoreg_monai.label import RegistrationInferTask, infer_task
from autoreg_monai.networks import Genotype

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> RegistrationInferTask:
    return RegistrationInferTask(REPO_ROOT / "bundles" / "brain_t1", output_dir=tmp_path_factory.mktemp("results"))


@pytest.fixture()
def pair(sample_data: Path) -> tuple[str, str]:
    folder = sample_data / "ixi_dlmuse"
    return str(next(folder.glob("IXI012*_T1w_2mm.nii.gz"))), str(next(folder.glob("IXI013*_T1w_2mm.nii.gz")))


def test_each_request_writes_its_own_folder_and_returns_a_copy(task: RegistrationInferTask, pair) -> None:
    moving, fixed = pair
    request = {"image": moving, "fixed": fixed, "device": "cpu", "prealign": "none", "main_output": "ddf"}
    request["refine_steps"] = 2
    sent, result = task(request)
    assert result["metrics"]["refine_steps"] == 2 and result["metrics"]["refine_s"] > 0
    assert request["save_label"] is False  # the app must not store the result as a label of the moving image
    folder = task.output_dir / result["request_id"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{result['pair']}_{kind}.nii.gz" for kind in ("warped", "ddf", "jacobian")] + ["result.json"]
    )  # no _affine.tfm without pre-alignment
    assert json.loads((folder / "result.json").read_text())["metrics"] == result["metrics"]
    assert Path(sent).parent != folder  # MONAI Label deletes the file it sends: it is a copy
    assert Path(sent).read_bytes() == Path(result["outputs"]["ddf"]).read_bytes()
    reference = nib.load(fixed)
    ddf = nib.load(result["outputs"]["ddf"])
    assert ddf.shape == (*reference.shape, 1, 3)
    np.testing.assert_allclose(ddf.affine, reference.affine, atol=1e-5)
    jacobian = np.asarray(nib.load(result["outputs"]["jacobian"]).dataobj)
    assert result["metrics"]["jacobian_min"] == pytest.approx(float(jacobian.min()), abs=1e-5)
    assert result["metrics"]["folding_percent"] == pytest.approx(float((jacobian <= 0).mean() * 100), abs=1e-4)
    assert result["prealign"] == "none" and result["moving"] == str(Path(moving).resolve())
    Path(sent).unlink()


def test_moving_name_names_the_files_of_an_upload(task: RegistrationInferTask, pair, tmp_path: Path) -> None:
    moving, fixed = pair
    upload = tmp_path / "tmpk2x9a1qz.nii.gz"  # what MONAI Label makes of an uploaded file
    shutil.copy(moving, upload)
    sent, result = task({"image": str(upload), "fixed": fixed, "device": "cpu", "prealign": "none", "refine_steps": 0})
    assert result["pair"] == "tmpk2x9a1qz_to_IXI013-HH-1212_T1w_2mm"
    assert result["metrics"]["refine_steps"] == 0 and result["metrics"]["refine_s"] == 0
    Path(sent).unlink()
    request = {"image": str(upload), "fixed": fixed, "device": "cpu", "prealign": "none", "moving_name": "sub 01/T1"}
    request["refine_steps"] = 0
    sent, result = task(request)
    assert result["pair"] == "sub_01_T1_to_IXI013-HH-1212_T1w_2mm"
    assert Path(result["outputs"]["warped"]).name == "sub_01_T1_to_IXI013-HH-1212_T1w_2mm_warped.nii.gz"
    assert Path(result["outputs"]["warped"]).is_file()
    Path(sent).unlink()


def test_a_request_failing_while_writing_leaves_no_folder(
    task: RegistrationInferTask, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    moving, fixed = pair
    before = sorted(p.name for p in task.output_dir.iterdir())

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(infer_task, "atomic_write", full_disk)  # the images are written, then result.json fails
    with pytest.raises(OSError, match="No space left on device"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "prealign": "none", "refine_steps": 0})
    assert sorted(p.name for p in task.output_dir.iterdir()) == before


def test_unknown_options_are_refused(task: RegistrationInferTask, pair) -> None:
    moving, fixed = pair
    with pytest.raises(ValueError, match="moving_name must be a name for the moving image's files, got '  '"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "moving_name": "  "})
    with pytest.raises(ValueError, match="main_output must be one of warped, ddf, jacobian, got 'label'"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "main_output": "label"})
    with pytest.raises(ValueError, match="prealign must be one of"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "prealign": "bspline"})
    with pytest.raises(ValueError, match="refine_steps must be a whole number >= 0, got -3"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "refine_steps": -3})


def test_weights_that_do_not_fit_the_genotype_are_refused(tmp_path: Path, pair) -> None:
    bundle = tmp_path / "bundles" / "brain_t1"
    shutil.copytree(REPO_ROOT / "bundles" / "brain_t1", bundle, ignore=shutil.ignore_patterns("results", "eval"))
    Genotype.paper_default().to_json(bundle / "models" / "genotype.json")  # as a search would rewrite it
    task = RegistrationInferTask(bundle, output_dir=tmp_path / "results", trust_bundle=True)
    moving, fixed = pair
    with pytest.raises(ValueError, match=r"model\.pt does not fit the genotype of .*genotype\.json: .*train again"):
        task({"image": moving, "fixed": fixed, "device": "cpu", "prealign": "none"})


def test_a_hostile_bundle_is_served_and_none_of_its_payloads_runs(hostile_bundle, phantom_scans, tmp_path) -> None:
    """Payloads planted in every config of a bundle (tests/conftest.py): the task reads its data, never its code."""
    bundle, markers = hostile_bundle
    task = RegistrationInferTask(bundle, output_dir=tmp_path / "results")
    request = {"image": phantom_scans["moving"], "fixed": phantom_scans["fixed"], "device": "cpu", "prealign": "none"}
    sent, result = task({**request, "refine_steps": 1})
    assert Path(sent).is_file() and result["metrics"]["refine_steps"] == 1
    assert sorted(p.name for p in markers.iterdir()) == []

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Datalists built from a folder of scans: label matching by name, splits, the unmatched-file report."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from autoreg_monai.data import load_datalist, make_pairs
from autoreg_monai.data.folder import datalist_from_folder, scan_stem, write_datalist


def _nifti(path: Path, label: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((8, 8, 8), dtype=np.int16 if label else np.float32)
    data[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_stems():
    assert scan_stem(Path("sub01_T1.nii.gz")) == "sub01_T1"
    assert scan_stem(Path("a.b.mha")) == "a.b"
    assert scan_stem(Path("series_folder")) == "series_folder"


def test_five_images_four_labels_report_the_unmatched_one(tmp_path):
    for i in range(5):
        _nifti(tmp_path / "images" / f"IXI0{i}-HH-12{i}_T1w.nii.gz")
    for i in range(4):
        _nifti(tmp_path / "labels" / f"IXI0{i}-HH-12{i}_dlmuse.nii.gz", label=True)
    _nifti(tmp_path / "labels" / "stray_seg.nii.gz", label=True)
    atlas = _nifti(tmp_path / "atlas.nii.gz")
    scan = datalist_from_folder(
        tmp_path / "images", tmp_path / "labels", atlas=atlas, val=0.2, test=0.2, base_dir=tmp_path
    )
    assert scan.images_without_label == ["IXI04-HH-124_T1w.nii.gz"]
    assert scan.labels_without_image == ["stray_seg.nii.gz"]
    report = scan.report()
    assert "images without a label map (1): IXI04-HH-124_T1w.nii.gz" in report
    assert "label maps without an image (not used) (1): stray_seg.nii.gz" in report
    data = scan.datalist
    assert len(data["training"]) == 3 and len(data["validation"]) == 1 and len(data["test"]) == 1
    assert all("label" in s for s in data["validation"] + data["test"])  # scored splits need labels
    for subject in data["training"] + data["validation"] + data["test"]:
        if "label" in subject:
            assert Path(subject["label"]).name.split("_")[0] == Path(subject["image"]).name.split("_")[0]
    path = write_datalist(scan, tmp_path / "datalist.json")
    monai_view = load_decathlon_datalist(str(path), data_list_key="training", base_dir=str(tmp_path))
    assert len(monai_view) == 3 and all(Path(s["image"]).is_file() for s in monai_view)
    ours = load_datalist(path)
    assert len(make_pairs(ours, "test", "atlas")) == 1
    assert json.loads(path.read_text())["atlas"] == {"image": "atlas.nii.gz"}


def test_exact_and_suffix_names_match(tmp_path):
    for name in ("a", "b", "c"):
        _nifti(tmp_path / "img" / f"{name}.nii.gz")
    _nifti(tmp_path / "lab" / "a.nii.gz", label=True)
    _nifti(tmp_path / "lab" / "b_seg.nii.gz", label=True)
    _nifti(tmp_path / "lab" / "c-mask.nii.gz", label=True)
    scan = datalist_from_folder(tmp_path / "img", tmp_path / "lab", pairing="pairwise", val=0, test=0)
    assert not scan.images_without_label and not scan.labels_without_image
    assert {Path(s["image"]).name: Path(s["label"]).name for s in scan.datalist["training"]} == {
        "a.nii.gz": "a.nii.gz",
        "b.nii.gz": "b_seg.nii.gz",
        "c.nii.gz": "c-mask.nii.gz",
    }


def test_cross_modal_groups_contrasts_per_subject(tmp_path):
    for subject in ("s1", "s2", "s3", "s4"):
        _nifti(tmp_path / "img" / f"{subject}_T1.nii.gz")
        _nifti(tmp_path / "img" / f"{subject}_T2w.nii.gz")
    _nifti(tmp_path / "img" / "s5_T1.nii.gz")  # no T2
    scan = datalist_from_folder(tmp_path / "img", pairing="cross_modal", val=0, test=0)
    training = scan.datalist["training"]
    assert len(training) == 4 and all(set(s) == {"image_t1", "image_t2"} for s in training)
    assert any("s5: needs both a T1 and a T2 scan" in a for a in scan.ambiguous)


def test_bad_folders_and_options(tmp_path):
    with pytest.raises(ValueError, match="nothing: not a folder"):
        datalist_from_folder(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no NIfTI, NRRD or MHA files"):
        datalist_from_folder(tmp_path / "empty")
    for i in range(3):
        _nifti(tmp_path / "img" / f"s{i}.nii.gz")
    with pytest.raises(ValueError, match="needs --atlas"):
        datalist_from_folder(tmp_path / "img", val=0, test=0)
    with pytest.raises(ValueError, match="unknown pairing"):
        datalist_from_folder(tmp_path / "img", pairing="groupwise")
    with pytest.raises(ValueError, match="val and test must be fractions"):
        datalist_from_folder(tmp_path / "img", val=0.6, test=0.5)
    _nifti(tmp_path / "lab" / "s0.nii.gz", label=True)
    with pytest.raises(ValueError, match="1 of 3 subjects have a label map"):
        datalist_from_folder(tmp_path / "img", tmp_path / "lab", atlas=_nifti(tmp_path / "atlas.nii.gz"))


def test_an_atlas_inside_the_scanned_folder_is_not_a_subject(tmp_path):
    for i in range(4):
        _nifti(tmp_path / "images" / f"sub{i}_T1.nii.gz")
        _nifti(tmp_path / "labels" / f"sub{i}_seg.nii.gz", label=True)
    atlas, atlas_label = tmp_path / "images" / "sub0_T1.nii.gz", tmp_path / "labels" / "sub0_seg.nii.gz"
    scan = datalist_from_folder(
        tmp_path / "images", tmp_path / "labels", atlas=atlas, atlas_label=atlas_label, val=0, test=0.34
    )
    subjects = [s["image"] for split in ("training", "validation", "test") for s in scan.datalist[split]]
    assert sorted(Path(s).name for s in subjects) == ["sub1_T1.nii.gz", "sub2_T1.nii.gz", "sub3_T1.nii.gz"]
    assert scan.datalist["atlas"] == {"image": str(atlas), "label": str(atlas_label)}
    assert scan.labels_without_image == [] and scan.images_without_label == []

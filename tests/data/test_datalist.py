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
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from autoreg_monai.data.datalist import find_labels, load_datalist, make_pairs


def _write(folder, name, data):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(folder / name))
    return name


@pytest.fixture()
def dataset(tmp_path):
    label = np.zeros((6, 6, 6), dtype=np.int16)
    label[1:3, 1:3, 1:3] = 4
    label[3:5, 3:5, 3:5] = 17
    subjects = []
    for i in range(3):
        item = {"image": _write(tmp_path, f"s{i}_t1.nii.gz", np.random.rand(6, 6, 6).astype(np.float32))}
        item["image_t2"] = _write(tmp_path, f"s{i}_t2.nii.gz", np.random.rand(6, 6, 6).astype(np.float32))
        item["image_t1"] = item["image"]
        item["label"] = _write(tmp_path, f"s{i}_label.nii.gz", label)
        subjects.append(item)
    datalist = {
        "training": subjects[:2],
        "validation": subjects[2:],
        "atlas": {"image": _write(tmp_path, "atlas.nii.gz", np.ones((6, 6, 6), np.float32))},
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    return tmp_path


def test_relative_paths_are_resolved_against_the_datalist_folder(dataset):
    datalist = load_datalist(dataset)  # the folder holding datalist.json
    assert datalist["training"][0]["image"] == str(dataset / "s0_t1.nii.gz")
    assert datalist["atlas"]["image"] == str(dataset / "atlas.nii.gz")


def test_pairing_modes(dataset):
    datalist = load_datalist(dataset / "datalist.json")
    atlas = make_pairs(datalist, "training", "atlas")
    assert [p["fixed_image"] for p in atlas] == [str(dataset / "atlas.nii.gz")] * 2
    assert "moving_label" not in atlas[0]  # the atlas has no label map
    assert atlas[0]["pair"] == "s0_t1.nii.gz -> atlas.nii.gz"
    pairwise = make_pairs(datalist, "training", "pairwise")
    assert {(p["moving_image"][-12:], p["fixed_image"][-12:]) for p in pairwise} == {
        ("s0_t1.nii.gz", "s1_t1.nii.gz"),
        ("s1_t1.nii.gz", "s0_t1.nii.gz"),
    }
    assert pairwise[0]["moving_label"].endswith("_label.nii.gz")
    cross = make_pairs(datalist, "training", "cross_modal")
    assert all(p["moving_image"].endswith("_t2.nii.gz") and p["fixed_image"].endswith("_t1.nii.gz") for p in cross)
    assert cross[0]["moving_image"][-12:-10] != cross[0]["fixed_image"][-12:-10]  # different subjects
    assert len(make_pairs(datalist, "training", "pairwise", max_pairs=1)) == 1


def test_find_labels_and_errors(dataset):
    datalist = load_datalist(dataset)
    assert find_labels(datalist, ["validation"]) == [4, 17]
    with pytest.raises(ValueError, match="unknown pairing 'random'"):
        make_pairs(datalist, "training", "random")
    with pytest.raises(ValueError, match="no subjects in 'test'"):
        make_pairs(datalist, "test", "atlas")
    with pytest.raises(ValueError, match="needs at least 2 subjects in 'validation'"):
        make_pairs(datalist, "validation", "pairwise")
    (dataset / "s1_t2.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"datalist.json: 1 listed file\(s\) do not exist"):
        load_datalist(dataset)
    with pytest.raises(ValueError, match="datalist not found"):
        load_datalist(dataset / "elsewhere")

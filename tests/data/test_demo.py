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

import nibabel as nib
import numpy as np
import pytest

from autoreg_monai.data.datalist import make_pairs
from autoreg_monai.data.demo import BRAIN_LABELS, demo_datalist, scenario_datalist


def _array(path):
    return np.asarray(nib.load(path).dataobj)


def test_demo_set_is_deterministic_and_well_formed(tmp_path):
    first = demo_datalist("brain_t1", 2, 1, 1, size=24, seed=3, root=tmp_path / "a")
    second = demo_datalist("brain_t1", 2, 1, 1, size=24, seed=3, root=tmp_path / "b")
    assert [len(first[s]) for s in ("training", "validation", "test")] == [2, 1, 1]
    for a, b in zip(first["training"] + [first["atlas"]], second["training"] + [second["atlas"]]):
        np.testing.assert_array_equal(_array(a["image"]), _array(b["image"]))
        np.testing.assert_array_equal(_array(a["label"]), _array(b["label"]))
    image = nib.load(first["training"][0]["image"])
    assert image.shape == (24, 24, 24) and image.get_data_dtype() == np.float32
    spacing = np.diag(image.affine)[:3]
    assert np.allclose(spacing, spacing[0]) and 6.0 < spacing[0] < 9.0  # the MNI brain (~175 mm) in 24 voxels
    label = _array(first["training"][0]["label"])
    assert set(np.unique(label).tolist()) == {0, *BRAIN_LABELS}
    assert 0.05 < (label == 3).mean() < 0.5  # white matter is a good part of the brain
    assert not np.array_equal(label, _array(first["atlas"]["label"]))  # subjects are deformed atlases
    other_seed = demo_datalist("brain_t1", 2, 1, 1, size=24, seed=4, root=tmp_path / "a")
    assert not np.array_equal(_array(other_seed["training"][0]["image"]), _array(first["training"][0]["image"]))
    assert not list((tmp_path / "a").glob(".*"))  # no staging folder left behind


def test_cross_modal_demo_and_scenario_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOREG_DEMO_DIR", str(tmp_path))
    options = {"num_training": 2, "num_validation": 0, "num_test": 0, "size": 16}
    datalist = scenario_datalist(None, "brain_t1t2", options)
    pair = make_pairs(datalist, "training", "cross_modal")[0]
    t1, t2 = _array(pair["fixed_image"]), _array(pair["moving_image"])
    assert t1.shape == t2.shape == (16, 16, 16)
    label = _array(pair["fixed_label"])
    assert t1[label == 1].mean() < t1[label == 3].mean()  # T1: CSF dark, white matter bright
    moving_label = _array(pair["moving_label"])
    assert t2[moving_label == 1].mean() > t2[moving_label == 3].mean()  # T2: the other way round
    assert str(tmp_path) in pair["fixed_image"]
    with pytest.raises(ValueError, match="unknown demo scenario 'lung'"):
        scenario_datalist(None, "lung")
    with pytest.raises(ValueError, match="datalist not found"):
        scenario_datalist(tmp_path / "nowhere", "brain_t1")

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The synthetic knee of the knee_t1 demo set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoreg_monai.data import (
    KNEE_LABELS,
    demo_datalist,
    demo_label_names,
    knee_label_map,
    knee_tissue_map,
    render_knee,
)


def _near(mask: torch.Tensor, other: torch.Tensor, radius: int = 1) -> bool:
    grown = F.max_pool3d(other.float()[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0
    return bool((mask & grown).any())


def test_knee_has_bones_with_cartilage_on_their_joint_surfaces():
    tissue = knee_tissue_map((48, 48, 48), torch.Generator().manual_seed(0))
    label = knee_label_map(tissue)[0, 0]
    assert sorted(int(v) for v in label.unique()) == [0, *KNEE_LABELS]
    femur, femoral_cartilage, tibia, tibial_cartilage = (label == v for v in (1, 2, 3, 4))
    assert femur.sum() > tibia.sum() > 0 and femur.sum() > femoral_cartilage.sum() > 0
    assert _near(femoral_cartilage, femur) and _near(tibial_cartilage, tibia)
    assert not _near(femur, tibia)  # a joint gap separates the bones
    # femur above the tibia (axis 2 runs inferior to superior)
    z = torch.arange(48.0)
    assert (z * femur.sum((0, 1))).sum() / femur.sum() > (z * tibia.sum((0, 1))).sum() / tibia.sum()


def test_rendered_knee_is_t1_like_and_reproducible():
    tissue = knee_tissue_map((40, 40, 40), torch.Generator().manual_seed(1))
    image = render_knee(tissue, torch.Generator().manual_seed(2))
    again = render_knee(tissue, torch.Generator().manual_seed(2))
    assert torch.equal(image, again) and image.min() >= 0 and image.max() <= 1
    marrow, fat, muscle = (image[tissue == v].mean() for v in (1, 6, 5))
    assert fat > marrow > muscle  # fat-bright T1 contrast


def test_knee_demo_set_has_knee_labels(tmp_path):
    datalist = demo_datalist("knee_t1", num_training=1, num_validation=1, num_test=0, size=32, root=tmp_path)
    import nibabel as nib

    values = set(nib.load(datalist["training"][0]["label"]).get_fdata().astype(int).ravel())
    assert values == {0, 1, 2, 3, 4}
    assert demo_label_names("knee_t1") == KNEE_LABELS
    assert demo_label_names("brain_t2")[3] == "white matter"

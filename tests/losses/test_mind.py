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
import torch

from autoreg_monai.data.phantom import make_phantom
from autoreg_monai.losses.mind import MINDSSCLoss, mind_ssc


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    image, _ = make_phantom((40, 40, 40), torch.Generator().manual_seed(0))
    return image


def _crop(path, size: int = 48) -> torch.Tensor:
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    starts = [(n - size) // 2 for n in data.shape]
    block = data[tuple(slice(s, s + size) for s in starts)]
    block = (block - block.min()) / (block.max() - block.min())
    return torch.from_numpy(np.ascontiguousarray(block))[None, None]


def test_descriptor_shape_and_range(phantom):
    desc = mind_ssc(phantom)
    assert tuple(desc.shape) == (1, 12, 40, 40, 40)
    assert desc.min() > 0 and desc.max() <= 1
    assert tuple(mind_ssc(phantom[..., 20]).shape) == (1, 4, 40, 40)  # 2-D: four pairs


def test_identical_and_affine_intensity_change_give_zero(phantom):
    loss = MINDSSCLoss()
    assert float(loss(phantom, phantom)) == 0.0
    assert float(loss(2.5 * phantom - 0.3, phantom)) < 1e-9
    assert float(loss(-0.5 * phantom + 4.0, phantom)) < 1e-9


def test_monotone_remap_is_small_and_shift_is_large(phantom):
    loss = MINDSSCLoss()
    remapped = float(loss(phantom.sqrt(), phantom))
    shifted = float(loss(torch.roll(phantom, shifts=3, dims=2), phantom))
    print(f"\nMIND phantom: sqrt remap {remapped:.5f}, 3-voxel shift {shifted:.5f}")
    assert remapped < shifted / 5


def test_real_t1_t2_pair_is_closer_aligned_than_shifted(sample_data):
    """Co-registered T1 and T2 of one subject: MIND sees them as similar, and a misalignment as worse."""
    t1 = _crop(sample_data / "stroke_t1_t2_flair" / "T1.nii.gz")
    t2 = _crop(sample_data / "stroke_t1_t2_flair" / "T2.nii.gz")
    loss = MINDSSCLoss()
    aligned = float(loss(t2, t1))
    misaligned = float(loss(torch.roll(t2, shifts=4, dims=3), t1))
    print(f"\nMIND real T2->T1: aligned {aligned:.5f}, 4-voxel shift {misaligned:.5f}")
    assert aligned < 0.7 * misaligned
    assert float(loss(t1.sqrt(), t1)) < aligned  # a monotone remap of T1 is closer still


def test_gradient_and_reductions(phantom):
    moving = phantom.clone().requires_grad_(True)
    MINDSSCLoss()(torch.roll(moving, 1, 2), phantom).backward()
    assert moving.grad is not None and moving.grad.abs().sum() > 0
    per_voxel = MINDSSCLoss(reduction="none")(phantom, torch.roll(phantom, 1, 2))
    assert tuple(per_voxel.shape) == (1, 12, 40, 40, 40)
    total = MINDSSCLoss(reduction="sum")(phantom, torch.roll(phantom, 1, 2))
    torch.testing.assert_close(total, per_voxel.sum())


def test_constant_image_is_finite_and_bad_shapes_are_refused():
    assert torch.all(torch.isfinite(mind_ssc(torch.ones(1, 1, 8, 8, 8))))
    with pytest.raises(ValueError, match="pred and target must both be"):
        MINDSSCLoss()(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        MINDSSCLoss(spatial_dims=1)

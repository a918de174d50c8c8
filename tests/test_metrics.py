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

import math

import pytest
import torch
from monai.metrics import compute_dice

from autoreg_monai.metrics import (
    dice_per_label,
    folding_percentage,
    hd95_per_label,
    jacobian_determinant,
    ncc,
    std_log_jacobian,
    warp_labels,
)


def _affine_displacement(matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """u(x) = (A - I) x on a voxel grid, channel i along axis i."""
    dims = len(shape)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    disp = torch.einsum("ij,j...->i...", matrix - torch.eye(dims, dtype=torch.float64), grid)
    return disp[None]


def test_dice_per_label_on_hand_made_maps():
    pred = torch.zeros(1, 1, 10, 10, 10, dtype=torch.int64)
    target = torch.zeros_like(pred)
    pred[0, 0, 0, 0, 0:4] = 1  # 4 voxels, 2 of them shared
    target[0, 0, 0, 0, 2:8] = 1  # 6 voxels
    pred[0, 0, 5:7, 5:7, 5:7] = 2  # label 2 identical
    target[0, 0, 5:7, 5:7, 5:7] = 2
    pred[0, 0, 9, 9, 9] = 3  # label 3 only in pred
    scores = dice_per_label(pred, target, [1, 2, 3, 4])
    assert scores.shape == (1, 4)
    assert float(scores[0, 0]) == pytest.approx(2 * 2 / (4 + 6))
    assert float(scores[0, 1]) == 1.0
    assert math.isnan(float(scores[0, 2])) and math.isnan(float(scores[0, 3]))  # absent from target
    assert dice_per_label(pred, target, [2, 1]).tolist() == [[1.0, pytest.approx(0.4)]]  # order follows `labels`


def test_dice_per_label_equals_monai_compute_dice():
    generator = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 6, (2, 1, 12, 13, 14), generator=generator)
    target = torch.randint(0, 6, (2, 1, 12, 13, 14), generator=generator)
    labels = [5, 1, 3, 7]
    one_hot = [torch.stack([(x[:, 0] == v) for v in labels], dim=1).float() for x in (pred, target)]
    expected = compute_dice(one_hot[0], one_hot[1], include_background=True, ignore_empty=True)
    torch.testing.assert_close(dice_per_label(pred, target, labels), expected.float(), equal_nan=True)


@pytest.mark.parametrize(
    "matrix",
    [
        [[1.2, 0.1, 0.0], [0.0, 0.9, 0.05], [0.1, 0.0, 1.1]],
        [[0.8, -0.2, 0.1], [0.3, 1.0, 0.0], [0.0, 0.1, 1.3]],
    ],
)
def test_jacobian_of_affine_displacement_is_its_determinant(matrix):
    a = torch.tensor(matrix, dtype=torch.float64)
    det = jacobian_determinant(_affine_displacement(a, (9, 10, 11)))
    assert det.shape == (1, 7, 8, 9)
    torch.testing.assert_close(det, torch.full_like(det, float(torch.linalg.det(a))))
    assert float(folding_percentage(_affine_displacement(a, (9, 10, 11)))[0]) == 0.0
    assert float(std_log_jacobian(_affine_displacement(a, (9, 10, 11)))[0]) == pytest.approx(0.0, abs=1e-9)


def test_folding_percentage_and_2d_jacobian():
    reflect = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(folding_percentage(_affine_displacement(reflect, (8, 8)))[0]) == 100.0
    half = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    half[0, 0, 5:] = -2.0 * torch.arange(5, dtype=torch.float64).view(5, 1)  # folds in the lower half
    pct = float(folding_percentage(half)[0])
    assert 0.0 < pct < 100.0


def test_ncc():
    image = torch.rand(2, 1, 8, 8, 8)
    torch.testing.assert_close(ncc(3 * image + 1, image), torch.ones(2))
    torch.testing.assert_close(ncc(-image, image), -torch.ones(2))
    assert abs(float(ncc(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))[0])) < 0.05


def test_hd95_of_shifted_cubes():
    a = torch.zeros(1, 1, 20, 20, 20, dtype=torch.int64)
    b = torch.zeros_like(a)
    a[0, 0, 5:12, 5:12, 5:12] = 1
    b[0, 0, 7:14, 5:12, 5:12] = 1
    assert float(hd95_per_label(a, b, [1])[0, 0]) == pytest.approx(2.0)
    assert float(hd95_per_label(a, b, [1], spacing=(2.0, 1.0, 1.0))[0, 0]) == pytest.approx(4.0)


def test_warp_labels_by_integer_shift_is_exact():
    label = torch.randint(0, 50, (1, 1, 12, 12, 12), dtype=torch.int16)
    ddf = torch.zeros(1, 3, 12, 12, 12)
    ddf[:, 1] = 2.0
    warped = warp_labels(label, ddf)
    assert warped.dtype == torch.int16
    torch.testing.assert_close(warped[..., :, :-2, :], label[..., :, 2:, :])
    assert set(warped.unique().tolist()) <= set(label.unique().tolist())  # no interpolated values

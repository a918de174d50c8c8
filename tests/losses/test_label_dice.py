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

import pytest
import torch

from autoreg_monai.data.phantom import PHANTOM_LABELS, make_phantom
from autoreg_monai.losses.label_dice import WarpedLabelDiceLoss, one_hot_labels


@pytest.fixture(scope="module")
def label() -> torch.Tensor:
    return make_phantom((32, 32, 32), torch.Generator().manual_seed(4))[1]


def test_zero_for_identical_labels(label):
    loss = WarpedLabelDiceLoss(PHANTOM_LABELS)
    assert float(loss(label, label, torch.zeros(1, 3, 32, 32, 32))) == pytest.approx(0.0, abs=1e-6)


def test_decreases_as_a_shifted_label_map_is_warped_back(label):
    """moving = fixed shifted by +3 voxels on axis 0; the ddf t * 3 recovers it at t = 1."""
    moving = torch.roll(label, shifts=3, dims=2)
    loss = WarpedLabelDiceLoss(PHANTOM_LABELS)
    values = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        ddf = torch.zeros(1, 3, 32, 32, 32)
        ddf[:, 0] = 3.0 * t
        values.append(float(loss(moving, label, ddf)))
    print(f"\nDice loss along the recovering path: {[round(v, 4) for v in values]}")
    assert all(b < a for a, b in zip(values, values[1:]))
    assert values[-1] < 1e-4 < values[0]


def test_gradient_reaches_the_field(label):
    moving = torch.roll(label, shifts=2, dims=3)
    ddf = torch.zeros(1, 3, 32, 32, 32, requires_grad=True)
    WarpedLabelDiceLoss(PHANTOM_LABELS)(moving, label, ddf).backward()
    assert ddf.grad is not None and ddf.grad[:, 1].abs().sum() > 0


def test_one_hot_only_lists_requested_labels():
    label = torch.tensor([0, 2, 7, 2, 41]).view(1, 1, 5, 1, 1)
    one_hot = one_hot_labels(label, [2, 41])
    assert one_hot.shape == (1, 2, 5, 1, 1)
    assert one_hot[0, :, :, 0, 0].tolist() == [[0, 1, 0, 1, 0], [0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match=r"\(B, 1, \*S\)"):
        one_hot_labels(torch.zeros(1, 2, 4, 4), [1])
    with pytest.raises(ValueError, match="same shape"):
        WarpedLabelDiceLoss([1])(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5), torch.zeros(1, 3, 4, 4, 4))

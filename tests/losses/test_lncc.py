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
"""BoxLNCCLoss gives MONAI's LNCC value and gradient; box_sum is the zero-padded box convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss

from autoreg_monai.losses import BoxLNCCLoss, RegistrationLoss, box_sum


@pytest.mark.parametrize("spatial_dims, kernel_size", [(3, 9), (3, 5), (2, 7), (3, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_box_lncc_equals_monai_lncc_in_value_and_gradient(spatial_dims, kernel_size, reduction):
    shape = (2, 1, *([19, 23, 17][:spatial_dims]))
    target = torch.rand(shape, dtype=torch.float64)
    target[0, 0, :5] = 0.3  # a flat region: the variance floor smooth_dr acts there
    pred_ours = (0.6 * target + 0.4 * torch.rand(shape, dtype=torch.float64)).requires_grad_(True)
    pred_monai = pred_ours.detach().clone().requires_grad_(True)
    ours = BoxLNCCLoss(spatial_dims, kernel_size=kernel_size, reduction=reduction)(pred_ours, target)
    monai = LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size=kernel_size, reduction=reduction)(
        pred_monai, target
    )
    assert ours.shape == monai.shape
    assert torch.allclose(ours, monai, rtol=1e-9, atol=1e-12)
    ours.sum().backward()
    monai.sum().backward()
    assert torch.allclose(pred_ours.grad, pred_monai.grad, rtol=1e-7, atol=1e-12)


def test_box_lncc_in_float32_is_as_precise_as_monai_lncc_in_float32():
    """A smooth, low-contrast image along a long axis (where float32 running sums lost precision, 1.5x MONAI's
    error here): the float32 gradient is as close to the float64 one as MONAI's own float32 gradient."""

    def gradient(loss, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.detach().clone().requires_grad_(True)
        loss(pred, target).backward()
        return pred.grad.double()

    generator = torch.Generator().manual_seed(0)
    shape = (1, 1, 96, 40, 36)
    profile = 0.5 + 0.4 * torch.sin(6 * torch.linspace(0, 1, 96))[:, None, None]
    target = profile + 0.05 * torch.rand(shape, generator=generator)
    pred = 0.7 * target + 0.015 * torch.rand(shape, generator=generator)
    monai = LocalNormalizedCrossCorrelationLoss(3, kernel_size=9)
    exact = gradient(monai, pred.double(), target.double())
    ours_error = (gradient(BoxLNCCLoss(3, kernel_size=9), pred, target) - exact).abs().max()
    monai_error = (gradient(monai, pred, target) - exact).abs().max()
    assert ours_error <= 1.25 * monai_error, (float(ours_error), float(monai_error))


def test_box_sum_is_the_zero_padded_box_convolution():
    x = torch.rand(1, 2, 11, 8, 9, dtype=torch.float64)
    kernel = torch.ones(2, 1, 5, 5, 5, dtype=torch.float64)
    expected = F.conv3d(x, kernel, padding=2, groups=2)
    assert torch.allclose(box_sum(x, 5), expected)


def test_box_sum_gradients_to_second_order_are_the_convolutions():
    """The hand-written backward (the box sum of the gradient) against finite differences, twice over."""
    x = torch.rand(1, 2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: box_sum(v, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda v: box_sum(v * v, 5), (x,))
    y = torch.rand(1, 1, 9, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 1, 9, 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad((box_sum(y, 5) * weights).sum(), y)
    assert torch.allclose(grad, F.conv2d(weights, torch.ones(1, 1, 5, 5, dtype=torch.float64), padding=2))


def test_box_sum_needs_an_odd_window():
    with pytest.raises(ValueError, match="odd window side, got 4"):
        box_sum(torch.rand(1, 1, 8, 8), 4)


def test_other_windows_are_left_to_monai():
    pred, target = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    ours = BoxLNCCLoss(3, kernel_size=5, kernel_type="gaussian")(pred, target)
    monai = LocalNormalizedCrossCorrelationLoss(3, kernel_size=5, kernel_type="gaussian")(pred, target)
    assert torch.equal(ours, monai)
    with pytest.raises(ValueError, match="differing shape"):
        BoxLNCCLoss(3, kernel_size=5)(pred, target[..., :6])


def test_the_registration_loss_uses_it_for_lncc():
    similarities = RegistrationLoss("lncc").similarity.similarities
    assert [type(s) for s in similarities] == [BoxLNCCLoss] * 3
    assert [s.kernel_size for s in similarities] == [9, 7, 5]

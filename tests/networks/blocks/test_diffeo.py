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
from monai.networks.blocks import Warp

from autoreg_monai.data.phantom import smooth_random_field
from autoreg_monai.metrics import folding_percentage, jacobian_determinant
from autoreg_monai.networks.blocks.diffeo import ComposeDDF, DiffeomorphicTransform, resize_ddf


def _velocity(shape, max_voxels: float, seed: int = 0) -> torch.Tensor:
    field = smooth_random_field(shape, len(shape), 4, torch.Generator().manual_seed(seed))
    return field * (max_voxels / field.abs().max())


@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 28)])
def test_zero_velocity_gives_zero_displacement(shape):
    ddf = DiffeomorphicTransform(7)(torch.zeros(2, len(shape), *shape))
    assert torch.count_nonzero(ddf) == 0


def test_smooth_velocity_is_integrated_without_folding():
    velocity = _velocity((32, 32, 32), 6.0)
    ddf = DiffeomorphicTransform(7)(velocity)
    assert ddf.abs().max() > 3.0  # a real deformation, not a vanishing one
    assert float(folding_percentage(ddf)[0]) == 0.0
    # the same velocity used directly as a displacement folds: integration is what keeps it invertible
    assert float(folding_percentage(_velocity((32, 32, 32), 14.0))[0]) > 0.0
    assert float(folding_percentage(DiffeomorphicTransform(7)(_velocity((32, 32, 32), 14.0)))[0]) == 0.0


def test_exp_v_composed_with_exp_minus_v_is_close_to_identity():
    velocity = _velocity((32, 32, 32), 4.0, seed=3)
    exp = DiffeomorphicTransform(7)
    forward, backward = exp(velocity), exp(-velocity)
    composed = ComposeDDF()(forward, backward)
    error = composed.norm(dim=1)
    assert forward.norm(dim=1).mean() > 1.0
    assert error.mean() < 0.1, f"mean inverse-consistency error {error.mean():.3f} voxels"


def test_composition_matches_sequential_warping():
    shape = (32, 32, 32)
    image = smooth_random_field(shape, 1, 3, torch.Generator().manual_seed(7))
    a = smooth_random_field(shape, 3, 3, torch.Generator().manual_seed(1))
    b = smooth_random_field(shape, 3, 3, torch.Generator().manual_seed(2))
    a, b = a * (3.0 / a.abs().max()), b * (3.0 / b.abs().max())
    warp = Warp()
    once = warp(image, ComposeDDF()(a, b))
    twice = warp(warp(image, a), b)  # warp by outer, then by inner
    swapped = warp(warp(image, b), a)
    inner = (slice(None), slice(None)) + (slice(5, -5),) * 3
    error = (once - twice)[inner].abs().mean()
    assert error < 0.002
    assert (once - swapped)[inner].abs().mean() > 2 * error  # the order of composition matters


def test_resize_ddf_rescales_vectors_to_the_new_voxel_size():
    constant = torch.full((1, 3, 32, 32, 32), 3.0)
    up = resize_ddf(constant, (64, 64, 64))
    torch.testing.assert_close(up, torch.full((1, 3, 64, 64, 64), 3.0 * 63 / 31))
    # a linear field u_0(i) = 0.1 * i (voxels) is the same physical map at every resolution
    index = torch.arange(33, dtype=torch.float32).view(1, 1, 33, 1, 1).expand(1, 1, 33, 9, 9)
    linear = torch.cat([0.1 * index, torch.zeros(1, 2, 33, 9, 9)], dim=1)
    resized = resize_ddf(linear, (65, 17, 17))
    expected = 0.1 * torch.arange(65, dtype=torch.float32).view(1, 65, 1, 1).expand(1, 65, 17, 17)
    torch.testing.assert_close(resized[:, 0], expected, atol=1e-5, rtol=0)
    down = resize_ddf(up, (32, 32, 32))
    torch.testing.assert_close(down, constant)


def test_integration_steps_and_gradients():
    velocity = _velocity((16, 16, 16), 2.0).requires_grad_(True)
    DiffeomorphicTransform(5)(velocity).pow(2).sum().backward()
    assert velocity.grad is not None and velocity.grad.abs().sum() > 0
    plain = _velocity((16, 16, 16), 2.0)
    assert torch.equal(DiffeomorphicTransform(0)(plain), plain)
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
        DiffeomorphicTransform(-1)
    with pytest.raises(ValueError, match="velocity field"):
        DiffeomorphicTransform()(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ComposeDDF()(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 3, 8, 8, 9))


def test_jacobian_of_integrated_field_is_positive_in_2d():
    ddf = DiffeomorphicTransform(7)(_velocity((48, 40), 5.0))
    assert torch.all(jacobian_determinant(ddf) > 0)

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

from autoreg_monai.networks.blocks.mixed_op import MixedOp
from autoreg_monai.networks.blocks.ops import PRIMITIVES

SIZES = {2: (12, 14), 3: (8, 10, 12)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("index", range(len(PRIMITIVES)))
def test_one_hot_alpha_equals_the_single_op(spatial_dims, stride, index):
    edge = MixedOp(spatial_dims, 3, 5, stride)
    x = torch.randn(1, 3, *SIZES[spatial_dims])
    alpha = torch.full((len(PRIMITIVES),), float("-inf"))
    alpha[index] = 0.0  # softmax(alpha) is exactly one-hot
    torch.testing.assert_close(edge(x, alpha), edge.ops[index](x), rtol=0, atol=0)


def test_uniform_alpha_is_the_scale_normalised_sum_of_all_ops():
    edge = MixedOp(3, 2, 4, 1)
    x = torch.randn(1, 2, 6, 6, 6)
    expected = torch.stack([op(x) for op in edge.ops]).sum(dim=0) / len(PRIMITIVES) ** 0.5
    torch.testing.assert_close(edge(x, torch.zeros(len(PRIMITIVES))), expected)


def test_weights_are_softmax_over_their_norm():
    edge = MixedOp(3, 2, 3, 1, op_names=("conv_1x1", "conv_3x3"))
    x = torch.randn(1, 2, 6, 6, 6)
    alpha = torch.tensor([0.3, -1.2])
    w = torch.softmax(alpha, dim=0)
    w = w / w.norm()
    torch.testing.assert_close(edge(x, alpha), w[0] * edge.ops[0](x) + w[1] * edge.ops[1](x))


def test_a_chain_of_uniform_mixtures_keeps_the_signal():
    """Nine mixed edges (the depth from an image to a velocity head) neither vanish nor explode the input."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16, 16)
    edges = [MixedOp(3, 1 if i == 0 else 8, 8, 1) for i in range(9)]
    h = x
    with torch.no_grad():
        for edge in edges:
            h = edge(h, torch.zeros(len(PRIMITIVES)))
    spread = float(h.std(dim=(2, 3, 4)).mean())
    assert 0.05 < spread / float(x.std()) < 20.0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_reach_alpha(spatial_dims):
    edge = MixedOp(spatial_dims, 2, 3, 1)
    alpha = torch.zeros(len(PRIMITIVES), requires_grad=True)
    edge(torch.randn(1, 2, *SIZES[spatial_dims]), alpha).pow(2).mean().backward()
    assert alpha.grad is not None
    assert torch.all(torch.isfinite(alpha.grad))
    assert alpha.grad.abs().min() > 0  # every candidate contributes


def test_subset_of_candidates_and_alpha_shape_check():
    edge = MixedOp(3, 2, 2, 1, op_names=("conv_3x3", "dil_conv_5x5"))
    assert len(edge.ops) == 2
    with pytest.raises(ValueError, match=r"alpha must have shape \(2,\)"):
        edge(torch.randn(1, 2, 6, 6, 6), torch.zeros(8))
    with pytest.raises(ValueError, match="at least one candidate"):
        MixedOp(3, 2, 2, 1, op_names=())

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


@pytest.mark.parametrize("c_in, c_out, stride", [(3, 5, 1), (8, 8, 2), (27, 16, 1)])
def test_partial_channels_at_fraction_one_is_the_full_mixed_op(c_in, c_out, stride):
    torch.manual_seed(0)
    full = MixedOp(3, c_in, c_out, stride)
    torch.manual_seed(0)
    partial = MixedOp(3, c_in, c_out, stride, channel_fraction=1.0)
    assert partial.groups == 1 and partial.bypass is None
    assert partial.state_dict().keys() == full.state_dict().keys()
    x, alpha = torch.randn(1, c_in, 6, 7, 8), torch.randn(len(PRIMITIVES))
    torch.testing.assert_close(partial(x, alpha), full(x, alpha), rtol=0, atol=0)


def test_partial_channels_mix_every_kth_channel_and_pass_the_others_through():
    """K = 4 on a 16 -> 16 edge: the candidates see channels 0, 4, 8, 12 and fill output channels 0-3; the other
    twelve input channels are the remaining output channels, unchanged (identity bypass)."""
    torch.manual_seed(0)
    edge = MixedOp(3, 16, 16, 1, channel_fraction=0.25)
    small = MixedOp(3, 4, 4, 1)
    small.load_state_dict(edge.ops.state_dict(prefix="ops."))
    x, alpha = torch.randn(2, 16, 6, 6, 6), torch.randn(len(PRIMITIVES))
    y = edge(x, alpha)
    assert y.shape == (2, 16, 6, 6, 6)
    torch.testing.assert_close(y[:, :4], small(x[:, ::4], alpha))
    others = [c for c in range(16) if c % 4]
    torch.testing.assert_close(y[:, 4:], x[:, others], rtol=0, atol=0)


def test_partial_channels_pool_the_bypass_of_a_stride_two_edge():
    edge = MixedOp(3, 8, 8, 2, channel_fraction=0.25)
    x = torch.randn(1, 8, 9, 10, 11)
    y = edge(x, torch.randn(len(PRIMITIVES)))
    assert y.shape == (1, 8, 5, 5, 6)  # ceil(S / 2), as the candidates
    others = [c for c in range(8) if c % 4]
    expected = torch.nn.functional.avg_pool3d(x[:, others], kernel_size=2, stride=2, ceil_mode=True)
    torch.testing.assert_close(y[:, 2:], expected)


@pytest.mark.parametrize("c_in, c_out", [(27, 16), (16, 8)])
def test_partial_channels_on_edges_that_change_channels(c_in, c_out):
    """A 1x1 convolution maps the bypassed channels to the remaining outputs; the candidates have about K² fewer
    weights, and gradients reach α and the bypass."""
    torch.manual_seed(0)
    edge = MixedOp(3, c_in, c_out, 1, channel_fraction=0.25)
    full = MixedOp(3, c_in, c_out, 1)
    x = torch.randn(1, c_in, 9, 10, 11)
    alpha = torch.zeros(len(PRIMITIVES), requires_grad=True)
    y = edge(x, alpha)
    assert y.shape == (1, c_out, 9, 10, 11)
    candidates = sum(p.numel() for p in edge.ops.parameters())
    assert candidates < sum(p.numel() for p in full.ops.parameters()) / 8
    y.pow(2).mean().backward()
    assert alpha.grad is not None and alpha.grad.abs().min() > 0
    bypass = list(edge.bypass.parameters())
    assert bypass and all(p.grad is not None and p.grad.abs().sum() > 0 for p in bypass)


def test_partial_channels_leave_an_image_edge_whole_and_refuse_a_fraction_that_is_not_one_over_k():
    edge = MixedOp(3, 1, 8, 1, channel_fraction=0.25)  # one input channel: nothing to bypass
    assert edge.groups == 1 and edge.bypass is None
    narrow = MixedOp(3, 8, 2, 1, channel_fraction=0.25)  # fewer output channels than K
    assert narrow.groups == 1
    for fraction in (0.3, 0.0, 1.5):
        with pytest.raises(ValueError, match="channel_fraction must be 1/K"):
            MixedOp(3, 8, 8, 1, channel_fraction=fraction)

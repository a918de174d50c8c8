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
from torch import nn

from autoreg_monai.networks.blocks.ops import DILATION, OPS, PRIMITIVES, SepConv, make_op, receptive_field

SIZES = {2: (13, 16), 3: (9, 10, 11)}


def test_registry_is_the_papers_eight_operations():
    assert PRIMITIVES == (
        "conv_1x1",
        "conv_3x3",
        "conv_5x5",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
        "dil_conv_7x7",
    )
    assert set(OPS) == set(PRIMITIVES)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_and_dtype(name, spatial_dims, stride, dtype):
    op = OPS[name](4, 6, stride, spatial_dims).to(dtype)
    x = torch.randn(2, 4, *SIZES[spatial_dims], dtype=dtype)
    y = op(x)
    expected = (2, 6) + tuple(math.ceil(s / stride) for s in SIZES[spatial_dims])
    assert tuple(y.shape) == expected
    assert y.dtype == dtype


@pytest.mark.parametrize("name", PRIMITIVES)
def test_every_op_ends_with_leaky_relu_02(name):
    op = make_op(name, 3, 5, 1, 3)
    modules = [m for m in op.modules() if not list(m.children())]
    assert isinstance(modules[-1], nn.LeakyReLU)
    assert modules[-1].negative_slope == pytest.approx(0.2)
    assert not any(isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)) for m in modules)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_receptive_field_matches_the_name(name, spatial_dims):
    """The input support of one output voxel spans the documented receptive field along every axis."""
    op = make_op(name, 2, 2, 1, spatial_dims).double()
    size = 21
    x = torch.zeros(1, 2, *([size] * spatial_dims), dtype=torch.float64, requires_grad=True)
    centre = (0, 0) + (size // 2,) * spatial_dims
    op(x)[centre].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rf = receptive_field(name)
    for axis in range(spatial_dims):
        hit = support.any(dim=tuple(d for d in range(spatial_dims) if d != axis)).nonzero().flatten()
        assert int(hit.max() - hit.min()) + 1 == rf
        kernel = int(name[-1])
        assert len(hit) == kernel  # dilated ops have holes between their taps
    if name.startswith("dil_conv"):
        assert rf == DILATION * (int(name[-1]) - 1) + 1


@pytest.mark.parametrize("kernel", [3, 5])
def test_separable_conv_is_depthwise_then_pointwise(kernel):
    c_in, c_out = 6, 10
    op = SepConv(3, c_in, c_out, kernel)
    n_params = sum(p.numel() for p in op.parameters())
    assert n_params == (c_in * kernel**3 + c_in) + (c_in * c_out + c_out)
    assert op.depthwise.conv.groups == c_in


def test_unknown_operation_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown operation 'max_pool_3x3'.*conv_1x1"):
        make_op("max_pool_3x3", 4, 4)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_op("conv_3x3", 4, 4, 1, 1)

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

from autoreg_monai.networks.blocks.cells import DeformationCell, FeatureCell
from autoreg_monai.networks.blocks.mixed_op import MixedOp
from autoreg_monai.networks.blocks.ops import PRIMITIVES, make_op

SIZES = {2: (16, 18), 3: (12, 14, 16)}


def _same_structure(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return type(a) is type(b) and [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feature_cell_search_mode_halves_the_resolution(spatial_dims, dtype):
    cell = FeatureCell(spatial_dims, 1, 8).to(dtype)
    assert cell.is_search
    x = torch.randn(2, 1, *SIZES[spatial_dims], dtype=dtype)
    alpha = torch.zeros(3, len(PRIMITIVES), dtype=dtype, requires_grad=True)
    y = cell(x, alpha)
    assert tuple(y.shape) == (2, 8) + tuple(s // 2 for s in SIZES[spatial_dims])
    assert y.dtype == dtype
    y.pow(2).mean().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert cell.edge_specs == ((1, 8, 1), (8, 8, 1), (8, 8, 2))  # the last edge downsamples


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_feature_cell_fixed_mode_builds_exactly_the_chosen_ops(spatial_dims):
    ops = ("dil_conv_7x7", "sep_conv_3x3", "conv_1x1")
    cell = FeatureCell(spatial_dims, 1, 8, ops=ops)
    assert not cell.is_search
    assert not any(isinstance(m, MixedOp) for m in cell.modules())
    for edge, name, (c_in, c_out, stride) in zip(cell.edges, ops, [(1, 8, 1), (8, 8, 1), (8, 8, 2)]):
        assert _same_structure(edge, make_op(name, c_in, c_out, stride, spatial_dims))
    y = cell(torch.randn(1, 1, *SIZES[spatial_dims]))
    assert tuple(y.shape) == (1, 8) + tuple(s // 2 for s in SIZES[spatial_dims])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deformation_cell_keeps_the_resolution(spatial_dims):
    search = DeformationCell(spatial_dims, 10, (12, 8, 4))
    fixed = DeformationCell(spatial_dims, 10, (12, 8, 4), ops=("conv_3x3", "dil_conv_3x3", "sep_conv_5x5"))
    x = torch.randn(1, 10, *SIZES[spatial_dims])
    assert tuple(search(x, torch.zeros(3, 8)).shape) == (1, 4) + SIZES[spatial_dims]
    assert tuple(fixed(x).shape) == (1, 4) + SIZES[spatial_dims]
    assert fixed.out_channels == 4


def test_cells_reject_wrong_genotypes_and_alphas():
    with pytest.raises(ValueError, match="has 3 edges, got 2 operations"):
        FeatureCell(3, 1, 8, ops=("conv_3x3", "conv_5x5"))
    with pytest.raises(ValueError, match="unknown operation"):
        DeformationCell(3, 4, ops=("conv_3x3", "conv_5x5", "avg_pool_3x3"))
    with pytest.raises(ValueError, match=r"needs alpha of shape \(3, 8\), got None"):
        FeatureCell(3, 1, 8)(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="takes no alpha"):
        FeatureCell(3, 1, 8, ops=("conv_3x3",) * 3)(torch.randn(1, 1, 8, 8, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="needs 3 node widths"):
        DeformationCell(3, 4, channels=(8, 4))

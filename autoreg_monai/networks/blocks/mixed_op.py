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
"""The continuous relaxation of one searched edge (DARTS, Liu et al. ICLR 2019; AutoReg eq. 3), optionally on a
part of the channels (PC-DARTS, Xu et al. ICLR 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Pool
from torch import nn
from torch.profiler import record_function

from autoreg_monai.networks.blocks.ops import PRIMITIVES, make_op

__all__ = ["MixedOp"]


class MixedOp(nn.Module):
    """Scale-normalised softmax-weighted sum of candidates: ``sum_o w_o o(x) / ||w||``, ``w = softmax(alpha)``.

    All candidates are built (with their own weights) and evaluated on every call, so that the
    architecture logits ``alpha`` of the edge receive gradients.

    The mixture of the paper's eq. 3 is divided by the Euclidean norm of its weights. Without it, the
    uniform mixture of 8 nearly independent operations has about ``1/sqrt(8)`` of their spread, and the
    dozen mixed edges of a search network (no normalisation layers, no skips) shrink the images' signal
    ten-thousand-fold before the velocity head, so the weights ω learnt during the search barely depend
    on the images. The factor is one positive number per edge, which LeakyReLU and convolutions carry
    through (it changes the conditioning of the search, not what it can represent), it does not change
    which operation has the largest weight, and it is 1 for a one-hot ``alpha``: the relaxation then
    equals the discrete operation exactly, as in the derived network.

    **Partial channels** (``channel_fraction = 1/K < 1``, PC-DARTS): the candidates see every K-th input
    channel (``ceil(C_in / K)`` channels) and produce ``C_out // K`` channels, placed first in the output; the
    other input channels bypass them (a stride-2 edge average-pools them, a 1x1 convolution maps them to the
    remaining output channels where the counts differ). A convolution's cost falls by about K², the
    activations the candidates keep for the backward pass by K, and since the next edge again takes every
    K-th channel, its candidates see a mix of this edge's outputs and bypassed channels (PC-DARTS' channel
    shuffle). Taking strided channels rather than the first block matters here: a deformation cell's input
    is the concatenation of moving and fixed features, and both halves must reach the candidates. An edge
    with one input channel (the image) or fewer than K output channels stays a full mixture. The derived
    network (:class:`~autoreg_monai.networks.AutoRegNet`) always uses the full operations.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels of every candidate.
        out_channels: output channels of every candidate.
        stride: stride of every candidate (1 or 2).
        op_names: names of the candidates, keys of :data:`autoreg_monai.networks.blocks.ops.OPS`.
        channel_fraction: ``1/K`` for an integer ``K >= 1``: the fraction of channels the candidates see
            (1: the full mixture; PC-DARTS uses 1/4).

    Example::

        edge = MixedOp(3, 16, 16)
        y = edge(torch.rand(1, 16, 32, 32, 32), torch.zeros(8))  # uniform mixture, (1, 16, 32, 32, 32)
        cheap = MixedOp(3, 16, 16, channel_fraction=0.25)  # candidates on 4 of the 16 channels
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        op_names: Sequence[str] = PRIMITIVES,
        channel_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if len(op_names) == 0:
            raise ValueError("MixedOp needs at least one candidate operation")
        groups = round(1.0 / channel_fraction) if 0 < channel_fraction <= 1 else 0
        if groups < 1 or not math.isclose(groups * channel_fraction, 1.0, rel_tol=1e-6):
            raise ValueError(f"channel_fraction must be 1/K for an integer K >= 1, got {channel_fraction}")
        self.op_names = tuple(op_names)
        self.groups = groups if in_channels > 1 and out_channels >= groups else 1
        searched_in, searched_out = math.ceil(in_channels / self.groups), out_channels // self.groups
        self.ops = nn.ModuleList(make_op(name, searched_in, searched_out, stride, spatial_dims) for name in op_names)
        self.bypass: nn.Module | None = None
        if self.groups > 1:
            bypass_in, bypass_out = in_channels - searched_in, out_channels - searched_out
            layers: list[nn.Module] = []
            if stride > 1:
                layers.append(Pool[Pool.AVG, spatial_dims](kernel_size=stride, stride=stride, ceil_mode=True))
            if bypass_in != bypass_out:
                layers.append(Conv[Conv.CONV, spatial_dims](bypass_in, bypass_out, kernel_size=1))
            self.bypass = nn.Sequential(*layers)
            bypassed = [c for c in range(in_channels) if c % self.groups]
            self.register_buffer("bypass_channels", torch.tensor(bypassed), persistent=False)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input ``(B, C_in, *S)``.
            alpha: the edge's architecture logits, shape ``(num_ops,)``; the mixing weights are
                ``softmax(alpha) / ||softmax(alpha)||`` (``-inf`` entries give exactly zero weight).

        Returns:
            ``(B, C_out, *ceil(S / stride))``; with partial channels the candidates' mixture comes first.
        """
        if alpha.shape != (len(self.ops),):
            raise ValueError(
                f"alpha must have shape ({len(self.ops)},) for {len(self.ops)} candidates, got {tuple(alpha.shape)}"
            )
        with record_function("autoreg::mixed_op"):  # a scope for torch.profiler (benchmarks/search_cost.py)
            searched = x if self.bypass is None else x[:, :: self.groups]
            weights = torch.softmax(alpha, dim=0).to(x.dtype)
            weights = weights / weights.norm()
            out = weights[0] * self.ops[0](searched)
            for weight, op in zip(weights[1:], self.ops[1:]):
                out = out + weight * op(searched)
            if self.bypass is not None:
                out = torch.cat([out, self.bypass(x.index_select(1, self.bypass_channels))], dim=1)
        return out

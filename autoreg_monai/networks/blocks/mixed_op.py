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
"""The continuous relaxation of one searched edge (DARTS, Liu et al. ICLR 2019; AutoReg eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels of every candidate.
        out_channels: output channels of every candidate.
        stride: stride of every candidate (1 or 2).
        op_names: names of the candidates, keys of :data:`autoreg_monai.networks.blocks.ops.OPS`.

    Example::

        edge = MixedOp(3, 16, 16)
        y = edge(torch.rand(1, 16, 32, 32, 32), torch.zeros(8))  # uniform mixture, (1, 16, 32, 32, 32)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        op_names: Sequence[str] = PRIMITIVES,
    ) -> None:
        super().__init__()
        if len(op_names) == 0:
            raise ValueError("MixedOp needs at least one candidate operation")
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleList(make_op(name, in_channels, out_channels, stride, spatial_dims) for name in op_names)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input ``(B, C_in, *S)``.
            alpha: the edge's architecture logits, shape ``(num_ops,)``; the mixing weights are
                ``softmax(alpha) / ||softmax(alpha)||`` (``-inf`` entries give exactly zero weight).

        Returns:
            ``(B, C_out, *ceil(S / stride))``.
        """
        if alpha.shape != (len(self.ops),):
            raise ValueError(
                f"alpha must have shape ({len(self.ops)},) for {len(self.ops)} candidates, got {tuple(alpha.shape)}"
            )
        with record_function("autoreg::mixed_op"):  # a scope for torch.profiler (benchmarks/search_cost.py)
            weights = torch.softmax(alpha, dim=0).to(x.dtype)
            weights = weights / weights.norm()
            out = weights[0] * self.ops[0](x)
            for weight, op in zip(weights[1:], self.ops[1:]):
                out = out + weight * op(x)
        return out

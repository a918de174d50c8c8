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
"""AutoReg's searchable cells (paper section III-B, Fig. 2).

A cell is a chain of four nodes joined by three searched edges: node ``i + 1`` is the edge operation
applied to node ``i``. In search mode every edge is a :class:`MixedOp` over the candidate operations
and the cell's forward takes the architecture logits ``alpha`` (one row per edge); in fixed mode
every edge is the single operation a genotype chose for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoreg_monai.networks.blocks.mixed_op import MixedOp
from autoreg_monai.networks.blocks.ops import OPS, PRIMITIVES, make_op

__all__ = ["EDGES_PER_CELL", "DeformationCell", "FeatureCell", "ChainCell"]

EDGES_PER_CELL = 3
"""Number of searched edges in every cell (four nodes in a chain)."""


class ChainCell(nn.Module):
    """A chain of :data:`EDGES_PER_CELL` edges, each a mixed op (search mode) or a fixed op.

    Args:
        spatial_dims: 2 or 3.
        edges: ``(in_channels, out_channels, stride)`` of each edge, in order.
        ops: fixed mode: the operation name of each edge; ``None``: search mode.
        op_names: the candidate operations of a search-mode edge (the rows of ``alpha``).
        channel_fraction: search mode: the fraction of channels each mixed op's candidates see
            (:class:`MixedOp`; 1: all).
    """

    def __init__(
        self,
        spatial_dims: int,
        edges: Sequence[tuple[int, int, int]],
        ops: Sequence[str] | None = None,
        op_names: Sequence[str] = PRIMITIVES,
        channel_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.edge_specs = tuple(tuple(edge) for edge in edges)
        self.op_names = tuple(op_names)
        if ops is None:
            self.ops: tuple[str, ...] | None = None
            self.edges = nn.ModuleList(
                MixedOp(spatial_dims, c_in, c_out, stride, self.op_names, channel_fraction)
                for c_in, c_out, stride in self.edge_specs
            )
            return
        ops = tuple(ops)
        if len(ops) != len(self.edge_specs):
            raise ValueError(
                f"{type(self).__name__} has {len(self.edge_specs)} edges, got {len(ops)} operations: {ops}"
            )
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; known operations: {', '.join(PRIMITIVES)}")
        self.ops = ops
        self.edges = nn.ModuleList(
            make_op(name, c_in, c_out, stride, spatial_dims)
            for name, (c_in, c_out, stride) in zip(ops, self.edge_specs)
        )

    @property
    def is_search(self) -> bool:
        """``True`` when the edges are mixed ops whose weights come from ``alpha``."""
        return self.ops is None

    @property
    def out_channels(self) -> int:
        """Channels of the cell output (the last node)."""
        return self.edge_specs[-1][1]

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: the first node ``(B, C_in, *S)``.
            alpha: search mode: architecture logits ``(num_edges, num_ops)``; fixed mode: must be ``None``.

        Returns:
            the last node ``(B, C_out, *S')``, ``S'`` being ``S`` divided by the product of the edge strides.
        """
        if self.is_search:
            expected = (len(self.edges), len(self.op_names))
            if alpha is None or tuple(alpha.shape) != expected:
                got = None if alpha is None else tuple(alpha.shape)
                raise ValueError(f"a search-mode {type(self).__name__} needs alpha of shape {expected}, got {got}")
            for edge, alpha_row in zip(self.edges, alpha):
                x = edge(x, alpha_row)
            return x
        if alpha is not None:
            raise ValueError(f"a fixed-mode {type(self).__name__} ({self.ops}) takes no alpha")
        for edge in self.edges:
            x = edge(x)
        return x


class FeatureCell(ChainCell):
    """Adaptive feature cell: image (or coarser features) to features at half the resolution.

    Edges ``in -> C``, ``C -> C`` and ``C -> C`` with stride 2 on the last edge ("we down-sample the
    output of the last convolution by taking the stride of 2 as the last node"). The network shares the
    architecture between moving and fixed images but gives each its own cell (own weights).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input node.
        out_channels: channels ``C`` of the three other nodes.
        ops: fixed mode: the three operation names; ``None``: search mode.
        op_names: candidate operations in search mode.
        channel_fraction: search mode: the fraction of channels the candidates see (:class:`MixedOp`).

    Input ``(B, in_channels, *S)``, output ``(B, out_channels, *ceil(S / 2))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        ops: Sequence[str] | None = None,
        op_names: Sequence[str] = PRIMITIVES,
        channel_fraction: float = 1.0,
    ) -> None:
        edges = [(in_channels, out_channels, 1), (out_channels, out_channels, 1), (out_channels, out_channels, 2)]
        super().__init__(spatial_dims, edges, ops, op_names, channel_fraction)


class DeformationCell(ChainCell):
    """Task-aware deformation cell: concatenated features to deformation features at the same resolution.

    Edges ``in -> c1 -> c2 -> c3`` at stride 1; the network turns the last node into a velocity with a
    small head, and upsamples it to the next finer scale (the paper's resizing last node).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the first node (the concatenated inputs).
        channels: ``(c1, c2, c3)``, channels of the three other nodes (the paper's 48, 32, 16).
        ops: fixed mode: the three operation names; ``None``: search mode.
        op_names: candidate operations in search mode.
        channel_fraction: search mode: the fraction of channels the candidates see (:class:`MixedOp`).

    Input ``(B, in_channels, *S)``, output ``(B, c3, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (48, 32, 16),
        ops: Sequence[str] | None = None,
        op_names: Sequence[str] = PRIMITIVES,
        channel_fraction: float = 1.0,
    ) -> None:
        if len(channels) != EDGES_PER_CELL:
            raise ValueError(f"DeformationCell needs {EDGES_PER_CELL} node widths, got {tuple(channels)}")
        widths = [in_channels, *channels]
        edges = [(widths[i], widths[i + 1], 1) for i in range(EDGES_PER_CELL)]
        super().__init__(spatial_dims, edges, ops, op_names, channel_fraction)

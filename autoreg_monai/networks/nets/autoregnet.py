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
"""The AutoReg registration network: a coarse-to-fine pyramid of searchable cells (paper Fig. 2a).

For ``S`` scales (2 in the paper) and inputs of spatial size ``D``:

1. a feature cell per scale turns each image into features at ``D/2, D/4, ... D/2**S`` (moving and fixed
   share the architecture, not the weights);
2. from the coarsest scale to the finest, a deformation cell takes the concatenated moving and fixed
   features (at finer scales: the moving features warped by the upsampled coarser field, the fixed
   features, the upsampled coarser field and the upsampled coarser cell output) and a 3x3 head
   predicts a stationary velocity; its exponential (scaling and squaring) is composed with the
   upsampled coarser field;
3. the field at ``D/2`` is upsampled to ``D``.

Following ``monai.networks.nets.dints``, a search-space class and a fixed-instance class share one base:
:class:`AutoRegSearchNet` holds the architecture logits α and the loss weights λ as ``nn.Parameter``
(in its state dict), :class:`AutoRegNet` builds only the operations of a :class:`Genotype`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.blocks import Warp
from monai.networks.layers import Conv
from torch import nn

from autoreg_monai.networks.blocks.cells import EDGES_PER_CELL, DeformationCell, FeatureCell
from autoreg_monai.networks.blocks.diffeo import (
    ComposeDDF,
    DiffeomorphicTransform,
    full_precision,
    resize_ddf,
    resize_image,
    to_full_precision,
)
from autoreg_monai.networks.blocks.ops import PRIMITIVES
from autoreg_monai.networks.genotype import DEFAULT_LOSS_WEIGHTS, Genotype, derive_cell_ops

__all__ = ["AutoRegNet", "AutoRegSearchNet", "AutoRegBase"]


class AutoRegBase(nn.Module):
    """Shared body of :class:`AutoRegSearchNet` and :class:`AutoRegNet`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each input image.
        feature_channels: feature width of each scale, finest first; its length is the number of scales.
        deformation_channels: widths of the three deformation-cell nodes (the same at every scale).
        integration_steps: scaling-and-squaring steps of each velocity (0: no integration).
        op_names: candidate operations of searched edges.
        feature_ops: per scale, the three operations of the feature cell; ``None``: searched.
        deformation_ops: per scale, the three operations of the deformation cell; ``None``: searched.
        channels_last: keep the weights and the activations channels-last (``torch.channels_last_3d`` in 3-D):
            oneDNN's convolutions then skip their layout conversions, up to about 3x faster on CPU for the
            same result, depending on the operations (docs/benchmarks.md). Inputs are converted on entry and
            the outputs are returned contiguous, so callers see no difference.
        channel_fraction: searched cells: the fraction of channels each mixed op's candidates see (partial
            channel connections, :class:`~autoreg_monai.networks.blocks.MixedOp`); 1: all.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        feature_channels: Sequence[int],
        deformation_channels: Sequence[int],
        integration_steps: int,
        op_names: Sequence[str],
        feature_ops: Sequence[Sequence[str]] | None,
        deformation_ops: Sequence[Sequence[str]] | None,
        channels_last: bool = False,
        channel_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(feature_channels) < 1:
            raise ValueError("feature_channels needs one width per scale (at least one scale)")
        num_scales = len(feature_channels)
        for kind, ops in (("feature_ops", feature_ops), ("deformation_ops", deformation_ops)):
            if ops is not None and len(ops) != num_scales:
                raise ValueError(f"{kind} has {len(ops)} scales but feature_channels defines {num_scales}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.feature_channels = tuple(int(c) for c in feature_channels)
        self.deformation_channels = tuple(int(c) for c in deformation_channels)
        self.integration_steps = integration_steps
        self.op_names = tuple(op_names)
        self.num_scales = num_scales

        def cell_ops(ops: Sequence[Sequence[str]] | None, scale: int) -> Sequence[str] | None:
            return None if ops is None else ops[scale]

        widths = [in_channels, *self.feature_channels]
        self.moving_features = nn.ModuleList()
        self.fixed_features = nn.ModuleList()
        for s in range(num_scales):
            for cells in (self.moving_features, self.fixed_features):
                cells.append(
                    FeatureCell(
                        spatial_dims, widths[s], widths[s + 1], cell_ops(feature_ops, s), op_names, channel_fraction
                    )
                )

        last = self.deformation_channels[-1]
        self.deformation_cells = nn.ModuleList()
        self.velocity_heads = nn.ModuleList()
        for s in range(num_scales):
            coarsest = s == num_scales - 1
            cell_in = 2 * self.feature_channels[s] + (0 if coarsest else spatial_dims + last)
            self.deformation_cells.append(
                DeformationCell(
                    spatial_dims,
                    cell_in,
                    self.deformation_channels,
                    cell_ops(deformation_ops, s),
                    op_names,
                    channel_fraction,
                )
            )
            head = Conv[Conv.CONV, spatial_dims](last, spatial_dims, kernel_size=3, padding=1)
            nn.init.normal_(head.weight, mean=0.0, std=1e-5)
            nn.init.zeros_(head.bias)
            self.velocity_heads.append(head)
        self.exponentials = nn.ModuleList(DiffeomorphicTransform(integration_steps) for _ in range(num_scales))
        self.feature_warps = nn.ModuleList(Warp(mode="bilinear", padding_mode="border") for _ in range(num_scales - 1))
        self.compositions = nn.ModuleList(ComposeDDF() for _ in range(num_scales - 1))
        self.channel_fraction = float(channel_fraction)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of the weights and activations: channels-last when ``channels_last``, else contiguous."""
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last

    def _alphas(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Architecture logits of the feature and deformation cells (``None`` for fixed cells)."""
        return None, None

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        expected_ndim = self.spatial_dims + 2
        for name, image in (("moving", moving), ("fixed", fixed)):
            if image.ndim != expected_ndim or image.shape[1] != self.in_channels:
                raise ValueError(
                    f"{name} image must have shape (B, {self.in_channels}, *S) with {self.spatial_dims} spatial dims, "
                    f"got {tuple(image.shape)}"
                )
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving and fixed images must have the same shape, got {tuple(moving.shape)} and "
                f"{tuple(fixed.shape)}; resample them to a common grid first"
            )
        smallest = 2 ** (self.num_scales + 1)
        if min(moving.shape[2:]) < smallest:
            raise ValueError(
                f"every spatial size must be >= {smallest} for {self.num_scales} scales, got {tuple(moving.shape[2:])}"
            )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """
        Args:
            moving: ``(B, C, *S)`` image to deform.
            fixed: ``(B, C, *S)`` reference image.

        Returns:
            ``(ddf, pyramid)``: ``ddf`` is the ``(B, N, *S)`` displacement (voxels of ``S``) such that
            ``Warp()(moving, ddf)`` is aligned to ``fixed``; ``pyramid`` holds the fields at 1/2, 1/4, ...
            resolution, ``(B, N, *S_k)`` in voxels of ``S_k``, for the multi-scale loss.
        """
        self._check_inputs(moving, fixed)
        alpha_feature, alpha_deformation = self._alphas()

        def edge_alphas(alpha: torch.Tensor | None, scale: int) -> torch.Tensor | None:
            return None if alpha is None else alpha[scale * EDGES_PER_CELL : (scale + 1) * EDGES_PER_CELL]

        moving_feats, fixed_feats = [], []
        x_m, x_f = (image.contiguous(memory_format=self.memory_format) for image in (moving, fixed))
        for s in range(self.num_scales):
            x_m = self.moving_features[s](x_m, edge_alphas(alpha_feature, s))
            x_f = self.fixed_features[s](x_f, edge_alphas(alpha_feature, s))
            moving_feats.append(x_m)
            fixed_feats.append(x_f)

        pyramid: list[torch.Tensor] = []
        ddf: torch.Tensor | None = None
        cell_out: torch.Tensor | None = None
        for s in reversed(range(self.num_scales)):
            f_m, f_f = moving_feats[s], fixed_feats[s]
            size = f_m.shape[2:]
            if ddf is None or cell_out is None:
                coarse = None
                x = torch.cat([f_m, f_f], dim=1)
            else:
                coarse = resize_ddf(ddf, size)
                with full_precision(f_m):  # warping in float32 under autocast
                    warped = self.feature_warps[s](to_full_precision(f_m), coarse)
                x = torch.cat([warped, f_f, coarse, resize_image(cell_out, size)], dim=1)
            cell_out = self.deformation_cells[s](x, edge_alphas(alpha_deformation, s))
            step = self.exponentials[s](self.velocity_heads[s](cell_out))
            ddf = step if coarse is None else self.compositions[s](coarse, step)
            pyramid.insert(0, ddf)
        assert ddf is not None  # num_scales >= 1
        return resize_ddf(ddf, moving.shape[2:]).contiguous(), tuple(field.contiguous() for field in pyramid)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this network."""
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "feature_channels": list(self.feature_channels),
            "deformation_channels": list(self.deformation_channels),
            "integration_steps": self.integration_steps,
        }


class AutoRegSearchNet(AutoRegBase):
    """The AutoReg search space: mixed-op cells weighted by α, plus the learnable loss weights λ.

    ``alpha_feature`` and ``alpha_deformation`` have shape ``(num_scales * 3, num_ops)``, rows ordered
    scale-major (finest scale first), initialised to zero (uniform mixtures, as in the paper). A cell
    type given fixed operations (stage 2 fixes the feature cells, stage 3 both) has no α.
    λ is kept positive as ``exp(log_loss_weights)``: an optimiser step of size s on ``log λ`` multiplies λ by
    about ``exp(±s)``, so the λ learning rate is a relative step (0.05: about 5 % per step) whatever λ's
    magnitude. The paper's Adam learning rate of 0.004 on λ itself moves λ = 15 by 0.03 % per step, which is
    why a search of tens of upper steps left λ where it started.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each input image.
        feature_channels: feature width per scale, finest first (paper: 16, 32).
        deformation_channels: widths of the deformation-cell nodes (paper: 48, 32, 16).
        integration_steps: scaling-and-squaring steps (paper: 7).
        op_names: candidate operations (paper: the eight of :data:`PRIMITIVES`).
        loss_weights: initial λ, ``num_scales + 2`` positive values.
        feature_ops: fixed feature-cell operations per scale, or ``None`` to search them.
        deformation_ops: fixed deformation-cell operations per scale, or ``None`` to search them.
        channels_last: channels-last weights and activations (see :class:`AutoRegBase`).
        channel_fraction: the fraction ``1/K`` of channels each mixed op's candidates see (PC-DARTS partial
            channel connections, :class:`~autoreg_monai.networks.blocks.MixedOp`): about K² fewer
            operations in the searched convolutions; 1 (default): the full mixture of the paper.

    Example::

        net = AutoRegSearchNet()
        ddf, (ddf_half, ddf_quarter) = net(moving, fixed)  # (1, 3, 32, 32, 32), (1, 3, 16, ...), (1, 3, 8, ...)
        weights = net.weight_parameters(); arch = net.arch_parameters(); lam = net.hyper_parameters()
    """

    _arch_param_names = ("alpha_feature", "alpha_deformation")
    _hyper_param_names = ("log_loss_weights",)

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        feature_channels: Sequence[int] = (16, 32),
        deformation_channels: Sequence[int] = (48, 32, 16),
        integration_steps: int = 7,
        op_names: Sequence[str] = PRIMITIVES,
        loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
        feature_ops: Sequence[Sequence[str]] | None = None,
        deformation_ops: Sequence[Sequence[str]] | None = None,
        channels_last: bool = False,
        channel_fraction: float = 1.0,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            feature_channels,
            deformation_channels,
            integration_steps,
            op_names,
            feature_ops,
            deformation_ops,
            channels_last,
            channel_fraction,
        )
        self.fixed_feature_ops = None if feature_ops is None else [list(ops) for ops in feature_ops]
        self.fixed_deformation_ops = None if deformation_ops is None else [list(ops) for ops in deformation_ops]
        rows, cols = self.num_scales * EDGES_PER_CELL, len(self.op_names)
        self.alpha_feature = nn.Parameter(torch.zeros(rows, cols)) if feature_ops is None else None
        self.alpha_deformation = nn.Parameter(torch.zeros(rows, cols)) if deformation_ops is None else None
        weights = torch.as_tensor(loss_weights, dtype=torch.float32)
        if weights.shape != (self.num_scales + 2,) or not bool(torch.all(weights > 0)):
            raise ValueError(f"loss_weights must be {self.num_scales + 2} positive numbers, got {tuple(loss_weights)}")
        self.log_loss_weights = nn.Parameter(torch.log(weights))

    def _alphas(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.alpha_feature, self.alpha_deformation

    @property
    def loss_weights(self) -> torch.Tensor:
        """λ, ``(num_scales + 2,)``, positive and differentiable with respect to :meth:`hyper_parameters`."""
        return torch.exp(self.log_loss_weights)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The searched architecture logits α (level 2 of the triple-level problem)."""
        return [p for name in self._arch_param_names if (p := getattr(self, name)) is not None]

    def hyper_parameters(self) -> list[nn.Parameter]:
        """The loss-weight parameters behind λ: ``log λ`` (level 3)."""
        return [self.log_loss_weights]

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network weights ω (level 1): every parameter that is neither α nor λ."""
        special = set(self._arch_param_names) | set(self._hyper_param_names)
        return [p for name, p in self.named_parameters() if name not in special]

    def genotype(self) -> Genotype:
        """The discrete architecture (argmax of α per edge, or the fixed ops) and the current λ."""
        feature = self.fixed_feature_ops
        if self.alpha_feature is not None:
            feature = derive_cell_ops(self.alpha_feature, self.op_names, "alpha_feature")
        deformation = self.fixed_deformation_ops
        if self.alpha_deformation is not None:
            deformation = derive_cell_ops(self.alpha_deformation, self.op_names, "alpha_deformation")
        # float32 λ printed to its own precision (3.2, not 3.200000047683716)
        weights = tuple(float(f"{w:.7g}") for w in self.loss_weights.detach().tolist())
        return Genotype(feature, deformation, weights)

    @property
    def config(self) -> dict[str, Any]:
        config = super().config
        config.update(
            op_names=list(self.op_names),
            channel_fraction=self.channel_fraction,
            loss_weights=self.loss_weights.detach().tolist(),
            feature_ops=self.fixed_feature_ops,
            deformation_ops=self.fixed_deformation_ops,
        )
        return config


class AutoRegNet(AutoRegBase):
    """A fixed AutoReg network built from a :class:`Genotype` (train-evaluation and inference).

    Args:
        genotype: the searched architecture (a :class:`Genotype` or its :meth:`Genotype.to_dict` form);
            its λ is returned by :meth:`genotype` for the training loss, not held as a parameter.
        spatial_dims: 2 or 3.
        in_channels: channels of each input image.
        feature_channels: feature width per scale, finest first; must have ``genotype.num_scales`` entries.
        deformation_channels: widths of the deformation-cell nodes.
        integration_steps: scaling-and-squaring steps.
        channels_last: channels-last weights and activations, faster on CPU (see :class:`AutoRegBase`); a
            run-time choice, not part of the model (same state dict, not in :attr:`config`).

    Example::

        net = AutoRegNet(Genotype.from_json("models/genotype.json"))
        ddf, _ = net(moving, fixed)
        warped = monai.networks.blocks.Warp()(moving, ddf)
    """

    def __init__(
        self,
        genotype: Genotype | Mapping[str, Any],
        spatial_dims: int = 3,
        in_channels: int = 1,
        feature_channels: Sequence[int] = (16, 32),
        deformation_channels: Sequence[int] = (48, 32, 16),
        integration_steps: int = 7,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(genotype, Genotype):
            genotype = Genotype.from_dict(genotype)
        if genotype.num_scales != len(feature_channels):
            raise ValueError(
                f"genotype has {genotype.num_scales} scales but feature_channels {tuple(feature_channels)} has "
                f"{len(feature_channels)}"
            )
        super().__init__(
            spatial_dims,
            in_channels,
            feature_channels,
            deformation_channels,
            integration_steps,
            PRIMITIVES,
            genotype.feature,
            genotype.deformation,
            channels_last,
        )
        self._genotype = genotype

    def genotype(self) -> Genotype:
        """The genotype this network was built from (operations and λ)."""
        return self._genotype

    @property
    def config(self) -> dict[str, Any]:
        config = super().config
        config["genotype"] = self._genotype.to_dict()
        return config

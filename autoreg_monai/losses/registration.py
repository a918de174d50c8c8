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
"""The λ-weighted registration objective ``L_reg`` of AutoReg (paper eq. 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiffusionLoss
from torch.nn.modules.loss import _Loss

from autoreg_monai.losses.lncc import BoxLNCCLoss
from autoreg_monai.losses.mind import MINDSSCLoss
from autoreg_monai.losses.pyramid import PyramidSimilarityLoss

__all__ = ["LNCC_KERNEL_SIZES", "RegistrationLoss", "build_similarities"]

LNCC_KERNEL_SIZES: tuple[int, ...] = (9, 7, 5)
"""LNCC window per pyramid level (full, 1/2, 1/4 resolution), as in the authors' code; 5 below that."""


def build_similarities(name: str, spatial_dims: int = 3, num_levels: int = 3) -> list[_Loss]:
    """The default similarity of each pyramid level (full resolution first).

    Args:
        name: ``"lncc"`` (same contrast; MONAI's LNCC with windows 9, 7, 5, summed by :class:`BoxLNCCLoss`) or
            ``"mind"`` (cross contrast; MIND-SSC with radius 2 and dilation 2 at every level).
        spatial_dims: 2 or 3.
        num_levels: number of levels.
    """
    if name == "lncc":
        sizes = [LNCC_KERNEL_SIZES[min(k, len(LNCC_KERNEL_SIZES) - 1)] for k in range(num_levels)]
        return [BoxLNCCLoss(spatial_dims=spatial_dims, kernel_size=k) for k in sizes]
    if name == "mind":
        return [MINDSSCLoss(spatial_dims=spatial_dims) for _ in range(num_levels)]
    raise ValueError(f"unknown similarity {name!r}; use 'lncc' (same contrast) or 'mind' (cross contrast)")


class RegistrationLoss(_Loss):
    """``L_reg = λ1 sim(f, m o φ) + λ2 reg(φ) + λ3 sim(f_1/2, m_1/2 o φ_1/2) + λ4 sim(f_1/4, m_1/4 o φ_1/4) + ...``

    The terms are computed by :meth:`terms` and combined with weights λ given at call time as a tensor,
    so gradients reach λ (the upper level of the AutoReg search). ``reg`` is applied to the
    full-resolution displacement, as in the authors' code; the default is MONAI's ``DiffusionLoss``
    divided by the number of spatial dimensions: the mean over axes of the squared gradients, the scale of
    the authors' ``gradient_loss`` that the paper's loss weights (10, 15, 3.2, 0.8) were set for (MONAI's
    loss sums over axes, which would make λ2 three times stronger in 3-D).

    Args:
        similarity: ``"lncc"``, ``"mind"``, or one similarity loss per level (full resolution first).
        regularization: the smoothness term on the displacement; default ``DiffusionLoss()`` / ``spatial_dims``.
        spatial_dims: 2 or 3 (for named similarities).
        num_scales: number of pyramid fields besides the full-resolution one (2 in the paper).

    Example::

        loss_fn = RegistrationLoss("lncc")
        ddf, pyramid = net(moving, fixed)
        loss = loss_fn(moving, fixed, ddf, pyramid, net.loss_weights)  # scalar
    """

    def __init__(
        self,
        similarity: str | Sequence[_Loss] = "lncc",
        regularization: _Loss | None = None,
        spatial_dims: int = 3,
        num_scales: int = 2,
    ) -> None:
        super().__init__()
        similarities = (
            build_similarities(similarity, spatial_dims, num_scales + 1) if isinstance(similarity, str) else similarity
        )
        if len(similarities) != num_scales + 1:
            raise ValueError(
                f"need {num_scales + 1} similarities (full resolution + {num_scales} scales), got {len(similarities)}"
            )
        self.num_scales = num_scales
        self.similarity = PyramidSimilarityLoss(similarities)
        self.regularization = DiffusionLoss() if regularization is None else regularization
        self.regularization_scale = 1.0 / spatial_dims if regularization is None else 1.0

    @property
    def num_terms(self) -> int:
        """Number of terms, i.e. of weights λ (``num_scales + 2``)."""
        return self.num_scales + 2

    def check_weights(self, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """λ as a detached float32 ``(num_terms,)`` tensor.

        Raises:
            ValueError: ``weights`` does not hold one value per term.
        """
        checked = torch.as_tensor(weights, dtype=torch.float32).detach()
        if checked.shape != (self.num_terms,):
            raise ValueError(
                f"the registration loss has {self.num_terms} terms but {tuple(checked.shape)} loss weights were "
                "given: the genotype's loss_weights must come from a search with the same number of scales"
            )
        return checked

    def terms(
        self, moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor, pyramid: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """The unweighted terms ``(sim_full, reg, sim_1/2, sim_1/4, ...)``, shape ``(num_terms,)``.

        Args:
            moving: ``(B, C, *S)``.
            fixed: ``(B, C, *S)``.
            ddf: ``(B, N, *S)`` full-resolution displacement.
            pyramid: ``num_scales`` displacements at 1/2, 1/4, ... resolution, each in voxels of its grid.
        """
        if len(pyramid) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} pyramid fields, got {len(pyramid)}")
        sims = self.similarity(moving, fixed, [ddf, *pyramid])
        reg = (self.regularization(ddf) * self.regularization_scale).reshape(1).to(sims)
        return torch.cat([sims[:1], reg, sims[1:]])

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        ddf: torch.Tensor,
        pyramid: Sequence[torch.Tensor],
        weights: torch.Tensor | Sequence[float],
    ) -> torch.Tensor:
        """``sum_i weights_i * terms_i``; ``weights`` is λ, ``(num_terms,)``."""
        terms = self.terms(moving, fixed, ddf, pyramid)
        weights = torch.as_tensor(weights, dtype=terms.dtype, device=terms.device)
        if weights.shape != terms.shape:
            raise ValueError(f"need {self.num_terms} loss weights, got shape {tuple(weights.shape)}")
        return (weights * terms).sum()

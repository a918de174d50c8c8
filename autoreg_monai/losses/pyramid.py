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
"""Image similarity across a resolution pyramid (the multi-scale terms of AutoReg's eq. 4).

MONAI's ``MultiScaleLoss`` smooths at several Gaussian scales on one grid; here each term resamples the
images to the grid of a displacement field predicted at that resolution, warps the moving image with it
and compares it with the fixed image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Warp
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

from autoreg_monai.networks.blocks.diffeo import resize_image

__all__ = ["PyramidSimilarityLoss"]


class PyramidSimilarityLoss(_Loss):
    """``sim_k(fixed_k, moving_k o phi_k)`` for each field ``phi_k`` of a pyramid.

    ``moving_k`` and ``fixed_k`` are the images linearly resampled to the grid of ``phi_k`` (corners
    aligned, as the fields are); intensity scaling does not matter to LNCC or MIND.

    Args:
        similarities: one similarity loss per level, each called as ``sim(warped, fixed)`` and returning a
            scalar (e.g. MONAI ``LocalNormalizedCrossCorrelationLoss`` with a window shrinking with the
            resolution, or :class:`~autoreg_monai.losses.MINDSSCLoss`).
        reduction: ``"none"``: the ``(num_levels,)`` vector of terms; ``"sum"`` or ``"mean"`` over levels.

    Example::

        sim = PyramidSimilarityLoss([LocalNormalizedCrossCorrelationLoss(3, k) for k in (9, 7, 5)])
        terms = sim(moving, fixed, [ddf, ddf_half, ddf_quarter])  # (3,)
    """

    def __init__(self, similarities: Sequence[_Loss], reduction: LossReduction | str = LossReduction.NONE) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if len(similarities) == 0:
            raise ValueError("PyramidSimilarityLoss needs at least one similarity")
        self.similarities = nn.ModuleList(similarities)
        self.warps = nn.ModuleList(Warp(mode="bilinear", padding_mode="border") for _ in similarities)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, ddfs: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            moving: ``(B, C, *S)``.
            fixed: ``(B, C, *S)``.
            ddfs: one displacement ``(B, N, *S_k)`` per level, in voxels of its own grid ``S_k``.
        """
        if len(ddfs) != len(self.similarities):
            raise ValueError(f"expected {len(self.similarities)} displacement fields (one per level), got {len(ddfs)}")
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving and fixed must have the same shape, got {tuple(moving.shape)} and {tuple(fixed.shape)}"
            )
        terms = []
        for similarity, warp, ddf in zip(self.similarities, self.warps, ddfs):
            size = ddf.shape[2:]
            terms.append(similarity(warp(resize_image(moving, size), ddf), resize_image(fixed, size)))
        values = torch.stack(terms)
        if self.reduction == LossReduction.SUM.value:
            return values.sum()
        if self.reduction == LossReduction.MEAN.value:
            return values.mean()
        return values

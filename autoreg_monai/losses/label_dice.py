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
"""Dice loss of warped label maps: AutoReg's upper-level objective ``L_seg`` for λ (paper eq. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss
from monai.networks.blocks import Warp
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["WarpedLabelDiceLoss", "one_hot_labels"]


def one_hot_labels(label: torch.Tensor, labels: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One channel per listed label value: ``(B, 1, *S)`` integer map to ``(B, len(labels), *S)`` of 0/1.

    Values not listed (background, structures left out) are zero in every channel.
    """
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"expected a label map of shape (B, 1, *S), got {tuple(label.shape)}")
    if len(labels) == 0:
        raise ValueError("need at least one label value")
    values = torch.as_tensor(list(labels), device=label.device, dtype=label.dtype)
    return (label == values.view(1, -1, *([1] * (label.ndim - 2)))).to(dtype)


class WarpedLabelDiceLoss(_Loss):
    """``1 - Dice(one_hot(moving_label) o φ, one_hot(fixed_label))``, averaged over the listed structures.

    The one-hot moving labels are warped with linear interpolation, so the loss is differentiable with
    respect to the displacement (nearest-neighbour warping has no gradient); MONAI's ``DiceLoss``
    compares them with the fixed one-hot labels.

    Args:
        labels: the label values (structures) to score, e.g. ``[2, 3, 4, 41, 42, 43]`` for FreeSurfer aseg;
            other values, background included, are ignored.
        smooth_nr: numerator smoothing of the Dice (MONAI's ``DiceLoss``).
        smooth_dr: denominator smoothing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, len(labels))``).

    Example::

        loss = WarpedLabelDiceLoss(labels=range(1, 36))
        value = loss(moving_label, fixed_label, ddf)  # 0 when the warped labels match exactly
    """

    def __init__(
        self,
        labels: Sequence[int],
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.labels = [int(v) for v in labels]
        if not self.labels:
            raise ValueError("WarpedLabelDiceLoss needs at least one label value")
        self.warp = Warp(mode="bilinear", padding_mode="border")
        self.dice = DiceLoss(include_background=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction="none")

    def forward(self, moving_label: torch.Tensor, fixed_label: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """
        Args:
            moving_label: ``(B, 1, *S)`` integer label map of the moving image.
            fixed_label: ``(B, 1, *S)`` integer label map of the fixed image.
            ddf: ``(B, N, *S)`` displacement (voxels) warping the moving image onto the fixed one.
        """
        if moving_label.shape != fixed_label.shape:
            raise ValueError(
                f"moving and fixed label maps must have the same shape, got {tuple(moving_label.shape)} "
                f"and {tuple(fixed_label.shape)}"
            )
        warped = self.warp(one_hot_labels(moving_label, self.labels, ddf.dtype), ddf)
        per_label = self.dice(warped, one_hot_labels(fixed_label, self.labels, ddf.dtype)).flatten(1)  # (B, L)
        if self.reduction == LossReduction.MEAN.value:
            return per_label.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_label.sum()
        return per_label

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
"""MIND-SSC: the modality independent neighbourhood descriptor with self-similarity context.

Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal deformable
registration", MedIA 2012, and "Towards realtime multimodal fusion for image-guided interventions using
self-similarity context", MICCAI 2013. MONAI has no MIND loss; this is the AutoReg similarity for
cross-contrast scenarios (T2 moving to T1 fixed).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["MINDSSCLoss", "mind_ssc"]

_AVG_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def _ssc_offset_pairs(spatial_dims: int, dilation: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of six-neighbourhood (3-D) or four-neighbourhood (2-D) points that are ``sqrt(2) * dilation`` apart."""
    neighbours = []
    for axis in range(spatial_dims):
        for sign in (-1, 1):
            offset = [0] * spatial_dims
            offset[axis] = sign * dilation
            neighbours.append(tuple(offset))
    return [
        (p, q)
        for p, q in itertools.combinations(neighbours, 2)
        if sum((a - b) ** 2 for a, b in zip(p, q)) == 2 * dilation**2
    ]


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """MIND-SSC descriptor of every voxel.

    For each pair ``(p, q)`` of neighbours of the self-similarity context (12 pairs in 3-D, 4 in 2-D),
    the patch distance ``D_pq(x)`` is the mean of ``(I(y + p) - I(y + q))**2`` over the ``(2 * radius + 1)``
    box around ``x``; then ``MIND = exp(-(D - min_pq D) / V)`` with ``V`` the mean of ``D - min D`` over the
    pairs, clamped to ``[0.001, 1000]`` times its image mean. Images are extended by edge replication.
    The descriptor is invariant to ``a * I + b`` for any ``a != 0``.

    Args:
        image: ``(B, C, *S)`` with 2 or 3 spatial dims.
        radius: half-width of the patch over which squared differences are averaged.
        dilation: distance of the neighbours from the centre voxel.
        eps: floor of ``V`` so that constant images give a finite descriptor.

    Returns:
        ``(B, C * K, *S)`` with ``K`` = 12 (3-D) or 4 (2-D) channels per input channel, values in ``(0, 1]``.
    """
    spatial_dims = image.ndim - 2
    if spatial_dims not in _AVG_POOL:
        raise ValueError(f"MIND-SSC needs a (B, C, H, W[, D]) image, got shape {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"need radius >= 0 and dilation >= 1, got radius={radius}, dilation={dilation}")
    size = image.shape[2:]
    padded = F.pad(image, [dilation] * (2 * spatial_dims), mode="replicate")

    def shifted(offset: tuple[int, ...]) -> torch.Tensor:
        # every spatial axis of ``padded`` has ``dilation`` extra voxels on both sides
        index = [slice(None), slice(None)] + [slice(dilation + o, dilation + o + n) for o, n in zip(offset, size)]
        return padded[tuple(index)]

    pairs = _ssc_offset_pairs(spatial_dims, dilation)
    squared = torch.stack([(shifted(p) - shifted(q)) ** 2 for p, q in pairs], dim=2)  # (B, C, K, *S)
    batch, channels, num_pairs = squared.shape[:3]
    squared = squared.reshape(batch, channels * num_pairs, *size)
    kernel = 2 * radius + 1
    # mean over the patch (edges replicated), one axis at a time: kernel taps per axis instead of kernel**dims
    ssd = F.pad(squared, [radius] * (2 * spatial_dims), mode="replicate")
    for axis in range(spatial_dims):
        window = [1] * spatial_dims
        window[axis] = kernel
        ssd = _AVG_POOL[spatial_dims](ssd, tuple(window), stride=1)
    ssd = ssd.reshape(batch, channels, num_pairs, *size)

    mind = ssd - ssd.min(dim=2, keepdim=True).values
    variance = mind.mean(dim=2, keepdim=True)
    reduce_dims = tuple(range(2, variance.ndim))
    level = variance.detach().mean(dim=reduce_dims, keepdim=True)
    variance = torch.minimum(torch.maximum(variance, 0.001 * level), 1000.0 * level).clamp_min(eps)
    return torch.exp(-mind / variance).reshape(batch, channels * num_pairs, *size)


class MINDSSCLoss(_Loss):
    """Mean squared difference of the MIND-SSC descriptors of two images.

    Zero for images related by an affine intensity change, small for monotone remappings, large for
    misaligned structures, hence suited to registering images of different contrasts.

    Args:
        spatial_dims: 2 or 3.
        radius: patch half-width (2 in Heinrich's and the AutoReg authors' code).
        dilation: neighbour distance (2 likewise).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the ``(B, C * K, *S)`` squared differences).

    Example::

        loss = MINDSSCLoss(spatial_dims=3)
        value = loss(warped_t2, fixed_t1)  # scalar
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        radius: int = 2,
        dilation: int = 2,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if spatial_dims not in _AVG_POOL:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.radius = radius
        self.dilation = dilation

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: ``(B, C, *S)``, e.g. the warped moving image.
            target: ``(B, C, *S)``, e.g. the fixed image.
        """
        if pred.shape != target.shape or pred.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"pred and target must both be (B, C, *S) with {self.spatial_dims} spatial dims, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        diff = (mind_ssc(pred, self.radius, self.dilation) - mind_ssc(target, self.radius, self.dilation)) ** 2
        if self.reduction == LossReduction.MEAN.value:
            return diff.mean()
        if self.reduction == LossReduction.SUM.value:
            return diff.sum()
        return diff

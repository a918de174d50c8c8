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
"""Registration quality measures: label overlap, intensity similarity and deformation regularity.

Label maps are ``(B, 1, *S)`` integer tensors; displacement fields are ``(B, N, *S)`` in voxels
(MONAI's convention, see :mod:`autoreg_monai.networks.blocks.diffeo`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses.deform import spatial_gradient
from monai.metrics import compute_hausdorff_distance
from monai.networks.blocks import Warp

from autoreg_monai.losses.label_dice import one_hot_labels

__all__ = [
    "dice_per_label",
    "folding_percentage",
    "hd95_per_label",
    "jacobian_determinant",
    "ncc",
    "std_log_jacobian",
    "warp_labels",
]


def warp_labels(label: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map by nearest-neighbour interpolation (values are never mixed).

    Args:
        label: ``(B, 1, *S)`` integer label map.
        ddf: ``(B, N, *S)`` displacement in voxels.

    Returns:
        ``(B, 1, *S)`` label map of the same dtype.
    """
    warped = Warp(mode="nearest", padding_mode="border")(label.to(ddf.dtype), ddf)
    return warped.round().to(label.dtype)


def _label_counts(label: torch.Tensor, sorted_labels: torch.Tensor) -> torch.Tensor:
    """Number of voxels of each value of ``sorted_labels`` in the flat tensor ``label``, ``(L,)``."""
    index = torch.searchsorted(sorted_labels, label).clamp_max(len(sorted_labels) - 1)
    listed = sorted_labels[index] == label
    return torch.bincount(index[listed], minlength=len(sorted_labels))


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """Dice overlap ``2|P ∩ T| / (|P| + |T|)`` of each listed structure.

    Computed from voxel counts in one pass over the volume, whatever the number of labels (MONAI's
    ``compute_dice`` takes one-hot tensors, which costs a full volume per label: minutes for the 100+
    structures of a brain parcellation at 1 mm); the values equal ``compute_dice`` on one-hot inputs
    with ``ignore_empty=True``.

    Args:
        pred: ``(B, 1, *S)`` label map, e.g. the nearest-neighbour warped moving labels.
        target: ``(B, 1, *S)`` label map, e.g. the fixed labels.
        labels: label values to score.

    Returns:
        ``(B, len(labels))`` float32; ``nan`` where the structure is absent from ``target``.
    """
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[1] != 1:
        raise ValueError(
            f"label maps must both be (B, 1, *S) with the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if len(labels) == 0:
        raise ValueError("need at least one label value")
    values = torch.as_tensor(list(labels), dtype=torch.int64, device=pred.device)
    sorted_values, order = torch.sort(values)
    scores = []
    for p, t in zip(pred.flatten(1).long(), target.flatten(1).long()):
        overlap = _label_counts(p[p == t], sorted_values)
        total = _label_counts(p, sorted_values) + _label_counts(t, sorted_values)
        dice = 2.0 * overlap.double() / total.double()
        dice[_label_counts(t, sorted_values) == 0] = float("nan")
        scores.append(dice[torch.argsort(order)].float())
    return torch.stack(scores)


def hd95_per_label(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int], spacing: Sequence[float] | None = None
) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance of each listed structure (MONAI's implementation).

    Args:
        pred: ``(B, 1, *S)`` label map.
        target: ``(B, 1, *S)`` label map.
        labels: label values to score.
        spacing: voxel size per axis (mm); voxels when ``None``.

    Returns:
        ``(B, len(labels))`` in the units of ``spacing``; ``nan``/``inf`` where a structure is missing.
    """
    if pred.shape != target.shape:
        raise ValueError(f"label maps must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    distances = [
        compute_hausdorff_distance(
            one_hot_labels(pred, [value]),
            one_hot_labels(target, [value]),
            include_background=True,
            percentile=95,
            spacing=None if spacing is None else list(spacing),
        )
        for value in labels
    ]
    return torch.cat(distances, dim=1)


def ncc(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Global normalised cross-correlation (Pearson correlation) per batch item.

    Args:
        image: ``(B, C, *S)``.
        reference: ``(B, C, *S)``.

    Returns:
        ``(B,)`` in ``[-1, 1]``; 1 for images related by ``a * x + b`` with ``a > 0``.
    """
    if image.shape != reference.shape:
        raise ValueError(f"images must have the same shape, got {tuple(image.shape)} and {tuple(reference.shape)}")
    a = image.flatten(1).double()
    b = reference.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    corr = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return corr.to(image.dtype)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)`` at every interior voxel.

    Derivatives are central differences (MONAI's ``spatial_gradient``), so the outermost voxel layer
    is cropped.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels, N = 2 or 3.

    Returns:
        ``(B, *(S - 2))``; values <= 0 mark folding.
    """
    spatial_dims = ddf.ndim - 2
    if spatial_dims not in (2, 3) or ddf.shape[1] != spatial_dims:
        raise ValueError(f"expected a displacement field (B, N, *S) with N = 2 or 3, got {tuple(ddf.shape)}")
    if min(ddf.shape[2:]) < 3:
        raise ValueError(f"every spatial size must be >= 3 for central differences, got {tuple(ddf.shape[2:])}")
    # rows[i][j] = d(x + u)_i / d x_j, each (B, *S'); the determinant by cofactor expansion (a batched LU
    # factorisation, torch.linalg.det, is several times slower on millions of 3 x 3 matrices)
    gradients = [spatial_gradient(ddf, dim + 2) for dim in range(spatial_dims)]  # each (B, N, *S')
    rows = [[gradients[j][:, i] + (1.0 if i == j else 0.0) for j in range(spatial_dims)] for i in range(spatial_dims)]
    if spatial_dims == 2:
        return rows[0][0] * rows[1][1] - rows[0][1] * rows[1][0]
    (a, b, c), (d, e, f), (g, h, i) = rows
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def folding_percentage(ddf: torch.Tensor) -> torch.Tensor:
    """Percentage of interior voxels with a non-positive Jacobian determinant, ``(B,)``."""
    det = jacobian_determinant(ddf)
    return (det <= 0).flatten(1).to(ddf.dtype).mean(dim=1) * 100.0


def std_log_jacobian(ddf: torch.Tensor, clamp: float = 1e-9) -> torch.Tensor:
    """Standard deviation of ``log(det J)`` over interior voxels, ``(B,)``; determinants are clamped to
    ``[clamp, 1 / clamp]`` first (the Learn2Reg convention), so folded voxels count as very compressed."""
    det = jacobian_determinant(ddf).clamp(clamp, 1.0 / clamp)
    return det.log().flatten(1).std(dim=1)

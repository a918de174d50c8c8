# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Resampling between voxel grids through world coordinates, for images and displacement fields.

Affines are MONAI's (RAS+ world millimetres, ``world = A @ [i, j, k, 1]``), as ``LoadImage`` returns them
for NIfTI, NRRD, MHA and DICOM alike. Displacements come in two forms: in voxels of a grid (what the
networks and MONAI's ``Warp`` use) and in world millimetres (what is independent of the grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LPS_FROM_RAS",
    "grid_world_points",
    "sample_at_world",
    "voxel_to_world_displacement",
    "world_to_voxel_displacement",
]

LPS_FROM_RAS = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
"""Multiply RAS+ vector components by this to get ITK's LPS+ components (and back)."""


def _affine(affine: torch.Tensor) -> torch.Tensor:
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a (4, 4) affine, got {tuple(affine.shape)}")
    return affine


def grid_world_points(affine: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """World coordinates of every voxel of a grid, ``(3, *spatial_shape)`` float64."""
    affine = _affine(affine)
    axes = [torch.arange(int(n), dtype=torch.float64) for n in spatial_shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    points = affine[:3, :3] @ index + affine[:3, 3:]
    return points.reshape(3, *spatial_shape)


def sample_at_world(
    image: torch.Tensor,
    affine: torch.Tensor,
    points: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Values of ``image`` at world positions (trilinear or nearest interpolation).

    Args:
        image: ``(C, X, Y, Z)`` on the grid of ``affine``.
        affine: ``(4, 4)`` voxel-to-world matrix of ``image``.
        points: ``(3, *T)`` world coordinates to sample.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: ``"zeros"`` (outside the image is 0) or ``"border"``.

    Returns:
        ``(C, *T)`` in the dtype of ``image`` (nearest keeps integer values exact).
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) image, got {tuple(image.shape)}")
    affine = _affine(affine).to(points.device)
    target_shape = points.shape[1:]
    # world -> voxel index -> grid_sample's [-1, 1] (align_corners=True), composed into one affine map whose
    # rows are reversed because grid_sample takes (z, y, x): one matrix product per point, no temporaries
    inverse = torch.linalg.inv(affine)
    sizes = torch.tensor(image.shape[1:], dtype=torch.float64, device=affine.device)
    scale = 2.0 / (sizes - 1).clamp_min(1.0)
    matrix = (scale[:, None] * inverse[:3, :3]).flip(0)
    offset = (scale * inverse[:3, 3] - 1.0).flip(0)
    grid = torch.addmm(offset, points.reshape(3, -1).T.to(torch.float64), matrix.T).to(torch.float32)
    values = image[None].to(torch.float32)
    sampled = F.grid_sample(
        values, grid.view(1, 1, 1, -1, 3).to(values.device), mode=mode, padding_mode=padding_mode, align_corners=True
    )
    return sampled.reshape(image.shape[0], *target_shape).to(image.dtype)


def voxel_to_world_displacement(ddf: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``(3, *S)`` displacement in voxels of a grid to world millimetres (same axes order as the affine's world)."""
    linear = _affine(affine)[:3, :3].to(ddf.device)
    return (linear @ ddf.reshape(3, -1).to(torch.float64)).reshape(ddf.shape).to(ddf.dtype)


def world_to_voxel_displacement(ddf: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``(3, *S)`` displacement in world millimetres to voxels of the grid of ``affine``."""
    linear = _affine(affine)[:3, :3].to(ddf.device)
    return torch.linalg.solve(linear, ddf.reshape(3, -1).to(torch.float64)).reshape(ddf.shape).to(ddf.dtype)

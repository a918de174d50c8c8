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
"""Checks of the scans a user gives, before any work starts, with messages that name the file.

Scans are read as the workflows read them (MONAI ``LoadImage``: NIfTI, NRRD, MHA, DICOM series folders),
so what passes here loads there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

__all__ = ["check_label_map", "check_scan", "field_of_view_warning"]


def check_scan(path: str | Path, role: str = "image") -> MetaTensor:
    """Read a 3-D scan (file or DICOM series folder) and check it; returns it as ``(X, Y, Z)`` with its affine.

    Raises:
        ValueError: naming the file, when it is missing or unreadable, not 3-D (a trailing axis of length 1
            is accepted), empty, constant or holds NaN/infinite voxels.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: {role} not found")
    try:
        image = LoadImage(image_only=True)(str(path))
    except Exception as error:  # MONAI's readers raise many types for an unreadable file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: cannot read the {role} as an image ({reason[:200]})") from error
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(
            f"{path}: the {role} is {len(shape)}-D (shape {tuple(image.shape)}); bundles register 3-D volumes"
        )
    if min(shape) < 4:
        raise ValueError(f"{path}: the {role} is too small to register (shape {shape})")
    image = image.reshape(shape)
    data = image.as_tensor()
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{path}: the {role} has NaN or infinite voxels")
    if float(data.max()) <= float(data.min()):
        raise ValueError(f"{path}: the {role} is constant (every voxel is {float(data.min())})")
    return image


def check_label_map(path: str | Path, image: MetaTensor, image_path: str | Path) -> MetaTensor:
    """Read a label map and check it belongs to ``image``: same shape and affine, integer values, not empty.

    Raises:
        ValueError: naming both files when they do not match, or the label file when it is not a label map.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: label map not found")
    try:
        label = LoadImage(image_only=True)(str(path))
    except Exception as error:
        raise ValueError(f"{path}: cannot read the label map ({type(error).__name__})") from error
    shape = tuple(label.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if shape != tuple(image.shape):
        raise ValueError(
            f"{path}: the label map (shape {shape}) does not match its image {Path(image_path).name} "
            f"(shape {tuple(image.shape)})"
        )
    if not np.allclose(np.asarray(label.affine), np.asarray(image.affine), atol=1e-3):
        raise ValueError(
            f"{path}: the label map is not on the grid of its image {Path(image_path).name} (different affine)"
        )
    data = label.as_tensor()
    if not bool(torch.isfinite(data).all()) or not bool(torch.equal(data, data.round())):
        raise ValueError(f"{path}: a label map must hold integer values")
    if not bool((data != 0).any()):
        raise ValueError(f"{path}: the label map is empty (background only)")
    return label.reshape(shape)


def _extent(image: MetaTensor) -> tuple[np.ndarray, np.ndarray]:
    affine = np.asarray(image.affine, dtype=np.float64)
    corners = np.array([[i, j, k, 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners[:, :3] *= np.asarray(image.shape[-3:], dtype=np.float64) - 1
    world = (affine @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


def field_of_view_warning(fixed: MetaTensor, moving: MetaTensor, prealign: str) -> str | None:
    """A warning when the two scans' fields of view differ a lot (sizes twice apart, or barely overlapping)."""
    (f_low, f_high), (m_low, m_high) = _extent(fixed), _extent(moving)
    f_size, m_size = np.maximum(f_high - f_low, 1e-3), np.maximum(m_high - m_low, 1e-3)
    ratio = float(np.max(np.maximum(f_size / m_size, m_size / f_size)))
    overlap = np.clip(np.minimum(f_high, m_high) - np.maximum(f_low, m_low), 0.0, None)
    shared = float(np.prod(overlap) / min(np.prod(f_size), np.prod(m_size)))
    if ratio < 2.0 and shared > 0.25:
        return None
    hint = (
        "the affine pre-alignment has to bridge that"
        if prealign != "none"
        else "with --prealign none the scans must already be aligned: use --prealign affine"
    )
    return (
        f"the fixed and moving fields of view differ a lot (sizes up to {ratio:.1f}x apart, {shared:.0%} of the "
        f"smaller one shared); the network assumes affinely aligned scans of the same anatomy, and {hint}"
    )

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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from tqdm import tqdm

__all__ = ["check_datalist", "check_label_map", "check_scan", "dicom_slice_gap", "field_of_view_warning"]


def check_scan(path: str | Path, role: str = "image") -> MetaTensor:
    """Read a 3-D scan (file or DICOM series folder) and check it; returns it as ``(X, Y, Z)`` with its affine.

    Raises:
        ValueError: naming the file, when it is missing or unreadable, not 3-D (a trailing axis of length 1
            is accepted), empty, constant or holds NaN/infinite voxels.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: {role} not found")
    if path.is_dir():
        gap = dicom_slice_gap(path)
        if gap:
            raise ValueError(f"{path}: the {role}'s DICOM series {gap}")
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


def dicom_slice_gap(folder: str | Path, tolerance: float = 0.05) -> str | None:
    """Why a DICOM series folder does not sample one regular grid, or ``None`` when it does.

    The slices' positions along the series' normal (``ImagePositionPatient`` projected on the cross product
    of ``ImageOrientationPatient``) must be evenly spaced: a slice missing in the middle would otherwise be
    stacked as if it were there, every slice after it placed off by one spacing.

    Args:
        folder: the series folder (files that are not DICOM images are skipped).
        tolerance: largest relative difference of a spacing from the median spacing.

    Returns:
        e.g. ``"has a gap of 9.89 mm between slices 17 and 18 (the others 4.945 mm apart): a slice is missing"``.
    """
    import pydicom

    positions = []
    for file in sorted(Path(folder).iterdir()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
            orientation = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
            position = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        except Exception:  # not a DICOM image: MONAI's reader skips it too
            continue
        positions.append(float(np.dot(np.cross(orientation[:3], orientation[3:]), position)))
    if len(positions) < 3:
        return None
    spacings = np.diff(np.sort(positions))
    usual = float(np.median(spacings))
    if usual <= 0:
        return "has several slices at the same position: it mixes series or echoes; export one series per folder"
    odd = np.flatnonzero(np.abs(spacings - usual) > max(tolerance * usual, 0.01))
    if odd.size == 0:
        return None
    worst = int(odd[np.argmax(np.abs(spacings[odd] - usual))])
    cause = "a slice is missing" if spacings[worst] > usual else "slices overlap"
    return (
        f"has a gap of {spacings[worst]:.3f} mm between slices {worst + 1} and {worst + 2} (the others "
        f"{usual:.3f} mm apart): {cause}; export the complete series"
    )


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


def _declared_labels(datalist: Mapping[str, Any], source: Path) -> set[int] | None:
    """The label values a datalist declares in its optional ``"labels"`` object (MSD style), or ``None``."""
    declared = datalist.get("labels")
    if declared is None:
        return None
    try:
        return {int(value) for value in declared}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: 'labels' must map label values to names, e.g. {{'1': 'grey matter'}}") from error


def check_datalist(datalist: Mapping[str, Any], source: str | Path, progress: bool = True) -> None:
    """Check every entry and file of a datalist (paths already absolute) before any work starts.

    Each subject needs an image entry (a key starting with ``image``) and appears in one place only; every
    image must pass :func:`check_scan` and every label map :func:`check_label_map` against its image, hold
    no negative values and, when the datalist declares ``"labels"``, only declared ones.

    Args:
        datalist: the datalist, e.g. from :func:`autoreg_monai.data.load_datalist` without its file check.
        source: the datalist file, named in the messages.
        progress: show a progress bar on a terminal.

    Raises:
        ValueError: naming the file (and entry) and the problem.
    """
    source = Path(source)
    declared = _declared_labels(datalist, source)
    entries = [(f"{split}[{i}]", item) for split in ("training", "validation", "test") for i, item in
               enumerate(datalist.get(split) or [])]  # fmt: skip
    if datalist.get("atlas"):
        entries.append(("atlas", datalist["atlas"]))
    seen: dict[str, str] = {}
    for where, item in entries:
        if not any(k.startswith("image") for k in item):
            raise ValueError(f"{source}: {where} has no image entry (its keys: {', '.join(item) or 'none'})")
        for key, path in item.items():
            first = seen.setdefault(str(path), f"{where}.{key}")
            if first.split(".")[0] != where:  # one file under two keys of one subject (image = image_t1) is fine
                raise ValueError(
                    f"{source}: {path} is listed twice ({first} and {where}.{key}); a subject belongs to one split only"
                )
    files = [(where, k, path, item) for where, item in entries for k, path in item.items() if k.startswith("image")]
    bar = tqdm(files, desc="checking the datalist's scans", unit="scan", disable=None if progress else True)
    for where, key, path, item in bar:
        image = check_scan(path, f"image of {where}")
        label_key = "label" + key[len("image") :]
        if label_key not in item:
            continue
        label = check_label_map(item[label_key], image, path)
        values = {int(v) for v in torch.unique(label.as_tensor()).tolist()}
        if min(values) < 0:
            raise ValueError(f"{item[label_key]}: the label map of {where} holds negative values ({min(values)})")
        if declared is not None and values - declared - {0}:
            unknown = sorted(values - declared - {0})
            raise ValueError(
                f"{item[label_key]}: the label map of {where} holds label(s) {unknown[:10]} that {source.name} "
                f"does not declare in 'labels' ({sorted(declared)[:10]})"
            )

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
"""MONAI dictionary transforms that bring a (moving, fixed) pair onto the network's working grid.

Every workflow of a bundle preprocesses a pair the same way: :class:`PreAlignd` resamples the moving
scan onto the fixed scan's grid through world coordinates (optionally after a rigid or affine
registration), MONAI's ``Orientationd``, ``ScaleIntensityRangePercentilesd`` and ``CropForegroundd``
follow, and :class:`FitToSized` scales the cropped pair isotropically (in millimetres) into the working
grid. Both transforms keep the affine of their outputs right (MetaTensors), which is what lets inference
map the predicted field back onto the fixed scan's own grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, MapTransform, Resize, SpatialPad
from monai.utils import ensure_tuple_rep

from autoreg_monai.prealign import PREALIGN_MODES, prealign_matrix
from autoreg_monai.spatial import grid_world_points, sample_at_world

__all__ = ["FitToSized", "PreAlignd"]


def _meta_tensor(data: Any, key: Hashable) -> MetaTensor:
    if not isinstance(data, MetaTensor):
        raise ValueError(f"{key!r} must be a MetaTensor with its affine (load it with LoadImaged, image_only=True)")
    if data.ndim != 4:
        shape = tuple(data.shape)
        raise ValueError(f"{_name(data, key)}: expected a channel-first 3-D image (C, X, Y, Z), got shape {shape}")
    return data


def _name(data: Any, key: Hashable) -> str:
    meta = getattr(data, "meta", {}) or {}
    return Path(str(meta.get("filename_or_obj", key))).name or str(key)


class PreAlignd(MapTransform):
    """Resample moving images and labels onto the fixed image's grid, after an optional affine registration.

    The first of ``keys`` is registered to ``fixed_key`` with :func:`~autoreg_monai.prealign.prealign_matrix`
    (``transform`` ``"rigid"`` or ``"affine"``; ``"none"``: the scans' world coordinates as stored); every
    key is then sampled at the mapped world position of each fixed voxel, so it lands on the fixed grid
    with the fixed affine (out-of-field voxels are 0). Labels use nearest-neighbour sampling and keep
    their integer values. A registered transform is stored as a ``(4, 4)`` float64 RAS+ matrix (fixed world
    point to moving world point) under ``matrix_key`` (not for ``"none"``). A moving image already on the
    fixed grid with ``transform="none"`` is passed through unchanged (no interpolation).

    Args:
        keys: moving image keys, then their label keys (e.g. ``["moving_image", "moving_label"]``).
        fixed_key: key of the fixed image (a MetaTensor with its affine).
        transform: one of :data:`~autoreg_monai.prealign.PREALIGN_MODES`.
        interp_mode: per key, ``"bilinear"`` (images) or ``"nearest"`` (labels).
        matrix_key: where the fixed-to-moving world matrix of a rigid or affine pre-alignment is stored.
        allow_missing_keys: skip absent keys (e.g. pairs without labels).
        registration: keyword arguments of :func:`~autoreg_monai.prealign.prealign_matrix` (spacing,
            iterations, sampling, seed).

    Example::

        PreAlignd(["moving_image", "moving_label"], "fixed_image", transform="affine",
                  interp_mode=["bilinear", "nearest"], allow_missing_keys=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        fixed_key: str = "fixed_image",
        transform: str = "none",
        interp_mode: Sequence[str] | str = "bilinear",
        matrix_key: str = "prealign_matrix",
        allow_missing_keys: bool = False,
        registration: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if transform not in PREALIGN_MODES:
            raise ValueError(f"unknown pre-alignment {transform!r}; use one of {', '.join(PREALIGN_MODES)}")
        self.fixed_key = fixed_key
        self.transform = transform
        self.interp_mode = ensure_tuple_rep(interp_mode, len(self.keys))
        for mode in self.interp_mode:
            if mode not in ("bilinear", "nearest"):
                raise ValueError(f"interp_mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.matrix_key = matrix_key
        self.registration = dict(registration or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fixed = _meta_tensor(d[self.fixed_key], self.fixed_key)
        present = [(key, mode) for key, mode in zip(self.keys, self.interp_mode) if key in d]
        if not present:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"PreAlignd: none of {self.keys} in the data")
        reference_key = present[0][0]
        reference = _meta_tensor(d[reference_key], reference_key)
        fixed_affine = torch.as_tensor(fixed.affine, dtype=torch.float64).cpu()
        matrix = prealign_matrix(
            reference.as_tensor(),
            reference.affine,
            fixed.as_tensor(),
            fixed_affine,
            self.transform,
            name=f"{_name(reference, reference_key)} -> {_name(fixed, self.fixed_key)}",
            **self.registration,
        )
        shape = tuple(fixed.shape[1:])
        points: torch.Tensor | None = None
        for key, mode in present:
            image = _meta_tensor(d[key], key)
            affine = torch.as_tensor(image.affine, dtype=torch.float64).cpu()
            if self.transform == "none" and tuple(image.shape[1:]) == shape and torch.allclose(affine, fixed_affine):
                continue
            if points is None:
                grid = grid_world_points(fixed_affine, shape).reshape(3, -1)
                points = (matrix[:3, :3] @ grid + matrix[:3, 3:]).reshape(3, *shape)
            values = sample_at_world(image.as_tensor(), affine, points, mode=mode)
            meta = {k: v for k, v in image.meta.items() if k != "affine"}  # the new affine is given below
            meta.update(spatial_shape=np.asarray(shape), original_affine=fixed_affine.clone())
            d[key] = MetaTensor(values, affine=fixed_affine.clone(), meta=meta)
        if self.transform != "none":
            d[self.matrix_key] = matrix
        return d


class FitToSized(MapTransform):
    """Scale images isotropically (in millimetres) onto the working grid, then pad them, centred.

    Two kinds of working grid:

    - a fixed size (``spacing=None``): the scale makes the physical extent of the first key fit
      ``spatial_size`` on every axis, and the result is padded to exactly ``spatial_size``;
    - a fixed resolution (``spacing`` in mm, e.g. 2.0): isotropic voxels of ``spacing`` mm (coarser only
      where the extent would need more than ``spatial_size`` voxels on an axis, which is then a cap), padded to
      a multiple of ``size_divisor`` on every axis, so the grid follows each scan's extent.

    Either way an anisotropic scan (e.g. 0.6 x 0.6 x 1.5 mm) becomes isotropic and a brain keeps its
    proportions; every key gets the same resampling (they must share a grid, as after :class:`PreAlignd`).
    Resizing is MONAI's ``Resize`` (with anti-aliasing when shrinking images) and padding MONAI's
    ``SpatialPad``/``DivisiblePad`` with zeros, so the outputs' affines stay exact.

    Args:
        keys: keys to resample (images and labels).
        spatial_size: the working grid, e.g. ``[32, 32, 32]``; with ``spacing``, the largest grid allowed.
        mode: per key, an interpolation of ``Resize`` (``"trilinear"`` for images, ``"nearest"`` for labels).
        anti_aliasing: per key, smooth before shrinking (images: ``True``; labels: ``False``).
        allow_missing_keys: skip absent keys.
        spacing: isotropic voxel size of the working grid in mm; ``None``: fit ``spatial_size``.
        size_divisor: with ``spacing``, every axis is padded to a multiple of it (the network halves the grid
            once per scale plus once more: 8 for two scales).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: Sequence[str] | str = "trilinear",
        anti_aliasing: Sequence[bool] | bool = True,
        allow_missing_keys: bool = False,
        spacing: float | None = None,
        size_divisor: int = 8,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be three positive sizes, got {tuple(spatial_size)}")
        if spacing is not None and not float(spacing) > 0:
            raise ValueError(f"spacing must be a positive size in mm (or None), got {spacing}")
        if int(size_divisor) < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.spacing = None if spacing is None else float(spacing)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.anti_aliasing = ensure_tuple_rep(anti_aliasing, len(self.keys))
        self.pad = (
            SpatialPad(self.spatial_size, method="symmetric")
            if self.spacing is None
            else DivisiblePad(int(size_divisor), method="symmetric")
        )

    def target_shape(self, image: MetaTensor) -> tuple[int, ...]:
        """The resized shape of ``image`` (before padding): its extent at one spacing, within ``spatial_size``."""
        spacing = np.linalg.norm(np.asarray(torch.as_tensor(image.affine, dtype=torch.float64).cpu())[:3, :3], axis=0)
        extent = spacing * np.asarray(image.shape[1:], dtype=np.float64)
        step = float(np.max(extent / np.asarray(self.spatial_size)))
        if self.spacing is not None:
            step = max(step, self.spacing)
        return tuple(int(min(n, max(1, round(e / step)))) for e, n in zip(extent, self.spatial_size))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        target: tuple[int, ...] | None = None
        for key, mode, anti_aliasing in self.key_iterator(d, self.mode, self.anti_aliasing):
            image = _meta_tensor(d[key], key)
            if target is None:
                target = self.target_shape(image)
            resized = Resize(target, mode=mode, anti_aliasing=bool(anti_aliasing), dtype=torch.float32)(image)
            d[key] = self.pad(resized)
        return d

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
"""Affine pre-alignment of a moving scan to a fixed scan with SimpleITK, before the deformable network.

AutoReg, like the paper, learns the non-linear part of a registration and assumes affinely aligned
inputs. Scans straight off a scanner are not: this module finds the rigid or affine transform between
two scans by maximising Mattes mutual information (so it works across contrasts) over a multi-resolution
pyramid, the standard SimpleITK recipe.

Transforms are returned as ``(4, 4)`` float64 matrices in MONAI's RAS+ world millimetres, mapping a
point of the fixed image to the corresponding point of the moving image (ITK's direction: the fixed
image is sampled, the moving image is read at the mapped point), so they compose directly with the
displacement fields of :mod:`autoreg_monai.engines.inference`. :func:`write_itk_transform` writes one
as an ITK ``.tfm`` file in ITK's LPS+ convention, readable by SimpleITK, ITK-SNAP, 3D Slicer and ANTs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from autoreg_monai.utils.atomic import atomic_path

__all__ = [
    "PREALIGN_MODES",
    "image_to_sitk",
    "prealign_matrix",
    "read_itk_transform",
    "write_itk_transform",
]

logger = logging.getLogger(__name__)

PREALIGN_MODES: tuple[str, ...] = ("none", "rigid", "affine")
"""``none``: world coordinates as stored; ``rigid``: rotation + translation; ``affine``: rigid, then 12 parameters."""

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS+ <-> LPS+, its own inverse


def _as_numpy_affine(affine: torch.Tensor | np.ndarray) -> np.ndarray:
    matrix = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected a (4, 4) affine, got {matrix.shape}")
    return matrix


def image_to_sitk(image: torch.Tensor | np.ndarray, affine: torch.Tensor | np.ndarray) -> sitk.Image:
    """A ``(X, Y, Z)`` or ``(1, X, Y, Z)`` array with its MONAI (RAS+) affine as a float32 SimpleITK image.

    Origin, spacing and direction are ITK's (LPS+), so SimpleITK sees the scan where MONAI does.
    """
    data = np.asarray(torch.as_tensor(image).detach().cpu(), dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image (X, Y, Z) or (1, X, Y, Z), got shape {data.shape}")
    lps = _FLIP @ _as_numpy_affine(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"the affine has a zero-length axis (spacing {spacing.tolist()})")
    result = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # SimpleITK indexes (z, y, x)
    result.SetSpacing(spacing.tolist())
    result.SetOrigin(lps[:3, 3].tolist())
    result.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return result


def _matrix_of(transform: sitk.Transform) -> np.ndarray:
    """The ``(4, 4)`` LPS+ matrix of an affine SimpleITK transform, by mapping the origin and unit vectors."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - origin
    matrix[:3, 3] = origin
    return matrix


def _registration_copy(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` smoothed and resampled to at least ``spacing`` mm (registration needs no finer grid)."""
    old = np.array(image.GetSpacing())
    new = np.maximum(old, spacing)
    if np.allclose(new, old):
        return image
    size = np.maximum(np.round(np.array(image.GetSize()) * old / new), 1).astype(int)
    smoothed = sitk.SmoothingRecursiveGaussian(image, (0.5 * new).tolist())
    return sitk.Resample(
        smoothed,
        size.tolist(),
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        new.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _register(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    iterations: int,
    sampling: float,
    seed: int,
) -> tuple[sitk.Transform, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed + 1)  # SimpleITK reads seed 0 as sitkWallClock (random)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    return result, float(method.GetMetricValue())


def prealign_matrix(
    moving: torch.Tensor,
    moving_affine: torch.Tensor,
    fixed: torch.Tensor,
    fixed_affine: torch.Tensor,
    mode: str = "affine",
    *,
    spacing: float = 2.0,
    iterations: int = 100,
    sampling: float = 0.1,
    seed: int = 0,
    name: str = "moving -> fixed",
) -> torch.Tensor:
    """Rigid or affine transform that aligns ``moving`` to ``fixed`` (Mattes mutual information).

    Both scans are smoothed and resampled to ``spacing`` mm, their centres of mass superposed, then a
    rigid (Euler) transform is optimised over a 3-level pyramid (shrink 4, 2, 1), and for ``"affine"``
    an affine one starting from it.

    Args:
        moving: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` moving image.
        moving_affine: its ``(4, 4)`` RAS+ voxel-to-world matrix.
        fixed: ``(1, X', Y', Z')`` or ``(X', Y', Z')`` fixed image.
        fixed_affine: its ``(4, 4)`` RAS+ voxel-to-world matrix.
        mode: one of :data:`PREALIGN_MODES`; ``"none"`` returns the identity.
        spacing: grid spacing (mm) the registration runs on; finer scans are smoothed and resampled.
        iterations: optimiser iterations per pyramid level and stage.
        sampling: fraction of fixed voxels sampled by the metric.
        seed: seed of the metric's random sampling (the same inputs give the same transform).
        name: how the pair is named in error messages (e.g. the file names).

    Returns:
        ``(4, 4)`` float64 RAS+ matrix mapping fixed-image world points to moving-image world points.

    Raises:
        ValueError: unknown ``mode``, an image that is not 3-D, is constant or is not finite, or a
            registration that fails (e.g. the scans do not overlap after centring).
    """
    if mode not in PREALIGN_MODES:
        raise ValueError(f"unknown pre-alignment {mode!r}; use one of {', '.join(PREALIGN_MODES)}")
    if mode == "none":
        return torch.eye(4, dtype=torch.float64)
    images = {}
    for role, image, affine in (("moving", moving, moving_affine), ("fixed", fixed, fixed_affine)):
        data = torch.as_tensor(image).detach()
        if not bool(torch.isfinite(data).all()):
            raise ValueError(f"{name}: the {role} image has NaN or infinite voxels; it cannot be pre-aligned")
        if float(data.max()) <= float(data.min()):
            raise ValueError(f"{name}: the {role} image is constant ({float(data.min())}); it cannot be pre-aligned")
        images[role] = _registration_copy(image_to_sitk(data, affine), spacing)
    try:
        initial = sitk.CenteredTransformInitializer(
            images["fixed"],
            images["moving"],
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        transform, metric = _register(images["fixed"], images["moving"], initial, iterations, sampling, seed)
        if mode == "affine":
            rigid = _matrix_of(transform)
            start = sitk.AffineTransform(3)
            start.SetMatrix(rigid[:3, :3].ravel().tolist())
            start.SetTranslation(rigid[:3, 3].tolist())
            transform, metric = _register(images["fixed"], images["moving"], start, iterations, sampling, seed)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name}: {mode} pre-alignment failed ({message}); check that both scans show the same anatomy, "
            "or register without it (prealign none)"
        ) from error
    lps = _matrix_of(transform)
    if not np.all(np.isfinite(lps)) or np.linalg.det(lps[:3, :3]) <= 0:
        raise ValueError(f"{name}: {mode} pre-alignment gave a degenerate transform {lps[:3].tolist()}")
    logger.info("%s: %s pre-alignment, mutual information %.4f", name, mode, -metric)
    return torch.from_numpy(_FLIP @ lps @ _FLIP)


def write_itk_transform(matrix: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write a RAS+ ``(4, 4)`` fixed-to-moving matrix as an ITK ``AffineTransform`` (``.tfm``), atomically.

    The file is in ITK's convention (LPS+ millimetres, fixed to moving), so
    ``sitk.Resample(moving, fixed, sitk.ReadTransform(path))`` reproduces the pre-aligned moving image.
    """
    path = Path(path)
    lps = _FLIP @ _as_numpy_affine(matrix) @ _FLIP
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(lps[:3, :3].ravel().tolist())
    transform.SetTranslation(lps[:3, 3].tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def read_itk_transform(path: str | Path) -> torch.Tensor:
    """The RAS+ ``(4, 4)`` fixed-to-moving matrix of an affine ITK transform file (see :func:`write_itk_transform`)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: transform file not found")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise ValueError(f"{path}: not a readable ITK transform file") from error
    return torch.from_numpy(_FLIP @ _matrix_of(transform) @ _FLIP)

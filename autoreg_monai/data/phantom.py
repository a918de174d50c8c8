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
"""Generated registration pairs: ellipsoid phantoms with labels, deformed by a known diffeomorphism.

Everything is deterministic given the seed, needs no download, and works in 2-D and 3-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Warp

from autoreg_monai.networks.blocks.diffeo import DiffeomorphicTransform, resize_image

__all__ = [
    "CONTRASTS",
    "PHANTOM_LABELS",
    "make_phantom",
    "make_phantom_pair",
    "phantom_labels",
    "random_diffeomorphism",
    "render_phantom",
    "smooth_random_field",
    "warp_label_map",
]

PHANTOM_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Label values of the phantom: body, left and right lobes, central cavity, bright nodule."""

CONTRASTS: dict[str, tuple[float, ...]] = {
    "t1": (0.45, 0.80, 0.70, 0.15, 1.00),
    "t2": (0.55, 0.35, 0.42, 0.95, 0.20),
}
"""Intensity of each phantom structure (in :data:`PHANTOM_LABELS` order) per contrast. ``t2`` is not a
monotone remapping of ``t1`` (the cavity is dark in one and bright in the other), as between real
T1- and T2-weighted scans."""

# (centre offset from the middle, radii) as fractions of the size; later structures overwrite earlier ones
_STRUCTURES = (
    ((0.0, 0.0, 0.0), (0.42, 0.40, 0.38)),
    ((-0.14, 0.02, 0.0), (0.18, 0.28, 0.26)),
    ((0.14, -0.02, 0.0), (0.18, 0.28, 0.26)),
    ((0.0, 0.05, 0.02), (0.07, 0.14, 0.10)),
    ((0.05, -0.20, -0.12), (0.07, 0.07, 0.07)),
)


def smooth_random_field(
    shape: Sequence[int], channels: int, control_points: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Smooth random field: standard normal values on a coarse grid, linearly upsampled.

    Args:
        shape: spatial shape ``S``.
        channels: number of channels ``C``.
        control_points: coarse grid size along every axis (fewer points, smoother field).
        generator: random generator (for reproducibility).

    Returns:
        ``(1, C, *S)`` float32.
    """
    coarse = torch.randn((1, channels) + (control_points,) * len(shape), generator=generator)
    return resize_image(coarse, shape)


def random_diffeomorphism(
    shape: Sequence[int], magnitude: float, generator: torch.Generator | None = None, control_points: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random stationary velocity field and its exponential.

    Args:
        shape: spatial shape ``S`` (2 or 3 axes).
        magnitude: largest velocity component, voxels.
        generator: random generator.
        control_points: coarse grid size of the velocity (fewer points, smoother deformation).

    Returns:
        ``(velocity, ddf)``, both ``(1, N, *S)`` in voxels; ``ddf = exp(velocity)`` is fold-free.
    """
    velocity = smooth_random_field(shape, len(shape), control_points, generator)
    velocity = velocity * (magnitude / velocity.abs().max().clamp_min(1e-6))
    return velocity, DiffeomorphicTransform(7)(velocity)


def phantom_labels(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Label map of an ellipsoid "organ" with :data:`PHANTOM_LABELS` structures, ``(1, 1, *S)`` int64.

    The generator jitters the position and size of every structure slightly.
    """
    dims = len(shape)
    if dims not in (2, 3):
        raise ValueError(f"phantoms are 2-D or 3-D, got shape {tuple(shape)}")
    axes = torch.meshgrid(*[torch.linspace(-0.5, 0.5, n) for n in shape], indexing="ij")
    label = torch.zeros(tuple(shape), dtype=torch.int64)
    for value, (centre, radii) in zip(PHANTOM_LABELS, _STRUCTURES):
        jitter = 0.02 * torch.randn(2 * dims, generator=generator)
        inside = torch.zeros(tuple(shape))
        for k in range(dims):
            inside = inside + ((axes[k] - centre[k] - jitter[k]) / (radii[k] * (1 + jitter[dims + k]))) ** 2
        label[inside <= 1.0] = value
    return label[None, None]


def render_phantom(
    label: torch.Tensor, contrast: str = "t1", generator: torch.Generator | None = None, noise: float = 0.02
) -> torch.Tensor:
    """Intensity image of a phantom label map: per-structure intensity, smooth bias field, Gaussian noise.

    Args:
        label: ``(1, 1, *S)`` label map with values 0 and :data:`PHANTOM_LABELS`.
        contrast: a key of :data:`CONTRASTS`.
        generator: random generator for the bias field and the noise.
        noise: standard deviation of the additive noise.

    Returns:
        ``(1, 1, *S)`` float32 in ``[0, 1]``.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; known: {sorted(CONTRASTS)}")
    image = torch.zeros(label.shape)
    for value, intensity in zip(PHANTOM_LABELS, CONTRASTS[contrast]):
        image[label == value] = intensity
    shape = label.shape[2:]
    bias = 1.0 + 0.1 * smooth_random_field(shape, 1, 3, generator)
    image = image * bias + noise * torch.randn(label.shape, generator=generator)
    return image.clamp(0.0, 1.0)


def warp_label_map(label: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of an integer label map (``(1, 1, *S)``) by a displacement ``(1, N, *S)``."""
    return Warp(mode="nearest", padding_mode="border")(label.float(), ddf).round().long()


def make_phantom(
    shape: Sequence[int], generator: torch.Generator | None = None, noise: float = 0.02, contrast: str = "t1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """An ellipsoid phantom image and its label map.

    Returns:
        ``(image, label)``: ``(1, 1, *S)`` float32 in ``[0, 1]`` and ``(1, 1, *S)`` int64 with values
        ``0`` and :data:`PHANTOM_LABELS`.
    """
    label = phantom_labels(shape, generator)
    return render_phantom(label, contrast, generator, noise), label


def make_phantom_pair(
    shape: Sequence[int] = (32, 32, 32), seed: int = 0, magnitude: float = 2.0
) -> dict[str, torch.Tensor]:
    """A fixed phantom and a moving one deformed by a random smooth diffeomorphism.

    ``moving = fixed o exp(velocity)``, so the displacement of ``exp(-velocity)`` registers it back (up to
    interpolation); extra noise keeps the moving image from being an exact resampling of the fixed one.

    Args:
        shape: spatial shape (2 or 3 axes).
        seed: random seed; the same seed gives the same pair.
        magnitude: largest velocity component in voxels (before integration).

    Returns:
        ``fixed_image``, ``moving_image`` ``(1, 1, *S)`` float32; ``fixed_label``, ``moving_label``
        ``(1, 1, *S)`` int64; ``velocity`` ``(1, N, *S)``, the stationary velocity that deformed ``fixed``.
    """
    generator = torch.Generator().manual_seed(seed)
    fixed_image, fixed_label = make_phantom(shape, generator)
    velocity, ddf = random_diffeomorphism(shape, magnitude, generator)
    moving_image = Warp(mode="bilinear", padding_mode="border")(fixed_image, ddf)
    moving_image = (moving_image + 0.01 * torch.randn(moving_image.shape, generator=generator)).clamp(0.0, 1.0)
    return {
        "fixed_image": fixed_image,
        "fixed_label": fixed_label,
        "moving_image": moving_image,
        "moving_label": warp_label_map(fixed_label, ddf),
        "velocity": velocity,
    }

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
"""Diffeomorphic deformations from stationary velocity fields, on MONAI's ``DVF2DDF`` and ``Warp``.

Conventions (MONAI's): a dense displacement field (DDF) ``u`` has shape ``(B, N, *S)`` for ``N``
spatial dimensions, in voxel units, channel ``i`` being the displacement along spatial axis ``i``;
warping an image ``m`` by ``u`` gives ``(m o phi)(x) = m(x + u(x))``. Resampling uses the
``align_corners=True`` convention of ``Warp``: the corner voxels of every resolution coincide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp
from torch import nn

__all__ = ["ComposeDDF", "DiffeomorphicTransform", "full_precision", "resize_ddf", "resize_image", "to_full_precision"]

_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_image(image: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Linearly resample ``(B, C, *S)`` to ``(B, C, *spatial_size)`` (values unchanged, corners aligned)."""
    spatial_size = tuple(int(s) for s in spatial_size)
    if tuple(image.shape[2:]) == spatial_size:
        return image
    return F.interpolate(image, size=spatial_size, mode=_LINEAR_MODES[image.ndim - 2], align_corners=True)


def resize_ddf(ddf: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Resample a displacement field to another grid and rescale its vectors to the new voxel size.

    With corners aligned, a voxel of an axis of size ``n_old`` spans ``(n_new - 1) / (n_old - 1)`` voxels
    of the resized axis, so component ``i`` is multiplied by that ratio for axis ``i``: a field that
    moves every point by 3 voxels at 32^3 moves it by ``3 * 63 / 31`` voxels at 64^3, the same physical
    distance.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels of ``S``.
        spatial_size: the new spatial shape ``S'`` (``N`` entries).

    Returns:
        ``(B, N, *S')`` displacement in voxels of ``S'``.
    """
    spatial_dims = ddf.ndim - 2
    spatial_size = tuple(int(s) for s in spatial_size)
    if ddf.shape[1] != spatial_dims or len(spatial_size) != spatial_dims:
        raise ValueError(
            f"expected a ({spatial_dims}-component) field of shape (B, {spatial_dims}, *S) and {spatial_dims} target "
            f"sizes, got field {tuple(ddf.shape)} and size {spatial_size}"
        )
    old_size = ddf.shape[2:]
    if tuple(old_size) == spatial_size:
        return ddf
    scale = [(new - 1) / max(old - 1, 1) for new, old in zip(spatial_size, old_size)]
    scale_t = torch.tensor(scale, dtype=ddf.dtype, device=ddf.device).view(1, spatial_dims, *([1] * spatial_dims))
    return resize_image(ddf, spatial_size) * scale_t


def full_precision(tensor: torch.Tensor) -> torch.autocast:
    """A region where autocast is off on ``tensor``'s device: fields are integrated and warped in float32.

    Under mixed precision (:class:`~autoreg_monai.engines.RegistrationTrainStep` with ``amp``) the convolutions
    run in bfloat16 or float16; the integration, compositions and warps stay in float32, whose rounding
    errors do not compound over the squaring steps.
    """
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def to_full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is float16/bfloat16 (an autocast output), else unchanged (float64 stays)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class DiffeomorphicTransform(nn.Module):
    """Exponential of a stationary velocity field by scaling and squaring: ``phi = exp(v)``.

    ``v`` is divided by ``2**num_steps`` and the small displacement is composed with itself
    ``num_steps`` times (MONAI's :class:`~monai.networks.blocks.DVF2DDF`). The padding default is
    ``"border"``: MONAI's ``"zeros"`` pulls displacements towards zero near the image boundary.
    ``num_steps=0`` returns ``v`` unchanged as a (non-diffeomorphic) displacement.

    Args:
        num_steps: number of squaring steps (7 in the paper and VoxelMorph).
        mode: interpolation of the field during squaring.
        padding_mode: how the field is extended outside the grid (``"border"``, ``"zeros"``, ``"reflection"``).

    Input ``(B, N, *S)`` velocity in voxels, output ``(B, N, *S)`` displacement in voxels.
    """

    def __init__(self, num_steps: int = 7, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        self.num_steps = num_steps
        self.integrate = DVF2DDF(num_steps, mode=mode, padding_mode=padding_mode) if num_steps > 0 else None

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        if velocity.ndim not in (4, 5) or velocity.shape[1] != velocity.ndim - 2:
            raise ValueError(
                f"expected a velocity field (B, N, *S) with N = 2 or 3 spatial dims, got {tuple(velocity.shape)}"
            )
        with full_precision(velocity):  # squaring compounds rounding errors: float32 even under autocast
            velocity = to_full_precision(velocity)
            if self.integrate is None:
                return velocity
            ddf: torch.Tensor = self.integrate(velocity)
        return ddf


class ComposeDDF(nn.Module):
    """Displacement of the composition ``outer o inner``: ``u(x) = inner(x) + outer(x + inner(x))``.

    Warping an image by the result equals warping it by ``outer`` and then warping that by ``inner``.

    Args:
        padding_mode: how ``outer`` is extended outside the grid when ``inner`` points there.
    """

    def __init__(self, padding_mode: str = "border") -> None:
        super().__init__()
        self.warp = Warp(mode="bilinear", padding_mode=padding_mode)

    def forward(self, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        """
        Args:
            outer: ``(B, N, *S)``, applied second.
            inner: ``(B, N, *S)``, applied first.

        Returns:
            ``(B, N, *S)``.
        """
        if outer.shape != inner.shape:
            raise ValueError(
                f"fields to compose must have the same shape, got {tuple(outer.shape)} and {tuple(inner.shape)}"
            )
        with full_precision(outer):
            outer, inner = to_full_precision(outer), to_full_precision(inner)
            composed: torch.Tensor = inner + self.warp(outer, inner)
        return composed

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
"""Memory guard: estimate what a search or a registration needs, and refuse before starting when it cannot fit.

A search that the kernel kills for memory dies in its first iteration, or hours in when another process
grows; a registration at full resolution can do the same. The estimate is linear in the working grid's
voxels and the network's channels (``bytes per voxel-channel``, measured by ``benchmarks/memory_model.py``
on the bundles' networks, with a margin), plus, for a registration, the composition on the fixed grid
(``bytes per fixed voxel``). It is compared with what the device has free: for the CPU the kernel's
``MemAvailable`` (and a cgroup limit, as in a container), for CUDA ``torch.cuda.mem_get_info``.

Set ``AUTOREG_SKIP_MEMORY_CHECK=1`` to run anyway (e.g. with swap you accept to use).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "BASE_BYTES",
    "BYTES_PER_FIXED_VOXEL",
    "BYTES_PER_VOXEL_CHANNEL",
    "InsufficientMemoryError",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "fixed_grid_memory",
]

BYTES_PER_VOXEL_CHANNEL = {"search": 240.0, "search_partial": 80.0, "inference": 2.0}
"""Peak bytes per working-grid voxel and network channel (sum of feature and deformation channels).

Measured (benchmarks/results/memory_model.json, CPU): a second-order search iteration on the full mixture grows
227 bytes per voxel-channel between 24³ and 40³; the bundles' α stages (first order, a quarter of the channels:
``search_partial``) 56 between 48³ and 64³ (memory_model_search_partial.json); a no-grad forward of the trained
network 1.4-1.6 between 96³ and 160x192x224 (channels-last)."""

BASE_BYTES = 256 * 2**20
"""Fixed part of a step's peak growth (weights, optimiser state, buffers): the intercept of the same fit."""

BYTES_PER_FIXED_VOXEL = 230.0
"""Peak bytes per voxel of the fixed scan's grid, for carrying the field there and warping at full resolution
(measured: 215-218 at 128³ and 192³)."""

MARGIN = 1.25
"""Estimates are multiplied by this before the comparison (allocator slack, data, other buffers)."""


class InsufficientMemoryError(ValueError):
    """The estimated memory of a run exceeds what its device has free."""


def estimate_memory(
    kind: str,
    spatial_size: Sequence[int],
    feature_channels: Sequence[int],
    deformation_channels: Sequence[int],
    batch_size: int = 1,
) -> int:
    """Estimated peak bytes of one step of ``kind`` (a key of :data:`BYTES_PER_VOXEL_CHANNEL`) on the working grid.

    Args:
        kind: a key of :data:`BYTES_PER_VOXEL_CHANNEL`.
        spatial_size: the working grid ``(D, H, W)``.
        feature_channels: the network's feature-cell channels per scale.
        deformation_channels: its deformation-cell channels.
        batch_size: pairs per step.
    """
    if kind not in BYTES_PER_VOXEL_CHANNEL:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(BYTES_PER_VOXEL_CHANNEL)}")
    channels = sum(int(c) for c in feature_channels) + sum(int(c) for c in deformation_channels)
    voxels = math.prod(int(s) for s in spatial_size)
    return int(BASE_BYTES + BYTES_PER_VOXEL_CHANNEL[kind] * voxels * channels * batch_size)


def fixed_grid_memory(fixed_shape: Sequence[int]) -> int:
    """Estimated peak bytes of composing the field on a fixed grid of ``fixed_shape`` and warping there."""
    return int(BYTES_PER_FIXED_VOXEL * math.prod(int(s) for s in fixed_shape))


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, if it has one."""
    limit_file, usage_file = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        limit = limit_file.read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(usage_file.read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory(device: str | torch.device = "cpu") -> int:
    """Free bytes of ``device``: ``MemAvailable`` (and the cgroup's limit) on the CPU, ``mem_get_info`` on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:  # not Linux: physical memory as the bound
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limited = _cgroup_free()
    return min(free, limited) if limited is not None else free


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def check_memory(
    what: str,
    kind: str,
    spatial_size: Sequence[int],
    feature_channels: Sequence[int],
    deformation_channels: Sequence[int],
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    fixed_shape: Sequence[int] | None = None,
) -> int:
    """Refuse a run whose estimated memory (with :data:`MARGIN`) exceeds what ``device`` has free.

    Args:
        what: the run, for the message (e.g. ``"the feature stage of the search"``).
        kind: a key of :data:`BYTES_PER_VOXEL_CHANNEL`.
        spatial_size: the working grid.
        feature_channels: the network's feature channels. deformation_channels: its deformation channels.
        device: where it runs.
        batch_size: pairs per step.
        fixed_shape: for a registration, the fixed scan's grid (its full-resolution composition is added).

    Returns:
        the estimate, bytes.

    Raises:
        InsufficientMemoryError: with the estimate, what is free, and the largest working grid that would fit.
    """
    need = estimate_memory(kind, spatial_size, feature_channels, deformation_channels, batch_size)
    full = fixed_grid_memory(fixed_shape) if fixed_shape is not None else 0
    if os.environ.get("AUTOREG_SKIP_MEMORY_CHECK", "") in ("1", "true", "yes"):
        return need + full
    have = available_memory(device)
    if MARGIN * (need + full) <= have:
        return need + full
    room = have / MARGIN - full - BASE_BYTES
    hint = "free memory, or register on a smaller fixed grid"
    if room > 0:
        scale = (room / (need - BASE_BYTES)) ** (1.0 / len(spatial_size))
        smaller = [max(16, int(s * scale) // 16 * 16) for s in spatial_size]
        hint = f'use a smaller working grid, e.g. --spatial_size "{_json_list(smaller)}"'
    raise InsufficientMemoryError(
        f"{what}: at {'x'.join(str(int(s)) for s in spatial_size)} voxels it needs about "
        f"{_gib(MARGIN * (need + full))} of {torch.device(device).type} memory, and {_gib(have)} is free; {hint} "
        "(or set AUTOREG_SKIP_MEMORY_CHECK=1 to try anyway)"
    )


def _json_list(values: Sequence[int]) -> str:
    """``[a,b,c]``: a list as the bundle command line takes it."""
    return "[" + ",".join(str(int(v)) for v in values) + "]"

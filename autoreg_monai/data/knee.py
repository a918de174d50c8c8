# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""A synthetic knee: femur, tibia and their cartilage plates in a leg of soft tissue and fat.

Generated, not scanned: the demo set of the ``knee_t1`` bundle, built so that every bundle runs out of
the box. Label values follow the OAI/ZIB knee convention (1 femoral bone, 2 femoral cartilage,
3 tibial bone, 4 tibial cartilage); intensities imitate a fat-bright T1-weighted knee MRI (bright
marrow and fat, dark cortical bone, intermediate cartilage and muscle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from autoreg_monai.data.phantom import smooth_random_field

__all__ = ["KNEE_LABELS", "KNEE_T1_INTENSITY", "KNEE_TISSUES", "knee_label_map", "knee_tissue_map", "render_knee"]

KNEE_LABELS: dict[int, str] = {1: "femoral bone", 2: "femoral cartilage", 3: "tibial bone", 4: "tibial cartilage"}
"""Label values of the knee demo set (the OAI/ZIB convention)."""

KNEE_TISSUES: dict[int, str] = {**KNEE_LABELS, 5: "muscle and soft tissue", 6: "subcutaneous fat", 7: "cortical bone"}
"""Values of the tissue map the images are rendered from (0 is air); 1-4 are the labels."""

KNEE_T1_INTENSITY: dict[int, float] = {0: 0.0, 1: 0.72, 2: 0.50, 3: 0.70, 4: 0.46, 5: 0.32, 6: 0.90, 7: 0.08}
"""T1-like intensity of each tissue."""


def knee_tissue_map(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Tissue map of a knee in a ``(1, 1, X, Y, Z)`` grid, axes left-right, posterior-anterior, inferior-superior.

    The femur comes down from the top and ends in a condyle; the tibia comes up from the bottom and ends in
    a plateau; a cartilage plate covers each joint surface across a thin gap. The generator jitters sizes by
    a few percent.

    Returns:
        ``(1, 1, *shape)`` int64 with the values of :data:`KNEE_TISSUES` (and 0).
    """
    if len(shape) != 3:
        raise ValueError(f"the knee is 3-D, got shape {tuple(shape)}")
    s = 1.0 + 0.04 * torch.randn(6, generator=generator)
    x, y, z = torch.meshgrid(*[torch.linspace(-1.0, 1.0, int(n)) for n in shape], indexing="ij")

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2

    leg = ellipse(0.0, 0.0, 0.66 * s[0], 0.58 * s[1])
    condyle = ellipse(0.0, 0.0, 0.40 * s[2], 0.32 * s[3]) + ((z - 0.12) / 0.24) ** 2
    femur = ((ellipse(0.0, -0.02, 0.21 * s[4], 0.19 * s[4]) <= 1) & (z > 0.1)) | (condyle <= 1)
    femoral_cartilage = (condyle <= 1.22) & ~femur & (z < 0.12)
    plateau_scale = ((z + 0.6) / 0.4).clamp(0.5, 1.0)  # the tibia widens towards its plateau
    tibia_section = ellipse(0.0, 0.0, 0.38 * s[5] * plateau_scale, 0.30 * s[5] * plateau_scale) <= 1
    plateau_top = -0.2
    tibia = tibia_section & (z <= plateau_top)
    plate = (ellipse(0.0, 0.0, 0.36 * s[5], 0.28 * s[5]) <= 1) & (z > plateau_top) & (z <= plateau_top + 0.08)
    tibial_cartilage = plate & ~femoral_cartilage & ~femur

    tissue = torch.zeros(x.shape, dtype=torch.int64)
    tissue[leg <= 1] = 5
    tissue[(leg > 0.7) & (leg <= 1)] = 6
    bone = femur | tibia
    outside_bone = (~bone).float()[None, None]
    rim = bone & (F.max_pool3d(outside_bone, 3, stride=1, padding=1)[0, 0] > 0)
    tissue[femur] = 1
    tissue[tibia] = 3
    tissue[rim] = 7
    tissue[femoral_cartilage] = 2
    tissue[tibial_cartilage] = 4
    return tissue[None, None]


def knee_label_map(tissue: torch.Tensor) -> torch.Tensor:
    """The label map of a tissue map: :data:`KNEE_LABELS` kept, cortical rims given to their bone, rest 0."""
    label = torch.where((tissue >= 1) & (tissue <= 4), tissue, torch.zeros_like(tissue))
    rim = tissue == 7
    if rim.any():  # a rim voxel belongs to the nearer bone: femur above the joint, tibia below
        neighbour = F.max_pool3d(torch.where(label == 1, 1.0, 0.0), 5, stride=1, padding=2) > 0
        label = torch.where(rim & neighbour, torch.ones_like(label), label)
        label = torch.where(rim & ~neighbour, torch.full_like(label, 3), label)
    return label


def render_knee(tissue: torch.Tensor, generator: torch.Generator | None = None, noise: float = 0.02) -> torch.Tensor:
    """T1-like image of a tissue map: :data:`KNEE_T1_INTENSITY`, slight blur, bias field, Gaussian noise.

    Returns:
        ``(1, 1, *S)`` float32 in ``[0, 1]``.
    """
    image = torch.zeros(tissue.shape)
    for value, intensity in KNEE_T1_INTENSITY.items():
        image[tissue == value] = intensity
    image = F.avg_pool3d(image, 3, stride=1, padding=1, count_include_pad=False)  # partial-volume edges
    gamma = float(torch.empty(1).uniform_(0.85, 1.2, generator=generator))
    bias = 1.0 + 0.1 * smooth_random_field(tissue.shape[2:], 1, 3, generator)
    image = image.clamp(0.0, 1.0) ** gamma * bias + noise * torch.randn(tissue.shape, generator=generator)
    return image.clamp(0.0, 1.0)

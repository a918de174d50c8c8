# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""World-space resampling helpers."""

from __future__ import annotations

import torch

from autoreg_monai.spatial import (
    grid_world_points,
    sample_at_world,
    voxel_to_world_displacement,
    world_to_voxel_displacement,
)

# LIA-like orientation, 2 mm voxels, an offset origin: nothing is the identity
AFFINE = torch.tensor(
    [[-2.0, 0.0, 0.0, 30.0], [0.0, 0.0, 2.0, -20.0], [0.0, -2.0, 0.0, 10.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


def test_grid_world_points_follow_the_affine():
    points = grid_world_points(AFFINE, (4, 5, 6))
    assert points.shape == (3, 4, 5, 6)
    assert torch.allclose(points[:, 0, 0, 0], AFFINE[:3, 3])
    assert torch.allclose(
        points[:, 1, 2, 3], AFFINE[:3, :3] @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + AFFINE[:3, 3]
    )


def test_sampling_own_voxel_centres_returns_the_image():
    image = torch.rand(2, 6, 7, 8)
    points = grid_world_points(AFFINE, image.shape[1:])
    assert torch.allclose(sample_at_world(image, AFFINE, points), image, atol=1e-5)
    labels = torch.randint(0, 5, (1, 6, 7, 8))
    assert torch.equal(sample_at_world(labels, AFFINE, points, mode="nearest"), labels)


def test_sampling_a_shifted_grid_reads_the_neighbouring_voxels():
    image = torch.rand(1, 6, 7, 8)
    shifted = AFFINE.clone()
    shifted[:3, 3] += AFFINE[:3, 1]  # the new grid starts one voxel further along axis 1
    values = sample_at_world(image, AFFINE, grid_world_points(shifted, (6, 6, 8)))
    assert torch.allclose(values, image[:, :, 1:], atol=1e-5)
    outside = sample_at_world(image, AFFINE, grid_world_points(shifted, (6, 7, 8)))
    assert torch.all(outside[:, :, -1] == 0)  # zeros padding beyond the image


def test_displacement_units_round_trip():
    ddf = torch.randn(3, 4, 4, 4)
    world = voxel_to_world_displacement(ddf, AFFINE)
    assert torch.allclose(world[0], -2.0 * ddf[0], atol=1e-6)  # axis 0 runs along -x with 2 mm voxels
    assert torch.allclose(world[1], 2.0 * ddf[2], atol=1e-6)
    assert torch.allclose(world_to_voxel_displacement(world, AFFINE), ddf, atol=1e-5)


def test_sampling_through_an_oblique_anisotropic_affine_matches_trilinear_interpolation():
    from scipy.ndimage import map_coordinates

    angle = torch.tensor(0.3, dtype=torch.float64)
    rotation = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, torch.cos(angle), -torch.sin(angle)], [0.0, torch.sin(angle), torch.cos(angle)]],
        dtype=torch.float64,
    )
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor([1.5, 0.8, 2.5], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-7.0, 3.0, 12.0], dtype=torch.float64)
    torch.manual_seed(0)
    image = torch.rand(1, 9, 10, 11)
    voxels = torch.rand(3, 50, dtype=torch.float64) * torch.tensor([8.0, 9.0, 10.0], dtype=torch.float64)[:, None]
    points = affine[:3, :3] @ voxels + affine[:3, 3:]  # world positions of known fractional voxel indices
    expected = map_coordinates(image[0].double().numpy(), voxels.numpy(), order=1)
    assert torch.allclose(sample_at_world(image, affine, points)[0], torch.from_numpy(expected).float(), atol=1e-5)

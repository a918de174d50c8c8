# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Affine pre-alignment with SimpleITK: geometry conventions, recovery of known transforms, .tfm files."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoreg_monai.prealign import image_to_sitk, prealign_matrix, read_itk_transform, write_itk_transform
from autoreg_monai.spatial import grid_world_points, sample_at_world

LIA = torch.tensor(
    [[-3.0, 0.0, 0.0, 128.0], [0.0, 0.0, 3.0, -128.0], [0.0, -3.0, 0.0, 128.0], [0.0, 0.0, 0.0, 1.0]],
    dtype=torch.float64,
)


def _rotation(degrees: float, scale: float, translation: tuple[float, float, float], centre: torch.Tensor):
    """A RAS+ matrix: rotation about the z axis and scaling about ``centre``, then a translation (mm)."""
    a = math.radians(degrees)
    linear = scale * torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + torch.tensor(translation, dtype=torch.float64)
    return matrix


def _real_brain(sample_data) -> tuple[torch.Tensor, torch.Tensor]:
    image = nib.load(sample_data / "freesurfer_mne_sample" / "T1_3mm.nii.gz")
    return torch.from_numpy(image.get_fdata(dtype=np.float32))[None], torch.from_numpy(image.affine)


def _moved(image: torch.Tensor, affine: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``image`` seen through ``matrix`` (fixed to moving): the moving scan a registration should undo."""
    points = grid_world_points(affine, image.shape[1:]).reshape(3, -1)
    inverse = torch.linalg.inv(matrix)
    source = (inverse[:3, :3] @ points + inverse[:3, 3:]).reshape(3, *image.shape[1:])
    return sample_at_world(image, affine, source)


def _mapping_error(found: torch.Tensor, true: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    difference = (found - true)[:3, :3] @ points + (found - true)[:3, 3:]
    return difference.norm(dim=0)


def test_sitk_image_sits_where_monai_puts_it():
    data = torch.rand(1, 5, 6, 7)
    image = image_to_sitk(data, LIA)
    assert image.GetSize() == (5, 6, 7)
    for index in ((0, 0, 0), (4, 1, 3), (2, 5, 6)):
        ras = LIA[:3, :3] @ torch.tensor(index, dtype=torch.float64) + LIA[:3, 3]
        lps = image.TransformIndexToPhysicalPoint(index)
        assert np.allclose(lps, [-ras[0], -ras[1], ras[2]])
        assert image.GetPixel(index) == pytest.approx(float(data[(0, *index)]))
    with pytest.raises(ValueError, match="3-D image"):
        image_to_sitk(torch.rand(2, 4, 4, 4), LIA)


@pytest.mark.parametrize("mode", ("rigid", "affine"))
def test_recovers_a_known_transform_of_a_real_brain(mode, sample_data):
    fixed, affine = _real_brain(sample_data)
    brain = fixed[0] > 20
    points = grid_world_points(affine, fixed.shape[1:])[:, brain]
    centre = points.mean(dim=1)
    true = _rotation(8.0, 1.0 if mode == "rigid" else 1.08, (6.0, -4.0, 5.0), centre)
    moving = _moved(fixed, affine, true)
    found = prealign_matrix(moving, affine, fixed, affine, mode, name="moved -> T1_3mm")
    start = _mapping_error(torch.eye(4, dtype=torch.float64), true, points).mean()
    error = _mapping_error(found, true, points)
    print(f"\n{mode}: mean mapping error over the brain {start:.2f} mm before, {error.mean():.3f} mm after")
    assert error.mean() < 1.0 < start  # the voxels are 3 mm
    if mode == "rigid":
        assert torch.allclose(found[:3, :3] @ found[:3, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-6)


def test_identity_and_bad_input():
    image = torch.rand(1, 8, 8, 8)
    assert torch.equal(prealign_matrix(image, LIA, image, LIA, "none"), torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown pre-alignment 'similarity'"):
        prealign_matrix(image, LIA, image, LIA, "similarity")
    with pytest.raises(ValueError, match="sub01.nii.gz -> atlas.nii.gz: the moving image is constant"):
        prealign_matrix(torch.ones(1, 8, 8, 8), LIA, image, LIA, "rigid", name="sub01.nii.gz -> atlas.nii.gz")
    bad = image.clone()
    bad[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="the fixed image has NaN"):
        prealign_matrix(image, LIA, bad, LIA, "affine")


def test_tfm_file_resamples_like_our_world_mapping(tmp_path, sample_data):
    """The .tfm we write, used by SimpleITK's own Resample, gives the image our world-coordinate sampling gives."""
    fixed, affine = _real_brain(sample_data)
    matrix = _rotation(-5.0, 0.95, (3.0, 2.0, -7.0), torch.tensor([0.0, -10.0, 5.0], dtype=torch.float64))
    path = write_itk_transform(matrix, tmp_path / "pair_affine.tfm")
    assert path.is_file() and not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert torch.allclose(read_itk_transform(path), matrix, atol=1e-9)
    moving_affine = affine.clone()
    moving_affine[:3, 3] += torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)  # a different grid
    moving = fixed.clone()
    points = grid_world_points(affine, fixed.shape[1:]).reshape(3, -1)
    targets = (matrix[:3, :3] @ points + matrix[:3, 3:]).reshape(3, *fixed.shape[1:])
    ours = sample_at_world(moving, moving_affine, targets)[0]
    reference = sitk.Resample(
        image_to_sitk(moving, moving_affine),
        image_to_sitk(fixed, affine),
        sitk.ReadTransform(str(path)),
        sitk.sitkLinear,
        0.0,
    )
    theirs = torch.from_numpy(sitk.GetArrayFromImage(reference).transpose(2, 1, 0).copy())
    # compare where the mapped points fall inside the moving grid (ITK and torch pad its edge differently)
    index = torch.linalg.solve(moving_affine[:3, :3], targets.reshape(3, -1) - moving_affine[:3, 3:])
    upper = torch.tensor(fixed.shape[1:], dtype=torch.float64).view(3, 1) - 2
    inside = ((index >= 1) & (index <= upper)).all(0).reshape(fixed.shape[1:])
    assert inside.float().mean() > 0.5
    assert (ours - theirs)[inside].abs().max() < 1e-3 * float(fixed.max())
    with pytest.raises(ValueError, match="missing.tfm: transform file not found"):
        read_itk_transform(tmp_path / "missing.tfm")
    (tmp_path / "broken.tfm").write_text("#Insight Transform File V1.0\nnot a transform\n")
    with pytest.raises(ValueError, match="broken.tfm: not a readable ITK transform file"):
        read_itk_transform(tmp_path / "broken.tfm")

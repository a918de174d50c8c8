# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Mapping a field predicted on the working grid back to the fixed image's own grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImaged

from autoreg_monai.engines import map_to_fixed_grid
from autoreg_monai.spatial import grid_world_points

FIXED_AFFINE = torch.tensor(
    [[-1.5, 0.0, 0.0, 20.0], [0.0, 0.0, 1.5, -15.0], [0.0, -1.5, 0.0, 25.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)
MOVING_AFFINE = torch.tensor(
    [[1.0, 0.0, 0.0, -20.0], [0.0, 1.0, 0.0, -21.0], [0.0, 0.0, 1.0, -19.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)
WORKING_AFFINE = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
WORKING_AFFINE[:3, 3] = torch.tensor([-14.0, -14.0, -14.0], dtype=torch.float64)


def _blob(affine: torch.Tensor, shape: tuple[int, ...], centre: tuple[float, float, float]) -> torch.Tensor:
    points = grid_world_points(affine, shape)
    distance = ((points - torch.tensor(centre, dtype=torch.float64).view(3, 1, 1, 1)) ** 2).sum(0)
    return torch.exp(-distance / 60.0).float()[None]


def _pair() -> tuple[MetaTensor, MetaTensor]:
    fixed = MetaTensor(_blob(FIXED_AFFINE, (20, 18, 22), (0.0, 0.0, 0.0)), affine=FIXED_AFFINE)
    fixed.meta["filename_or_obj"] = "fixed.nii.gz"
    moving = MetaTensor(_blob(MOVING_AFFINE, (48, 48, 48), (3.0, -2.0, 1.0)), affine=MOVING_AFFINE)
    return fixed, moving


def test_a_world_translation_lands_on_the_fixed_grid():
    fixed, moving = _pair()
    ddf = torch.zeros(3, 15, 15, 15)
    ddf[0], ddf[1], ddf[2] = 1.5, -1.0, 0.5  # working voxels of 2 mm: (3, -2, 1) mm in RAS
    label = MetaTensor((_blob(MOVING_AFFINE, (48, 48, 48), (3.0, -2.0, 1.0)) > 0.5).long(), affine=MOVING_AFFINE)
    out = map_to_fixed_grid(ddf, WORKING_AFFINE, fixed, moving, label)
    assert out["warped_image"].shape == fixed.shape and out["ddf"].shape == (3, 20, 18, 22)
    # the moving blob sits at (3, -2, 1) mm: the translation brings it onto the fixed blob
    error = (out["warped_image"] - fixed.as_tensor()).abs()
    assert error.max() < 0.08 and error.mean() < 0.005  # trilinear interpolation of a 5 mm wide blob
    assert torch.allclose(out["ddf"][:, 5, 5, 5], torch.tensor([-3.0, 2.0, 1.0]), atol=1e-4)  # LPS components
    assert torch.allclose(out["jacobian"], torch.ones(1, 20, 18, 22), atol=1e-4)
    assert out["warped_label"].dtype == torch.int64
    assert (out["warped_label"] != (fixed.as_tensor() > 0.5).long()).float().mean() < 0.01
    voxels = out["ddf_voxels"][:, 5, 5, 5]
    assert torch.allclose(FIXED_AFFINE[:3, :3].float() @ voxels, torch.tensor([3.0, -2.0, 1.0]), atol=1e-4)


PREALIGN = torch.tensor(
    [[1.06, 0.05, 0.0, 2.0], [-0.04, 0.97, 0.02, -1.5], [0.0, 0.03, 1.02, 1.0], [0.0, 0.0, 0.0, 1.0]],
    dtype=torch.float64,
)


def test_the_pre_alignment_is_composed_with_the_field():
    fixed, moving = _pair()
    ddf = torch.zeros(3, 15, 15, 15)
    ddf[0] = 1.0  # 2 mm along x in the pre-aligned frame
    out = map_to_fixed_grid(ddf, WORKING_AFFINE, fixed, moving, prealign=PREALIGN)
    points = grid_world_points(FIXED_AFFINE, (20, 18, 22))
    shifted = points + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64).view(3, 1, 1, 1)
    expected = (PREALIGN[:3, :3] @ shifted.reshape(3, -1) + PREALIGN[:3, 3:]).reshape(points.shape) - points
    lps = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    assert torch.allclose(out["ddf"].double(), expected * lps, atol=1e-4)
    assert torch.allclose(out["jacobian"], torch.full((1, 20, 18, 22), float(torch.linalg.det(PREALIGN))), atol=1e-4)
    prealigned = map_to_fixed_grid(torch.zeros_like(ddf), WORKING_AFFINE, fixed, moving, prealign=PREALIGN)
    assert torch.equal(prealigned["warped_image"], prealigned["prealigned"])
    assert not torch.allclose(prealigned["prealigned"], prealigned["moving_on_fixed"])
    with pytest.raises(ValueError, match="prealign must be a"):
        map_to_fixed_grid(ddf, WORKING_AFFINE, fixed, moving, prealign=torch.eye(3))


@pytest.mark.parametrize("prealign", (None, PREALIGN), ids=("deformation", "affine_and_deformation"))
def test_written_field_reproduces_the_warp_in_simpleitk(tmp_path, prealign):
    fixed, moving = _pair()
    ddf = 0.8 * torch.randn(3, 4, 4, 4)
    ddf = torch.nn.functional.interpolate(ddf[None], size=(15, 15, 15), mode="trilinear", align_corners=True)[0]
    out = map_to_fixed_grid(ddf, WORKING_AFFINE, fixed, moving, prealign=prealign)
    meta = {"filename_or_obj": "pair.nii.gz", "original_channel_dim": "no_channel", "spatial_shape": (20, 18, 22)}
    data = {k: MetaTensor(out[k], affine=FIXED_AFFINE, meta=dict(meta)) for k in ("warped_image", "ddf")}
    for key, writer in (
        ("warped_image", "autoreg_monai.io.AtomicNibabelWriter"),
        ("ddf", "autoreg_monai.io.DisplacementFieldWriter"),
    ):
        SaveImaged(
            keys=key,
            output_dir=tmp_path,
            output_postfix=key,
            separate_folder=False,
            resample=False,
            writer=writer,
            print_log=False,
        )(data)
    moving_file = tmp_path / "moving.nii.gz"
    SaveImaged(
        keys="m", output_dir=tmp_path, output_postfix="", separate_folder=False, resample=False, print_log=False
    )({"m": MetaTensor(moving.as_tensor(), affine=MOVING_AFFINE, meta={"filename_or_obj": "moving.nii.gz"})})
    moving_file = next(tmp_path.glob("moving*.nii.gz"))
    field = sitk.ReadImage(str(tmp_path / "pair_ddf.nii.gz"), sitk.sitkVectorFloat64)
    warped = sitk.ReadImage(str(tmp_path / "pair_warped_image.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3
    assert np.allclose(field.GetOrigin(), warped.GetOrigin()) and np.allclose(
        field.GetDirection(), warped.GetDirection()
    )
    reference = sitk.Resample(
        sitk.ReadImage(str(moving_file), sitk.sitkFloat64),
        warped,
        sitk.DisplacementFieldTransform(field),
        sitk.sitkLinear,
        0.0,
    )
    difference = np.abs(sitk.GetArrayFromImage(reference) - sitk.GetArrayFromImage(warped)).transpose(2, 1, 0)
    # compare where the displaced points fall inside the moving image (at its edge ITK and torch pad differently)
    ras = out["ddf"].double() * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    points = grid_world_points(FIXED_AFFINE, (20, 18, 22)) + ras
    index = torch.linalg.solve(MOVING_AFFINE[:3, :3], points.reshape(3, -1) - MOVING_AFFINE[:3, 3:]).reshape(
        3, 20, 18, 22
    )
    inside = ((index >= 1) & (index <= torch.tensor([46.0, 46.0, 46.0], dtype=torch.float64).view(3, 1, 1, 1))).all(0)
    assert inside.float().mean() > 0.9
    assert difference[inside.numpy()].max() < 1e-3

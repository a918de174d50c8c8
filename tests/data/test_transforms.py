# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The pair transforms: pre-alignment onto the fixed grid, and the isotropic fit into the working grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from autoreg_monai.data import FitToSized, PreAlignd
from autoreg_monai.metrics import dice_per_label
from autoreg_monai.spatial import grid_world_points

FIXED_AFFINE = torch.tensor(
    [[-2.0, 0.0, 0.0, 30.0], [0.0, 0.0, 2.0, -30.0], [0.0, -2.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


def _ball(affine: torch.Tensor, shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> torch.Tensor:
    points = grid_world_points(affine, shape)
    distance = ((points - torch.tensor(centre, dtype=torch.float64).view(3, 1, 1, 1)) ** 2).sum(0).sqrt()
    return (distance < radius)[None]


def test_pre_alignment_none_resamples_through_world_coordinates():
    moving_affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    moving_affine[:3, 3] = -20.0
    label = _ball(moving_affine, (40, 40, 40), (2.0, -3.0, 4.0), 9.0).long() * 7
    data = {
        "moving_image": MetaTensor(label.float(), affine=moving_affine, meta={"filename_or_obj": "/x/sub01.nii.gz"}),
        "moving_label": MetaTensor(label, affine=moving_affine),
        "fixed_image": MetaTensor(torch.rand(1, 30, 30, 30), affine=FIXED_AFFINE),
    }
    out = PreAlignd(["moving_image", "moving_label"], "fixed_image", "none", ["bilinear", "nearest"])(data)
    expected = _ball(FIXED_AFFINE, (30, 30, 30), (2.0, -3.0, 4.0), 9.0).long() * 7
    for key in ("moving_image", "moving_label"):
        assert out[key].shape == (1, 30, 30, 30) and torch.equal(out[key].affine, FIXED_AFFINE)
    assert out["moving_label"].dtype == torch.int64 and set(out["moving_label"].unique().tolist()) == {0, 7}
    assert float(dice_per_label(out["moving_label"][None], expected[None], [7])[0, 0]) > 0.9
    assert out["moving_image"].meta["filename_or_obj"] == "/x/sub01.nii.gz"  # output names still come from it
    assert "prealign_matrix" not in out


def test_pre_alignment_none_leaves_a_pair_on_one_grid_untouched():
    image = MetaTensor(torch.rand(1, 8, 9, 10), affine=FIXED_AFFINE)
    out = PreAlignd("moving_image", "fixed_image")({"moving_image": image, "fixed_image": image.clone()})
    assert out["moving_image"] is image


def test_affine_pre_alignment_of_a_real_pair_raises_the_label_overlap(sample_data):
    """FreeSurfer subject -> fsaverage: not aligned in world space; the affine brings its aseg labels over."""
    keys = ["moving_image", "moving_label", "fixed_image", "fixed_label"]
    data = LoadImaged(keys, ensure_channel_first=True, image_only=True)(
        {
            "moving_image": sample_data / "freesurfer_mne_sample" / "T1_3mm.nii.gz",
            "moving_label": sample_data / "freesurfer_mne_sample" / "aseg_3mm.nii.gz",
            "fixed_image": sample_data / "freesurfer_fsaverage_atlas" / "brain.nii.gz",
            "fixed_label": sample_data / "freesurfer_fsaverage_atlas" / "aseg.nii.gz",
        }
    )
    scores = {}
    for mode in ("none", "affine"):
        out = PreAlignd(["moving_image", "moving_label"], "fixed_image", mode, ["bilinear", "nearest"])(data)
        moving, fixed = out["moving_label"].as_tensor().long(), out["fixed_label"].as_tensor().long()
        labels = sorted(set(moving.unique().tolist()) & set(fixed.unique().tolist()) - {0})
        scores[mode] = float(dice_per_label(moving[None], fixed[None], labels).nanmean())
    print(f"\naseg Dice, world coordinates {scores['none']:.4f} -> affine pre-alignment {scores['affine']:.4f}")
    assert out["prealign_matrix"].shape == (4, 4) and out["prealign_matrix"].dtype == torch.float64
    assert scores["affine"] > scores["none"] + 0.2


def test_pre_alignment_refuses_bad_input():
    image = MetaTensor(torch.rand(1, 8, 8, 8), affine=FIXED_AFFINE, meta={"filename_or_obj": "/d/sub02.nii.gz"})
    with pytest.raises(ValueError, match="unknown pre-alignment"):
        PreAlignd("moving_image", transform="similarity")
    flat = MetaTensor(torch.rand(1, 8, 8), affine=FIXED_AFFINE, meta={"filename_or_obj": "/d/slice.nii.gz"})
    with pytest.raises(ValueError, match=r"slice.nii.gz: expected a channel-first 3-D image"):
        PreAlignd("moving_image")({"moving_image": flat, "fixed_image": image})
    with pytest.raises(ValueError, match="must be a MetaTensor"):
        PreAlignd("moving_image")({"moving_image": torch.rand(1, 8, 8, 8), "fixed_image": image})
    constant = MetaTensor(torch.zeros(1, 8, 8, 8), affine=FIXED_AFFINE, meta={"filename_or_obj": "/d/empty.nii.gz"})
    with pytest.raises(ValueError, match="empty.nii.gz -> sub02.nii.gz: the moving image is constant"):
        PreAlignd("moving_image", transform="rigid")({"moving_image": constant, "fixed_image": image})


def test_fit_to_size_is_isotropic_in_millimetres_and_keeps_the_world_position():
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0], dtype=torch.float64))  # 40 x 40 x 40 mm
    image = MetaTensor(_ball(affine, (40, 40, 16), (20.0, 20.0, 20.0), 12.0).float(), affine=affine)
    label = MetaTensor(image.long() * 3, affine=affine)
    fit = FitToSized(["image", "label"], (32, 32, 32), mode=["trilinear", "nearest"], anti_aliasing=[True, False])
    out = fit({"image": image, "label": label})
    for key in ("image", "label"):
        assert out[key].shape == (1, 32, 32, 32)
        spacing = np.linalg.norm(np.asarray(out[key].affine)[:3, :3], axis=0)
        assert np.allclose(spacing, 1.25, atol=1e-6)
    assert set(out["label"].unique().tolist()) == {0.0, 3.0}
    # the ball's centre stays at (20, 20, 20) mm
    points = grid_world_points(out["image"].affine, (32, 32, 32))
    weights = out["image"][0].double()
    centre = (points * weights).sum(dim=(1, 2, 3)) / weights.sum()
    assert torch.allclose(centre, torch.tensor([19.375, 19.375, 19.375], dtype=torch.float64), atol=0.7)
    # a long narrow box: fitted by its longest side, the rest padded
    box = MetaTensor(torch.ones(1, 64, 16, 32), affine=torch.eye(4, dtype=torch.float64))
    fitted = FitToSized("image", (32, 32, 32))({"image": box})["image"]
    assert fitted.shape == (1, 32, 32, 32) and fitted[0].sum(dim=(1, 2)).gt(0).sum() == 32
    assert int(fitted[0, 16].gt(0.5).sum()) == 8 * 16


def test_fit_to_spacing_resamples_to_that_resolution_and_pads_to_a_multiple_of_eight():
    """``spacing``: the grid follows the scan's extent at 2 mm, padded to multiples of 8; the ball stays put."""
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.5, 1.0], dtype=torch.float64))  # 100 x 70 x 60 mm
    image = MetaTensor(_ball(affine, (100, 70, 40), (50.0, 35.0, 30.0), 20.0).float(), affine=affine)
    label = MetaTensor(image.long() * 5, affine=affine)
    fit = FitToSized(
        ["image", "label"], (128, 128, 128), mode=["trilinear", "nearest"], anti_aliasing=[True, False], spacing=2.0
    )
    out = fit({"image": image, "label": label})
    for key in ("image", "label"):
        assert out[key].shape == (1, 56, 40, 32)  # 50, 35, 30 voxels of 2 mm, padded to multiples of 8
        spacing = np.linalg.norm(np.asarray(out[key].affine)[:3, :3], axis=0)
        assert np.allclose(spacing, 2.0, atol=1e-6)
    assert set(out["label"].unique().tolist()) == {0.0, 5.0}
    points = grid_world_points(out["image"].affine, out["image"].shape[1:])
    weights = out["image"][0].double()
    centre = (points * weights).sum(dim=(1, 2, 3)) / weights.sum()
    assert torch.allclose(centre, torch.tensor([49.5, 34.5, 29.25], dtype=torch.float64), atol=1.0)
    # a field of view larger than spatial_size voxels of 2 mm: the cap wins, coarser voxels
    capped = FitToSized("image", (32, 32, 32), spacing=2.0)({"image": image})["image"]
    assert max(capped.shape[1:]) == 32
    coarser = np.linalg.norm(np.asarray(capped.affine)[:3, :3], axis=0)  # 100 / 32 mm, up to rounding per axis
    assert np.allclose(coarser, 100 / 32, atol=0.06), coarser
    with pytest.raises(ValueError, match="spacing must be a positive size in mm"):
        FitToSized("image", (32, 32, 32), spacing=0.0)

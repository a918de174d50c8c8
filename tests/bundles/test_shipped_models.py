# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The models shipped in each bundle, on real scans and on a cross-modal pair with a known deformation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import run
from monai.networks.blocks import Warp

from autoreg_monai.data import demo_datalist, random_diffeomorphism, warp_label_map
from autoreg_monai.metrics import dice_per_label
from autoreg_monai.networks import AutoRegNet, Genotype
from autoreg_monai.spatial import grid_world_points, sample_at_world

REPO_ROOT = Path(__file__).resolve().parents[2]
BRAIN_BUNDLES = ("brain_t1", "brain_t2", "brain_t1t2")


def _config(bundle: str, workflow: str) -> dict[str, str]:
    folder = REPO_ROOT / "bundles" / bundle / "configs"
    return {"config_file": str(folder / f"{workflow}.json"), "meta_file": str(folder / "metadata.json")}


def _real_pair(sample_data: Path) -> dict[str, Path]:
    return {
        "moving": sample_data / "freesurfer_niivue_subject" / "norm.nii.gz",
        "moving_label": sample_data / "freesurfer_niivue_subject" / "aseg.nii.gz",
        "fixed": sample_data / "freesurfer_fsaverage_atlas" / "brain.nii.gz",
        "fixed_label": sample_data / "freesurfer_fsaverage_atlas" / "aseg.nii.gz",
    }


def _identity_label(moving_label: Path, fixed: Path) -> np.ndarray:
    """The moving labels resampled onto the fixed grid without deformation (world coordinates)."""
    label, fixed_image = nib.load(moving_label), nib.load(fixed)
    values = sample_at_world(
        torch.from_numpy(np.asarray(label.dataobj).astype(np.int64))[None],
        torch.from_numpy(label.affine),
        grid_world_points(torch.from_numpy(fixed_image.affine), fixed_image.shape),
        mode="nearest",
    )
    return values[0].numpy()


def _mean_dice(pred: np.ndarray, target: np.ndarray, labels: list[int]) -> float:
    scores = dice_per_label(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], labels)
    return float(torch.nanmean(scores))


@pytest.mark.parametrize("bundle", ("brain_t1", "brain_t2", "brain_t1t2", "knee_t1"))
def test_shipped_model_loads_strictly_into_the_genotype_network(bundle):
    models = REPO_ROOT / "bundles" / bundle / "models"
    net = AutoRegNet(Genotype.from_json(models / "genotype.json"))
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True), strict=True)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert (models / "model.pt").stat().st_size < 8 * 2**20


@pytest.mark.parametrize("bundle", BRAIN_BUNDLES)
def test_shipped_brain_model_improves_dice_on_the_real_pair(bundle, sample_data, tmp_path, monkeypatch):
    """FreeSurfer subject (norm + aseg) to the fsaverage atlas: 1 mm LIA 256^3 scans, 42 shared aseg labels."""
    monkeypatch.chdir(REPO_ROOT)
    pair = _real_pair(sample_data)
    out = tmp_path / "results"
    run(
        "run",
        **_config(bundle, "inference"),
        results_dir=str(out),
        device="cpu",
        moving=str(pair["moving"]),
        fixed=str(pair["fixed"]),
        moving_label=str(pair["moving_label"]),
    )
    stem = "norm_to_brain"
    fixed_nib = nib.load(pair["fixed"])
    fixed_itk = sitk.ReadImage(str(pair["fixed"]))
    for what in ("warped", "ddf", "jacobian", "warped_label"):
        path = out / f"{stem}_{what}.nii.gz"
        image = nib.load(path)
        assert np.allclose(image.affine, fixed_nib.affine) and image.shape[:3] == fixed_nib.shape, what
        itk = sitk.ReadImage(str(path))
        assert itk.GetSize()[:3] == fixed_itk.GetSize(), what
        assert np.allclose(itk.GetOrigin()[:3], fixed_itk.GetOrigin(), atol=1e-4), what
        assert np.allclose(itk.GetSpacing()[:3], fixed_itk.GetSpacing(), atol=1e-5), what
        assert np.allclose(
            np.array(itk.GetDirection()).reshape(itk.GetDimension(), -1)[:3, :3].ravel(),
            fixed_itk.GetDirection(),
            atol=1e-5,
        ), what
    fixed_label = np.asarray(nib.load(pair["fixed_label"]).dataobj).astype(np.int64)
    warped = np.asarray(nib.load(out / f"{stem}_warped_label.nii.gz").dataobj).astype(np.int64)
    identity = _identity_label(pair["moving_label"], pair["fixed"])
    labels = sorted(set(np.unique(fixed_label)) & set(np.unique(identity)) - {0})
    before, after = _mean_dice(identity, fixed_label, labels), _mean_dice(warped, fixed_label, labels)
    folded = float((np.asarray(nib.load(out / f"{stem}_jacobian.nii.gz").dataobj) <= 0).mean() * 100)
    print(
        f"\n{bundle} shipped model, real pair, {len(labels)} labels: mean Dice {before:.4f} -> {after:.4f}, "
        f"folded {folded:.4f} %"
    )
    assert after > before


def test_mind_bundle_recovers_a_known_deformation_across_contrasts(tmp_path, monkeypatch):
    """brain_t1t2: a T2-like brain deformed by a known diffeomorphism, registered to its own T1 image."""
    monkeypatch.chdir(REPO_ROOT)
    atlas = demo_datalist("brain_t1t2", num_training=0, num_validation=0, num_test=0, size=64)["atlas"]
    t2 = nib.load(atlas["image_t2"])
    label = nib.load(atlas["label"])
    _, ddf = random_diffeomorphism((64, 64, 64), magnitude=4.0, generator=torch.Generator().manual_seed(3))
    image = Warp(padding_mode="zeros")(torch.from_numpy(t2.get_fdata(dtype=np.float32))[None, None], ddf)[0, 0]
    moving_label = warp_label_map(torch.from_numpy(np.asarray(label.dataobj).astype(np.int64))[None, None], ddf)
    nib.save(nib.Nifti1Image(image.numpy(), t2.affine), tmp_path / "moving_t2.nii.gz")
    nib.save(nib.Nifti1Image(moving_label[0, 0].numpy().astype(np.int16), t2.affine), tmp_path / "moving_label.nii.gz")
    out = tmp_path / "results"
    run(
        "run",
        **_config("brain_t1t2", "inference"),
        results_dir=str(out),
        device="cpu",
        moving=str(tmp_path / "moving_t2.nii.gz"),
        fixed=atlas["image_t1"],
        moving_label=str(tmp_path / "moving_label.nii.gz"),
    )
    fixed_label = np.asarray(label.dataobj).astype(np.int64)
    warped = np.asarray(nib.load(next(out.glob("*_warped_label.nii.gz"))).dataobj).astype(np.int64)
    before = _mean_dice(moving_label[0, 0].numpy(), fixed_label, [1, 2, 3])
    after = _mean_dice(warped, fixed_label, [1, 2, 3])
    print(f"\nbrain_t1t2 (MIND) T2 -> T1 under a known deformation: mean Dice {before:.4f} -> {after:.4f}")
    assert after > before


def test_evaluate_reports_dice_above_identity_on_the_real_pair(sample_data, tmp_path, monkeypatch):
    """brain_t1's model (trained on the demo set) evaluated on a datalist holding the real pair."""
    import json

    monkeypatch.chdir(REPO_ROOT)
    pair = _real_pair(sample_data)
    datalist = {
        "test": [{"image": str(pair["moving"]), "label": str(pair["moving_label"])}],
        "atlas": {"image": str(pair["fixed"]), "label": str(pair["fixed_label"])},
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    run(
        "evaluate",
        **_config("brain_t1", "evaluate"),
        dataset_dir=str(tmp_path),
        eval_dir=str(tmp_path / "eval"),
        device="cpu",
        panels=False,
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_pairs"] == 1 and len(summary["labels"]) >= 40
    mean = summary["mean"]
    print(f"\nbrain_t1 evaluate on the real pair: mean Dice {mean['mean_dice_before']} -> {mean['mean_dice']}")
    assert mean["mean_dice"] > mean["mean_dice_before"]
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(summary["labels"])

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

from autoreg_monai.bundle import load_bundle_config
from autoreg_monai.data import demo_datalist, random_diffeomorphism, warp_label_map
from autoreg_monai.engines import pair_file_stem
from autoreg_monai.losses import MINDSSCLoss
from autoreg_monai.metrics import dice_per_label, warp_labels
from autoreg_monai.networks import AutoRegNet, Genotype
from autoreg_monai.prealign import read_itk_transform
from autoreg_monai.spatial import grid_world_points, sample_at_world

REPO_ROOT = Path(__file__).resolve().parents[2]
BRAIN_BUNDLES = ("brain_t1", "brain_t2", "brain_t1t2")


def _config(bundle: str, workflow: str) -> dict[str, str]:
    folder = REPO_ROOT / "bundles" / bundle / "configs"
    return {"config_file": str(folder / f"{workflow}.json"), "meta_file": str(folder / "metadata.json")}


def _real_pair(sample_data: Path, which: str = "freesurfer") -> dict[str, Path]:
    """A real labelled pair: FreeSurfer subject -> fsaverage (1 mm, 256³) or IXI013 -> IXI012 (2 mm, DLMUSE)."""
    if which == "ixi":
        ixi = sample_data / "ixi_dlmuse"
        return {
            "moving": next(ixi.glob("IXI013*_T1w_2mm.nii.gz")),
            "moving_label": next(ixi.glob("IXI013*_dlmuse_2mm.nii.gz")),
            "fixed": next(ixi.glob("IXI012*_T1w_2mm.nii.gz")),
            "fixed_label": next(ixi.glob("IXI012*_dlmuse_2mm.nii.gz")),
        }
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


def _prealigned_label(moving_label: Path, fixed: Path, transform: Path) -> np.ndarray:
    """The moving labels resampled onto the fixed grid through the pre-alignment alone (the written .tfm)."""
    label, fixed_image = nib.load(moving_label), nib.load(fixed)
    matrix = read_itk_transform(transform)
    points = grid_world_points(torch.from_numpy(fixed_image.affine), fixed_image.shape)
    mapped = (matrix[:3, :3] @ points.reshape(3, -1) + matrix[:3, 3:]).reshape(points.shape)
    values = sample_at_world(
        torch.from_numpy(np.asarray(label.dataobj).astype(np.int64))[None],
        torch.from_numpy(label.affine),
        mapped,
        mode="nearest",
    )
    return values[0].numpy()


@pytest.mark.parametrize("bundle, which", [("brain_t1", "freesurfer"), ("brain_t2", "ixi"), ("brain_t1t2", "ixi")])
def test_shipped_brain_model_on_the_real_pair(bundle, which, sample_data, tmp_path, monkeypatch):
    """Real T1 pairs, not aligned: inference pre-aligns them (SimpleITK affine, the default), the network refines.

    brain_t1: FreeSurfer subject (norm + aseg) to the fsaverage atlas, 1 mm LIA 256^3 scans, 42 shared aseg
    labels (the subject in its scanner space, the atlas in MNI305 space). brain_t2 and brain_t1t2: IXI013 to
    IXI012, 2 mm scans with DLMUSE labels (the smaller grid keeps the suite short). Every output is on the
    fixed scan's grid for nibabel and SimpleITK alike. Each model improves the Dice over the identity; the T1
    model also improves it over the pre-alignment alone (the T2 and T2-to-T1 models see a T1 pair here, a
    contrast they were not trained for, so that is printed, not asserted).
    """
    monkeypatch.chdir(tmp_path)  # MONAI's runner from any folder
    pair = _real_pair(sample_data, which)
    out = tmp_path / "results"
    # brain_t1 as `autoreg register` runs it (the bundle's refine_steps); the others' refinement briefly (speed)
    refine = {} if bundle == "brain_t1" else {"refine_steps": 2}
    run(
        "run",
        **_config(bundle, "inference"),
        results_dir=str(out),
        device="cpu",
        moving=str(pair["moving"]),
        fixed=str(pair["fixed"]),
        moving_label=str(pair["moving_label"]),
        **refine,
    )
    stem = pair_file_stem(f"{pair['moving'].name} -> {pair['fixed'].name}")
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
    prealigned = _prealigned_label(pair["moving_label"], pair["fixed"], out / f"{stem}_affine.tfm")
    labels = sorted(set(np.unique(fixed_label)) & set(np.unique(identity)) - {0})
    before = _mean_dice(identity, fixed_label, labels)
    affine, after = _mean_dice(prealigned, fixed_label, labels), _mean_dice(warped, fixed_label, labels)
    folded = float((np.asarray(nib.load(out / f"{stem}_jacobian.nii.gz").dataobj) <= 0).mean() * 100)
    print(
        f"\n{bundle} shipped model, real pair, {len(labels)} labels: mean Dice {before:.4f} (world coordinates) -> "
        f"{affine:.4f} (affine pre-alignment) -> {after:.4f} (registered), folded {folded:.4f} %"
    )
    assert after > before
    if bundle == "brain_t1":
        assert after > affine
    assert folded < 0.1


def test_mind_bundle_recovers_a_known_deformation_across_contrasts(monkeypatch):
    """brain_t1t2's loss (MIND-SSC): a T2-like brain deformed by a known diffeomorphism, registered to its own T1.

    The bundle's network is fitted to this one pair with the bundle's own registration loss and loss weights
    (unsupervised: the labels only score the result).
    """
    monkeypatch.chdir(REPO_ROOT)
    parser = load_bundle_config(REPO_ROOT / "bundles/brain_t1t2", "train")
    loss = parser.get_parsed_content("registration_loss")
    assert all(isinstance(term, MINDSSCLoss) for term in loss.similarity.similarities)
    atlas = demo_datalist("brain_t1t2", num_training=0, num_validation=0, num_test=0, size=32)["atlas"]
    fixed = torch.from_numpy(nib.load(atlas["image_t1"]).get_fdata(dtype=np.float32))[None, None]
    t2 = torch.from_numpy(nib.load(atlas["image_t2"]).get_fdata(dtype=np.float32))[None, None]
    label = torch.from_numpy(np.asarray(nib.load(atlas["label"]).dataobj).astype(np.int64))[None, None]
    _, ddf = random_diffeomorphism((32, 32, 32), magnitude=3.0, generator=torch.Generator().manual_seed(3))
    moving, moving_label = Warp(padding_mode="zeros")(t2, ddf), warp_label_map(label, ddf)
    channels_last = parser.get_parsed_content("network_def#channels_last")  # as the bundle trains it
    net = AutoRegNet(Genotype.from_json("bundles/brain_t1t2/models/genotype.json"), channels_last=channels_last)
    weights = torch.tensor(net.genotype().loss_weights)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(120):
        field, pyramid = net(moving, fixed)
        value = (weights * loss.terms(moving, fixed, field, pyramid)).sum()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        field, _ = net(moving, fixed)
    before = float(dice_per_label(moving_label, label, [1, 2, 3]).nanmean())
    after = float(dice_per_label(warp_labels(moving_label, field), label, [1, 2, 3]).nanmean())
    print(f"\nbrain_t1t2 (MIND) T2 -> T1 under a known deformation: mean Dice {before:.4f} -> {after:.4f}")
    assert after > before + 0.02


def test_evaluate_reports_dice_above_identity_on_the_real_pair(sample_data, tmp_path, monkeypatch):
    """brain_t1's model (trained on the demo set) evaluated on a datalist holding the real pair.

    With ``prealign affine`` the "before" scores are those of the affine pre-alignment: the network's
    deformation must add to it.
    """
    import json

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
        prealign="affine",
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_pairs"] == 1 and len(summary["labels"]) >= 40
    mean = summary["mean"]
    print(f"\nbrain_t1 evaluate on the real pair: mean Dice {mean['mean_dice_before']} -> {mean['mean_dice']}")
    assert mean["mean_dice"] > mean["mean_dice_before"]
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(summary["labels"])

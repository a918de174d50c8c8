# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""train -> evaluate -> inference -> export of a bundle, end to end through ``monai.bundle``, at 32^3."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, run
from monai.data import load_net_with_metadata

from autoreg_monai.data import demo_datalist, demo_label_names, make_pairs
from autoreg_monai.networks import AutoRegNet, AutoRegPairNet, Genotype

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("brain_t1", "brain_t2", "brain_t1t2", "knee_t1")
PAIRING = {"brain_t1": "atlas", "brain_t2": "atlas", "brain_t1t2": "cross_modal", "knee_t1": "atlas"}
DEMO = {"num_training": 2, "num_validation": 1, "num_test": 2, "size": 32}
SMALL = {
    "spatial_size": [32, 32, 32],
    "demo_options": DEMO,
    "feature_channels": [8, 16],
    "deformation_channels": [16, 16, 8],
    "device": "cpu",
}


def _config(bundle: str, workflow: str) -> dict[str, str]:
    folder = REPO_ROOT / "bundles" / bundle / "configs"
    return {
        "config_file": str(folder / f"{workflow}.json"),
        "meta_file": str(folder / "metadata.json"),
        "logging_file": str(folder / "logging.conf"),
    }


def _train(root: Path, bundle: str, max_epochs: int, **overrides) -> Path:
    models = root / "models"
    models.mkdir()
    Genotype.paper_default().to_json(models / "genotype.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MONAI's runner from any folder: the bundle config names the bundle
        run(
            "train", **_config(bundle, "train"), output_dir=str(models), max_epochs=max_epochs, **{**SMALL, **overrides}
        )
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """brain_t1 trained for 2 epochs from the paper's genotype, in a temporary output folder."""
    return _train(tmp_path_factory.mktemp("brain_t1"), "brain_t1", 2)


@pytest.mark.parametrize("bundle", BUNDLES[1:])
def test_train_evaluate_inference_of_every_bundle(bundle, tmp_path, monkeypatch):
    options = {**DEMO, "num_validation": 2}  # cross-modal pairs need two subjects per split
    small = {**SMALL, "demo_options": options}
    root = _train(tmp_path, bundle, 1, demo_options=options)
    assert (root / "models" / "model.pt").is_file()
    run("evaluate", **_config(bundle, "evaluate"), output_dir=str(root / "models"), panels=False, **small)
    demo = demo_datalist(bundle, **options)
    pairs = make_pairs(demo, "test", PAIRING[bundle])
    labels = demo_label_names(bundle)
    rows = list(csv.DictReader((root / "eval" / "metrics.csv").open()))
    assert sorted((r["pair"], int(r["label"]), r["name"]) for r in rows) == sorted(
        (p["pair"], value, name) for p in pairs for value, name in labels.items()
    )
    assert json.loads((root / "eval" / "summary.json").read_text())["num_pairs"] == len(pairs)
    run("run", **_config(bundle, "inference"), output_dir=str(root / "models"), **small)
    for pair in pairs:
        fixed = nib.load(pair["fixed_image"])
        stem = f"{Path(pair['moving_image']).name[:-7]}_to_{Path(pair['fixed_image']).name[:-7]}"
        for what in ("warped", "ddf", "jacobian", "warped_label"):
            image = nib.load(root / "results" / f"{stem}_{what}.nii.gz")
            assert np.allclose(image.affine, fixed.affine) and image.shape[:3] == fixed.shape, (stem, what)


def _network(cls, models: Path):
    return cls(
        Genotype.from_json(models / "genotype.json"), feature_channels=(8, 16), deformation_channels=(16, 16, 8)
    ).eval()


def test_train_writes_a_weights_only_model_and_resumable_checkpoints(trained):
    models = trained / "models"
    state = torch.load(models / "model.pt", weights_only=True)
    net = _network(AutoRegNet, models)
    net.load_state_dict(state, strict=True)
    pair_net = _network(AutoRegPairNet, models)
    pair_net.load_state_dict(state, strict=True)
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(moving, fixed)[0], pair_net(torch.cat([moving, fixed], 1)))
    checkpoints = sorted(p.name for p in (models / "train").glob("checkpoint_*.pt"))
    assert checkpoints == ["checkpoint_1.pt", "checkpoint_2.pt"]
    assert any((models / "train" / "logs").iterdir())  # TensorBoard events


def test_train_resumes_from_its_last_checkpoint(trained, monkeypatch):
    models = trained / "models"
    run("train", **_config("brain_t1", "train"), output_dir=str(models), max_epochs=3, resume="auto", **SMALL)
    checkpoint = torch.load(models / "train" / "checkpoint_3.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 3 * checkpoint["trainer"]["epoch_length"]
    assert not (models / "train" / "checkpoint_1.pt").exists()  # two kept


def test_evaluate_writes_metrics_summary_and_panels(trained, monkeypatch):
    run("evaluate", **_config("brain_t1", "evaluate"), output_dir=str(trained / "models"), **SMALL)
    rows = list(csv.DictReader((trained / "eval" / "metrics.csv").open()))
    pairs = sorted({r["pair"] for r in rows})
    assert len(pairs) == DEMO["num_test"]  # atlas pairing: one pair per test subject
    assert sorted((r["pair"], r["label"]) for r in rows) == sorted((p, str(v)) for p in pairs for v in (1, 2, 3))
    assert {r["name"] for r in rows} == {"cerebrospinal fluid", "grey matter", "white matter"}
    assert all(0 <= float(r["dice"]) <= 1 and float(r["runtime_s"]) > 0 for r in rows)
    summary = json.loads((trained / "eval" / "summary.json").read_text())
    assert summary["num_pairs"] == 2 and set(summary["per_label"]) == {"1", "2", "3"}
    assert 0 <= summary["mean"]["folding_percent"] < 1
    assert len(list((trained / "eval" / "panels").glob("*.png"))) == 2


def test_inference_writes_outputs_on_the_fixed_grid(trained, monkeypatch):
    run("run", **_config("brain_t1", "inference"), output_dir=str(trained / "models"), **SMALL)
    atlas = nib.load(demo_datalist("brain_t1", **DEMO)["atlas"]["image"])
    outputs = sorted(p.name for p in (trained / "results").glob("*.nii.gz"))
    assert len(outputs) == 2 * 4  # warped, ddf, jacobian, warped_label per test pair
    assert len(list((trained / "results").glob("*_affine.tfm"))) == 2  # the pre-alignment of each pair
    for name in outputs:
        image = nib.load(trained / "results" / name)
        assert np.allclose(image.affine, atlas.affine), name
        assert image.shape[:3] == atlas.shape, name
    field = nib.load(next((trained / "results").glob("*_ddf.nii.gz")))
    assert field.shape == (*atlas.shape, 1, 3) and field.header.get_intent()[0] == "vector"
    labels = np.asarray(nib.load(next((trained / "results").glob("*_warped_label.nii.gz"))).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_inference_of_one_given_pair(trained, monkeypatch, tmp_path):
    demo = demo_datalist("brain_t1", **DEMO)
    moving, fixed = demo["test"][0]["image"], demo["training"][0]["image"]
    out = tmp_path / "out"
    run(
        "run",
        **_config("brain_t1", "inference"),
        output_dir=str(trained / "models"),
        results_dir=str(out),
        moving=moving,
        fixed=fixed,
        **SMALL,
    )
    stem = f"{Path(moving).name[:-7]}_to_{Path(fixed).name[:-7]}"
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}_affine.tfm",
        f"{stem}_ddf.nii.gz",
        f"{stem}_jacobian.nii.gz",
        f"{stem}_warped.nii.gz",
    ]
    run(
        "run",
        **_config("brain_t1", "inference"),
        output_dir=str(trained / "models"),
        results_dir=str(tmp_path / "aligned"),
        moving=moving,
        fixed=fixed,
        prealign="none",
        **SMALL,
    )
    assert not list((tmp_path / "aligned").glob("*.tfm"))  # nothing to write without a pre-alignment


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_ckpt_export_gives_the_eager_output(trained, monkeypatch):
    models = trained / "models"
    config = _config("brain_t1", "inference")
    ckpt_export(
        "network_def",
        filepath=str(models / "model.ts"),
        ckpt_file=str(models / "model.pt"),
        meta_file=config["meta_file"],
        config_file=config["config_file"],
        use_trace=True,
        input_shape=[1, 2, 32, 32, 32],
        output_dir=str(models),
        **{k: v for k, v in SMALL.items() if k != "demo_options"},
    )
    scripted, meta, _ = load_net_with_metadata(str(models / "model.ts"))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    eager = _network(AutoRegPairNet, models)
    eager.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    image = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(image), eager(image), atol=1e-5)


def test_train_logs_to_mlflow_through_monai_tracking(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    models = tmp_path / "models"
    models.mkdir()
    Genotype.paper_default().to_json(models / "genotype.json")
    run("train", **_config("brain_t1", "train"), output_dir=str(models), max_epochs=1, tracking="mlflow", **SMALL)
    mlflow.set_tracking_uri(f"sqlite:///{models / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    assert np.isfinite(runs.iloc[0]["metrics.train_loss"]) and 0 <= runs.iloc[0]["metrics.val_mean_dice"] <= 1

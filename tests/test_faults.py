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
"""Fault injection: crashes at random moments, truncated checkpoints, NaN batches, bad datalists, memory limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoreg_monai.losses import RegistrationLoss

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- crash safety: SIGKILL at a random moment, truncated checkpoints --------------------------------------------

SEARCH_CONFIG = str(REPO_ROOT / "bundles/brain_t1/configs/search.json")
TINY_SEARCH = {
    "spatial_size": [16, 16, 16],
    "demo_options": {"num_training": 2, "num_validation": 1, "num_test": 1, "size": 32},
    "search_feature_channels": [4, 8],
    "search_deformation_channels": [8, 8, 4],
    "integration_steps": 4,
    "max_epochs": 3,
    "warmup_epochs": 1,
    "patience": 5,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def tiny_searcher(brain_t1_searcher):
    """``make(output_dir, **overrides)``: the brain_t1 search shrunk to :data:`TINY_SEARCH`."""
    return lambda output_dir, **overrides: brain_t1_searcher(output_dir, **{**TINY_SEARCH, **overrides})


@pytest.fixture(scope="module")
def uninterrupted_search(tmp_path_factory, tiny_searcher) -> tuple[Path, float]:
    """The tiny search run once without a crash: (its output folder, seconds it took)."""
    import time

    folder = tmp_path_factory.mktemp("uninterrupted")
    start = time.perf_counter()
    tiny_searcher(folder).run()
    seconds = time.perf_counter() - start
    return folder, seconds


def test_a_search_killed_at_a_random_moment_resumes_to_the_same_genotype(
    tmp_path, tiny_searcher, uninterrupted_search, monkeypatch
):
    import random
    import signal
    import time

    folder, seconds = uninterrupted_search
    expected = json.loads((folder / "genotype.json").read_text())
    out = tmp_path / "killed"
    overrides = []
    for key, value in {**TINY_SEARCH, "output_dir": str(out)}.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    command = [sys.executable, "-m", "monai.bundle", "run", "search", "--config_file", SEARCH_CONFIG, *overrides]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("search/feature/checkpoint_*.pt")) and time.monotonic() < deadline:
            assert process.poll() is None, "the search ended before its first checkpoint"
            time.sleep(0.05)
        delay = random.uniform(0.0, 0.7 * seconds)  # anywhere in the rest of the run: a checkpoint write included
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "genotype.json").exists(), f"the run finished before the kill ({delay:.2f} s)"
    tiny_searcher(out, resume="auto").run()
    resumed = json.loads((out / "genotype.json").read_text())
    assert resumed == expected, f"killed {delay:.2f} s after the first checkpoint"


def test_a_truncated_checkpoint_is_skipped_with_a_warning(
    tmp_path, tiny_searcher, uninterrupted_search, monkeypatch, caplog
):
    folder, _ = uninterrupted_search
    expected = json.loads((folder / "search" / "feature" / "genotype.json").read_text())
    searcher = tiny_searcher(tmp_path)
    searcher.run_stage("feature")
    stage = tmp_path / "search" / "feature"
    (stage / "genotype.json").unlink()  # as if the run died after its last checkpoint
    newest = stage / "checkpoint_3.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up mid-write
    with caplog.at_level("WARNING"):
        tiny_searcher(tmp_path, resume="auto").run_stage("feature")  # epoch 3 again, from checkpoint_2.pt
    assert f"skipping the damaged checkpoint {newest}" in caplog.text
    assert "resuming from an older one" in caplog.text
    assert json.loads((stage / "genotype.json").read_text()) == expected
    rewritten = torch.load(newest, weights_only=True)["trainer"]  # written whole again at the end of epoch 3
    assert rewritten["iteration"] == 3 * rewritten["epoch_length"]


# ---- numerical faults: NaN injected into a batch ----------------------------------------------------------------


class _PoisonedLoader:
    """The training pairs of ``loader`` with NaN written into the moving image of the batches ``poisoned``."""

    def __init__(self, loader, poisoned) -> None:
        self.loader, self.poisoned = loader, poisoned

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if self.poisoned(index):
                batch = dict(batch)
                image = batch["moving_image"].clone()
                image[..., 3:6, 3:6, 3:6] = float("nan")
                batch["moving_image"] = image
            yield batch


@pytest.mark.parametrize("order", ["second", "first"])
def test_a_nan_batch_is_skipped_and_logged_and_the_search_goes_on(tmp_path, tiny_searcher, caplog, order):
    searcher = tiny_searcher(tmp_path, max_epochs=2, warmup_epochs=0, order=order)
    searcher.train_loader = _PoisonedLoader(searcher.train_loader, lambda index: index == 1)
    with caplog.at_level("WARNING"):
        searcher.run_stage("feature")
    skipped = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert all(m.startswith("search, feature stage, epoch ") and "pair " in m and " -> " in m for m in skipped)
    if order == "second":  # the unrolled step takes ω through the poisoned training batch: the α step is skipped too
        assert len(skipped) == 4, skipped  # the upper and the ω step of the poisoned batch, in each of the 2 epochs
        assert "non-finite upper loss" in skipped[0] or "non-finite hypergradient of α_F" in skipped[0]
    else:  # first order: α's gradient is taken on the (clean) validation batch alone; only the ω step is skipped
        assert len(skipped) == 2, skipped
        assert all("in the weight step" in m for m in skipped)
    state = torch.load(tmp_path / "search" / "feature" / "checkpoint_2.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["network"].values())  # ω and α stayed finite


def test_training_skips_nan_steps_and_stops_after_k_in_a_row(caplog):
    from monai.engines import SupervisedTrainer

    from autoreg_monai.engines import RegistrationTrainStep
    from autoreg_monai.networks import AutoRegNet, Genotype
    from autoreg_monai.numerical_guard import NumericalFaultError

    genotype = Genotype.paper_default()
    net = AutoRegNet(genotype, feature_channels=(4, 8), deformation_channels=(8, 8, 4), integration_steps=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    good = {"moving_image": torch.rand(1, 1, 16, 16, 16), "fixed_image": torch.rand(1, 1, 16, 16, 16), "pair": ["g"]}
    bad = {**good, "moving_image": torch.full((1, 1, 16, 16, 16), float("nan")), "pair": ["bad.nii.gz -> f.nii.gz"]}
    step = RegistrationTrainStep(RegistrationLoss("lncc", num_scales=2), genotype.loss_weights, max_bad_steps=3)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[bad, bad, good, bad, bad, bad], network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), loss_function=None, iteration_update=step,
        decollate=False,
    )  # fmt: skip
    with caplog.at_level("WARNING"), pytest.raises(NumericalFaultError) as raised:
        trainer.run()
    assert "training, epoch 1, iteration 6, pair bad.nii.gz -> f.nii.gz: non-finite loss" in str(raised.value)
    assert "3 consecutive iterations had NaN/Inf values" in str(raised.value)  # the good pair reset the count
    assert sum("step skipped" in r.getMessage() for r in caplog.records) == 5  # iterations 1, 2, 4, 5, 6
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in net.state_dict().values())  # only the good step moved ω


def test_consecutive_nan_batches_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, tiny_searcher, monkeypatch):
    from autoreg_monai.numerical_guard import NumericalFaultError

    searcher = tiny_searcher(tmp_path, max_epochs=3, warmup_epochs=0)
    searcher.max_bad_steps = 2
    epoch_length = len(searcher.train_loader)
    state = {"batches": 0}

    def poisoned(index: int) -> bool:  # every batch from the second epoch on
        state["batches"] += 1
        return state["batches"] > epoch_length

    searcher.train_loader = _PoisonedLoader(searcher.train_loader, poisoned)
    with pytest.raises(NumericalFaultError) as raised:
        searcher.run_stage("feature")
    message = str(raised.value)
    assert message.startswith("search, feature stage, epoch 2, iteration ")
    assert f"iteration {epoch_length + 2}, pair " in message
    assert "2 consecutive iterations had NaN/Inf values, so the run stops" in message
    assert "The newest checkpoint holds the last good state" in message
    stage = tmp_path / "search" / "feature"
    assert sorted(p.name for p in stage.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]
    good = torch.load(stage / "checkpoint_1.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["network"].values())
    assert not (stage / "genotype.json").exists()


# ---- bad input: each refused before any work starts, through the CLI and through MONAI's bundle runner ---------


def _ixi(sample_data: Path, subject: str, kind: str) -> str:
    return str(next((sample_data / "ixi_dlmuse").glob(f"{subject}*_{kind}_2mm.nii.gz")))


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture()
def bad_datalists(sample_data, tmp_path) -> dict[str, tuple[Path, str]]:
    """One datalist folder per bad-input case, each with the real IXI scans and one broken entry first:
    ``case -> (dataset_dir, expected message)``."""
    subjects = {s: {"image": _ixi(sample_data, s, "T1w"), "label": _ixi(sample_data, s, "dlmuse")}
                for s in ("IXI012", "IXI013", "IXI014", "IXI033")}  # fmt: skip
    good = {"training": [subjects["IXI013"], subjects["IXI014"]], "validation": [subjects["IXI033"]],
            "atlas": subjects["IXI012"]}  # fmt: skip
    real = nib.load(subjects["IXI013"]["image"])
    volume = np.asarray(real.dataobj, dtype=np.float32)
    files = tmp_path / "files"
    files.mkdir()
    truncated = files / "truncated.nii.gz"
    raw = Path(subjects["IXI013"]["image"]).read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    (files / "empty.nii.gz").write_bytes(b"")
    (files / "garbage.nii.gz").write_bytes(b"not an image at all")
    nan = volume.copy()
    nan[10, 10, 10] = np.nan
    float_label = np.asarray(nib.load(subjects["IXI013"]["label"]).dataobj, dtype=np.float32) + 0.5
    cases = {
        "truncated": ({"image": str(truncated)}, "truncated.nii.gz: cannot read the image of training[0] as an image"),
        "zero-size": ({"image": str(files / "empty.nii.gz")}, "empty.nii.gz: cannot read the image of training[0]"),
        "unreadable": ({"image": str(files / "garbage.nii.gz")}, "garbage.nii.gz: cannot read the image of"),
        "2-D": ({"image": _nifti(files / "slice.nii.gz", volume[:, :, 40])},
                "slice.nii.gz: the image of training[0] is 2-D"),
        "4-D": ({"image": _nifti(files / "series.nii.gz", np.stack([volume, volume], -1))},
                "series.nii.gz: the image of training[0] is 4-D"),
        "constant": ({"image": _nifti(files / "flat.nii.gz", np.full_like(volume, 7.0))},
                     "flat.nii.gz: the image of training[0] is constant"),
        "NaN": ({"image": _nifti(files / "nan.nii.gz", nan, real.affine)},
                "nan.nii.gz: the image of training[0] has NaN"),
        "float labels": ({"image": subjects["IXI013"]["image"],
                          "label": _nifti(files / "float_label.nii.gz", float_label, real.affine)},
                         "float_label.nii.gz: a label map must hold integer values"),
        "other geometry": ({"image": subjects["IXI013"]["image"],
                            "label": str(sample_data / "freesurfer_mne_sample" / "aseg_3mm.nii.gz")},
                           "aseg_3mm.nii.gz: the label map (shape (86, 86, 86)) does not match its image"),
        "no image key": ({"label": subjects["IXI013"]["label"]}, "datalist.json: training[0] has no image entry"),
        "missing": ({"image": str(files / "gone.nii.gz")}, "datalist.json: 1 listed file(s) do not exist"),
    }  # fmt: skip
    made = {}
    for case, (entry, message) in cases.items():
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        datalist = json.loads(json.dumps(good))
        datalist["training"][0] = entry
        made[case] = (folder, message)
        (folder / "datalist.json").write_text(json.dumps(datalist))
    duplicate = tmp_path / "duplicate"
    duplicate.mkdir()
    (duplicate / "datalist.json").write_text(json.dumps({**good, "test": [subjects["IXI013"]]}))
    made["duplicate"] = (duplicate, "is listed twice (training[0].image and test[0].image)")
    unknown = tmp_path / "unknown_labels"
    unknown.mkdir()
    (unknown / "datalist.json").write_text(json.dumps({**good, "labels": {"0": "background", "4": "a region"}}))
    made["unknown labels"] = (unknown, "does not declare in 'labels' ([0, 4])")
    return made


BAD_CASES = ["missing", "truncated", "zero-size", "unreadable", "2-D", "4-D", "constant", "NaN", "float labels",
             "other geometry", "no image key", "duplicate", "unknown labels"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_datalist_is_refused_by_the_cli_before_any_work(bad_datalists, tmp_path, autoreg_main, case):
    dataset, message = bad_datalists[case]
    out = tmp_path / "search_out"
    code, _, err = autoreg_main(
        "search", "--bundle", str(REPO_ROOT / "bundles" / "brain_t1"), "--dataset_dir", str(dataset),
        "--output_dir", str(out), "--quiet",
    )  # fmt: skip
    assert code == 1, err[-2000:]
    assert err.startswith("autoreg: error: ") and message in err, err[-2000:]
    assert "Traceback" not in err and "Failed to instantiate" not in err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_datalist_is_refused_by_the_bundle_run(bad_datalists, tmp_path, monkeypatch, case):
    from monai.bundle import run

    dataset, message = bad_datalists[case]
    out = tmp_path / "search_out"
    with pytest.raises(Exception) as raised:
        run("search", config_file=SEARCH_CONFIG, dataset_dir=str(dataset), output_dir=str(out), device="cpu")
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any(message in text for text in chain), chain
    assert not out.exists()


# ---- resource guard ----------------------------------------------------------------------------------------------


def test_the_memory_estimate_grows_with_voxels_and_channels_and_suggests_a_grid_that_fits(monkeypatch):
    from autoreg_monai import resources

    small = resources.estimate_memory("search", (32, 32, 32), [8, 16], [16, 16, 8])
    large = resources.estimate_memory("search", (64, 64, 64), [8, 16], [16, 16, 8])
    assert large - resources.BASE_BYTES == pytest.approx(8 * (small - resources.BASE_BYTES), rel=1e-6)
    assert resources.estimate_memory("search", (32, 32, 32), [16, 32], [32, 32, 16]) > small
    assert resources.available_memory("cpu") > 0
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 8 * 2**30)
    with pytest.raises(resources.InsufficientMemoryError) as raised:
        resources.check_memory("the search", "search", (160, 192, 224), [8, 16], [16, 16, 8])
    message = str(raised.value)
    assert message.startswith("the search: at 160x192x224 voxels it needs about ") and "8.0 GiB is free" in message
    suggested = json.loads(message.split("--spatial_size ")[1].split()[0].strip('"'))
    assert all(s % 16 == 0 for s in suggested) and suggested[0] < 160
    resources.check_memory("the search", "search", suggested, [8, 16], [16, 16, 8])  # the suggestion fits
    monkeypatch.setenv("AUTOREG_SKIP_MEMORY_CHECK", "1")
    resources.check_memory("the search", "search", (160, 192, 224), [8, 16], [16, 16, 8])


def test_a_search_that_cannot_fit_is_refused_before_its_first_step(tmp_path, tiny_searcher, monkeypatch):
    from autoreg_monai import resources

    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 64 * 2**20)
    searcher = tiny_searcher(tmp_path)
    with pytest.raises(resources.InsufficientMemoryError, match="the feature stage of the search: at 16x16x16 voxels"):
        searcher.run()
    assert not (tmp_path / "search").exists()


def test_the_search_estimates_its_alpha_stages_by_how_they_run(tmp_path, tiny_searcher, monkeypatch):
    """First-order α steps on a quarter of the channels (the bundles' default) hold about a third of the memory of a
    second-order step on the full mixture (benchmarks/memory_model.py): the guard uses the matching coefficient."""
    from autoreg_monai import resources
    from autoreg_monai.search import searcher as searcher_module

    kinds = []

    def record(what, kind, *args, **kwargs):
        kinds.append(kind)
        raise resources.InsufficientMemoryError("stop here")

    monkeypatch.setattr(searcher_module, "check_memory", record)
    for order, fraction in (("first", 0.25), ("second", 0.25), ("first", 1.0)):
        searcher = tiny_searcher(tmp_path / f"{order}_{fraction}", order=order, search_channel_fraction=fraction)
        with pytest.raises(resources.InsufficientMemoryError, match="stop here"):
            searcher.run_stage("feature")
    assert kinds == ["search_partial", "search", "search"]
    partial = resources.estimate_memory("search_partial", (64, 64, 64), [8, 16], [16, 16, 8])
    assert 1.25 * partial < resources.estimate_memory("search", (64, 64, 64), [8, 16], [16, 16, 8]) / 2


def test_a_registration_that_cannot_fit_is_refused_by_the_cli(sample_data, tmp_path, monkeypatch, autoreg_main):
    from autoreg_monai import resources

    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 2**28)
    out = tmp_path / "out"
    fixed, moving = _ixi(sample_data, "IXI012", "T1w"), _ixi(sample_data, "IXI013", "T1w")
    code, _, err = autoreg_main(
        "register", "--fixed", fixed, "--moving", moving, "--bundle", str(REPO_ROOT / "bundles" / "brain_t1"),
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 1, err[-2000:]
    assert "autoreg: error: registering IXI013" in err and "of cpu memory, and 0.2 GiB is free" in err
    assert not out.exists()


def test_resume_takes_auto_true_or_false_and_refuses_anything_else():
    from autoreg_monai.engines import resume_mode

    assert resume_mode("auto") and resume_mode(True) and resume_mode("True")
    assert not resume_mode(False) and not resume_mode("false")
    with pytest.raises(ValueError, match="resume must be auto, true or false, got 'sometimes'"):
        resume_mode("sometimes")

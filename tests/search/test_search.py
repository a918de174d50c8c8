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
"""The search engine on the brain_t1 bundle's own configuration, shrunk to a few seconds per stage."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from ignite.engine import Events

from autoreg_monai.bundle import load_bundle_config
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet

REPO_ROOT = Path(__file__).resolve().parents[2]
SEARCH_CONFIG = str(REPO_ROOT / "bundles/brain_t1/configs/search.json")
SMALL = {
    "spatial_size": [24, 24, 24],
    "demo_options": {"num_training": 2, "num_validation": 2, "num_test": 1, "size": 32},
    "search_feature_channels": [4, 8],
    "search_deformation_channels": [8, 8, 4],
    "integration_steps": 4,
    "max_epochs": 2,
    "warmup_epochs": 0,
    "patience": 5,
    "device": "cpu",
}


class _On:
    """A minimal handler: call ``fn(engine)`` on ``event``."""

    def __init__(self, event, fn):
        self.event, self.fn = event, fn

    def attach(self, engine):
        engine.add_event_handler(self.event, self.fn)


@pytest.fixture()
def make_searcher(brain_t1_searcher):
    """``make(output_dir, **overrides)``: the brain_t1 search shrunk to :data:`SMALL`."""
    return lambda output_dir, **overrides: brain_t1_searcher(output_dir, **{**SMALL, **overrides})


def test_short_search_moves_alpha_and_writes_outputs(tmp_path, make_searcher):
    genotype = make_searcher(tmp_path).run()
    assert Genotype.from_json(tmp_path / "genotype.json") == genotype
    net = AutoRegNet(genotype, feature_channels=(4, 8), deformation_channels=(8, 8, 4))
    ddf, _ = net(torch.rand(1, 1, 24, 24, 24), torch.rand(1, 1, 24, 24, 24))
    assert ddf.shape == (1, 3, 24, 24, 24)
    history = json.loads((tmp_path / "search" / "feature" / "history.json").read_text())
    probs = torch.tensor(history[-1]["softmax_alpha_feature"])
    assert (probs - 1 / 8).abs().max() > 1e-4  # moved away from the uniform start
    objective = json.loads((tmp_path / "search" / "objective" / "history.json").read_text())
    assert objective[-1]["loss_weights"] != [10.0, 15.0, 3.2, 0.8]
    for stage in ("feature", "deformation", "objective"):
        for figure in ("alpha_heatmap.png", "lambda_trajectory.png"):
            pixels = matplotlib.image.imread(tmp_path / "search" / stage / figure)
            assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.05
        Genotype.from_json(tmp_path / "search" / stage / "genotype.json")
    decisions = {
        s: json.loads((tmp_path / "search" / s / "decisions.json").read_text()) for s in ("feature", "deformation")
    }
    assert list(decisions["feature"]) == ["feature"] and list(decisions["deformation"]) == ["deformation"]
    rows = decisions["feature"]["feature"]
    assert [row["op"] for row in rows] == [op for scale in genotype.feature for op in scale]
    assert all(row["weight"] >= row["runner_up_weight"] and row["decided"] == (row["weight"] >= 0.25) for row in rows)
    assert json.loads((tmp_path / "search" / "objective" / "decisions.json").read_text()) == {}  # nothing searched


def test_killed_stage_resumes_from_its_checkpoint_with_identical_state(tmp_path, make_searcher):
    """Crash during epoch 2; the restarted run starts epoch 2 with exactly the saved ω, α, λ."""

    class Crash(RuntimeError):
        pass

    def crash_in_epoch_two(engine):
        if engine.state.epoch == 2:
            raise Crash("simulated crash")

    searcher = make_searcher(tmp_path)
    searcher.handlers = [_On(Events.ITERATION_COMPLETED, crash_in_epoch_two)]
    with pytest.raises(Crash):
        searcher.run_stage("feature")
    checkpoint_path = tmp_path / "search" / "feature" / "checkpoint_1.pt"
    saved = torch.load(checkpoint_path, weights_only=True)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"]  # saved at the end of epoch 1
    assert not (tmp_path / "search" / "feature" / "genotype.json").exists()  # the stage did not finish

    seen = {}

    def capture(engine):
        seen["epoch"] = engine.state.epoch
        seen["state"] = {k: v.detach().clone() for k, v in engine.network.state_dict().items()}
        seen["optimizer"] = copy.deepcopy(engine.upper_optimizer.state_dict())  # later steps update it in place

    resumed = make_searcher(tmp_path, resume=True)
    resumed.handlers = [_On(Events.EPOCH_STARTED, capture)]
    resumed.keep_checkpoints = 1  # the killed run's checkpoint_1.pt must go too
    resumed.run_stage("feature")
    assert sorted(p.name for p in (tmp_path / "search" / "feature").glob("checkpoint_*.pt")) == ["checkpoint_2.pt"]
    assert seen["epoch"] == 2
    assert seen["state"].keys() == saved["network"].keys()
    mismatched = [k for k, v in saved["network"].items() if not torch.equal(seen["state"][k], v)]
    assert not mismatched, mismatched  # ω, α and λ bit-equal
    assert torch.equal(seen["optimizer"]["state"][0]["exp_avg"], saved["upper_optimizer"]["state"][0]["exp_avg"])
    assert (tmp_path / "search" / "feature" / "genotype.json").is_file()


def test_objective_stage_alone_from_the_command_line(tmp_path):
    """`monai.bundle run search_objective` with a given genotype runs only stage 3, and λ moves."""
    start = Genotype.paper_default()
    start.to_json(tmp_path / "start.json")
    overrides = []
    for key, value in {**SMALL, "output_dir": str(tmp_path / "out"), "genotype": str(tmp_path / "start.json")}.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "search_objective", "--config_file", SEARCH_CONFIG, *overrides]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)  # from any folder
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    searched = Genotype.from_json(tmp_path / "out" / "search" / "objective" / "genotype.json")
    assert searched.feature == start.feature and searched.deformation == start.deformation
    assert searched.loss_weights != start.loss_weights
    print(f"\nλ {start.loss_weights} -> {searched.loss_weights}")
    assert sorted(p.name for p in (tmp_path / "out" / "search").iterdir()) == ["objective"]


def test_search_config_parses():
    parser = load_bundle_config(REPO_ROOT / "bundles" / "brain_t1", "search")
    for run_id in ("search", "search_feature", "search_deformation", "search_objective"):
        assert parser.get(run_id)
    assert parser.get_parsed_content("network_def", instantiate=True).func is not None
    assert parser["bundle_root"] == str(REPO_ROOT / "bundles" / "brain_t1")


def test_search_runs_on_a_user_datalist_of_real_scans(tmp_path, make_searcher, sample_data):
    """`--dataset_dir` with a datalist.json of real IXI T1 scans and DLMUSE labels (pairwise pairing)."""
    subjects = ["IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236", "IXI033-HH-1259"]
    folder = sample_data / "ixi_dlmuse"

    def item(name):
        return {"image": str(folder / f"{name}_T1w_2mm.nii.gz"), "label": str(folder / f"{name}_dlmuse_2mm.nii.gz")}

    dataset = tmp_path / "study"
    dataset.mkdir()
    datalist = {"training": [item(s) for s in subjects[:2]], "validation": [item(s) for s in subjects[2:]]}
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    searcher = make_searcher(tmp_path / "out", dataset_dir=str(dataset), pairing="pairwise", max_epochs=1)
    genotype = searcher.run_stage("feature")
    history = json.loads((tmp_path / "out" / "search" / "feature" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and np.isfinite(history[0]["upper_loss"])
    assert genotype == Genotype.from_json(tmp_path / "out" / "search" / "feature" / "genotype.json")

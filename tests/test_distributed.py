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
"""Search and training on 2 CPU processes (gloo): the same α, λ and ω as one process over the global batch;
the bundles' ``multi_gpu_*.json`` overlays under ``torchrun``, with rank 0 alone writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.data import DistributedSampler
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from autoreg_monai.distributed import all_reduce_mean, any_rank, broadcast_object, is_main_process, shutdown
from autoreg_monai.losses import RegistrationLoss, WarpedLabelDiceLoss
from autoreg_monai.networks import AutoRegSearchNet, Genotype
from autoreg_monai.search import AutoRegSearchTrainer, stage_variables

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "brain_t1" / "configs"
TINY = {
    "spatial_size": "[16,16,16]",
    "max_pairs": "2",
    "demo_options": "{'num_training': 2, 'num_validation': 2, 'num_test': 1, 'size': 16}",
    "integration_steps": "3",
}


def _pairs(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """2-D pairs of smooth random images (float64) with 3-class label maps (generated data)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        images = []
        for _ in range(2):
            coarse = torch.rand(1, 1, 6, 6, generator=generator)
            smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic")[0].clamp(0, 1)
            images.append(smooth.double())
        labels = [(image * 3).long().clamp(0, 2) for image in images]
        pairs.append(
            {"moving_image": images[0], "fixed_image": images[1], "moving_label": labels[0], "fixed_label": labels[1]}
        )
    return pairs


def _search_steps(stage: str, world: int) -> dict[str, list[torch.Tensor]]:
    """Two iterations of a 2-D search stage: 4 training and 2 validation pairs, global batch 2 per iteration.

    In float64: the finite-difference Hessian-vector product divides a difference of gradients by 2ε, which
    turns float32 rounding (a batch of 2 and two batches of 1 sum in other orders) into differences of up to
    0.5 % of α's move after two steps, depending on the CPU. In float64 one process and two agree to ~1e-13, so
    the comparison tests the reduction, not the CPU's rounding.
    """
    set_determinism(0)
    genotype = Genotype.paper_default()
    fixed = {"feature_ops": genotype.feature, "deformation_ops": genotype.deformation} if stage == "objective" else {}
    network = AutoRegSearchNet(
        spatial_dims=2, feature_channels=(4, 8), deformation_channels=(8, 8, 4), integration_steps=3, **fixed
    ).double()
    train, val = _pairs(4, 1), _pairs(2, 2)
    if world > 1:  # each rank its shard, one pair per iteration
        loaders = [
            DataLoader(data, batch_size=1, sampler=DistributedSampler(data, shuffle=False)) for data in (train, val)
        ]
    else:  # the same two pairs per iteration in one batch
        loaders = [DataLoader(data, batch_size=2, shuffle=False) for data in (train, val)]
    variables = stage_variables(network, stage)
    trainer = AutoRegSearchTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loaders[0],
        val_data_loader=loaders[1],
        network=network,
        stage=stage,
        weight_optimizer=torch.optim.SGD(network.weight_parameters(), lr=0.01),
        upper_optimizer=torch.optim.SGD(variables, lr=0.5 if stage == "feature" else 200.0),  # λ's gradient is small
        registration_loss=RegistrationLoss("lncc", spatial_dims=2, num_scales=2),
        label_loss=WarpedLabelDiceLoss(labels=[1, 2]),
        warmup_epochs=0,
        epoch_length=2,
    )
    start = [v.detach().clone() for v in variables]
    trainer.run()
    return {
        "start": start,
        "upper": [v.detach().clone() for v in variables],
        "weights": [p.detach().clone() for p in network.weight_parameters()],
    }


def _worker(rank: int, world: int, stage: str, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_search_steps(stage, world), Path(out) / f"rank{rank}.pt")
    finally:
        shutdown()
        assert not dist.is_initialized()


@pytest.mark.parametrize("stage", ["feature", "objective"])
def test_two_rank_search_equals_one_rank_over_the_global_batch(stage, tmp_path):
    mp.start_processes(_worker, args=(2, stage, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _search_steps(stage, 1)
    name = {"feature": "α_F", "objective": "λ"}[stage]
    for upper0, upper1, upper, start in zip(ranks[0]["upper"], ranks[1]["upper"], single["upper"], single["start"]):
        assert torch.equal(upper0, upper1), f"{name} differs between the ranks"
        moved = (upper - start).abs().max().item()
        assert moved > 1e-4, f"{name} did not move: the test would prove nothing"
        assert (upper0 - upper).abs().max().item() < 1e-9 * moved, f"{name}: 2 ranks != 1 rank"
    for w0, w1, w in zip(ranks[0]["weights"], ranks[1]["weights"], single["weights"]):
        assert w.dtype == torch.float64 and torch.equal(w0, w1)
        torch.testing.assert_close(w0, w, rtol=1e-10, atol=1e-12)


def test_helpers_are_single_process_answers_without_a_process_group():
    tensors = [torch.ones(2, 3), torch.zeros(())]
    assert all_reduce_mean(tensors)[0] is tensors[0]
    assert any_rank(True) and not any_rank(False)
    assert broadcast_object({"a": 1}) == {"a": 1}
    assert is_main_process()


def _reduce_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        mean = all_reduce_mean([torch.full((2, 2), float(rank)), torch.tensor(2.0 * rank)])
        result = {
            "mean": mean,
            "any": any_rank(rank == 1),
            "object": broadcast_object(f"from rank {rank}"),
            "main": is_main_process(),
        }
        torch.save(result, Path(out) / f"reduce{rank}.pt")
    finally:
        shutdown()
        assert not dist.is_initialized()


def test_helpers_under_two_processes(tmp_path):
    mp.start_processes(_reduce_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        result = torch.load(tmp_path / f"reduce{rank}.pt", weights_only=False)
        torch.testing.assert_close(result["mean"][0], torch.full((2, 2), 0.5))
        assert result["mean"][1].item() == 1.0
        assert result["any"] is True  # rank 1's flag reaches rank 0
        assert result["object"] == "from rank 0"
        assert result["main"] is (rank == 0)


def _torchrun(workflow: str, overlay: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    config = f"['{BUNDLE / (workflow + '.json')}','{BUNDLE / overlay}']"
    settings = [f"--{key}={value}" for key, value in TINY.items()]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", workflow,
        "--config_file", config, "--meta_file", str(BUNDLE / "metadata.json"), *settings, *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)  # any folder
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_rank_training_writes_once_and_resumes(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    Genotype.paper_default().to_json(models / "genotype.json")
    channels = ("--feature_channels=[4,8]", "--deformation_channels=[8,8,4]", f"--output_dir={models}")
    first = _torchrun("train", "multi_gpu_train.json", tmp_path, *channels, "--max_epochs=1")
    checkpoints = sorted(p.name for p in (models / "train").glob("*.pt"))
    assert checkpoints == ["checkpoint_1.pt"]  # one checkpoint, not one per rank
    events = list((models / "train" / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 2 and len({e.name.split(".")[-2] for e in events}) == 1  # train + validation, one process
    assert (models / "model.pt").is_file()
    log = first.stdout + first.stderr
    assert log.count("Epoch[1] Metrics -- val_mean_dice") == 1  # rank 0's console log only
    second = _torchrun("train", "multi_gpu_train.json", tmp_path, *channels, "--max_epochs=2", "--resume=true")
    log = second.stdout + second.stderr
    assert "resuming from" in log and "checkpoint_1.pt" in log
    assert "Epoch[1] Metrics" not in log and log.count("Epoch[2] Metrics -- val_mean_dice") == 1
    assert sorted(p.name for p in (models / "train").glob("*.pt")) == ["checkpoint_1.pt", "checkpoint_2.pt"]
    state = torch.load(models / "train" / "checkpoint_2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]  # epoch 2 ended
    assert not any(k.startswith("module.") for k in state["network"])  # DDP unwrapped: loads without DDP


def test_two_rank_bundle_search_writes_one_genotype(tmp_path):
    out = tmp_path / "models"
    result = _torchrun(
        "search",
        "multi_gpu_search.json",
        tmp_path,
        f"--output_dir={out}",
        "--search_feature_channels=[4,8]",
        "--search_deformation_channels=[8,8,4]",
        "--max_epochs=2",
        "--warmup_epochs=0",
    )
    log = result.stdout + result.stderr
    assert log.count("Searched genotype") == 1  # printed by rank 0 only
    genotype = Genotype.from_json(out / "genotype.json")
    for stage in ("feature", "deformation", "objective"):
        folder = out / "search" / stage
        assert Genotype.from_json(folder / "genotype.json").feature == genotype.feature
        history = json.loads((folder / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1, 2]
        assert len(list((folder / "logs").glob("events.out.tfevents.*"))) == 1

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Smoke runs of the benchmark scripts at a tiny size, so that they do not rot (no assertion on speed)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoreg_monai.networks import Genotype

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OPTIONAL_PEERS = {"ants_syn": "ants", "elastix_bspline": "itk"}  # accuracy.py's optional methods (extra `bench`)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True)


def test_inference_speed_writes_its_table_and_json(tmp_path):
    out = tmp_path / "speed.json"
    result = _run(
        "inference_speed.py", "--sizes", "16x16x16", "--models", "autoreg,autoreg_channels_last,voxelmorph",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| model | size | median s | ratio to VoxelMorph |" in result.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "inference_speed" and report["machine"]["torch"]
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"autoreg", "autoreg_channels_last", "voxelmorph"}
    for row in rows.values():
        assert row["size"] == "16x16x16" and row["threads"] == 1 and len(row["times_s"]) == 2
        assert row["median_s"] > 0 and row["parameters"] > 0 and row["weights_mib"] > 0 and row["peak_rss_mib"] > 0
    assert rows["voxelmorph"]["ratio_to_voxelmorph"] == 1.0
    assert rows["autoreg"]["ratio_to_voxelmorph"] == rows["autoreg"]["median_s"] / rows["voxelmorph"]["median_s"]
    assert rows["autoreg_channels_last"]["parameters"] == rows["autoreg"]["parameters"]


def test_search_cost_reports_epochs_and_the_profile(tmp_path):
    out = tmp_path / "cost.json"
    small = ["spatial_size=[16,16,16]", "feature_channels=[4,8]", "search_feature_channels=[4,8]",
             "search_deformation_channels=[8,8,4]", "max_pairs=2", "order=second",
             'demo_options={"num_training":2,"num_validation":1,"num_test":1,"size":32}']  # fmt: skip
    result = _run("search_cost.py", "--skip_whole", *[x for o in small for x in ("--override", o)], "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ratio search / train |" in result.stdout and "hessian_vector_product" in result.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "search_cost" and report["machine"]["logical_cpus"] > 0 and "whole" not in report
    for kind in ("search", "train"):
        row = report["epochs"][kind]
        assert row["peak_rss_mib"] > 0 and row["pairs_per_epoch"] == 2, kind
        assert 0 < row["epoch_seconds"] < row["run_seconds"] and row["first_epoch_seconds"] > 0, kind
    epochs = report["epochs"]
    assert epochs["ratio_search_to_train_epoch"] == epochs["search"]["epoch_seconds"] / epochs["train"]["epoch_seconds"]
    assert report["profile"]["iteration"] == 2  # the second of the epoch's two iterations
    parts = report["profile"]["parts"]
    for name in ("virtual_step", "upper_gradient", "hessian_vector_product", "weight_step"):
        assert parts[name]["seconds"] > 0 and parts[name]["calls"] == 1, name
    assert parts["mixed_op"]["seconds"] > 0 and parts["mixed_op"]["calls"] > 0
    shares = [parts[n]["share_of_step"] for n in ("virtual_step", "upper_gradient", "hessian_vector_product")]
    assert abs(sum(shares) + parts["weight_step"]["share_of_step"] - 1.0) < 1e-6


def test_search_cost_times_the_order_partial_channel_and_layout_variants_side_by_side(tmp_path):
    out = tmp_path / "variants.json"
    small = ["spatial_size=[16,16,16]", "search_feature_channels=[4,8]", "search_deformation_channels=[8,8,4]",
             'demo_options={"num_training":1,"num_validation":1,"num_test":1,"size":16}']  # fmt: skip
    result = _run(
        "search_cost.py", "--parts", "variants", "--variant_pairs", "1",
        *[x for o in small for x in ("--override", o)], "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| second order | 1 | no |" in result.stdout and "| first order | 0.25 | yes |" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"benchmark", "bundle", "overrides", "variants", "machine"}
    variants = report["variants"]
    assert variants["spatial_size"] == [16, 16, 16] and variants["pairs"] == 1
    rows = variants["rows"]
    assert [(r["order"], r["channel_fraction"], r["channels_last"]) for r in rows] == [
        ("second", 1.0, False), ("first", 1.0, False), ("second", 0.25, False), ("first", 0.25, False),
        ("first", 0.25, True),
    ]  # fmt: skip
    for row in rows:
        assert row["seconds_per_iteration"] > 0 and row["peak_rss_mib"] > 0
        assert row["speedup"] == rows[0]["seconds_per_iteration"] / row["seconds_per_iteration"]


def test_search_cost_times_one_and_two_processes(tmp_path):
    out = tmp_path / "dist.json"
    small = ["spatial_size=[16,16,16]", "search_feature_channels=[4,8]", "search_deformation_channels=[8,8,4]",
             "max_pairs=2", 'demo_options={"num_training":2,"num_validation":2,"num_test":1,"size":16}']  # fmt: skip
    result = _run(
        "search_cost.py", "--nproc", "2", "--parts", "distributed",
        *[x for o in small for x in ("--override", o)], "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| cpu | 2 |" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) >= {"distributed", "machine"} and "epochs" not in report
    rows = {(r["device"], r["processes"]): r for r in report["distributed"]["rows"]}
    assert {("cpu", 1), ("cpu", 2)} <= set(rows)
    assert rows[("cpu", 1)]["iterations_per_epoch"] == 2 and rows[("cpu", 2)]["iterations_per_epoch"] == 1
    for row in rows.values():
        assert row["epoch_seconds"] > 0 and row["seconds_per_iteration"] > 0 and row["pairs_per_second"] > 0
    assert rows[("cpu", 1)]["speedup"] == 1.0
    assert rows[("cpu", 2)]["threads_per_process"] == max((os.cpu_count() or 1) // 2, 1)


def test_accuracy_scores_every_method_on_a_real_pair_at_its_own_resolution(sample_data, tmp_path):
    ixi = sample_data / "ixi_dlmuse"
    pairs = [
        {
            "name": "IXI013->IXI012",
            "moving": str(next(ixi.glob("IXI013*_T1w_2mm.nii.gz"))),
            "moving_label": str(next(ixi.glob("IXI013*_dlmuse_2mm.nii.gz"))),
            "fixed": str(next(ixi.glob("IXI012*_T1w_2mm.nii.gz"))),
            "fixed_label": str(next(ixi.glob("IXI012*_dlmuse_2mm.nii.gz"))),
        }
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    out = tmp_path / "accuracy.json"
    result = _run(
        "accuracy.py", "--pairs", str(tmp_path / "pairs.json"), "--methods", "affine,demons,autoreg",
        "--refine_steps", "4", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| pair | method | mean Dice | % folded | HD95 (mm) | s per pair |" in result.stdout
    report = json.loads(out.read_text())
    rows = {row["method"]: row for row in report["pairs"]}
    assert set(rows) == {"affine", "demons", "autoreg", "autoreg+refine4"} == set(report["summary"])
    for name, row in rows.items():
        assert 0 < row["mean_dice"] <= 1 and row["seconds"] > 0 and row["folding_percent"] >= 0, name
        assert row["labels"] > 100 and 0 < row["hd95_mm"] < 50, name  # DLMUSE regions of both maps, in mm
    assert rows["affine"]["folding_percent"] == 0
    assert rows["demons"]["mean_dice"] > rows["affine"]["mean_dice"]
    assert rows["autoreg+refine4"]["mean_dice"] > rows["autoreg"]["mean_dice"]  # four steps already add
    grid = rows["autoreg"]["working_grid"]  # 2 mm voxels over a 240 x 240 x 180 mm head, padded to multiples of 8
    assert all(size % 8 == 0 for size in grid) and 80 <= min(grid) and max(grid) <= 128, grid
    assert rows["autoreg+refine4"]["refine_seconds"] > 0 == rows["autoreg"]["refine_seconds"]


def _benchmark_module(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def _blob(centre: list[float]) -> torch.Tensor:
    """An anisotropic Gaussian blob ``(1, 1, 32, 32, 32)`` around ``centre`` (voxels, tensor axis order)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"))
    widths = torch.tensor([36.0, 16.0, 25.0]).view(3, 1, 1, 1)
    return torch.exp(-((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2 / widths).sum(0))[None, None]


@pytest.mark.parametrize("method", ["demons", "bspline", "ants_syn", "elastix_bspline"])
def test_classical_peers_return_the_field_in_monai_axis_order(method):
    """Each peer's field, converted from its toolkit's x, y, z order, recovers a known shift of the moving blob."""
    if method in OPTIONAL_PEERS:
        pytest.importorskip(OPTIONAL_PEERS[method], reason=f'{method} needs pip install -e ".[bench]"')
    accuracy = _benchmark_module("accuracy")
    fixed, moving = _blob([15.0, 16.0, 17.0]), _blob([18.0, 15.0, 17.0])  # moving = fixed moved by (+3, -1, 0)
    ddf = getattr(accuracy, method)(moving, fixed)
    assert ddf.shape == (1, 3, 32, 32, 32)
    centre = ddf[0, :, 13:18, 14:19, 15:20].mean(dim=(1, 2, 3))  # warped(p) = moving(p + ddf(p)) = fixed(p)
    assert torch.allclose(centre, torch.tensor([3.0, -1.0, 0.0]), atol=0.25), centre.tolist()


def _exit_without_result() -> dict:
    os._exit(3)


def test_run_isolated_reports_a_child_that_died_instead_of_waiting_forever():
    run_isolated = _benchmark_module("_common").run_isolated
    message = "the process ended with exit code 3 before reporting a result"
    assert run_isolated(_exit_without_result) == {"error": message}
    assert run_isolated(dict, [("answer", 42)]) == {"answer": 42}


def test_accuracy_only_keeps_the_pairs_named(sample_data):
    accuracy = _benchmark_module("accuracy")
    names = [pair["name"] for pair in accuracy.default_pairs(sample_data)]
    assert sum("fsaverage" in name for name in names) == 2 and sum("IXI" in name for name in names) == 3
    with pytest.raises(SystemExit, match="--only no_such_pair: no pair name contains it"):
        accuracy.main(["--only", "no_such_pair", "--methods", "affine"])


def test_accuracy_refuses_refinement_weights_that_do_not_fit_the_loss(sample_data):
    accuracy = _benchmark_module("accuracy")
    with pytest.raises(SystemExit, match="--refine_loss_weights: comma-separated numbers, got 'ten'"):
        accuracy.main(["--refine_loss_weights", "ten", "--methods", "autoreg", "--only", "IXI013"])
    with pytest.raises(SystemExit, match=r"--refine_loss_weights: the registration loss has 4 terms but \(2,\)"):
        accuracy.main(["--refine_loss_weights", "1,2", "--methods", "autoreg", "--only", "IXI013"])


def test_seed_agreement_counts_the_edges_every_search_seed_chose_alike():
    seed_agreement = _benchmark_module("search_value").seed_agreement
    first = Genotype.paper_default()
    deformation = [list(scale) for scale in first.deformation]
    deformation[1][2] = "conv_1x1" if deformation[1][2] != "conv_1x1" else "conv_3x3"  # one edge of six differs
    second = Genotype(first.feature, deformation, first.loss_weights)
    agreement = seed_agreement([first, second])
    assert agreement["feature"] == {"agreement": 1.0, "agreed_ops": [op for s in first.feature for op in s]}
    assert agreement["deformation"]["agreement"] == pytest.approx(5 / 6)
    assert agreement["deformation"]["agreed_ops"][5] is None and agreement["deformation"]["agreed_ops"][0] is not None

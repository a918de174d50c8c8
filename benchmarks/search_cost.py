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
"""What a search costs next to a train-evaluation run, measured side by side with a bundle's own workflows.

1. One search epoch (the feature stage, upper steps from the first iteration) and one train-evaluation epoch
   (with its validation) on the same pairs and resolution: each workflow runs 2 epochs in a fresh process and
   the second epoch is timed by a handler on its engine (set-up and first-epoch data loading left out); peak
   resident memory of each process.
2. The whole default search (three stages) and the whole default train-evaluation (with the searched
   genotype), wall time and peak memory; the ratio search / train (``--skip_whole`` to leave it out).
3. A profile of one search iteration (torch.profiler, the ``autoreg::`` scopes of the search code): the
   virtual step, the upper gradient at ω', the finite-difference Hessian-vector product, the ω step, and
   how much of it is spent in the forward passes of the mixed operations.
4. With ``--nproc N``: the search epoch of part 1 under the multi-GPU overlay with 1 and with N
   processes (gloo on CPU, each rank ``cores / N`` threads; then nccl, one GPU per rank, when N GPUs exist):
   seconds per iteration, pairs per second, speed-up.
5. ``variants``: seconds per search iteration (feature stage, upper step from the first iteration) of the
   hypergradient's order (second / first), partial channels (``search_channel_fraction`` 1 / 0.25) and
   channels-last, each the second epoch of a 2-epoch run on ``--variant_pairs`` pairs, side by side.

    python benchmarks/search_cost.py                 # brain_t1 at its defaults (about 45 min on 2 cores)
    python benchmarks/search_cost.py --skip_whole    # parts 1 and 3 only (a few minutes)
    python benchmarks/search_cost.py --nproc 2 --parts distributed   # part 4 only: 1 vs 2 processes
    python benchmarks/search_cost.py --override spatial_size=[16,16,16] --skip_whole --out /tmp/cost.json
    python benchmarks/search_cost.py --parts variants --out benchmarks/results/search_variants.json  # ~15 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from _common import machine, peak_rss_mib, run_isolated, write_json  # benchmarks/ is on sys.path
from ignite.engine import Engine, Events

from autoreg_monai.bundle import compose_workflow, load_bundle_config
from autoreg_monai.networks import Genotype

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "search_cost.json"
PROFILE_SCOPES = (
    "autoreg::virtual_step",
    "autoreg::upper_gradient",
    "autoreg::hessian_vector_product",
    "autoreg::weight_step",
)


class EpochTimer:
    """Wall time of every epoch of an engine, from EPOCH_STARTED to the end of its EPOCH_COMPLETED handlers.

    Attached last, so a train-evaluation epoch includes its validation and checkpointing.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, _: Engine) -> None:
        self._start = time.perf_counter()

    def _completed(self, _: Engine) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class IterationProfiler:
    """torch.profiler over one search iteration: the second of the first epoch (the first warms the caches),
    or the first when the epoch has one. Turning a whole epoch's operator events into the table took
    torch.profiler longer than the epoch itself, so the profile covers one iteration."""

    def __init__(self) -> None:
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.iteration = 0
        self._running = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop)

    def _start(self, engine: Engine) -> None:
        if not self.iteration and engine.state.iteration == min(2, engine.state.epoch_length or 1):
            self.profiler.start()
            self.iteration, self._running = engine.state.iteration, True

    def _stop(self, _: Engine) -> None:
        if self._running:
            self.profiler.stop()
            self._running = False

    def scopes(self) -> dict[str, dict[str, float]]:
        """Total CPU seconds and calls of each ``autoreg::`` scope."""
        events = {e.key: e for e in self.profiler.key_averages() if e.key.startswith("autoreg::")}
        return {key: {"seconds": e.cpu_time_total / 1e6, "calls": e.count} for key, e in sorted(events.items())}


PARTS = ("epochs", "whole", "profile", "distributed", "variants")
VARIANTS = (  # (order, search_channel_fraction, search_channels_last)
    ("second", 1.0, False),
    ("first", 1.0, False),
    ("second", 0.25, False),
    ("first", 0.25, False),
    ("first", 0.25, True),
)


def _workflow(
    bundle: str, config: str, run_id: str, overrides: dict[str, Any], profile: bool, overlay: str | None = None
) -> dict[str, Any]:
    """Run one workflow of ``bundle`` in this process, timing its epochs (``overlay``: the multi-GPU form)."""
    workflow = compose_workflow(
        REPO_ROOT / "bundles" / bundle, config, quiet=True, run_id=run_id, multi_gpu=overlay is not None, **overrides
    )
    workflow.initialize()
    handlers: list[Any] = [EpochTimer()] + ([IterationProfiler()] if profile else [])
    if config == "search":  # the searcher builds one engine per stage and attaches its extra handlers to each
        workflow.parser.get_parsed_content("searcher").handlers.extend(handlers)
    else:  # the parser's cached trainer is the one the run expression starts
        trainer = workflow.parser.get_parsed_content("train#trainer")
        for handler in handlers:
            handler.attach(trainer)
    start = time.perf_counter()
    workflow.run()
    result: dict[str, Any] = {
        "seconds": time.perf_counter() - start,
        "epoch_seconds": handlers[0].seconds,
        "peak_rss_mib": peak_rss_mib(),
    }
    if profile:
        result["profile"], result["profiled_iteration"] = handlers[1].scopes(), handlers[1].iteration
    workflow.finalize()
    return result


def run_workflow(bundle: str, config: str, run_id: str, overrides: dict[str, Any], profile: bool = False) -> dict:
    """:func:`_workflow` in a fresh (forked) process, so memory and caches are its own."""
    result = run_isolated(_workflow, bundle, config, run_id, overrides, profile)
    if "error" in result:
        raise SystemExit(f"{bundle} {config} ({run_id}) failed: {result['error']}")
    return result


def _config_value(bundle: str, config: str, key: str) -> Any:
    """The resolved value of ``key`` in a workflow of ``bundle``."""
    return load_bundle_config(REPO_ROOT / "bundles" / bundle, config).get_parsed_content(key)


def epoch_costs(bundle: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Part 1: the second epoch of a 2-epoch search (feature stage) and of a 2-epoch train-evaluation."""
    search_pairs = overrides.get("max_pairs", _config_value(bundle, "search", "max_pairs"))
    genotype = work / "epoch_genotype.json"
    Genotype.paper_default().to_json(genotype)
    rows = {}
    for kind, config, run_id, extra in (
        ("search", "search", "search_feature", {"warmup_epochs": 0, "patience": 1000}),
        ("train", "train", "train", {"genotype": str(genotype), "max_pairs": search_pairs, "val_interval": 1}),
    ):
        settings = {**overrides, **extra, "max_epochs": 2, "output_dir": str(work / kind)}
        run = run_workflow(bundle, config, run_id, settings)
        if len(run["epoch_seconds"]) != 2:
            raise SystemExit(f"{kind}: expected 2 timed epochs, got {len(run['epoch_seconds'])}")
        rows[kind] = {
            "epoch_seconds": run["epoch_seconds"][1],
            "first_epoch_seconds": run["epoch_seconds"][0],
            "run_seconds": run["seconds"],
            "peak_rss_mib": run["peak_rss_mib"],
            "pairs_per_epoch": search_pairs,
        }
        print(f"{kind}: epochs of {', '.join(f'{t:.1f}' for t in run['epoch_seconds'])} s", flush=True)
    rows["ratio_search_to_train_epoch"] = rows["search"]["epoch_seconds"] / rows["train"]["epoch_seconds"]
    return rows


def whole_costs(bundle: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Part 2: the whole default search, then the whole default train-evaluation of what it found."""
    search_dir = work / "whole_search"
    search = run_workflow(bundle, "search", "search", {**overrides, "output_dir": str(search_dir)})
    print(f"whole search: {search['seconds']:.1f} s", flush=True)
    train = run_workflow(
        bundle,
        "train",
        "train",
        {**overrides, "output_dir": str(work / "whole_train"), "genotype": str(search_dir / "genotype.json")},
    )
    print(f"whole train-evaluation: {train['seconds']:.1f} s", flush=True)
    return {
        "search": {"seconds": search["seconds"], "peak_rss_mib": search["peak_rss_mib"]},
        "train": {"seconds": train["seconds"], "peak_rss_mib": train["peak_rss_mib"]},
        "ratio_search_to_train": search["seconds"] / train["seconds"],
    }


def search_profile(bundle: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Part 3: where one search iteration's time goes, by the search code's profiler scopes."""
    settings = {**overrides, "max_epochs": 1, "warmup_epochs": 0, "patience": 1000, "output_dir": str(work / "prof")}
    result = run_workflow(bundle, "search", "search_feature", settings, profile=True)
    scopes = result["profile"]
    step_total = sum(scopes.get(name, {}).get("seconds", 0.0) for name in PROFILE_SCOPES)
    parts = {
        name.split("::")[1]: {
            "seconds": scopes.get(name, {}).get("seconds", 0.0),
            "calls": scopes.get(name, {}).get("calls", 0),
            "share_of_step": scopes.get(name, {}).get("seconds", 0.0) / step_total if step_total else None,
        }
        for name in (*PROFILE_SCOPES, "autoreg::mixed_op")
    }
    return {"iteration": result["profiled_iteration"], "step_seconds": step_total, "parts": parts}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, world: int, port: int, threads: int, settings: dict[str, Any], bundle: str, out: str) -> None:
    """One rank of part 4: the environment ``torchrun`` would give, then the search stage with the overlay."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(threads)
    run = _workflow(bundle, "search", "search_feature", settings, profile=False, overlay="multi_gpu_search")
    if rank == 0:
        Path(out).write_text(json.dumps(run))


def distributed_costs(bundle: str, overrides: dict[str, Any], work: Path, nproc: int) -> dict[str, Any]:
    """Part 4: the second search epoch (feature stage) with 1 and ``nproc`` processes, on CPU and on GPUs."""
    pairs = overrides.get("max_pairs", _config_value(bundle, "search", "max_pairs"))
    cores = os.cpu_count() or 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.device_count() >= nproc else [])
    rows = []
    for device in devices:
        for world in (1, nproc):
            settings = {**overrides, "warmup_epochs": 0, "patience": 1000, "max_epochs": 2}
            settings["output_dir"] = str(work / f"dist_{device}_{world}")
            if device == "cuda":
                settings.pop("device", None)  # the overlay's cuda:LOCAL_RANK
            else:
                settings["device"] = "cpu"
            threads = max(cores // world, 1) if device == "cpu" else torch.get_num_threads()
            out = work / f"dist_{device}_{world}.json"
            mp.start_processes(
                _rank,
                args=(world, _free_port(), threads, settings, bundle, str(out)),
                nprocs=world,
                start_method="fork" if device == "cpu" else "spawn",
            )
            epoch = json.loads(out.read_text())["epoch_seconds"][1]
            iterations = math.ceil(pairs / world)
            rows.append(
                {
                    "device": device,
                    "processes": world,
                    "threads_per_process": threads,
                    "epoch_seconds": epoch,
                    "iterations_per_epoch": iterations,
                    "seconds_per_iteration": epoch / iterations,
                    "pairs_per_second": pairs / epoch,
                }
            )
            print(f"distributed {device} x{world}: epoch {epoch:.1f} s", flush=True)
    for row in rows:
        single = next(r for r in rows if r["device"] == row["device"] and r["processes"] == 1)
        row["speedup"] = single["epoch_seconds"] / row["epoch_seconds"]
    return {"pairs_per_epoch": pairs, "rows": rows}


def variant_costs(bundle: str, overrides: dict[str, Any], work: Path, pairs: int) -> dict[str, Any]:
    """Part 5: one search epoch per variant of :data:`VARIANTS` (the second of two, on ``pairs`` pairs)."""
    rows = []
    for order, fraction, channels_last in VARIANTS:
        settings = {
            **overrides,
            "order": order,
            "search_channel_fraction": fraction,
            "search_channels_last": channels_last,
            "max_pairs": pairs,
            "warmup_epochs": 0,
            "patience": 1000,
            "max_epochs": 2,
            "output_dir": str(work / f"variant_{order}_{fraction}_{channels_last}"),
        }
        run = run_workflow(bundle, "search", "search_feature", settings)
        seconds = run["epoch_seconds"][1] / pairs
        rows.append(
            {
                "order": order,
                "channel_fraction": fraction,
                "channels_last": channels_last,
                "seconds_per_iteration": seconds,
                "peak_rss_mib": run["peak_rss_mib"],
            }
        )
        print(
            f"variant {order}, fraction {fraction}, channels-last {channels_last}: {seconds:.2f} s/iteration",
            flush=True,
        )
    base = rows[0]["seconds_per_iteration"]
    for row in rows:
        row["speedup"] = base / row["seconds_per_iteration"]
    spatial_size = overrides.get("spatial_size", _config_value(bundle, "search", "spatial_size"))
    return {"spatial_size": list(spatial_size), "pairs": pairs, "rows": rows}


def tables(result: dict[str, Any]) -> str:
    """The results as markdown tables."""
    lines: list[str] = []
    epochs = result.get("epochs")
    if epochs is not None:
        lines += [
            "| one epoch | seconds | peak RSS MiB | pairs |",
            "|---|---|---|---|",
            *(
                f"| {kind} | {epochs[kind]['epoch_seconds']:.2f} | {epochs[kind]['peak_rss_mib']:.0f} | "
                f"{epochs[kind]['pairs_per_epoch']} |"
                for kind in ("search", "train")
            ),
            f"| ratio search / train | {epochs['ratio_search_to_train_epoch']:.2f} | | |",
        ]
    if "whole" in result:
        whole = result["whole"]
        lines += [
            "",
            "| whole default run | seconds | peak RSS MiB |",
            "|---|---|---|",
            f"| search (3 stages) | {whole['search']['seconds']:.1f} | {whole['search']['peak_rss_mib']:.0f} |",
            f"| train-evaluation | {whole['train']['seconds']:.1f} | {whole['train']['peak_rss_mib']:.0f} |",
            f"| ratio search / train | {whole['ratio_search_to_train']:.2f} | |",
        ]
    profile = result.get("profile")
    if profile is not None:
        lines += [
            "",
            f"| search step part (iteration {profile['iteration']}) | seconds | calls | share of step |",
            "|---|---|---|---|",
        ]
        for name, part in profile["parts"].items():
            share = f"{part['share_of_step']:.1%}" if part["share_of_step"] is not None else "-"
            label = f"{name} (forward, inside the parts above)" if name == "mixed_op" else name
            lines.append(f"| {label} | {part['seconds']:.2f} | {part['calls']} | {share} |")
    if "distributed" in result:
        lines += [
            "",
            f"| search epoch ({result['distributed']['pairs_per_epoch']} pairs) | processes | threads each | "
            "s per iteration | pairs per s | speed-up |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['device']} | {r['processes']} | {r['threads_per_process']} | {r['seconds_per_iteration']:.2f} | "
                f"{r['pairs_per_second']:.3f} | {r['speedup']:.2f} |"
                for r in result["distributed"]["rows"]
            ),
        ]
    if "variants" in result:
        variants = result["variants"]
        lines += [
            "",
            f"| search iteration at {variants['spatial_size']} | channel fraction | channels-last | s per iteration | "
            "peak RSS MiB | speed-up |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['order']} order | {r['channel_fraction']:g} | {'yes' if r['channels_last'] else 'no'} | "
                f"{r['seconds_per_iteration']:.2f} | {r['peak_rss_mib']:.0f} | {r['speedup']:.2f} |"
                for r in variants["rows"]
            ),
        ]
    return "\n".join(lines).strip("\n")


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise SystemExit(f"--override: expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="brain_t1", help="a bundle under bundles/")
    parser.add_argument("--override", action="append", default=[], help="bundle config override key=JSON value")
    parser.add_argument("--skip_whole", action="store_true", help="leave out the whole default runs (part 2)")
    parser.add_argument("--nproc", type=int, default=1, help="part 4: also time the search epoch with N processes")
    parser.add_argument(
        "--parts",
        default=None,
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all that apply but variants)",
    )
    parser.add_argument("--variant_pairs", type=int, default=2, help="part 5: pairs per timed epoch")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    parts = set(PARTS) - {"variants"} if args.parts is None else set(args.parts.split(","))
    if not parts <= set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    if args.skip_whole:
        parts.discard("whole")
    if args.nproc < 2:
        parts.discard("distributed")
    overrides = {"device": "cpu", **dict(_parse_override(o) for o in args.override)}
    with tempfile.TemporaryDirectory(prefix="search_cost_") as folder:
        work = Path(folder)
        result: dict[str, Any] = {"benchmark": "search_cost", "bundle": args.bundle, "overrides": overrides}
        if "epochs" in parts:
            result["epochs"] = epoch_costs(args.bundle, overrides, work)
        if "whole" in parts:
            result["whole"] = whole_costs(args.bundle, overrides, work)
        if "profile" in parts:
            result["profile"] = search_profile(args.bundle, overrides, work)
        if "distributed" in parts:
            result["distributed"] = distributed_costs(args.bundle, overrides, work, args.nproc)
        if "variants" in parts:
            result["variants"] = variant_costs(args.bundle, overrides, work, args.variant_pairs)
    result["machine"] = machine("cpu")
    print(tables(result))
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

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
   on the same pairs and resolution: each workflow is run for 1 and for 2 epochs in a fresh process and the
   difference is one epoch (set-up and data caching cancel); peak resident memory of each process.
2. The whole default search (three stages) and the whole default train-evaluation (with the searched
   genotype), wall time and peak memory; the ratio search / train (``--skip_whole`` to leave it out).
3. A profile of the search iterations (torch.profiler, the ``autoreg::`` scopes of the search code): the
   virtual step, the upper gradient at ω', the finite-difference Hessian-vector product, the ω step, and
   how much of it is spent in the forward passes of the mixed operations.

    python benchmarks/search_cost.py                 # brain_t1 at its defaults (about 35 min on 2 cores)
    python benchmarks/search_cost.py --skip_whole    # parts 1 and 3 only
    python benchmarks/search_cost.py --override spatial_size=[16,16,16] --skip_whole --out /tmp/cost.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write_json  # benchmarks/ is on sys.path when a script of it runs

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "search_cost.json"
PROFILE_SCOPES = (
    "autoreg::virtual_step",
    "autoreg::upper_gradient",
    "autoreg::hessian_vector_product",
    "autoreg::weight_step",
)


def _workflow(bundle: str, config: str, run_id: str, overrides: dict[str, Any], profile: bool) -> dict[str, Any]:
    """Run one workflow of ``bundle`` in this process (from the repository root); wall time of its run."""
    import torch
    from monai.bundle import create_workflow

    os.chdir(REPO_ROOT)
    folder = Path("bundles") / bundle / "configs"
    workflow = create_workflow(
        config_file=str(folder / f"{config}.json"),
        meta_file=str(folder / "metadata.json"),
        logging_file=False,
        run_id=run_id,
        **overrides,
    )
    result: dict[str, Any] = {}
    start = time.perf_counter()
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            workflow.run()
        events = {e.key: e for e in prof.key_averages() if e.key.startswith("autoreg::")}
        result["profile"] = {
            key: {"seconds": event.cpu_time_total / 1e6, "calls": event.count} for key, event in sorted(events.items())
        }
    else:
        workflow.run()
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    workflow.finalize()
    return result


def _child(arguments: tuple, queue: Any) -> None:
    try:
        queue.put(_workflow(*arguments))
    except Exception as error:
        queue.put({"error": f"{type(error).__name__}: {error}"})


def run_isolated(bundle: str, config: str, run_id: str, overrides: dict[str, Any], profile: bool = False) -> dict:
    """:func:`_workflow` in a fresh (spawned) process, so memory and caches are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=((bundle, config, run_id, overrides, profile), queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise SystemExit(f"{bundle} {config} ({run_id}) failed: {result['error']}")
    return result


def _read_config(bundle: str, config: str) -> dict[str, Any]:
    return json.loads((REPO_ROOT / "bundles" / bundle / "configs" / f"{config}.json").read_text())


def epoch_costs(bundle: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Part 1: one search epoch and one train-evaluation epoch, from runs of 1 and 2 epochs."""
    from autoreg_monai.networks import Genotype

    search_pairs = overrides.get("max_pairs", _read_config(bundle, "search")["max_pairs"])
    genotype = work / "epoch_genotype.json"
    Genotype.paper_default().to_json(genotype)
    rows = {}
    for kind, config, run_id, extra in (
        ("search", "search", "search_feature", {"warmup_epochs": 0, "patience": 1000}),
        ("train", "train", "train", {"genotype": str(genotype), "max_pairs": search_pairs, "val_interval": 1}),
    ):
        runs = {}
        for epochs in (1, 2):
            settings = {**overrides, **extra, "max_epochs": epochs, "output_dir": str(work / f"{kind}_{epochs}")}
            runs[epochs] = run_isolated(bundle, config, run_id, settings)
            print(f"{kind}: {epochs} epoch(s) in {runs[epochs]['seconds']:.1f} s", flush=True)
        rows[kind] = {
            "epoch_seconds": runs[2]["seconds"] - runs[1]["seconds"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs.values()),
            "pairs_per_epoch": search_pairs,
        }
    rows["ratio_search_to_train_epoch"] = rows["search"]["epoch_seconds"] / rows["train"]["epoch_seconds"]
    return rows


def whole_costs(bundle: str, overrides: dict[str, Any], work: Path) -> dict[str, Any]:
    """Part 2: the whole default search, then the whole default train-evaluation of what it found."""
    search_dir = work / "whole_search"
    search = run_isolated(bundle, "search", "search", {**overrides, "output_dir": str(search_dir)})
    print(f"whole search: {search['seconds']:.1f} s", flush=True)
    train = run_isolated(
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
    """Part 3: where one search epoch's time goes, by the search code's profiler scopes."""
    settings = {**overrides, "max_epochs": 1, "warmup_epochs": 0, "patience": 1000, "output_dir": str(work / "prof")}
    result = run_isolated(bundle, "search", "search_feature", settings, profile=True)
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
    return {"epoch_seconds_profiled": result["seconds"], "step_seconds": step_total, "parts": parts}


def tables(result: dict[str, Any]) -> str:
    """The results as markdown tables."""
    epochs = result["epochs"]
    lines = [
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
    profile = result["profile"]
    lines += ["", "| search step part | seconds | calls | share of step |", "|---|---|---|---|"]
    for name, part in profile["parts"].items():
        share = f"{part['share_of_step']:.1%}" if part["share_of_step"] is not None else "-"
        label = f"{name} (forward, inside the parts above)" if name == "mixed_op" else name
        lines.append(f"| {label} | {part['seconds']:.2f} | {part['calls']} | {share} |")
    return "\n".join(lines)


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
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    overrides = {"device": "cpu", **dict(_parse_override(o) for o in args.override)}
    with tempfile.TemporaryDirectory(prefix="search_cost_") as folder:
        work = Path(folder)
        result: dict[str, Any] = {"benchmark": "search_cost", "bundle": args.bundle, "overrides": overrides}
        result["epochs"] = epoch_costs(args.bundle, overrides, work)
        if not args.skip_whole:
            result["whole"] = whole_costs(args.bundle, overrides, work)
        result["profile"] = search_profile(args.bundle, overrides, work)
    result["machine"] = machine("cpu")
    print(tables(result))
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

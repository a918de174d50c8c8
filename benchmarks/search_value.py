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
"""What the search is worth: the searched genotype against unsearched ones, under one training budget.

Every row is a genotype trained from scratch by the bundle's own ``train`` workflow for the same number of
epochs, once per seed, then scored by its ``evaluate`` workflow on the test pairs with the network alone
(``refine_steps`` 0, so the comparison is of what was trained, not of the test-time refinement):

- ``searched``: the searched genotype (operations and λ; ``--searched``, default the bundle's);
- ``searched, initial λ``: the same operations with the initial λ (10, 15, 3.2, 0.8): what the λ search adds;
- ``paper``: the paper's brain genotype, with the searched λ;
- ``random k``: operations drawn uniformly per edge (seed k), with the searched λ: the random-search
  baseline of Li & Talwalkar (2019) and Yang et al. (2020).

With ``--seed_searches`` (genotypes of the same search run with other seeds) it also reports how often the
searches pick the same operation per edge: a decision the seed does not change is one the data made.

Prints a table (mean ± sd over seeds per row; mean ± sd and best over the random rows) and writes JSON; a
run that stops resumes from the rows already in ``--out`` (``--resume``). Example (demo set, 2 cores)::

    python benchmarks/search_value.py --bundle bundles/brain_t1 --epochs 10 --seeds 0,1 --random 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, run_isolated, write_json  # benchmarks/ is on sys.path when a script of it runs

from autoreg_monai.bundle import run_workflow
from autoreg_monai.networks import DEFAULT_LOSS_WEIGHTS, Genotype
from autoreg_monai.networks.blocks.ops import PRIMITIVES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "search_value.json"


def random_genotype(seed: int, like: Genotype) -> Genotype:
    """Operations drawn uniformly per edge (the shape of ``like``), with ``like``'s λ."""
    draw = random.Random(seed)

    def cells(template: tuple[tuple[str, ...], ...]) -> list[list[str]]:
        return [[draw.choice(PRIMITIVES) for _ in scale] for scale in template]

    return Genotype(cells(like.feature), cells(like.deformation), like.loss_weights)


def candidates(searched: Genotype, num_random: int) -> dict[str, Genotype]:
    """The rows: name -> genotype."""
    paper = Genotype.paper_default()
    rows = {
        "searched": searched,
        "searched, initial λ": Genotype(searched.feature, searched.deformation, DEFAULT_LOSS_WEIGHTS),
        "paper": Genotype(paper.feature, paper.deformation, searched.loss_weights),
    }
    rows.update({f"random {k}": random_genotype(k, searched) for k in range(num_random)})
    return rows


def train_and_score(
    bundle: str, genotype: dict, seed: int, epochs: int, work: str, grid: dict[str, Any]
) -> dict[str, Any]:
    """Train ``genotype`` for ``epochs`` with ``seed``, then evaluate it on the test pairs (network alone);
    ``grid``: working-grid overrides (``spatial_size``, ``working_spacing``), none for the bundle's own."""
    folder = Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    genotype_file = folder / "genotype.json"
    Genotype.from_dict(genotype).to_json(genotype_file)
    common = {"genotype": str(genotype_file), "output_dir": str(folder), "device": torch.device("cpu"), "seed": seed}
    common.update(grid)
    start = time.perf_counter()
    trained = run_workflow(bundle, "train", quiet=True, max_epochs=epochs, **common)
    train_seconds = time.perf_counter() - start
    best_val = trained.parser.get_parsed_content("validate#evaluator").state.best_metric
    run_workflow(bundle, "evaluate", quiet=True, eval_dir=str(folder / "eval"), panels=False, refine_steps=0, **common)
    summary = json.loads((folder / "eval" / "summary.json").read_text())
    return {
        "val_dice": float(best_val),
        "test_dice": float(summary["mean"]["mean_dice"]),
        "test_dice_before": float(summary["mean"]["mean_dice_before"]),
        "train_seconds": round(train_seconds, 1),
    }


def seed_agreement(genotypes: list[Genotype]) -> dict[str, Any]:
    """Per cell: the fraction of edges on which every genotype has the same operation, and those operations
    (``None`` where they differ)."""
    result: dict[str, Any] = {}
    for cell in ("feature", "deformation"):
        edges = [[op for scale in getattr(g, cell) for op in scale] for g in genotypes]
        same = [ops[0] if len(set(ops)) == 1 else None for ops in zip(*edges)]
        result[cell] = {"agreement": sum(op is not None for op in same) / len(same), "agreed_ops": same}
    return result


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row name: mean/sd of the test and validation Dice over seeds; over the random rows: mean, sd, best."""
    names = list(dict.fromkeys(r["row"] for r in rows))
    per_row = {}
    for name in names:
        mine = [r for r in rows if r["row"] == name and "error" not in r]
        per_row[name] = {
            "test_dice": [r["test_dice"] for r in mine],
            "val_dice": [r["val_dice"] for r in mine],
        }
    random_means = [
        statistics.mean(v["test_dice"]) for n, v in per_row.items() if n.startswith("random") and v["test_dice"]
    ]
    result: dict[str, Any] = {"rows": per_row}
    if random_means:
        sd = statistics.stdev(random_means) if len(random_means) > 1 else 0.0
        result["random"] = {"mean": statistics.mean(random_means), "sd": sd, "best": max(random_means)}
        searched = per_row.get("searched", {}).get("test_dice")
        if searched:
            result["searched_beats_random_mean_plus_sd"] = statistics.mean(searched) >= result["random"]["mean"] + sd
    return result


def table(summary: dict[str, Any]) -> str:
    lines = ["| row | test Dice (mean ± sd over seeds) | validation Dice |", "|---|---|---|"]
    for name, values in summary["rows"].items():
        lines.append(f"| {name} | {_mean_sd(values['test_dice'])} | {_mean_sd(values['val_dice'])} |")
    if "random" in summary:
        r = summary["random"]
        lines.append(f"| random genotypes | {r['mean']:.4f} ± {r['sd']:.4f} (best {r['best']:.4f}) | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO_ROOT / "bundles" / "brain_t1"))
    parser.add_argument("--searched", help="genotype JSON of the searched row (default: the bundle's)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every row (the same budget)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--random", type=int, default=5, help="number of random genotypes")
    parser.add_argument(
        "--grid", default="bundle",
        help="bundle: the bundle's working grid (2 mm for the brains); N: an N³ grid (32: about 20x faster)",
    )  # fmt: skip
    parser.add_argument(
        "--seed_searches", help="comma-separated genotype JSONs of the same search with other seeds: op agreement"
    )
    parser.add_argument("--only", help="comma-separated row names to run (default: all)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    searched = Genotype.from_json(args.searched or Path(args.bundle) / "models" / "genotype.json")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows_to_run = candidates(searched, args.random)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        rows_to_run = {n: g for n, g in rows_to_run.items() if n in wanted}
    done: list[dict[str, Any]] = []
    if args.resume and Path(args.out).is_file():
        done = [r for r in json.loads(Path(args.out).read_text())["runs"] if "error" not in r]
    if args.grid != "bundle" and not args.grid.isdigit():
        raise SystemExit(f"--grid: 'bundle' or a cube side such as 32, got {args.grid!r}")
    grid = {} if args.grid == "bundle" else {"spatial_size": [int(args.grid)] * 3, "working_spacing": None}
    options = {"bundle": str(Path(args.bundle).resolve()), "epochs": args.epochs, "seeds": seeds, "grid": args.grid}
    options["refine_steps"] = 0
    runs = list(done)
    with tempfile.TemporaryDirectory(prefix="search_value_") as work:
        for name, genotype in rows_to_run.items():
            for seed in seeds:
                if any(r["row"] == name and r["seed"] == seed and r.get("grid") == args.grid for r in runs):
                    continue
                folder = str(Path(work) / f"{len(runs)}")
                result = run_isolated(train_and_score, args.bundle, genotype.to_dict(), seed, args.epochs, folder, grid)
                runs.append({"row": name, "seed": seed, "grid": args.grid, "genotype": genotype.to_dict(), **result})
                shown = result.get("error") or f"test Dice {result['test_dice']:.4f}, val {result['val_dice']:.4f}"
                print(f"{name}, seed {seed}: {shown} ({result.get('train_seconds', '-')} s training)", flush=True)
                write_json({"benchmark": "search_value", "options": options, "runs": runs}, args.out)
    summary = summarise(runs)
    if args.seed_searches:
        others = [Genotype.from_json(path) for path in args.seed_searches.split(",")]
        summary["seed_agreement"] = seed_agreement([searched, *others])
    result = {"benchmark": "search_value", "machine": machine(), "options": options, "runs": runs, **summary}
    print(table(summary))
    for cell, agreement in summary.get("seed_agreement", {}).items():
        print(f"{cell} cell: {agreement['agreement']:.0%} of edges the same operation in every search seed")
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

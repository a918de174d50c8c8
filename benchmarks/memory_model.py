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
"""Peak memory of one search iteration and of one registration forward pass, against the memory guard's estimate.

Each measurement runs in a forked process (``_common.run_isolated``): the growth of its peak resident memory
over its resident memory before the step. The guard (``autoreg_monai.resources``) estimates
``bytes per voxel-channel x voxels x (sum of the channels)`` for the networks and ``bytes per voxel x
voxels`` for carrying the field to the fixed grid; this script prints measurement and estimate side by
side, and the coefficient (bytes per unit) each measurement implies: how the guard's constants were chosen.

    python benchmarks/memory_model.py                       # search 24^3..40^3, inference 64^3..128^3 (~2 min)
    python benchmarks/memory_model.py --search_sizes 32 --inference_sizes 96,160
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import Any

import torch
from _common import machine, run_isolated, write_json  # benchmarks/ is on sys.path when a script of it runs

from autoreg_monai import AutoRegNet, Genotype, RegistrationLoss
from autoreg_monai.networks import AutoRegSearchNet
from autoreg_monai.resources import estimate_memory, fixed_grid_memory
from autoreg_monai.search.trainer import AutoRegSearchTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "memory_model.json"
SEARCH_CHANNELS = ([8, 16], [16, 16, 8])  # brain_t1's search network
NETWORK_CHANNELS = ([16, 32], [48, 32, 16])  # brain_t1's trained network


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def search_iteration(size: int, order: str = "second", channel_fraction: float = 1.0) -> dict[str, Any]:
    """Grow of peak memory over one search iteration (feature stage) at ``size``³: second order on the full
    mixture (kind ``search``), or the bundles' search, first order on a quarter of the channels (``search_partial``)."""
    torch.manual_seed(0)
    shape = (1, 1, size, size, size)
    pair = {"moving_image": torch.rand(shape), "fixed_image": torch.rand(shape)}
    net = AutoRegSearchNet(
        in_channels=1,
        feature_channels=SEARCH_CHANNELS[0],
        deformation_channels=SEARCH_CHANNELS[1],
        integration_steps=7,
        channel_fraction=channel_fraction,
    )
    trainer = AutoRegSearchTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[pair],
        val_data_loader=[pair],
        network=net,
        stage="feature",
        weight_optimizer=torch.optim.Adam(net.weight_parameters(), lr=1e-3),
        upper_optimizer=torch.optim.Adam([net.alpha_feature], lr=1e-2),
        registration_loss=RegistrationLoss("lncc", num_scales=2),
        order=order,
    )
    before = _rss_bytes()
    trainer.run()
    return {"peak_growth_bytes": _peak_bytes() - before}


def inference_forward(size: int, genotype_file: str) -> dict[str, Any]:
    """Grow of peak memory over one no-grad forward pass of the trained network (channels-last) at ``size``³."""
    net = AutoRegNet(
        Genotype.from_json(genotype_file),
        feature_channels=NETWORK_CHANNELS[0],
        deformation_channels=NETWORK_CHANNELS[1],
        integration_steps=7,
        channels_last=True,
    ).eval()
    shape = (1, 1, size, size, size)
    moving, fixed = torch.rand(shape), torch.rand(shape)
    before = _rss_bytes()
    with torch.no_grad():
        net(moving, fixed)
    return {"peak_growth_bytes": _peak_bytes() - before}


def fixed_grid_composition(size: int) -> dict[str, Any]:
    """Grow of peak memory over carrying a 32³ field to a ``size``³ fixed grid (``map_to_fixed_grid``)."""
    from monai.data import MetaTensor

    from autoreg_monai.engines import map_to_fixed_grid

    fixed = MetaTensor(torch.rand(1, size, size, size), affine=torch.eye(4, dtype=torch.float64))
    moving = MetaTensor(torch.rand(1, size, size, size), affine=torch.eye(4, dtype=torch.float64))
    label = MetaTensor(torch.randint(0, 4, (1, size, size, size)).float(), affine=torch.eye(4, dtype=torch.float64))
    working = torch.diag(torch.tensor([size / 32, size / 32, size / 32, 1.0], dtype=torch.float64))
    ddf = torch.rand(3, 32, 32, 32)
    before = _rss_bytes()
    map_to_fixed_grid(ddf, working, fixed, moving, label)
    return {"peak_growth_bytes": _peak_bytes() - before}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search_sizes", default="24,32,40", help="comma-separated cube sides of the search step")
    parser.add_argument(
        "--partial_search_sizes", default="32,48,64", help="cube sides of the bundles' search step (first order, 1/4)"
    )
    parser.add_argument("--inference_sizes", default="64,96,128", help="comma-separated cube sides of inference")
    parser.add_argument("--fixed_sizes", default="128,192", help="comma-separated cube sides of the fixed grid")
    parser.add_argument("--genotype", default=str(REPO_ROOT / "bundles" / "brain_t1" / "models" / "genotype.json"))
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    rows = []
    plans = [("search", int(s), SEARCH_CHANNELS) for s in args.search_sizes.split(",") if s]
    plans += [("search_partial", int(s), SEARCH_CHANNELS) for s in args.partial_search_sizes.split(",") if s]
    plans += [("inference", int(s), NETWORK_CHANNELS) for s in args.inference_sizes.split(",") if s]
    plans += [("fixed_grid", int(s), None) for s in args.fixed_sizes.split(",") if s]
    for kind, size, channels in plans:
        if kind == "search":
            measured = run_isolated(search_iteration, size)
        elif kind == "search_partial":
            measured = run_isolated(search_iteration, size, "first", 0.25)
        elif kind == "inference":
            measured = run_isolated(inference_forward, size, args.genotype)
        else:
            measured = run_isolated(fixed_grid_composition, size)
        if "error" in measured:
            rows.append({"kind": kind, "size": size, "error": measured["error"]})
            continue
        if kind == "fixed_grid":
            estimate = fixed_grid_memory((size,) * 3)
            per_unit = measured["peak_growth_bytes"] / size**3  # bytes per fixed-grid voxel
        else:
            estimate = estimate_memory(kind, (size,) * 3, *channels)
            per_unit = measured["peak_growth_bytes"] / (size**3 * (sum(channels[0]) + sum(channels[1])))
        rows.append({
            "kind": kind,
            "size": size,
            "measured_mib": measured["peak_growth_bytes"] / 2**20,
            "estimated_mib": estimate / 2**20,
            "implied_bytes_per_unit": per_unit,
        })  # fmt: skip
        print(rows[-1], flush=True)
    lines = [
        "| step | size | measured MiB | guard's estimate MiB | implied bytes per unit |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['kind']} | {row['size']}³ | {row['error']} | | |")
        else:
            lines.append(
                f"| {row['kind']} | {row['size']}³ | {row['measured_mib']:.0f} | {row['estimated_mib']:.0f} | "
                f"{row['implied_bytes_per_unit']:.1f} |"
            )
    print("\n".join(lines))
    result = {"benchmark": "memory_model", "machine": machine("cpu"), "rows": rows}
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

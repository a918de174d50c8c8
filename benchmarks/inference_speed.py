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
"""Registration speed of the searched AutoRegNet against MONAI's VoxelMorph and LocalNet, side by side.

One registration = the forward pass that turns a (moving, fixed) pair into the displacement field and the
warped moving image (no gradient, batch 1). Each model runs in its own fresh process (so the peak resident
memory is its own), with warm-up passes, then the median of ``--repeats`` timed passes. The table gives the
ratio of each median to VoxelMorph's at the same size: absolute times drift on a shared machine, ratios
measured in one run do not.

    python benchmarks/inference_speed.py                                   # both sizes, CPU
    python benchmarks/inference_speed.py --genotype bundles/brain_t1/models/genotype.json --device cuda
    python benchmarks/inference_speed.py --sizes 32x32x32 --repeats 2 --out /tmp/speed.json   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, peak_rss_mib, run_isolated, write_json  # benchmarks/ is on sys.path
from monai.networks.blocks import Warp
from monai.networks.nets import LocalNet, VoxelMorph

from autoreg_monai import AutoRegNet, Genotype

MODELS = ("autoreg", "autoreg_channels_last", "voxelmorph", "voxelmorph_channels_last", "localnet")
"""``*_channels_last``: the same network with channels-last weights and inputs (``torch.channels_last_3d``)."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inference_speed.json"


class AutoRegRegistration(torch.nn.Module):
    """AutoRegNet's field and the warped moving image, the work VoxelMorph's forward does too."""

    def __init__(self, net: AutoRegNet) -> None:
        super().__init__()
        self.net, self.warp = net, Warp(mode="bilinear", padding_mode="border")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddf, _ = self.net(moving, fixed)
        return self.warp(moving, ddf), ddf


class LocalNetRegistration(torch.nn.Module):
    """MONAI's LocalNet (DeepReg) on the stacked pair, then the warp."""

    def __init__(self) -> None:
        super().__init__()
        self.net = LocalNet(spatial_dims=3, in_channels=2, num_channel_initial=16, extract_levels=(0, 1, 2, 3))
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddf = self.net(torch.cat([moving, fixed], dim=1))
        return self.warp(moving, ddf), ddf


class ChannelsLast(torch.nn.Module):
    """A registration module with channels-last weights, fed channels-last inputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last_3d)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last_3d
        return self.net(moving.contiguous(memory_format=fmt), fixed.contiguous(memory_format=fmt))


def build(name: str, genotype: str | None) -> torch.nn.Module:
    """The registration module ``name`` (one of :data:`MODELS`) with its default configuration."""
    if name in ("autoreg", "autoreg_channels_last"):
        architecture = Genotype.from_json(genotype) if genotype else Genotype.paper_default()
        return AutoRegRegistration(AutoRegNet(architecture, channels_last=name == "autoreg_channels_last"))
    if name == "voxelmorph":
        return VoxelMorph()  # MONAI's default: VoxelMorph-2 backbone, 7 integration steps, full resolution
    if name == "voxelmorph_channels_last":
        return ChannelsLast(VoxelMorph())
    if name == "localnet":
        return LocalNetRegistration()
    raise ValueError(f"unknown model {name!r}; use {', '.join(MODELS)}")


def measure(name: str, size: tuple[int, int, int], options: dict[str, Any]) -> dict[str, Any]:
    """Time one model at one size in this process; returns one row of the table."""
    torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    device = torch.device(options["device"])
    model = build(name, options["genotype"]).to(device).eval()
    moving, fixed = (torch.rand(1, 1, *size, device=device) for _ in range(2))
    rss_before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(moving, fixed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.no_grad():
        for _ in range(options["warmup"]):
            once()
        times = [once() for _ in range(options["repeats"])]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    row = {
        "model": name,
        "size": "x".join(map(str, size)),
        "median_s": statistics.median(times),
        "times_s": times,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mib": weights / 2**20,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_rss_mib"] = peak_rss_mib()
        row["forward_rss_mib"] = row["peak_rss_mib"] - rss_before  # what the passes added to the process
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_voxelmorph``: each row's median over VoxelMorph's at the same size (``None`` without it)."""
    reference = {r["size"]: r["median_s"] for r in rows if r["model"] == "voxelmorph" and "median_s" in r}
    for row in rows:
        base = reference.get(row["size"])
        row["ratio_to_voxelmorph"] = row["median_s"] / base if base and "median_s" in row else None


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    memory = "peak CUDA MiB" if any("peak_cuda_mib" in r for r in rows) else "peak RSS MiB (+forward)"
    lines = [
        f"| model | size | median s | ratio to VoxelMorph | parameters | weights MiB | {memory} | threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['ratio_to_voxelmorph']:.2f}" if r["ratio_to_voxelmorph"] is not None else "-"
        mem = (
            f"{r['peak_cuda_mib']:.0f}"
            if "peak_cuda_mib" in r
            else f"{r['peak_rss_mib']:.0f} (+{r['forward_rss_mib']:.0f})"
        )
        lines.append(
            f"| {r['model']} | {r['size']} | {r['median_s']:.3f} | {ratio} | {r['parameters']:,} | "
            f"{r['weights_mib']:.2f} | {mem} | {r['threads']} |"
        )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """``"160x192x224,96x112x128"`` -> ``[(160, 192, 224), (96, 112, 128)]``."""
    sizes = []
    for part in text.split(","):
        dims = tuple(int(v) for v in part.lower().split("x"))
        if len(dims) != 3 or min(dims) < 8:
            raise SystemExit(f"--sizes: {part!r} is not a 3-D size such as 160x192x224")
        sizes.append(dims)
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genotype", help="genotype JSON of the AutoRegNet (default: the paper's brain genotype)")
    parser.add_argument("--sizes", default="160x192x224,96x112x128", help="comma-separated DxHxW")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    options = {
        "genotype": args.genotype,
        "threads": args.threads,
        "device": args.device,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    rows = []
    for size in parse_sizes(args.sizes):
        for name in args.models.split(","):
            start_method = "spawn" if args.device.startswith("cuda") else "fork"
            row = run_isolated(measure, name.strip(), size, options, start_method=start_method)  # errors: a row
            rows.append({"model": name.strip(), "size": "x".join(map(str, size)), **row})
            print(f"measured {name} at {rows[-1]['size']}", flush=True)
    add_ratios(rows)
    result = {"benchmark": "inference_speed", "machine": machine(args.device), "options": options, "rows": rows}
    print(table(rows))
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

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
"""The ``autoreg`` command line (``python -m autoreg_monai``), built with ``fire``."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import fire
import torch
from monai.networks.blocks import Warp
from monai.utils import set_determinism
from tqdm import tqdm

from autoreg_monai.checkpoint import save_model
from autoreg_monai.data.phantom import PHANTOM_LABELS, make_phantom_pair
from autoreg_monai.io import atomic_write
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.metrics import dice_per_label, folding_percentage, ncc, std_log_jacobian, warp_labels
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet

__all__ = ["demo", "main"]


def _pair_report(pair: dict[str, torch.Tensor], ddf: torch.Tensor) -> dict[str, float]:
    warped = Warp()(pair["moving_image"], ddf)
    warped_label = warp_labels(pair["moving_label"], ddf)
    return {
        "ncc": float(ncc(warped, pair["fixed_image"])[0]),
        "dice": float(dice_per_label(warped_label, pair["fixed_label"], PHANTOM_LABELS).nanmean()),
        "folding_percent": float(folding_percentage(ddf)[0]),
        "std_log_jacobian": float(std_log_jacobian(ddf)[0]),
    }


def demo(
    size: int = 32,
    steps: int = 100,
    seed: int = 0,
    magnitude: float = 3.0,
    lr: float = 2e-3,
    device: str = "cpu",
    genotype: str | None = None,
    out: str | None = None,
) -> None:
    """Register a generated phantom pair with an AutoReg network, printing quality before and after.

    The network (the paper-default genotype, or ``--genotype FILE``) is trained on the single pair for
    ``steps`` Adam steps of the λ-weighted multi-scale objective ``L_reg``; then Dice of the warped labels,
    NCC, % folded voxels and std log|J| are reported against the identity transform.

    Args:
        size: side of the cubic phantom, voxels.
        steps: optimisation steps.
        seed: seed of the phantom and of the network initialisation.
        magnitude: largest velocity of the generated deformation, voxels.
        lr: Adam learning rate.
        device: ``cpu`` or ``cuda``.
        genotype: a genotype JSON file; default :meth:`Genotype.paper_default`.
        out: folder to write ``model.pt`` (self-describing) and ``demo.json`` (the numbers printed).

    Example::

        autoreg demo --size 32 --steps 100 --out demo_out
    """
    warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")
    set_determinism(seed)
    geno = Genotype.from_json(genotype) if genotype else Genotype.paper_default()
    dev = torch.device(device)
    pair = {k: v.to(dev) for k, v in make_phantom_pair((size,) * 3, seed, magnitude).items()}
    net = AutoRegNet(geno).to(dev)
    loss_fn = RegistrationLoss("lncc", num_scales=geno.num_scales).to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    weights = torch.tensor(geno.loss_weights, device=dev)
    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"AutoRegNet ({n_params / 1e6:.3f} M parameters), genotype: {json.dumps(geno.to_dict()['feature'])} / "
        f"{json.dumps(geno.to_dict()['deformation'])}"
    )
    before = _pair_report(pair, torch.zeros_like(pair["velocity"]))
    start = time.perf_counter()
    progress = tqdm(range(steps), desc="registering phantom", unit="step")
    for _ in progress:
        optimizer.zero_grad()
        ddf, pyramid = net(pair["moving_image"], pair["fixed_image"])
        loss = loss_fn(pair["moving_image"], pair["fixed_image"], ddf, pyramid, weights)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    train_s = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        start = time.perf_counter()
        ddf, _ = net(pair["moving_image"], pair["fixed_image"])
        infer_s = time.perf_counter() - start
    after = _pair_report(pair, ddf)
    print(f"{'':18s}{'identity':>10s}{'AutoReg':>10s}")
    for key in before:
        print(f"{key:18s}{before[key]:10.4f}{after[key]:10.4f}")
    print(f"training {train_s:.1f} s ({steps} steps), registration {infer_s:.3f} s, {size}^3 voxels on {device}")
    result = {
        "before": before,
        "after": after,
        "train_seconds": train_s,
        "inference_seconds": infer_s,
        "parameters": n_params,
        "genotype": geno.to_dict(),
    }
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(net, folder / "model.pt", extra={"trained_on": f"phantom size={size} seed={seed}"})
        with atomic_write(folder / "demo.json", "w") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")
        print(f"wrote {folder / 'model.pt'} and {folder / 'demo.json'}")


def main() -> None:
    """Entry point of the ``autoreg`` console script."""
    fire.Fire({"demo": demo}, name="autoreg")

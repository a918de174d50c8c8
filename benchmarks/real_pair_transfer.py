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
"""Does a network trained only on the demo set register real brains?

Trains an ``AutoRegNet`` (a searched genotype and its λ, or the paper default) on the brain_t1 demo set
(MNI152 deformed by random diffeomorphisms) for a few minutes, then registers a real pair of
../shared/data it has never seen: a FreeSurfer subject (norm.mgz + aseg) onto the fsaverage atlas (brain +
aseg). Both brains are cropped to their labelled extent and padded to a cube (the same geometry as the
demo set), which is a crude affine pre-alignment. Prints Dice over the aseg structures before and after,
and writes the numbers as JSON.

    python benchmarks/real_pair_transfer.py --genotype bundles/brain_t1/models/genotype.json --steps 600
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from autoreg_monai import AutoRegNet, Genotype, RegistrationLoss, dice_per_label, folding_percentage, warp_labels
from autoreg_monai.data import demo_datalist, make_pairs
from autoreg_monai.networks.blocks import resize_image

DATA = Path(os.environ.get("AUTOREG_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def brain_cube(image: np.ndarray, label: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop to the labelled brain, pad to a cube (8 voxels of margin), resample to ``size^3``."""
    corners = np.argwhere(label > 0)
    low, high = corners.min(axis=0), corners.max(axis=0) + 1
    side = int((high - low).max()) + 8
    start = (low + high) // 2 - side // 2
    cubes = []
    for volume in (image, label):
        cube = np.zeros((side,) * 3, dtype=np.float32)
        src = tuple(slice(max(s, 0), min(s + side, n)) for s, n in zip(start, volume.shape))
        dst = tuple(slice(b.start - s, b.stop - s) for b, s in zip(src, start))
        cube[dst] = volume[src]
        cubes.append(torch.from_numpy(cube)[None, None])
    img = resize_image(cubes[0], (size,) * 3)
    img = (img - img.min()) / (img.max() - img.min())
    lab = torch.nn.functional.interpolate(cubes[1], size=(size,) * 3, mode="nearest").long()
    return img, lab


def load_canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32)


def load_demo_pairs(size: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    datalist = demo_datalist("brain_t1", size=size)

    def load(path: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(nib.load(path).dataobj, dtype=np.float32))[None, None]

    train = [(load(p["moving_image"]), load(p["fixed_image"])) for p in make_pairs(datalist, "training", "atlas")]
    test = [
        {
            k: load(p[k]) if "image" in k else load(p[k]).long()
            for k in ("moving_image", "fixed_image", "moving_label", "fixed_label")
        }
        for p in make_pairs(datalist, "test", "atlas")
    ]
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genotype", default=None, help="genotype.json (default: the paper-default genotype)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="real_pair_transfer.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    genotype = Genotype.from_json(args.genotype) if args.genotype else Genotype.paper_default()

    subject = DATA / "freesurfer_niivue_subject"
    atlas = DATA / "freesurfer_fsaverage_atlas"
    moving, moving_label = brain_cube(
        load_canonical(subject / "norm.nii.gz"), load_canonical(subject / "aseg.nii.gz"), args.size
    )
    fixed, fixed_label = brain_cube(
        load_canonical(atlas / "brain.nii.gz"), load_canonical(atlas / "aseg.nii.gz"), args.size
    )
    common = set(moving_label.unique().tolist()) & set(fixed_label.unique().tolist()) - {0}
    labels = sorted(v for v in common if int((fixed_label == v).sum()) >= 20)

    device = torch.device(args.device)
    moving, moving_label, fixed, fixed_label = (t.to(device) for t in (moving, moving_label, fixed, fixed_label))
    train, test = load_demo_pairs(args.size)
    train = [(m.to(device), f.to(device)) for m, f in train]
    test = [{k: v.to(device) for k, v in pair.items()} for pair in test]
    net = AutoRegNet(genotype).to(device)
    loss_fn = RegistrationLoss("lncc", num_scales=genotype.num_scales).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            ddf, _ = net(moving, fixed)
            real = float(dice_per_label(warp_labels(moving_label, ddf), fixed_label, labels).nanmean())
            demo = []
            for pair in test:
                d, _ = net(pair["moving_image"], pair["fixed_image"])
                demo.append(
                    float(
                        dice_per_label(warp_labels(pair["moving_label"], d), pair["fixed_label"], [1, 2, 3]).nanmean()
                    )
                )
        net.train()
        return {
            "real_dice": real,
            "demo_test_dice": float(np.mean(demo)),
            "real_folding_percent": float(folding_percentage(ddf)[0]),
        }

    before = evaluate()
    start = time.perf_counter()
    for step in range(args.steps):
        m, f = train[step % len(train)]
        ddf, pyramid = net(m, f)
        loss = loss_fn(m, f, ddf, pyramid, genotype.loss_weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % max(args.steps // 10, 1) == 0:
            print(f"step {step + 1}: loss {loss.item():.4f} {evaluate()}", flush=True)
    seconds = time.perf_counter() - start
    after = evaluate()
    identity_real = float(dice_per_label(moving_label, fixed_label, labels).nanmean())
    print(f"\n| {'':28s} | identity | trained on demo ({args.steps} steps, {seconds:.0f} s) |")
    print(f"|{'-' * 30}|----------|{'-' * 38}|")
    print(f"| real pair Dice ({len(labels)} aseg labels) | {identity_real:.4f}   | {after['real_dice']:.4f}{'':32s} |")
    print(
        f"| demo test Dice (3 tissues)   | {before['demo_test_dice']:.4f}   | {after['demo_test_dice']:.4f}{'':32s} |"
    )
    print(f"| real pair folding (%)        | 0        | {after['real_folding_percent']:.4f}{'':32s} |")
    result = {
        "genotype": genotype.to_dict(),
        "steps": args.steps,
        "size": args.size,
        "seconds": seconds,
        "labels": labels,
        "identity": {"real_dice": identity_real, **before},
        "trained": after,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

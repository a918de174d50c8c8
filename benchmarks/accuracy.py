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
"""Registration accuracy on real labelled pairs: identity, SimpleITK, our network and VoxelMorph, side by side.

Every method registers the same prepared pairs: the bundle's own evaluation preprocessing (affine
pre-alignment with SimpleITK, RAS, intensities to [0, 1], foreground crop, isotropic fit to the working
grid), so the numbers say what the deformable step adds. Methods:

- ``identity``: the pre-aligned pair as it is;
- ``demons``: SimpleITK symmetric-forces demons, three resolutions (shrink 4, 2, 1; Gaussian field smoothing);
- ``bspline``: SimpleITK B-spline (mesh refined x2 per level to a node every 8 voxels, Mattes MI, gradient
  descent with line search, 3 levels; L-BFGS-B cannot follow the mesh refinement);
- ``autoreg``: the bundle's shipped network (``models/genotype.json`` + ``models/model.pt``);
- ``autoreg_retrained`` and ``voxelmorph``: the bundle's genotype and MONAI's default ``VoxelMorph``, each
  trained here from scratch on the bundle's training pairs with the same loss (the genotype's λ-weighted
  multi-scale LNCC + diffusion), optimiser, epochs and data (``--epochs``);
- optional peers, run by default when installed (``pip install -e ".[bench]"``): ``ants_syn``, ANTs SyN
  (antspyx; deformable only, cross-correlation of radius 2, 3 levels of 40/20/10 iterations) and
  ``elastix_bspline``, elastix's default B-spline map (itk-elastix; 4 levels, Mattes MI, a node every 8 voxels).

Per method: mean Dice over the labels both label maps hold, % folded voxels (det J <= 0), HD95 (voxels of
the working grid) and seconds per pair (registration only).

    python benchmarks/accuracy.py                   # the real pairs of ../shared/data, 10 epochs (~15 min, 2 cores)
    python benchmarks/accuracy.py --epochs 60 --spatial_size 64
    python benchmarks/accuracy.py --methods identity,demons --epochs 1 --out /tmp/accuracy.json
    python benchmarks/accuracy.py --methods identity,ants_syn,elastix_bspline --epochs 1   # the optional peers
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from _common import machine, write_json  # benchmarks/ is on sys.path when a script of it runs
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.networks.nets import VoxelMorph
from tqdm import tqdm

from autoreg_monai import AutoRegNet, Genotype, RegistrationLoss
from autoreg_monai.metrics import dice_per_label, folding_percentage, hd95_per_label, warp_labels
from autoreg_monai.networks.blocks import resize_ddf

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUTOREG_SAMPLE_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "accuracy.json"
METHODS = ("identity", "demons", "bspline", "autoreg", "autoreg_retrained", "voxelmorph")
OPTIONAL_METHODS = {"ants_syn": "ants", "elastix_bspline": "itk"}  # method -> the module it needs (extra `bench`)


def installed_optional_methods() -> list[str]:
    """The optional peers whose package is importable here."""
    return [name for name, module in OPTIONAL_METHODS.items() if importlib.util.find_spec(module) is not None]


def default_pair_sets(data: Path) -> dict[str, dict[str, Any]]:
    """The real labelled pairs of the sample data, as atlas-style datalists (one fixed scan per set)."""
    ixi = data / "ixi_dlmuse"

    def scan(subject: str, kind: str) -> str:
        return str(next(ixi.glob(f"{subject}*_{kind}_2mm.nii.gz")))

    return {
        "freesurfer_to_fsaverage (aseg)": {
            "test": [
                {
                    "image": str(data / "freesurfer_niivue_subject" / "norm.nii.gz"),
                    "label": str(data / "freesurfer_niivue_subject" / "aseg.nii.gz"),
                }
            ],
            "atlas": {
                "image": str(data / "freesurfer_fsaverage_atlas" / "brain.nii.gz"),
                "label": str(data / "freesurfer_fsaverage_atlas" / "aseg.nii.gz"),
            },
        },
        "ixi_to_IXI012 (DLMUSE)": {
            "test": [{"image": scan(s, "T1w"), "label": scan(s, "dlmuse")} for s in ("IXI013", "IXI014", "IXI033")],
            "atlas": {"image": scan("IXI012", "T1w"), "label": scan("IXI012", "dlmuse")},
        },
    }


def _parser(bundle: str, config: str, overrides: dict[str, Any]) -> ConfigParser:
    os.chdir(REPO_ROOT)  # the configs' % references are relative to the folder holding bundles/
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / f"{config}.json"))
    parser.update(overrides)
    return parser


def prepared_pairs(bundle: str, datalist: dict[str, Any], overrides: dict[str, Any], work: Path) -> list[dict]:
    """The pairs of ``datalist`` through the bundle's evaluation preprocessing (pre-alignment included)."""
    folder = work / f"datalist_{abs(hash(json.dumps(datalist, sort_keys=True)))}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps(datalist))
    parser = _parser(bundle, "evaluate", {**overrides, "dataset_dir": str(folder), "prealign": "affine"})
    dataset = parser.get_parsed_content("test_dataset")
    return [dataset[i] for i in range(len(dataset))]


def _sitk(volume: torch.Tensor) -> sitk.Image:
    """``(1, 1, D, H, W)`` -> a SimpleITK image of spacing 1 (its x axis is the tensor's last axis)."""
    return sitk.GetImageFromArray(volume[0, 0].detach().cpu().numpy().astype(np.float32))


def _xyz_field_to_ddf(array: np.ndarray) -> torch.Tensor:
    """An ITK-ordered field ``(D, H, W, 3)``, components along x=W, y=H, z=D -> MONAI ddf ``(1, 3, D, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(array[..., ::-1].transpose(3, 0, 1, 2))).float()[None]


def _field_to_ddf(field: sitk.Image) -> torch.Tensor:
    """A SimpleITK displacement field (x, y, z components, spacing 1) -> MONAI ddf ``(1, 3, D, H, W)``, voxels."""
    return _xyz_field_to_ddf(sitk.GetArrayFromImage(field))


def _smooth_shrink(image: sitk.Image, sigma: float, shrink: int) -> sitk.Image:
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image
    return sitk.Shrink(smoothed, [shrink] * image.GetDimension()) if shrink > 1 else smoothed


def demons(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Multi-resolution symmetric-forces demons (SimpleITK); the field is carried up from level to level."""
    fixed_image, moving_image = _sitk(fixed), _sitk(moving)
    field = None
    for shrink, sigma, iterations in ((4, 2.0, 60), (2, 1.0, 40), (1, 0.0, 20)):
        f, m = _smooth_shrink(fixed_image, sigma, shrink), _smooth_shrink(moving_image, sigma, shrink)
        if field is None:
            start = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64, f.GetDimension())
            start.CopyInformation(f)
        else:  # physical units: the field keeps its values on the finer grid
            start = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
        method = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        method.SetNumberOfIterations(iterations)
        method.SetSmoothDisplacementField(True)
        method.SetStandardDeviations(1.5)
        field = method.Execute(f, m, start)
    return _field_to_ddf(field)


def bspline(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Multi-resolution B-spline registration (SimpleITK): Mattes mutual information, gradient descent + line search."""
    fixed_image, moving_image = _sitk(fixed), _sitk(moving)
    mesh = [max(1, size // 32) for size in fixed_image.GetSize()]  # x2 per level: a node every 8 voxels at the end
    transform = sitk.BSplineTransformInitializer(fixed_image, mesh, 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=1)  # a fixed seed: SimpleITK reads 0 as "wall clock"
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescentLineSearch(
        learningRate=5.0, numberOfIterations=50, convergenceMinimumValue=1e-4, convergenceWindowSize=5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransformAsBSpline(transform, inPlace=True, scaleFactors=[1, 2, 4])
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    result = method.Execute(fixed_image, moving_image)
    field = sitk.TransformToDisplacementField(
        result,
        sitk.sitkVectorFloat64,
        fixed_image.GetSize(),
        fixed_image.GetOrigin(),
        fixed_image.GetSpacing(),
        fixed_image.GetDirection(),
    )
    return _field_to_ddf(field)


def ants_syn(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """ANTs SyN (antspyx), deformable only: CC of radius 2 (dense, no sampling), shrink 4/2/1, 40/20/10 iterations."""
    import ants

    # ants.from_numpy keeps the array's axis order as x, y, z: the field's components follow D, H, W directly
    fixed_image = ants.from_numpy(fixed[0, 0].detach().cpu().numpy().astype(np.float32))
    moving_image = ants.from_numpy(moving[0, 0].detach().cpu().numpy().astype(np.float32))
    with tempfile.TemporaryDirectory(prefix="ants_syn_") as folder:
        result = ants.registration(
            fixed_image,
            moving_image,
            type_of_transform="SyNOnly",
            syn_metric="CC",
            syn_sampling=2,
            reg_iterations=(40, 20, 10),
            outprefix=os.path.join(folder, "syn_"),
        )
        composed = ants.apply_transforms(
            fixed_image, moving_image, result["fwdtransforms"], compose=os.path.join(folder, "composed_")
        )
        field = ants.image_read(composed).numpy()  # (D, H, W, 3), components along D, H, W
    return torch.from_numpy(np.ascontiguousarray(field.transpose(3, 0, 1, 2))).float()[None]


def elastix_bspline(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """elastix (itk-elastix) with its default B-spline parameter map, 4 resolutions; the field from transformix."""
    import itk

    fixed_image = itk.GetImageFromArray(fixed[0, 0].detach().cpu().numpy().astype(np.float32))
    moving_image = itk.GetImageFromArray(moving[0, 0].detach().cpu().numpy().astype(np.float32))
    parameters = itk.ParameterObject.New()
    bspline_map = parameters.GetDefaultParameterMap("bspline", 4, 8.0)
    bspline_map["RandomSeed"] = ["0"]
    bspline_map["WriteResultImage"] = ["false"]
    parameters.AddParameterMap(bspline_map)
    with tempfile.TemporaryDirectory(prefix="elastix_") as folder:  # transformix writes its field file there
        _, transform = itk.elastix_registration_method(
            fixed_image, moving_image, parameter_object=parameters, log_to_console=False, output_directory=folder
        )
        field = itk.transformix_deformation_field(moving_image, transform, output_directory=folder)
        array = np.asarray(itk.GetArrayFromImage(field)).copy()
    return _xyz_field_to_ddf(array)


def _pyramid(ddf: torch.Tensor, num_scales: int) -> tuple[torch.Tensor, ...]:
    """VoxelMorph has no coarse fields: its field resampled to 1/2, 1/4, ... for the multi-scale loss terms."""
    size = ddf.shape[2:]
    return tuple(resize_ddf(ddf, [max(1, s // 2**k) for s in size]) for k in range(1, num_scales + 1))


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MetaTensor's data as a plain tensor (the networks need no metadata)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def train_network(
    net: torch.nn.Module,
    forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
    loader: Iterable,
    loss_fn: RegistrationLoss,
    weights: torch.Tensor,
    epochs: int,
    lr: float,
    max_grad_norm: float,
    name: str,
) -> float:
    """Adam on the λ-weighted registration loss over the bundle's training pairs; returns the seconds taken."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc=f"training {name}", unit="epoch"):
        for batch in loader:
            moving, fixed = _plain(batch["moving_image"]), _plain(batch["fixed_image"])
            ddf, pyramid = forward(moving, fixed)
            loss = loss_fn(moving, fixed, ddf, pyramid, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
            optimizer.step()
    net.eval()
    return time.perf_counter() - start


def build_methods(bundle: str, overrides: dict[str, Any], names: list[str], epochs: int) -> tuple[dict, dict]:
    """The registration functions ``(moving, fixed) -> ddf`` of ``names``, and what training them cost."""
    common = _parser(bundle, "train", overrides)
    genotype = Genotype.from_json(REPO_ROOT / "bundles" / bundle / "models" / "genotype.json")
    channels = {
        "feature_channels": common.get_parsed_content("feature_channels"),
        "deformation_channels": common.get_parsed_content("deformation_channels"),
        "integration_steps": common.get_parsed_content("integration_steps"),
        "channels_last": common.get_parsed_content("network_def#channels_last"),
    }
    methods: dict[str, Callable] = {}
    training: dict[str, float] = {}
    if "identity" in names:
        methods["identity"] = lambda moving, fixed: torch.zeros(1, 3, *fixed.shape[2:])
    if "demons" in names:
        methods["demons"] = demons
    if "bspline" in names:
        methods["bspline"] = bspline
    if "ants_syn" in names:
        methods["ants_syn"] = ants_syn
    if "elastix_bspline" in names:
        methods["elastix_bspline"] = elastix_bspline
    if "autoreg" in names:
        shipped = AutoRegNet(genotype, **channels)
        model_file = REPO_ROOT / "bundles" / bundle / "models" / "model.pt"
        shipped.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
        shipped.eval()
        methods["autoreg"] = lambda moving, fixed, net=shipped: net(moving, fixed)[0]
    trained = [n for n in ("autoreg_retrained", "voxelmorph") if n in names]
    if trained:
        loader = common.get_parsed_content("train_loader")
        loss_fn = common.get_parsed_content("registration_loss")
        weights = torch.tensor(genotype.loss_weights)
        lr, clip = common.get_parsed_content("learning_rate"), common.get_parsed_content("max_grad_norm")
        for name in trained:
            torch.manual_seed(0)
            if name == "voxelmorph":
                net: torch.nn.Module = VoxelMorph()

                def forward(moving, fixed, net=net):
                    ddf = net(moving, fixed)[1]
                    return ddf, _pyramid(ddf, genotype.num_scales)

            else:
                net = AutoRegNet(genotype, **channels)

                def forward(moving, fixed, net=net):
                    return net(moving, fixed)

            training[name] = train_network(net, forward, loader, loss_fn, weights, epochs, lr, clip, name)
            methods[name] = lambda moving, fixed, forward=forward: forward(moving, fixed)[0]
    return methods, training


def score(pair: dict[str, Any], ddf: torch.Tensor) -> dict[str, float]:
    """Mean Dice and HD95 over the labels both maps hold, and % folded voxels, of one registered pair."""
    moving_label, fixed_label = _plain(pair["moving_label"][None]), _plain(pair["fixed_label"][None])
    labels = sorted(set(torch.unique(moving_label).tolist()) & set(torch.unique(fixed_label).tolist()) - {0})
    warped = warp_labels(moving_label, ddf)
    return {
        "labels": len(labels),
        "mean_dice": float(dice_per_label(warped, fixed_label, labels).nanmean()),
        "hd95": float(hd95_per_label(warped, fixed_label, labels).nanmean()),
        "folding_percent": float(folding_percentage(ddf)[0]),
    }


def table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per pair set and method."""
    lines = [
        "| pairs | method | mean Dice | % folded | HD95 (voxels) | s per pair |",
        "|---|---|---|---|---|---|",
    ]
    for pair_set, methods in summary.items():
        for name, row in methods.items():
            lines.append(
                f"| {pair_set} | {name} | {row['mean_dice']:.4f} | {row['folding_percent']:.3f} | "
                f"{row['hd95']:.2f} | {row['seconds']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="brain_t1", help="a bundle under bundles/ (genotype, model, data)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS + tuple(installed_optional_methods())),
        help=f"comma-separated, of {', '.join(METHODS + tuple(OPTIONAL_METHODS))} (default: all installed)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of autoreg_retrained and voxelmorph")
    parser.add_argument("--spatial_size", type=int, default=None, help="working grid side (default: the bundle's)")
    parser.add_argument("--datalist", help="a JSON file of pair sets {name: {test: [...], atlas: {...}}}")
    parser.add_argument("--demo_options", help="JSON of the demo set for training, e.g. a smaller one")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",")]
    unknown = sorted(set(names) - set(METHODS) - set(OPTIONAL_METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; use {', '.join(METHODS + tuple(OPTIONAL_METHODS))}")
    missing = sorted(set(names) & set(OPTIONAL_METHODS) - set(installed_optional_methods()))
    if missing:
        raise SystemExit(
            f'--methods: {", ".join(missing)} not installed: pip install -e ".[bench]" (antspyx, itk-elastix)'
        )
    torch.set_num_threads(args.threads)
    pair_sets = json.loads(Path(args.datalist).read_text()) if args.datalist else default_pair_sets(DATA)
    overrides: dict[str, Any] = {"device": "cpu"}
    if args.spatial_size:
        overrides["spatial_size"] = [args.spatial_size] * 3
    if args.demo_options:
        overrides["demo_options"] = json.loads(args.demo_options)
    methods, training = build_methods(args.bundle, overrides, names, args.epochs)
    per_pair: list[dict[str, Any]] = []
    summary: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="accuracy_") as folder, torch.no_grad():
        for set_name, datalist in pair_sets.items():
            pairs = prepared_pairs(args.bundle, datalist, overrides, Path(folder))
            for name, register in methods.items():
                rows = []
                for pair in pairs:
                    moving, fixed = _plain(pair["moving_image"][None]), _plain(pair["fixed_image"][None])
                    start = time.perf_counter()
                    ddf = register(moving, fixed)
                    seconds = time.perf_counter() - start
                    rows.append({"pair_set": set_name, "pair": pair["pair"], "method": name, "seconds": seconds})
                    rows[-1].update(score(pair, ddf))
                per_pair += rows
                summary.setdefault(set_name, {})[name] = {
                    key: statistics.fmean(r[key] for r in rows)
                    for key in ("mean_dice", "hd95", "folding_percent", "seconds")
                }
                print(f"{set_name}: {name} mean Dice {summary[set_name][name]['mean_dice']:.4f}", flush=True)
    result = {
        "benchmark": "accuracy",
        "bundle": args.bundle,
        "epochs": args.epochs,
        "overrides": overrides,
        "training_seconds": training,
        "machine": machine("cpu"),
        "summary": summary,
        "pairs": per_pair,
    }
    print(table(summary))
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()

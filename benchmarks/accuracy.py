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
"""Registration accuracy on real labelled pairs at their own resolution: ours and the classical tools side by side.

Every method registers the same real pair, pre-aligned by the same SimpleITK affine registration (Mattes
mutual information, fixed seed), and every result is scored on the **fixed scan's own grid**: the
moving label map is sampled once through the whole transform (pre-alignment and deformation composed,
nearest neighbour), as ``autoreg register`` writes it. Methods:

- ``affine``: the pre-alignment alone;
- ``demons``: SimpleITK symmetric-forces demons on the fixed grid after histogram matching, three levels
  (shrink 4, 2, 1; Gaussian field smoothing);
- ``bspline``: SimpleITK B-spline on the fixed grid (Mattes MI on ~20,000 random samples per level, 3 levels,
  a node every 8 voxels at the end);
- ``ants_syn`` (ANTs SyN, CC) and ``elastix_bspline`` (elastix's default B-spline map), when the ``bench``
  extra is installed (``pip install -e ".[bench]"``);
- ``autoreg``: the bundle's inference workflow (working grid of the bundle, e.g. 2 mm), the network alone;
- ``autoreg+refine<N>``: the same with ``N`` steps of test-time refinement (``--refine_steps``; the
  bundle's default ``refine_steps`` is the setting of ``autoreg register``); ``--refine_loss_weights``
  refines with another λ than the genotype's (what a λ is worth on real scans).

Columns: mean Dice over the labels both label maps hold, % voxels of the fixed grid where the Jacobian
determinant of the whole transform is <= 0, HD95 in mm (mean over labels), and seconds per pair as a user
waits for it on ``--threads`` threads: pre-alignment + registration + mapping onto the fixed grid (reading
the scans is not counted; our rows include the bundle's whole preprocessing).

    python benchmarks/accuracy.py                              # the 5 default real pairs, all installed methods
    python benchmarks/accuracy.py --methods affine,demons,autoreg --refine_steps 10,30
    python benchmarks/accuracy.py --pairs pairs.json --out /tmp/accuracy.json   # [{name, moving, ...}, ...]
    python benchmarks/accuracy.py --only fsaverage --methods affine,demons,autoreg   # the atlas pairs only
    python benchmarks/accuracy.py --methods autoreg --refine_steps 10 --refine_loss_weights 10,15,3.2,0.8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from _common import machine, write_json  # benchmarks/ is on sys.path when a script of it runs
from monai.bundle import ConfigParser
from monai.transforms import LoadImage, ScaleIntensityRangePercentiles

from autoreg_monai.bundle import load_bundle_config
from autoreg_monai.engines import TestTimeRefinement, map_to_fixed_grid, register_item
from autoreg_monai.metrics import dice_per_label, hd95_per_label
from autoreg_monai.networks import Genotype
from autoreg_monai.prealign import prealign_matrix
from autoreg_monai.spatial import grid_world_points, sample_at_world

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUTOREG_SAMPLE_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "accuracy.json"
CLASSICAL = ("affine", "demons", "bspline")
OPTIONAL_METHODS = {"ants_syn": "ants", "elastix_bspline": "itk"}  # method -> the module it needs (extra `bench`)
OURS = "autoreg"
BSPLINE_SAMPLES = 20000


def installed_optional_methods() -> list[str]:
    """The optional peers whose package is importable here."""
    return [name for name, module in OPTIONAL_METHODS.items() if importlib.util.find_spec(module) is not None]


def default_pairs(data: Path) -> list[dict[str, str]]:
    """The real labelled pairs of the sample data (none of their subjects is in the shipped model's training).

    Three IXI pairs (2 mm, 147 DLMUSE regions) and two FreeSurfer subjects onto the fsaverage atlas (1 mm,
    256^3, aseg): the niivue subject at 1 mm and the MNE sample subject at 3 mm.
    """
    ixi = data / "ixi_dlmuse"

    def scan(subject: str, kind: str) -> str:
        return str(next(ixi.glob(f"{subject}*_{kind}_2mm.nii.gz")))

    fsaverage = data / "freesurfer_fsaverage_atlas"
    pairs = [
        {
            "name": f"{moving}->{fixed}",
            "moving": scan(moving, "T1w"),
            "moving_label": scan(moving, "dlmuse"),
            "fixed": scan(fixed, "T1w"),
            "fixed_label": scan(fixed, "dlmuse"),
        }
        for moving, fixed in (("IXI013", "IXI012"), ("IXI033", "IXI014"), ("IXI049", "IXI039"))
    ]
    for name, moving, label in (
        ("niivue->fsaverage", "freesurfer_niivue_subject/norm.nii.gz", "freesurfer_niivue_subject/aseg.nii.gz"),
        ("mne_sample_3mm->fsaverage", "freesurfer_mne_sample/T1_3mm.nii.gz", "freesurfer_mne_sample/aseg_3mm.nii.gz"),
    ):
        pairs.append(
            {
                "name": name,
                "moving": str(data / moving),
                "moving_label": str(data / label),
                "fixed": str(fsaverage / "brain.nii.gz"),
                "fixed_label": str(fsaverage / "aseg.nii.gz"),
            }
        )
    return pairs


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
    """Multi-resolution symmetric-forces demons (SimpleITK) after histogram matching; the field is carried up."""
    fixed_image = _sitk(fixed)
    moving_image = sitk.HistogramMatching(_sitk(moving), fixed_image, 256, 7, True)
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
    # about 20,000 random samples per level, as elastix's defaults use a few thousand: 25 % of a 256^3 scan made
    # one pair take many minutes; a fixed seed, as SimpleITK reads 0 as "wall clock"
    voxels = float(np.prod(fixed_image.GetSize()))
    method.SetMetricSamplingPercentagePerLevel([min(0.25, BSPLINE_SAMPLES * s**3 / voxels) for s in (4, 2, 1)], seed=1)
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


def _bundle_parser(bundle: str, overrides: dict[str, Any]) -> ConfigParser:
    return load_bundle_config(REPO_ROOT / "bundles" / bundle, "inference", **overrides)


def _spacing(affine: torch.Tensor) -> list[float]:
    return np.linalg.norm(np.asarray(torch.as_tensor(affine, dtype=torch.float64))[:3, :3], axis=0).tolist()


def score(warped_label: torch.Tensor, fixed_label: torch.Tensor, moving_labels: set[int], spacing: list[float]) -> dict:
    """Mean Dice and HD95 (mm) over the labels of both maps, on the fixed grid."""
    fixed_values = set(torch.unique(fixed_label).tolist())
    labels = sorted(moving_labels & fixed_values - {0})
    pred, target = warped_label.long()[None, None], fixed_label.long()[None, None]
    hd95 = hd95_per_label(pred, target, labels, spacing)
    return {
        "labels": len(labels),
        "mean_dice": float(dice_per_label(pred, target, labels).nanmean()),
        "hd95_mm": float(hd95[torch.isfinite(hd95)].mean()),
    }


def classical_methods(names: list[str]) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Each method: ``(moving, fixed)`` ``(1, 1, *F)`` on the fixed grid -> ``(1, 3, *F)`` displacement in voxels."""
    table: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "affine": lambda moving, fixed: torch.zeros(1, 3, *fixed.shape[2:]),
        "demons": demons,
        "bspline": bspline,
        "ants_syn": ants_syn,
        "elastix_bspline": elastix_bspline,
    }
    return {name: table[name] for name in names if name in table}


def register_pair(
    pair: dict[str, str],
    classical: dict[str, Callable],
    refine_budgets: list[int],
    parser: ConfigParser | None,
    network: torch.nn.Module | None,
    refine_loss_weights: list[float] | None = None,
) -> list[dict[str, Any]]:
    """All methods on one pair; one row per method. ``refine_loss_weights``: λ of our refinement instead of the
    genotype's."""
    load = LoadImage(image_only=True, ensure_channel_first=True)
    fixed, moving = load(pair["fixed"]), load(pair["moving"])
    fixed_label, moving_label = load(pair["fixed_label"])[0], load(pair["moving_label"])
    moving_labels = set(torch.unique(moving_label).tolist())
    spacing = _spacing(fixed.affine)
    fixed_affine = torch.as_tensor(fixed.affine, dtype=torch.float64)
    rows = []

    def add(method: str, mapped: dict[str, torch.Tensor], seconds: float, **extra: Any) -> None:
        row = {"pair": pair["name"], "method": method, "seconds": seconds, **extra}
        row["folding_percent"] = float((mapped["jacobian"] <= 0).float().mean() * 100.0)
        row.update(score(mapped["warped_label"][0], fixed_label, moving_labels, spacing))
        rows.append(row)
        print(
            f"{pair['name']}: {method:<22} Dice {row['mean_dice']:.4f}  folded {row['folding_percent']:.4f} %  "
            f"HD95 {row['hd95_mm']:.2f} mm  {seconds:.1f} s",
            flush=True,
        )

    if classical:
        start = time.perf_counter()
        matrix = prealign_matrix(moving.as_tensor(), moving.affine, fixed.as_tensor(), fixed_affine, "affine")
        points = grid_world_points(fixed_affine, fixed.shape[1:])
        targets = (matrix[:3, :3] @ points.reshape(3, -1) + matrix[:3, 3:]).reshape(points.shape)
        on_fixed = sample_at_world(moving.as_tensor().float(), moving.affine, targets)
        prealign_seconds = time.perf_counter() - start
        scale = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)
        moving_work, fixed_work = scale(on_fixed)[None].float(), scale(fixed.as_tensor().float())[None].float()
        for name, method in classical.items():
            start = time.perf_counter()
            ddf = method(
                moving_work.as_tensor() if hasattr(moving_work, "as_tensor") else moving_work,
                fixed_work.as_tensor() if hasattr(fixed_work, "as_tensor") else fixed_work,
            )
            mapped = map_to_fixed_grid(ddf[0], fixed_affine, fixed, moving, moving_label, matrix)
            add(name, mapped, prealign_seconds + time.perf_counter() - start)
    if parser is not None and network is not None:
        start = time.perf_counter()
        preprocessing = parser.get_parsed_content("preprocessing")
        item = preprocessing(
            {"moving_image": pair["moving"], "fixed_image": pair["fixed"], "moving_label": pair["moving_label"]}
        )
        preprocess_seconds = time.perf_counter() - start
        template, inferer = parser.get_parsed_content("refinement"), parser.get_parsed_content("inferer")
        grid = list(item["fixed_image"].shape[1:])
        for steps in refine_budgets:
            refinement = TestTimeRefinement(
                template.registration_loss,
                template.loss_weights if refine_loss_weights is None else refine_loss_weights,
                steps=steps,
                levels=template.levels,
                learning_rate=template.learning_rate,
                integration_steps=template.exponential.num_steps,
            )
            start = time.perf_counter()
            result = register_item(
                network, inferer, item, torch.device("cpu"), name=pair["name"], refinement=refinement
            )
            seconds = preprocess_seconds + time.perf_counter() - start
            mapped = {"jacobian": result["jacobian"], "warped_label": result["warped_label"]}
            method = OURS if steps == 0 else f"{OURS}+refine{steps}"
            add(
                method,
                mapped,
                seconds,
                working_grid=grid,
                network_seconds=result["runtime_s"],
                refine_seconds=result["refine_s"],
            )
    return rows


def table(summary: dict[str, dict[str, float]], per_pair: list[dict[str, Any]]) -> str:
    """Markdown: per pair and method, then the mean over pairs."""
    lines = ["| pair | method | mean Dice | % folded | HD95 (mm) | s per pair |", "|---|---|---|---|---|---|"]
    for row in per_pair:
        lines.append(
            f"| {row['pair']} | {row['method']} | {row['mean_dice']:.4f} | {row['folding_percent']:.4f} | "
            f"{row['hd95_mm']:.2f} | {row['seconds']:.1f} |"
        )
    for method, row in summary.items():
        lines.append(
            f"| **mean** | {method} | {row['mean_dice']:.4f} | {row['folding_percent']:.4f} | {row['hd95_mm']:.2f} | "
            f"{row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="brain_t1", help="a bundle under bundles/ (genotype, model, configs)")
    parser.add_argument("--model", help="weights to use instead of the bundle's models/model.pt")
    available = [*CLASSICAL, *installed_optional_methods(), OURS]
    parser.add_argument(
        "--methods",
        default=",".join(available),
        help=f"comma-separated, of {', '.join([*CLASSICAL, *OPTIONAL_METHODS, OURS])} (default: all installed)",
    )
    parser.add_argument(
        "--refine_steps",
        default="10,30,60",
        help="refinement budgets of our rows (0, the network alone, is always run)",
    )
    parser.add_argument(
        "--refine_loss_weights",
        help="comma-separated λ of our refinement instead of the genotype's (e.g. the initial 10,15,3.2,0.8)",
    )
    parser.add_argument("--pairs", help="a JSON list of pairs {name, moving, moving_label, fixed, fixed_label}")
    parser.add_argument(
        "--only", help="comma-separated parts of pair names to keep (e.g. IXI, or fsaverage); default every pair"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and SimpleITK threads")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file written")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CLASSICAL) - set(OPTIONAL_METHODS) - {OURS})
    if unknown:
        raise SystemExit(
            f"--methods: unknown {', '.join(unknown)}; use {', '.join([*CLASSICAL, *OPTIONAL_METHODS, OURS])}"
        )
    missing = sorted(set(names) & set(OPTIONAL_METHODS) - set(installed_optional_methods()))
    if missing:
        raise SystemExit(
            f'--methods: {", ".join(missing)} not installed: pip install -e ".[bench]" (antspyx, itk-elastix)'
        )
    budgets = sorted({0, *(int(b) for b in args.refine_steps.split(",") if b.strip())})
    refine_weights = None
    if args.refine_loss_weights:
        try:
            refine_weights = [float(w) for w in args.refine_loss_weights.split(",")]
        except ValueError:
            message = f"--refine_loss_weights: comma-separated numbers, got {args.refine_loss_weights!r}"
            raise SystemExit(message) from None
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    pairs = json.loads(Path(args.pairs).read_text()) if args.pairs else default_pairs(DATA)
    if args.only:
        wanted = [part.strip() for part in args.only.split(",") if part.strip()]
        pairs = [pair for pair in pairs if any(part in pair["name"] for part in wanted)]
        if not pairs:
            raise SystemExit(f"--only {args.only}: no pair name contains it")
    bundle_parser, network = None, None
    if OURS in names:
        bundle_parser = _bundle_parser(args.bundle, {"device": "$torch.device('cpu')", "prealign": "affine"})
        network = bundle_parser.get_parsed_content("network")
        model = Path(args.model) if args.model else REPO_ROOT / "bundles" / args.bundle / "models" / "model.pt"
        network.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
        network.eval()
        Genotype.from_json(bundle_parser.get_parsed_content("genotype"))  # the genotype file must load
        if refine_weights is not None:
            try:
                bundle_parser.get_parsed_content("refinement").registration_loss.check_weights(refine_weights)
            except ValueError as error:
                raise SystemExit(f"--refine_loss_weights: {error}") from None
    classical = classical_methods(names)
    per_pair: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    with torch.no_grad():
        for pair in pairs:  # the JSON is rewritten after every pair: an interrupted run keeps what it measured
            per_pair += register_pair(pair, classical, budgets, bundle_parser, network, refine_weights)
            methods = list(dict.fromkeys(row["method"] for row in per_pair))
            summary = {
                method: {
                    key: statistics.fmean(r[key] for r in per_pair if r["method"] == method)
                    for key in ("mean_dice", "hd95_mm", "folding_percent", "seconds")
                }
                for method in methods
            }
            result = {
                "benchmark": "accuracy",
                "bundle": args.bundle,
                "model": str(args.model or f"bundles/{args.bundle}/models/model.pt"),
                "threads": args.threads,
                "refine_steps": budgets,
                "refine_loss_weights": refine_weights or "the genotype's",
                "machine": machine("cpu"),
                "complete": len({row["pair"] for row in per_pair}) == len(pairs),
                "summary": summary,
                "pairs": per_pair,
            }
            write_json(result, args.out)
    print(table(result["summary"], per_pair))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

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
"""The ``autoreg`` command line (``python -m autoreg_monai``), built with ``fire``.

Commands: ``register`` (two scans with a bundle), ``datalist`` (a MONAI datalist from a folder),
``search``/``train``/``evaluate`` (a bundle's workflows, through MONAI's bundle runner), ``package`` and
``fetch`` (verified bundle archives), ``info`` (what a bundle holds), ``label_app`` (a MONAI Label app serving
bundles) and ``demo`` (a generated phantom).
Errors a user can act on end the command with exit code 1 and one line naming the file and the problem;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import fire
import torch
from monai.networks.blocks import Warp
from monai.utils import set_determinism
from tqdm import tqdm

from autoreg_monai.bundle import check_bundle, find_bundle, load_bundle_config, run_workflow
from autoreg_monai.checkpoint import save_model
from autoreg_monai.checks import check_label_map, check_scan, field_of_view_warning
from autoreg_monai.data.folder import datalist_from_folder, write_datalist
from autoreg_monai.data.phantom import PHANTOM_LABELS, make_phantom_pair
from autoreg_monai.engines.report import pair_file_stem
from autoreg_monai.label.app_config import write_app
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.metrics import dice_per_label, folding_percentage, ncc, std_log_jacobian, warp_labels
from autoreg_monai.networks.genotype import Genotype, loss_term_names
from autoreg_monai.networks.nets.autoregnet import AutoRegNet
from autoreg_monai.packaging import MAX_UNPACKED_MB, fetch_bundle, package_bundle
from autoreg_monai.prealign import PREALIGN_MODES
from autoreg_monai.resources import check_memory
from autoreg_monai.search.searcher import format_genotype
from autoreg_monai.utils.atomic import atomic_write
from autoreg_monai.utils.staging import StagedOutputs

__all__ = [
    "datalist",
    "demo",
    "evaluate",
    "fetch",
    "info",
    "label_app",
    "main",
    "package",
    "register",
    "search",
    "train",
]


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


REGISTER_OUTPUTS = ("warped.nii.gz", "ddf.nii.gz", "jacobian.nii.gz", "warped_label.nii.gz", "affine.tfm")
"""What ``register`` can write for a pair, after ``<moving>_to_<fixed>_`` (the bundles' inference postprocessing)."""


def register(
    fixed: str,
    moving: str,
    bundle: str,
    out: str = "registered",
    moving_label: str | None = None,
    device: str = "cpu",
    prealign: str = "affine",
    quiet: bool = False,
    trust_bundle: bool = False,
    refine: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Register a moving scan to a fixed scan with a bundle's trained network.

    Runs the bundle's ``inference`` workflow: affine pre-alignment (SimpleITK, Mattes mutual information),
    the deformable network on the working grid, test-time refinement of its field for this pair (Adam steps
    on the bundle's λ-weighted loss), and the composed result on the fixed scan's own grid.

    Args:
        fixed: the reference scan: a NIfTI, NRRD or MHA file, or a DICOM series folder.
        moving: the scan to deform (same kinds).
        bundle: the bundle folder (e.g. ``bundles/brain_t1``) or a folder made by ``autoreg fetch``.
        out: folder of the outputs: ``<moving>_to_<fixed>_{warped,ddf,jacobian}.nii.gz`` (+ ``_warped_label``
            with ``--moving_label``, + ``_affine.tfm`` when pre-aligned), all on the fixed scan's grid.
        moving_label: optional label map of the moving scan, warped along (nearest neighbour).
        device: ``cpu`` or ``cuda``.
        prealign: ``affine`` (default), ``rigid`` or ``none`` (scans already affinely aligned).
        quiet: print nothing but errors.
        trust_bundle: a bundle of your own: its ``configs/inference.json`` ids and ``$`` wiring apply on top of
            the package's workflow. Without it a bundle contributes data only (its validated settings, genotype
            and weights); nothing of its configs is evaluated (docs/security.md).
        refine: test-time refinement steps (default: the bundle's ``refine_steps``, 10); 0: the network alone,
            fastest.
        overwrite: replace the files of an earlier registration of the same pair in ``out``; without it such
            files make ``register`` refuse before it starts. The outputs appear together when all are written
            (a run that is stopped leaves none of them).

    Example::

        autoreg register --fixed atlas_T1.nii.gz --moving sub01_T1.nii.gz --bundle bundles/brain_t1 --out out
    """
    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, int) or refine < 0):
        raise ValueError(f"--refine must be a whole number of steps >= 0, got {refine!r}")
    if prealign not in PREALIGN_MODES:
        raise ValueError(f"--prealign must be one of {', '.join(PREALIGN_MODES)}, got {prealign!r}")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    fixed, moving, bundle, out = str(fixed), str(moving), str(bundle), str(out)  # fire reads 20230101 as a number
    moving_label = None if moving_label is None else str(moving_label)
    outputs = StagedOutputs(Path(out).expanduser(), overwrite=overwrite)
    outputs.check_folder()
    outputs.check([f"{pair_file_stem(f'{Path(moving).name} -> {Path(fixed).name}')}_{s}" for s in REGISTER_OUTPUTS])
    folder = find_bundle(bundle, require_weights=True)
    check_bundle(folder, trust=trust_bundle)
    _say(quiet, f"[1/3] checking the scans ({Path(moving).name} -> {Path(fixed).name})")
    fixed_image, moving_image = check_scan(fixed, "fixed image"), check_scan(moving, "moving image")
    if moving_label is not None:
        check_label_map(moving_label, moving_image, moving)
    grid = load_bundle_config(folder, "inference", trust=trust_bundle)
    sizes = {k: grid.get_parsed_content(k) for k in ("spatial_size", "feature_channels", "deformation_channels")}
    if all(isinstance(v, (list, tuple)) for v in sizes.values()):
        check_memory(
            f"registering {Path(moving).name} to {Path(fixed).name}",
            "inference",
            sizes["spatial_size"],
            sizes["feature_channels"],
            sizes["deformation_channels"],
            device,
            fixed_shape=tuple(fixed_image.shape),
        )
    warning = field_of_view_warning(fixed_image, moving_image, prealign)
    if warning:
        print(f"autoreg: warning: {warning}", file=sys.stderr, flush=True)
    with outputs:
        return _register_staged(
            fixed, moving, folder, out, outputs, moving_label, device, prealign, quiet, refine, trust_bundle
        )


def _register_staged(
    fixed: str,
    moving: str,
    folder: Path,
    out: str,
    outputs: StagedOutputs,
    moving_label: str | None,
    device: str,
    prealign: str,
    quiet: bool,
    refine: int | None,
    trust_bundle: bool,
) -> dict[str, Any]:
    """:func:`register` once its inputs and output folder are checked: the workflow writes into ``outputs``."""
    _say(quiet, f"[2/3] registering with {folder.name} (pre-alignment: {prealign}, device: {device})")
    start = time.perf_counter()
    workflow = run_workflow(
        folder,
        "inference",
        quiet=True,
        trust=trust_bundle,
        moving=moving,
        fixed=fixed,
        moving_label=moving_label,
        results_dir=str(outputs.staging.resolve()),
        device=torch.device(device),
        prealign=prealign,
        **({} if refine is None else {"refine_steps": refine}),
    )
    elapsed = time.perf_counter() - start
    result = workflow.evaluator.state.output[0]
    written = outputs.publish([f"{result['pair']}_{suffix}" for suffix in REGISTER_OUTPUTS])
    summary = {
        "pair": result["pair"],
        "seconds": round(elapsed, 3),
        "network_seconds": round(float(result["runtime_s"]), 4),
        "refine_seconds": round(float(result["refine_s"]), 4),
        "refine_steps": int(result["refine_steps"]),
        "ncc_world": round(float(result["ncc_before"]), 4),
        "ncc_prealigned": round(float(result["ncc_prealigned"]), 4),
        "ncc": round(float(result["ncc"]), 4),
        "folding_percent": round(float(result["folding_percent"]), 4),
        "outputs": written,
    }
    _say(quiet, f"[3/3] wrote {len(written)} files to {out}: {', '.join(written)}")
    _say(
        quiet,
        f"{result['pair']}: {elapsed:.1f} s in all (network {summary['network_seconds']:.3f} s, refinement "
        f"{summary['refine_seconds']:.1f} s for {summary['refine_steps']} steps); NCC "
        f"{summary['ncc_world']:.4f} before -> {summary['ncc_prealigned']:.4f} pre-aligned -> {summary['ncc']:.4f} "
        f"registered; folded voxels {summary['folding_percent']:.4f} %",
    )
    return summary


def datalist(
    images: str,
    labels: str | None = None,
    pairing: str = "atlas",
    atlas: str | None = None,
    atlas_label: str | None = None,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    out: str = "datalist.json",
    quiet: bool = False,
) -> dict[str, Any]:
    """Build a MONAI datalist from a folder of scans, matching label maps to scans by file name.

    Args:
        images: folder of scans (NIfTI, NRRD, MHA files or DICOM series folders).
        labels: folder of label maps (same name as their scan, the scan's name plus a suffix such as
            ``_seg``, or the same subject identifier before the first ``_``).
        pairing: ``atlas`` (needs ``--atlas``), ``pairwise`` or ``cross_modal`` (T1/T2 in the names).
        atlas: the atlas scan. atlas_label: its label map.
        val: fraction of subjects for validation; test: for testing (both drawn from labelled subjects).
        seed: seed of the split.
        out: the datalist file; paths in it are relative to its folder.
        quiet: print nothing but errors.

    Example::

        autoreg datalist --images scans/ --labels labels/ --atlas atlas.nii.gz --out study/datalist.json
    """
    target = Path(out).expanduser().resolve()
    scan = datalist_from_folder(images, labels, pairing, atlas, atlas_label, val, test, seed, base_dir=target.parent)
    write_datalist(scan, target)
    _say(quiet, scan.report())
    _say(quiet, f"wrote {target}")
    return {
        "datalist": str(target),
        "images_without_label": scan.images_without_label,
        "labels_without_image": scan.labels_without_image,
    }


def _bundle_workflow(
    workflow: str, bundle: str, dataset_dir: str | None, quiet: bool, trust_bundle: bool, overrides: dict
) -> None:
    folder = find_bundle(bundle)
    check_bundle(folder, trust=trust_bundle)
    if dataset_dir is not None:
        path = Path(dataset_dir)
        if not (path / "datalist.json").is_file() and not path.is_file():
            raise ValueError(f"{dataset_dir}: no datalist.json there (make one with autoreg datalist)")
        overrides["dataset_dir"] = dataset_dir
    _say(
        quiet,
        f"running the {workflow} workflow with the settings of {folder.name} ({folder})",
    )
    run_workflow(folder, workflow, quiet=quiet, trust=trust_bundle, **overrides)


def search(
    bundle: str, dataset_dir: str | None = None, quiet: bool = False, trust_bundle: bool = False, **overrides: Any
) -> None:
    """Search the architecture and loss weights of a bundle on a dataset (its ``search`` workflow).

    Any other ``--key value`` is a bundle config override, e.g. ``--max_epochs 45 --device cuda``.
    ``--trust_bundle``: also apply the bundle's own ``configs/search.json`` ids and ``$`` wiring (see ``register``).

    Example::

        autoreg search --bundle bundles/brain_t1 --dataset_dir study/ --max_epochs 45
    """
    _bundle_workflow("search", bundle, dataset_dir, quiet, trust_bundle, overrides)


def train(
    bundle: str, dataset_dir: str | None = None, quiet: bool = False, trust_bundle: bool = False, **overrides: Any
) -> None:
    """Train the searched network of a bundle from scratch (its ``train`` workflow); overrides as for search."""
    _bundle_workflow("train", bundle, dataset_dir, quiet, trust_bundle, overrides)


def evaluate(
    bundle: str, dataset_dir: str | None = None, quiet: bool = False, trust_bundle: bool = False, **overrides: Any
) -> None:
    """Score a bundle's trained network on the test pairs (its ``evaluate`` workflow); overrides as for search."""
    _bundle_workflow("evaluate", bundle, dataset_dir, quiet, trust_bundle, overrides)


def package(bundle: str, out: str, quiet: bool = False) -> dict[str, str]:
    """Write a distributable bundle archive (configs, docs, licence, genotype and weights, SHA256SUMS).

    Also writes ``<out>.sha256``, the archive's own SHA-256, to publish with it.

    Example::

        autoreg package --bundle bundles/brain_t1 --out dist/brain_t1.zip
    """
    archive, digest = package_bundle(find_bundle(bundle, require_weights=True), out)
    _say(quiet, f"wrote {archive} (sha256 {digest})")
    return {"archive": str(archive), "sha256": digest}


def fetch(
    source: str,
    out: str = "bundles_fetched",
    sha256: str | None = None,
    quiet: bool = False,
    max_unpacked_mb: float = MAX_UNPACKED_MB,
) -> str:
    """Download or copy a bundle archive, check every hash and unpack it into ``<out>/<name>_v<version>/``.

    Args:
        source: an archive file or a file://, http:// or https:// URL.
        out: the folder receiving ``<name>_v<version>/bundles/<name>/``.
        sha256: the archive's expected SHA-256 (default: ``<archive>.sha256`` next to a local archive).
        quiet: print nothing but errors.
        max_unpacked_mb: refuse an archive that unpacks to more than this many MiB.

    Example::

        autoreg fetch --source dist/brain_t1.zip --out ~/autoreg
        autoreg register --bundle ~/autoreg/brain_t1_v0.6.2 --fixed f.nii.gz --moving m.nii.gz
    """
    folder = fetch_bundle(str(source), str(out), sha256, max_unpacked_mb)
    _say(quiet, f"bundle ready in {folder}")
    return str(folder)


def info(bundle: str) -> dict[str, Any]:
    """Print what a bundle holds: scenario, genotype, loss weights, parameters, training data."""
    folder = find_bundle(bundle)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    config = load_bundle_config(folder, "inference")
    common = {
        k: config.get_parsed_content(k)
        for k in ("scenario", "similarity", "pairing", "spatial_size", "working_spacing")
        + ("feature_channels", "deformation_channels", "integration_steps")
    }
    details: dict[str, Any] = {
        "bundle": str(folder),
        "name": meta.get("name"),
        "version": meta.get("version"),
        "scenario": common["scenario"],
        "similarity": common["similarity"],
        "pairing": common["pairing"],
        "working_grid": common["spatial_size"],
        "working_spacing": common["working_spacing"],
        "training_data": meta.get("data_source"),
    }
    spacing = "" if common["working_spacing"] is None else f" at {common['working_spacing']} mm"
    lines = [
        f"{details['name']} {details['version']} ({folder})",
        f"scenario {details['scenario']}: {details['similarity']} similarity, {details['pairing']} pairing, "
        f"working grid at most {details['working_grid']}{spacing}",
    ]
    genotype_file = folder / "models" / "genotype.json"
    if genotype_file.is_file():
        genotype = Genotype.from_json(genotype_file)
        net = AutoRegNet(
            genotype,
            feature_channels=common["feature_channels"],
            deformation_channels=common["deformation_channels"],
            integration_steps=common["integration_steps"],
        )
        details["parameters"] = sum(p.numel() for p in net.parameters())
        details["loss_weights"] = dict(zip(loss_term_names(len(genotype.loss_weights)), genotype.loss_weights))
        lines += [format_genotype(genotype), f"parameters: {details['parameters']:,}"]
    else:
        lines.append("no models/genotype.json: run the search workflow first")
    model_file = folder / "models" / "model.pt"
    details["trained"] = model_file.is_file()
    lines.append(
        f"weights: models/model.pt ({model_file.stat().st_size / 2**20:.2f} MiB)"
        if model_file.is_file()
        else "weights: none (run the train workflow)"
    )
    lines.append(f"training data: {details['training_data']}")
    print("\n".join(lines))
    return details


def label_app(
    out: str,
    bundles: str | None = None,
    results: str | None = None,
    prealign: str | None = None,
    trust_bundles: bool | None = None,
    quiet: bool = False,
) -> str:
    """Write a MONAI Label app serving the trained bundles of a folder (docs/monai_label.md).

    The app is the package's sample app (``main.py``) with a ``config.json`` holding these options; start it
    with ``monailabel start_server`` in the environment of the ``label`` extra, where ``--conf key value``
    overrides any of them.

    Args:
        out: the new app folder (must not exist, or be empty).
        bundles: the folder of bundles to serve (the repository's ``bundles/``, a folder of ``autoreg fetch``
            downloads, or one bundle); without it, give ``--conf bundles`` when starting the server.
        results: where each request's outputs go (default ``<out>/results``).
        prealign: default pre-alignment of the requests: ``affine`` (default), ``rigid`` or ``none``.
        trust_bundles: apply the served bundles' own inference configs (code; docs/security.md).
        quiet: print nothing but errors.

    Example::

        autoreg label_app --out apps/autoreg --bundles bundles
        monailabel start_server --app apps/autoreg --studies studies
    """
    app, served = write_app(out, bundles=bundles, results=results, prealign=prealign, trust_bundles=trust_bundles)
    _say(quiet, f"MONAI Label app in {app}" + (f" serving {', '.join(served)}" if served else ""))
    _say(quiet, f"start it: monailabel start_server --app {app} --studies <folder of images>")
    return str(app)


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


COMMANDS = {
    "register": register,
    "datalist": datalist,
    "search": search,
    "train": train,
    "evaluate": evaluate,
    "package": package,
    "fetch": fetch,
    "info": info,
    "label_app": label_app,
    "demo": demo,
}
"""The commands of ``autoreg``."""


_USER_ERRORS = (ValueError, OSError, RuntimeError, KeyError)  # OSError: files and folders the user named


def _user_message(error: BaseException) -> str:
    """The message of the innermost user error behind ``error``.

    MONAI's config parser wraps what a component or a ``$`` expression (e.g. the workflow's ``run``) raises in
    ``RuntimeError("Failed to instantiate ...")`` or ``RuntimeError("Failed to evaluate ...")``; the cause (e.g.
    our ``ValueError`` naming a file) is what the user can act on.
    """
    while (
        isinstance(error, RuntimeError)
        and str(error).startswith(("Failed to instantiate", "Failed to evaluate", "applying transform"))
        and isinstance(error.__cause__, _USER_ERRORS)
    ):
        error = error.__cause__
    return str(error).strip() or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``autoreg`` console script; ``--debug`` anywhere shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")
    warnings.filterwarnings("ignore", message=".*GHSA-873f.*")
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")  # optional GPU decoder absent: fine
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # an optional GPU decoder
    try:
        fire.Fire(COMMANDS, command=args, name="autoreg", serialize=lambda value: None)
    except _USER_ERRORS as error:
        if debug:
            raise
        print(f"autoreg: error: {_user_message(error)}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # a bug, not a user error: say so, and how to see where
        if debug:
            raise
        print(f"autoreg: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        sys.exit(2)

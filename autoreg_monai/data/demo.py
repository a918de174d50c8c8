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
"""The embedded demo data set: generated subjects with label maps, written as NIfTI on first use.

Every bundle runs out of the box on it. An atlas is deformed by a random smooth diffeomorphism per
subject and re-rendered with its own intensity curve, bias field and noise, with the matching label map:

- brain scenarios: the atlas is the MNI ICBM152 2009a T1 template and its grey/white-matter maps as
  shipped inside the ``nilearn`` package (read from its files, nothing is downloaded), cropped to the
  brain; labels are 1 CSF, 2 grey matter, 3 white matter; the T2-like contrast is rendered from the
  tissue maps (CSF bright, white matter dark);
- ``knee_t1``: the synthetic knee of :mod:`autoreg_monai.data.knee` (femur, tibia, femoral and tibial
  cartilage in a leg of muscle and fat, T1-like intensities): generated, not scanned.

The set is deterministic given the seed and cached (``$AUTOREG_DEMO_DIR`` or
``~/.cache/autoreg_monai/demo``); it is written to a temporary folder and renamed, so an interrupted
generation never leaves a partial set.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.networks.blocks import Warp

from autoreg_monai.checks import check_datalist
from autoreg_monai.data.datalist import load_datalist, make_pairs
from autoreg_monai.data.knee import KNEE_LABELS, knee_label_map, knee_tissue_map, render_knee
from autoreg_monai.data.phantom import random_diffeomorphism, smooth_random_field, warp_label_map
from autoreg_monai.networks.blocks.diffeo import resize_image

__all__ = [
    "BRAIN_LABELS",
    "DEMO_SCENARIOS",
    "DEMO_VERSION",
    "demo_cache_dir",
    "demo_datalist",
    "demo_label_names",
    "inference_pairs",
    "mni_brain_atlas",
    "scenario_datalist",
]

DEMO_VERSION = 4
"""Bumped whenever the generator changes, so stale caches are not reused."""

DEMO_SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "brain_t1": ("mni152", ("t1",)),
    "brain_t2": ("mni152", ("t2",)),
    "brain_t1t2": ("mni152", ("t1", "t2")),
    "knee_t1": ("knee", ("t1",)),
}
"""Per scenario: the atlas source and the contrasts written per subject (two give ``image_t1``/``image_t2``)."""

BRAIN_LABELS: dict[int, str] = {1: "cerebrospinal fluid", 2: "grey matter", 3: "white matter"}
"""Label values of the brain demo set."""


def demo_label_names(scenario: str) -> dict[int, str]:
    """``{label value: structure name}`` of a demo scenario's label maps."""
    if scenario not in DEMO_SCENARIOS:
        raise ValueError(f"unknown demo scenario {scenario!r}; known: {sorted(DEMO_SCENARIOS)}")
    return dict(KNEE_LABELS if DEMO_SCENARIOS[scenario][0] == "knee" else BRAIN_LABELS)


_T2_TISSUE_INTENSITY = (0.95, 0.55, 0.30)  # CSF, grey matter, white matter in a T2-weighted image


def demo_cache_dir() -> Path:
    """Where demo sets are generated: ``$AUTOREG_DEMO_DIR`` or ``~/.cache/autoreg_monai/demo``."""
    env = os.environ.get("AUTOREG_DEMO_DIR")
    return Path(env) if env else Path.home() / ".cache" / "autoreg_monai" / "demo"


def _nilearn_template(name: str) -> np.ndarray:
    spec = importlib.util.find_spec("nilearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the brain demo set needs the MNI152 template of the 'nilearn' package: pip install nilearn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    path = path / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise ValueError(f"{path}: MNI152 template file missing from the nilearn installation")
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=4)
def mni_brain_atlas(size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The MNI152 2009a brain, cropped to the brain, padded to a cube and resampled to ``size^3``.

    Returns:
        ``(tissue, label, spacing)``: ``(1, 4, S, S, S)`` float32 channels T1, CSF, grey matter and white
        matter probability (each in ``[0, 1]``); ``(1, 1, S, S, S)`` int64 labels (:data:`BRAIN_LABELS`);
        the isotropic voxel size in mm.
    """
    t1, gm, wm = (_nilearn_template(n) for n in ("t1", "gm", "wm"))
    brain = t1 > 0.04  # the template is skull-stripped
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    corners = np.argwhere(brain)
    low, high = corners.min(axis=0), corners.max(axis=0) + 1
    side = int((high - low).max()) + 8
    start = (low + high) // 2 - side // 2
    cube = np.zeros((4, side, side, side), dtype=np.float32)
    src = tuple(slice(max(s, 0), min(s + side, n)) for s, n in zip(start, t1.shape))
    dst = tuple(slice(b.start - s, b.stop - s) for b, s in zip(src, start))
    for c, channel in enumerate((t1, csf, gm, wm)):
        cube[(c, *dst)] = channel[src]
    tissue = resize_image(torch.from_numpy(cube)[None], (size,) * 3)
    label = (tissue[:, 1:].argmax(dim=1, keepdim=True) + 1) * (tissue[:, :1] > 0.04)
    return tissue, label.long(), float(side) / size


def _save_nifti(array: torch.Tensor, path: Path, spacing: float, dtype: type) -> None:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(array.shape[2:]) - 1) / 2.0  # centred on the origin, RAS
    nib.save(nib.Nifti1Image(array[0, 0].numpy().astype(dtype), affine), str(path))


def _render_brain(tissue: torch.Tensor, contrast: str, generator: torch.Generator) -> torch.Tensor:
    if contrast == "t1":
        image = tissue[:, :1]
    else:  # T2-like: a non-monotone function of T1 (CSF bright, white matter dark)
        weights = torch.tensor(_T2_TISSUE_INTENSITY).view(1, 3, 1, 1, 1)
        image = (tissue[:, 1:] * weights).sum(dim=1, keepdim=True)
    gamma = float(torch.empty(1).uniform_(0.8, 1.25, generator=generator))
    bias = 1.0 + 0.1 * smooth_random_field(image.shape[2:], 1, 3, generator)
    image = image.clamp(0.0, 1.0) ** gamma * bias + 0.02 * torch.randn(image.shape, generator=generator)
    return image.clamp(0.0, 1.0)


def _generate(
    folder: Path,
    source: str,
    contrasts: tuple[str, ...],
    counts: dict[str, int],
    size: int,
    seed: int,
    deformation: float,
):
    shape = (size, size, size)
    generator = torch.Generator().manual_seed(seed)
    if source == "mni152":
        atlas_tissue, atlas_label, spacing = mni_brain_atlas(size)
    else:
        atlas_tissue, spacing = knee_tissue_map(shape, generator), 140.0 / size
        atlas_label = knee_label_map(atlas_tissue)

    def subject(name: str, ddf: torch.Tensor | None) -> dict[str, str]:
        if source == "mni152":
            label = atlas_label if ddf is None else warp_label_map(atlas_label, ddf)
            tissue = atlas_tissue if ddf is None else Warp(padding_mode="zeros")(atlas_tissue, ddf)
        else:
            tissue = atlas_tissue if ddf is None else warp_label_map(atlas_tissue, ddf)
            label = knee_label_map(tissue)
        _save_nifti(label, folder / f"{name}_label.nii.gz", spacing, np.int16)
        item = {"label": f"{name}_label.nii.gz"}
        for contrast in contrasts:
            if source == "mni152":
                image = _render_brain(tissue, contrast, generator)
            else:
                image = render_knee(tissue, generator)
            key = "image" if len(contrasts) == 1 else f"image_{contrast}"
            item[key] = f"{name}_{contrast}.nii.gz"
            _save_nifti(image, folder / item[key], spacing, np.float32)
        return item

    datalist: dict[str, Any] = {"atlas": subject("atlas", None)}
    index = 0
    for split, count in counts.items():
        datalist[split] = []
        for _ in range(count):
            _, ddf = random_diffeomorphism(shape, magnitude=deformation * size, generator=generator)
            datalist[split].append(subject(f"subject{index:03d}", ddf))
            index += 1
    return datalist


def demo_datalist(
    scenario: str = "brain_t1",
    num_training: int = 8,
    num_validation: int = 4,
    num_test: int = 4,
    size: int = 64,
    seed: int = 0,
    deformation: float = 0.12,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """The demo data set of ``scenario`` as a MONAI datalist with absolute paths, generated if needed.

    Args:
        scenario: a key of :data:`DEMO_SCENARIOS`.
        num_training: subjects in ``"training"``.
        num_validation: subjects in ``"validation"``.
        num_test: subjects in ``"test"``.
        size: voxels per side.
        seed: generator seed.
        deformation: largest velocity component of the random deformations, as a fraction of ``size``.
        root: cache folder; default :func:`demo_cache_dir`.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "atlas": {...}}``, each subject
        ``{"image": path, "label": path}`` (or ``image_t1``/``image_t2`` for two contrasts). The same
        content is in ``datalist.json`` (relative paths) in the generated folder.
    """
    if scenario not in DEMO_SCENARIOS:
        raise ValueError(f"unknown demo scenario {scenario!r}; known: {sorted(DEMO_SCENARIOS)}")
    counts = {"training": num_training, "validation": num_validation, "test": num_test}
    if min(counts.values()) < 0 or size < 16:
        raise ValueError(f"need non-negative subject counts and size >= 16, got {counts} and size {size}")
    name = f"{scenario}_v{DEMO_VERSION}_s{seed}_n{size}_d{deformation:g}_" + "_".join(str(c) for c in counts.values())
    folder = Path(root) if root is not None else demo_cache_dir()
    target = folder / name
    if not (target / "datalist.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
        try:
            source, contrasts = DEMO_SCENARIOS[scenario]
            datalist = _generate(staging, source, contrasts, counts, size, seed, deformation)
            (staging / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
            try:
                staging.rename(target)
            except OSError:  # another process finished the same set first
                if not (target / "datalist.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load_datalist(target / "datalist.json")


def scenario_datalist(
    dataset_dir: str | Path | None, scenario: str, demo_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The datalist of ``dataset_dir`` (its ``datalist.json``), or the scenario's demo set when it is ``None``.

    Args:
        dataset_dir: a folder holding ``datalist.json`` (or the JSON file itself); ``None``: the demo set.
        scenario: demo scenario, a key of :data:`DEMO_SCENARIOS`.
        demo_options: keyword arguments of :func:`demo_datalist` (subject counts, size, seed).

    Raises:
        ValueError: naming the file, for a user datalist whose entries or files fail
            :func:`~autoreg_monai.checks.check_datalist` (checked before any work starts).
    """
    if dataset_dir is None or str(dataset_dir) == "":
        return demo_datalist(scenario, **dict(demo_options or {}))
    datalist = load_datalist(dataset_dir)
    source = Path(dataset_dir) / "datalist.json" if Path(dataset_dir).is_dir() else Path(dataset_dir)
    check_datalist(datalist, source)
    return datalist


def inference_pairs(
    moving: str | Path | None = None,
    fixed: str | Path | None = None,
    moving_label: str | Path | None = None,
    dataset_dir: str | Path | None = None,
    scenario: str = "brain_t1",
    demo_options: Mapping[str, Any] | None = None,
    pairing: str = "atlas",
    split: str = "test",
) -> list[dict[str, str]]:
    """The pairs an inference run registers: one given pair, or the pairs of a datalist split.

    Args:
        moving: moving image file (NIfTI, NRRD, MHA) or DICOM series folder; with ``fixed``, registers this pair.
        fixed: fixed image file or DICOM series folder.
        moving_label: optional label map of ``moving``, warped along.
        dataset_dir: otherwise, the datalist to pair (see :func:`scenario_datalist`; ``None``: the demo set).
        scenario: demo scenario.
        demo_options: demo set options.
        pairing: how the datalist's subjects are paired (see :func:`~autoreg_monai.data.make_pairs`).
        split: the datalist split to register.

    Raises:
        ValueError: only one of ``moving`` and ``fixed`` given, or a given path does not exist.
    """
    if moving is None and fixed is None:
        return make_pairs(scenario_datalist(dataset_dir, scenario, demo_options), split, pairing)
    if moving is None or fixed is None:
        raise ValueError("give both a moving and a fixed image (--moving FILE --fixed FILE), or neither")
    pair = {"moving_image": str(moving), "fixed_image": str(fixed)}
    if moving_label is not None:
        pair["moving_label"] = str(moving_label)
    for key, path in pair.items():
        if not Path(path).exists():
            raise ValueError(f"{path}: {key.replace('_', ' ')} not found")
    pair["pair"] = f"{Path(str(moving)).name} -> {Path(str(fixed)).name}"
    return [pair]

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
"""A MONAI datalist from a folder of scans (and one of label maps), as ``autoreg datalist`` writes it.

Images are NIfTI, NRRD or MHA files, or DICOM series (a sub-folder holding ``.dcm`` files). A label map
belongs to the image whose name it matches: the same name, or the image's name followed by a suffix
(``sub01.nii.gz`` and ``sub01_seg.nii.gz``), or the same subject identifier (the name up to its first
``_``: ``IXI012-HH-1211_T1w.nii.gz`` and ``IXI012-HH-1211_dlmuse.nii.gz``) when that is unambiguous. For
the ``cross_modal`` pairing, a subject's contrasts are told apart by a ``t1``/``t2`` token in the name
(``sub01_T1.nii.gz``, ``sub01_T2.nii.gz``).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoreg_monai.data.datalist import PAIRINGS
from autoreg_monai.utils.atomic import atomic_write

__all__ = ["FolderScan", "datalist_from_folder", "scan_stem", "write_datalist"]

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CONTRAST = re.compile(r"(?:^|[_\-.])(t1|t2)(?:w)?(?=$|[_\-.])", re.IGNORECASE)


def scan_stem(path: Path) -> str:
    """The name of a scan without its extension (``sub01_T1.nii.gz`` -> ``sub01_T1``; a DICOM folder: its name)."""
    name = path.name
    for extension in _EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def _scans(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(_EXTENSIONS):
            found.append(entry)
        elif entry.is_dir() and any(p.suffix.lower() == ".dcm" for p in entry.iterdir() if p.is_file()):
            found.append(entry)
    if not found:
        raise ValueError(f"{folder}: no NIfTI, NRRD or MHA files and no DICOM series folders found")
    return found


@dataclass
class FolderScan:
    """What :func:`datalist_from_folder` found: the datalist and the files it could not use."""

    datalist: dict[str, Any]
    images_without_label: list[str] = field(default_factory=list)
    labels_without_image: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    def report(self) -> str:
        """A readable summary: subjects per split and every unmatched or ambiguous file."""
        counts = ", ".join(f"{len(self.datalist.get(s, []))} {s}" for s in ("training", "validation", "test"))
        lines = [f"datalist: {counts}" + (" + atlas" if "atlas" in self.datalist else "")]
        for title, names in (
            ("images without a label map", self.images_without_label),
            ("label maps without an image (not used)", self.labels_without_image),
            ("ambiguous matches (not used)", self.ambiguous),
        ):
            if names:
                lines.append(f"{title} ({len(names)}): " + ", ".join(names))
        return "\n".join(lines)


def _match_labels(images: list[Path], labels: list[Path]) -> tuple[dict[Path, Path], list[str], list[str]]:
    """Assign label files to image files by name; returns the matches, unused labels and ambiguities."""
    matches: dict[Path, Path] = {}
    ambiguous: list[str] = []
    remaining = list(labels)
    rules = (
        lambda i, la: scan_stem(la) == scan_stem(i),
        lambda i, la: re.match(re.escape(scan_stem(i)) + r"[_\-.]", scan_stem(la)) is not None,
        lambda i, la: scan_stem(la).split("_")[0] == scan_stem(i).split("_")[0],
    )
    for rule in rules:
        for image in images:
            if image in matches:
                continue
            candidates = [la for la in remaining if rule(image, la)]
            if len(candidates) == 1:
                rivals = [i for i in images if i not in matches and rule(i, candidates[0])]
                if len(rivals) == 1:
                    matches[image] = candidates[0]
                    remaining.remove(candidates[0])
            elif len(candidates) > 1 and rule is rules[-1]:
                ambiguous.append(f"{image.name} ~ {{{', '.join(c.name for c in candidates)}}}")
    return matches, [la.name for la in remaining], ambiguous


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()  # symlinks kept


def datalist_from_folder(
    images: str | Path,
    labels: str | Path | None = None,
    pairing: str = "atlas",
    atlas: str | Path | None = None,
    atlas_label: str | Path | None = None,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    base_dir: str | Path | None = None,
) -> FolderScan:
    """Build a datalist (MONAI's JSON form) from a folder of scans.

    The atlas (and its label map), when it lies in the scanned folders, is not made a subject. Subjects
    are shuffled with ``seed``; the validation and test splits take ``val`` and ``test`` of them
    (at least one each when the fraction is positive), drawn from the subjects that have a label map
    (the loss-weight search scores the validation Dice, evaluation the test Dice), the rest train.

    Args:
        images: folder of scans (files or DICOM series folders).
        labels: optional folder of label maps, matched to the scans by name (see the module docstring).
        pairing: one of :data:`~autoreg_monai.data.PAIRINGS`; ``atlas`` needs ``atlas``; ``cross_modal``
            groups each subject's T1 and T2 scans as ``image_t1``/``image_t2``.
        atlas: the atlas scan (``atlas`` pairing).
        atlas_label: its label map.
        val: fraction of subjects for validation.
        test: fraction of subjects for testing.
        seed: seed of the split.
        base_dir: paths are written relative to this folder (the datalist's folder); ``None``: absolute.

    Returns:
        a :class:`FolderScan` with the datalist and the unmatched files.

    Raises:
        ValueError: a folder that is missing or holds no scans, an unknown pairing, a missing atlas, bad
            fractions, or too few subjects for the splits.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; use one of {', '.join(PAIRINGS)}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test must be fractions in [0, 1) summing below 1, got val={val}, test={test}")
    reference = {os.path.abspath(p) for p in (atlas, atlas_label) if p is not None}  # the atlas is no subject
    image_files = [p for p in _scans(Path(images)) if os.path.abspath(p) not in reference]
    label_files = [
        p for p in (_scans(Path(labels)) if labels is not None else []) if os.path.abspath(p) not in reference
    ]
    matches, unused_labels, ambiguous = _match_labels(image_files, label_files)

    def entry_path(path: Path) -> str:
        return _relative(path, Path(base_dir)) if base_dir is not None else os.path.abspath(path)

    subjects: list[dict[str, str]] = []
    if pairing == "cross_modal":
        grouped: dict[str, dict[str, Path]] = {}
        for image in image_files:
            stem = scan_stem(image)
            found = _CONTRAST.search(stem)
            if found is None:
                ambiguous.append(f"{image.name}: no T1/T2 token in the name")
                continue
            subject = (stem[: found.start()] + stem[found.end() :]).strip("_-.") or stem
            grouped.setdefault(subject, {})[f"image_{found.group(1).lower()}"] = image
        for subject, contrasts in sorted(grouped.items()):
            if set(contrasts) != {"image_t1", "image_t2"}:
                ambiguous.append(f"{subject}: needs both a T1 and a T2 scan, found {sorted(contrasts)}")
                continue
            item = {key: entry_path(path) for key, path in sorted(contrasts.items())}
            label = matches.get(contrasts["image_t1"]) or matches.get(contrasts["image_t2"])
            if label is not None:
                item["label"] = entry_path(label)
            subjects.append(item)
        unmatched_images = [p.name for p in image_files if p not in matches]
    else:
        for image in image_files:
            item = {"image": entry_path(image)}
            if image in matches:
                item["label"] = entry_path(matches[image])
            subjects.append(item)
        unmatched_images = [p.name for p in image_files if p not in matches] if labels is not None else []

    labelled = [s for s in subjects if "label" in s]
    unlabelled = [s for s in subjects if "label" not in s]
    rng = random.Random(seed)
    rng.shuffle(labelled)
    rng.shuffle(unlabelled)
    count = len(subjects)
    n_val = max(1, round(val * count)) if val > 0 else 0
    n_test = max(1, round(test * count)) if test > 0 else 0
    if labels is not None and n_val + n_test > len(labelled):
        raise ValueError(
            f"{len(labelled)} of {count} subjects have a label map, but the validation and test splits need "
            f"{n_val + n_test}: add label maps or lower --val/--test"
        )
    pool = labelled + unlabelled if labels is not None else unlabelled + labelled
    validation, testing, training = pool[:n_val], pool[n_val : n_val + n_test], pool[n_val + n_test :]
    minimum = 1 if pairing == "atlas" else 2
    for name, split in (("training", training), ("validation", validation), ("test", testing)):
        if (split or name == "training") and len(split) < minimum:
            raise ValueError(
                f"the {pairing!r} pairing needs at least {minimum} {name} subject(s), got {len(split)} of {count}"
            )
    datalist: dict[str, Any] = {"training": training, "validation": validation, "test": testing}
    if pairing == "atlas":
        if atlas is None:
            raise ValueError("the 'atlas' pairing needs --atlas FILE (the scan every subject is registered to)")
        atlas_path = Path(atlas)
        if not atlas_path.exists():
            raise ValueError(f"{atlas_path}: atlas not found")
        datalist["atlas"] = {"image": entry_path(atlas_path)}
        if atlas_label is not None:
            if not Path(atlas_label).exists():
                raise ValueError(f"{atlas_label}: atlas label map not found")
            datalist["atlas"]["label"] = entry_path(Path(atlas_label))
    return FolderScan(datalist, unmatched_images, unused_labels, ambiguous)


def write_datalist(scan: FolderScan, path: str | Path) -> Path:
    """Write the datalist of ``scan`` as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(scan.datalist, indent=2) + "\n")
    return path

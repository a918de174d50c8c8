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
"""Datalists (MONAI's JSON form) and their pairing into (moving, fixed) registration pairs.

A datalist is ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...], "test": [...],
"atlas": {"image": ..., "label": ...}}``; a cross-modal scenario gives ``image_t1``/``image_t2`` per
subject. Relative paths are relative to the folder of the JSON file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "PAIR_KEYS",
    "PAIRINGS",
    "find_labels",
    "load_datalist",
    "make_pairs",
]

PAIRINGS = ("atlas", "pairwise", "cross_modal")
"""``atlas``: every subject onto the atlas; ``pairwise``: every ordered pair of distinct subjects;
``cross_modal``: one contrast of a subject onto another contrast of a different subject."""

PAIR_KEYS = ("moving_image", "fixed_image", "moving_label", "fixed_label")
"""Keys of a pair dictionary (labels only when both subjects have one)."""

_DEFAULT_KEYS = {"atlas": ("image", "image"), "pairwise": ("image", "image"), "cross_modal": ("image_t2", "image_t1")}


def _resolve(value: Any, base: Path, where: str) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a file path (string), got {value!r}")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Read a datalist JSON file (or ``datalist.json`` in a folder) with every file path made absolute.

    Raises:
        ValueError: naming the file, when it is missing or not a datalist, or when a listed file does not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "datalist.json"
    if not path.is_file():
        raise ValueError(f"{path}: datalist not found (expected a datalist.json, see docs/search.md)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON datalist: {err}") from err
    if not isinstance(data, dict) or not any(k in data for k in ("training", "validation", "test")):
        raise ValueError(f"{path}: a datalist needs at least one of the lists 'training', 'validation', 'test'")
    base = path.parent
    resolved: dict[str, Any] = {}
    for split, items in data.items():
        if split == "atlas":
            if not isinstance(items, dict):
                raise ValueError(f"{path}: 'atlas' must be an object like {{'image': ..., 'label': ...}}")
            resolved[split] = {k: _resolve(v, base, f"{path} atlas.{k}") for k, v in items.items()}
        elif isinstance(items, list):
            resolved[split] = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ValueError(f"{path}: {split}[{i}] must be an object like {{'image': ..., 'label': ...}}")
                resolved[split].append({k: _resolve(v, base, f"{path} {split}[{i}].{k}") for k, v in item.items()})
        else:
            resolved[split] = items
    subjects = [item for split in ("training", "validation", "test") for item in resolved.get(split, [])]
    subjects.append(resolved.get("atlas", {}))
    missing = [f for item in subjects for f in item.values() if not Path(f).is_file()]
    if missing:
        raise ValueError(f"{path}: {len(missing)} listed file(s) do not exist, e.g. {missing[:3]}")
    return resolved


def make_pairs(
    datalist: dict[str, Any],
    split: str,
    pairing: str = "atlas",
    moving_key: str | None = None,
    fixed_key: str | None = None,
    label_key: str = "label",
    max_pairs: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Turn the subjects of one split into (moving, fixed) pairs.

    Args:
        datalist: a datalist (see :func:`load_datalist`).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        pairing: one of :data:`PAIRINGS`.
        moving_key: image key of the moving subject; default ``image`` (``image_t2`` for ``cross_modal``).
        fixed_key: image key of the fixed subject (or atlas); default ``image`` (``image_t1`` for ``cross_modal``).
        label_key: label-map key; labels are paired when both sides have one.
        max_pairs: keep at most this many pairs (a seeded random subset), e.g. for large pairwise sets.
        seed: seed of that subset.

    Returns:
        a list of dictionaries with the keys of :data:`PAIR_KEYS` and ``pair`` (``"moving -> fixed"``).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; use one of {PAIRINGS}")
    subjects = datalist.get(split)
    if not isinstance(subjects, list) or not subjects:
        raise ValueError(f"the datalist has no subjects in {split!r}")
    default_moving, default_fixed = _DEFAULT_KEYS[pairing]
    moving_key, fixed_key = moving_key or default_moving, fixed_key or default_fixed

    def pair(moving: dict[str, str], fixed: dict[str, str]) -> dict[str, str]:
        for item, key in ((moving, moving_key), (fixed, fixed_key)):
            if key not in item:
                raise ValueError(f"{split} subject {item} has no {key!r} entry, needed by the {pairing!r} pairing")
        out = {"moving_image": moving[moving_key], "fixed_image": fixed[fixed_key]}
        if label_key in moving and label_key in fixed:
            out.update(moving_label=moving[label_key], fixed_label=fixed[label_key])
        out["pair"] = f"{Path(moving[moving_key]).name} -> {Path(fixed[fixed_key]).name}"
        return out

    if pairing == "atlas":
        atlas = datalist.get("atlas")
        if not isinstance(atlas, dict):
            raise ValueError("the 'atlas' pairing needs an 'atlas' entry in the datalist")
        pairs = [pair(subject, atlas) for subject in subjects]
    else:
        if len(subjects) < 2:
            raise ValueError(f"the {pairing!r} pairing needs at least 2 subjects in {split!r}, got {len(subjects)}")
        pairs = [pair(m, f) for i, m in enumerate(subjects) for j, f in enumerate(subjects) if i != j]
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    return pairs


def find_labels(
    datalist: dict[str, Any], splits: Sequence[str] = ("validation",), label_key: str = "label", max_files: int = 8
) -> list[int]:
    """Sorted non-zero label values found in the label maps of ``splits`` (and the atlas), for the Dice loss.

    Reads at most ``max_files`` label files.
    """
    files = [item[label_key] for s in splits for item in datalist.get(s, []) if label_key in item]
    atlas = datalist.get("atlas", {})
    if label_key in atlas:
        files.insert(0, atlas[label_key])
    if not files:
        raise ValueError(
            f"no {label_key!r} maps in the datalist splits {tuple(splits)}: the loss-weight search needs labels"
        )
    values: set[int] = set()
    for path in files[:max_files]:
        data = np.asarray(nib.load(path).dataobj)
        if not np.all(np.isclose(data, np.round(data))):
            raise ValueError(f"{path}: label maps must hold integer values")
        values.update(int(v) for v in np.unique(data))
    values.discard(0)
    if not values:
        raise ValueError(f"{files[0]}: label maps hold only background (0)")
    return sorted(values)

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
"""Checks a bundle passes before it is used: its settings, genotype, weights, links and file hashes.

Nothing here inspects code: an untrusted bundle's configs are never evaluated (the package runs its own
workflows, filled with the bundle's validated settings; :mod:`autoreg_monai.bundle.runner`). What is left to
check is the data: ``configs/scenario.json`` against its schema, ``models/genotype.json``, ``models/*.pt``
loaded with ``torch.load(weights_only=True)`` (which refuses pickled code), no symbolic link leading outside
the bundle, and a fetched bundle's files against its ``SHA256SUMS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from autoreg_monai.bundle.settings import load_scenario
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.packaging import MANIFEST, sha256_of

__all__ = ["check_bundle", "links_outside", "verify_manifest", "weights_problem"]


def verify_manifest(bundle: str | Path) -> None:
    """Check the files of a fetched bundle against its ``SHA256SUMS`` (nothing to check without one).

    Raises:
        ValueError: naming the file that is missing or whose SHA-256 differs.
    """
    bundle = Path(bundle)
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        return
    for line in manifest.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        path = bundle / relative
        if not path.is_file():
            raise ValueError(f"{path}: listed in {manifest} but missing; fetch the bundle again")
        if sha256_of(path) != digest:
            raise ValueError(f"{path}: changed since the bundle was fetched (SHA-256 differs from {manifest})")


def weights_problem(path: str | Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` refuses a weights file, or ``None`` when it loads."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for pickled objects; RuntimeError/EOFError for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in str(error):
            return f"it holds pickled Python objects, not only weights; refused without running them ({first})"
        return f"not a readable weights file ({type(error).__name__}: {first})"
    return None


def links_outside(bundle: str | Path) -> list[Path]:
    """Symbolic links in a bundle folder (at any depth) that lead outside it, or nowhere."""
    bundle = Path(bundle)
    root = bundle.resolve()
    found = []
    for folder, subfolders, files in os.walk(bundle):
        for name in sorted(subfolders + files):
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                found.append(path)
    return sorted(found)


def check_bundle(bundle: str | Path, trust: bool = False) -> None:
    """Refuse a bundle whose data cannot be used safely, naming the file and the problem.

    Args:
        bundle: the bundle folder.
        trust: a user's own bundle: links leading outside it are allowed (settings, genotype, hashes and weights
            are checked in any case).

    Raises:
        ValueError: a link leading outside the bundle, a file changed since it was fetched, settings or a
            genotype that do not validate, or a weights file holding more than weights.
    """
    bundle = Path(bundle)
    if not trust:
        outside = links_outside(bundle)
        if outside:
            raise ValueError(
                f"{outside[0]}: refused, a link to {outside[0].resolve()}, outside the bundle {bundle}"
                + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                + "; copy the file into the bundle, or pass --trust_bundle for a bundle of your own"
            )
    verify_manifest(bundle)
    load_scenario(bundle)
    genotype = bundle / "models" / "genotype.json"
    if genotype.is_file():
        Genotype.from_json(genotype)
    for weights in sorted((bundle / "models").glob("*.pt")):
        problem = weights_problem(weights)
        if problem:
            raise ValueError(f"{weights}: {problem}")

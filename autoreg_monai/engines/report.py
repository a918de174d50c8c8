# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Per-pair registration metrics of an evaluation run, written as CSV, JSON and figure panels."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from autoreg_monai.metrics import dice_per_label, folding_percentage, hd95_per_label, ncc, std_log_jacobian
from autoreg_monai.utils.atomic import atomic_write
from autoreg_monai.viz import plot_registration_panel

__all__ = ["MAX_STEM_BYTES", "METRIC_COLUMNS", "RegistrationReport", "pair_file_stem"]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "pair",
    "label",
    "name",
    "dice_before",
    "dice",
    "hd95_before",
    "hd95",
    "ncc_before",
    "ncc",
    "folding_percent",
    "std_log_jacobian",
    "runtime_s",
)
"""Columns of ``metrics.csv``: one row per pair and label; the pair-level values repeat on each row."""

_PAIR_LEVEL = ("ncc_before", "ncc", "folding_percent", "std_log_jacobian", "runtime_s")


MAX_STEM_BYTES = 200
"""Longest stem :func:`pair_file_stem` returns, in UTF-8 bytes: with ``_warped_label.nii.gz`` and a temporary
file's prefix a name stays within the 255 bytes file systems allow."""


def pair_file_stem(name: str) -> str:
    """A file-name stem for a pair name such as ``"sub01_T1.nii.gz -> atlas.nii.gz"``: ``sub01_T1_to_atlas``.

    Letters and digits of any script are kept (``患者01`` and ``病人01`` give different stems); other runs
    of characters become ``_``. A stem longer than :data:`MAX_STEM_BYTES` is cut and ends with 8 hex digits
    of a hash of the whole stem, so long names still give distinct files.
    """
    parts = [re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.dcm)$", "", p.strip()) for p in name.split("->")]
    stem = re.sub(r"[^\w.-]+", "_", "_to_".join(p for p in parts if p)).strip("._") or "pair"
    if len(stem.encode()) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    cut = stem.encode()[: MAX_STEM_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{cut}-{digest}"


def _items(output: Any, batch: Any) -> list[tuple[dict[str, Any], str | None]]:
    """Per-pair ``(output, pair name)`` of an evaluator's decollated output and batch."""
    if not isinstance(output, list):
        raise ValueError("RegistrationReport needs the decollated output of an evaluator (decollate=True)")
    return [(o, b.get("pair") if isinstance(b, Mapping) else None) for o, b in zip(output, batch)]


def _nan_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _clean(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


class RegistrationReport:
    """An ignite handler scoring each pair an evaluator registers, for the ``evaluate`` workflow.

    Reads the output of :class:`~autoreg_monai.engines.RegistrationEvalStep` at every iteration and, when
    the run completes, writes (each file atomically):

    - ``metrics.csv``: one row per pair and label with the columns of :data:`METRIC_COLUMNS`: Dice and
      HD95 (voxels of the evaluation grid) before and after registration, global NCC before and after,
      % of voxels with ``det J <= 0``, std of ``log det J``, and the network's runtime per pair;
    - ``summary.json``: the means over pairs (Dice over labels first), per label and per pair;
    - ``panels/<moving>_to_<fixed>.png``: fixed, moving, warped, field and differences (paper Fig. 5).

    Args:
        output_dir: folder for the files (created).
        labels: the label values to score.
        label_names: optional ``{value: name}`` for the CSV and JSON.
        panels: write the PNG panels.
    """

    def __init__(
        self,
        output_dir: str | Path,
        labels: Sequence[int],
        label_names: Mapping[int | str, str] | None = None,
        panels: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.labels = [int(v) for v in labels]
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}
        self.panels = panels
        self.rows: list[dict[str, Any]] = []
        self.pairs: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self.pairs = [], []

    def collect(self, engine: Engine) -> None:
        for output, name in _items(engine.state.output, engine.state.batch):
            self.add_pair(output, name or f"pair{len(self.pairs):03d}")

    def add_pair(self, output: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
        """Score one registered pair (tensors without the batch dimension) and keep its rows."""
        moving, fixed = output["moving_image"][None].float(), output["fixed_image"][None].float()
        warped, ddf = output["warped_image"][None].float(), output["ddf"][None].float()
        pair = {
            "pair": name,
            "ncc_before": float(ncc(moving, fixed)[0]),
            "ncc": float(ncc(warped, fixed)[0]),
            "folding_percent": float(folding_percentage(ddf)[0]),
            "std_log_jacobian": float(std_log_jacobian(ddf)[0]),
            "runtime_s": float(output["runtime"]) if "runtime" in output else float("nan"),
        }
        rows = []
        if "warped_label" in output and "fixed_label" in output:
            moving_label, fixed_label = output["moving_label"][None], output["fixed_label"][None]
            warped_label = output["warped_label"][None]
            scores = {
                "dice_before": dice_per_label(moving_label, fixed_label, self.labels)[0],
                "dice": dice_per_label(warped_label, fixed_label, self.labels)[0],
                "hd95_before": hd95_per_label(moving_label, fixed_label, self.labels)[0],
                "hd95": hd95_per_label(warped_label, fixed_label, self.labels)[0],
            }
            for k, value in enumerate(self.labels):
                row = {"pair": name, "label": value, "name": self.label_names.get(value, "")}
                row.update({key: float(v[k]) for key, v in scores.items()})
                rows.append(row)
            pair["mean_dice_before"] = _nan_mean([r["dice_before"] for r in rows])
            pair["mean_dice"] = _nan_mean([r["dice"] for r in rows])
            pair["mean_hd95"] = _nan_mean([r["hd95"] for r in rows])
        else:
            rows.append({"pair": name, "label": "", "name": ""})
        for row in rows:
            row.update({key: pair[key] for key in _PAIR_LEVEL})
        self.rows.extend(rows)
        self.pairs.append(pair)
        if self.panels:
            self.output_dir.joinpath("panels").mkdir(parents=True, exist_ok=True)
            plot_registration_panel(
                fixed[0, 0].cpu().numpy(),
                moving[0, 0].cpu().numpy(),
                warped[0, 0].cpu().numpy(),
                ddf[0].cpu().numpy(),
                self.output_dir / "panels" / f"{pair_file_stem(name)}.png",
                title=name,
            )
        logger.info(
            "%s: Dice %s -> %s, NCC %.4f -> %.4f, folding %.3f %%",
            name,
            f"{pair.get('mean_dice_before', float('nan')):.4f}",
            f"{pair.get('mean_dice', float('nan')):.4f}",
            pair["ncc_before"],
            pair["ncc"],
            pair["folding_percent"],
        )
        return pair

    def summary(self) -> dict[str, Any]:
        """Means over pairs, per label and per pair (``None`` where undefined)."""
        keys = ("mean_dice_before", "mean_dice", "mean_hd95", *_PAIR_LEVEL)
        labelled = [r for r in self.rows if r["label"] != ""]
        per_label = {
            str(value): {
                "name": self.label_names.get(value, ""),
                **{
                    key: _clean(_nan_mean([r[key] for r in labelled if r["label"] == value]))
                    for key in ("dice_before", "dice", "hd95_before", "hd95")
                },
            }
            for value in self.labels
        }
        return {
            "num_pairs": len(self.pairs),
            "labels": self.labels,
            "mean": {key: _clean(_nan_mean([p[key] for p in self.pairs if key in p])) for key in keys},
            "per_label": per_label if labelled else {},
            "per_pair": [{k: (_clean(v) if isinstance(v, float) else v) for k, v in p.items()} for p in self.pairs],
        }

    def write(self, engine: Engine | None = None) -> None:
        """Write ``metrics.csv`` and ``summary.json``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        with atomic_write(self.output_dir / "metrics.csv", "w") as handle:
            handle.write(text.getvalue())
        summary = self.summary()
        with atomic_write(self.output_dir / "summary.json", "w") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
        mean = summary["mean"]
        logger.info(
            "evaluation of %d pairs: mean Dice %s -> %s, folding %s %%; written to %s",
            summary["num_pairs"],
            mean["mean_dice_before"],
            mean["mean_dice"],
            mean["folding_percent"],
            self.output_dir,
        )

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
"""The discrete outcome of an AutoReg search: one operation per searched edge, plus the loss weights."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoreg_monai.networks.blocks.cells import EDGES_PER_CELL
from autoreg_monai.networks.blocks.ops import OPS, PRIMITIVES
from autoreg_monai.utils.atomic import atomic_write

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "GENOTYPE_SCHEMA_VERSION",
    "Genotype",
    "derive_cell_ops",
    "edge_decisions",
    "loss_term_names",
]

GENOTYPE_SCHEMA_VERSION = 1
"""Version of the JSON layout written by :meth:`Genotype.to_dict`."""

DEFAULT_LOSS_WEIGHTS: tuple[float, ...] = (10.0, 15.0, 3.2, 0.8)
"""The paper's initial loss weights: full-resolution similarity, regularisation, similarity at 1/2, at 1/4."""


def loss_term_names(num_terms: int) -> tuple[str, ...]:
    """Names of the terms of ``L_reg`` in λ order: ``similarity``, ``regularization``, ``similarity_1/2``, ..."""
    if num_terms < 2:
        raise ValueError(f"L_reg has at least 2 terms (similarity, regularization), got {num_terms}")
    return ("similarity", "regularization") + tuple(f"similarity_1/{2**k}" for k in range(1, num_terms - 1))


def _check_cell_ops(kind: str, ops: Any) -> tuple[tuple[str, ...], ...]:
    if isinstance(ops, str) or not isinstance(ops, Sequence) or len(ops) == 0:
        raise ValueError(f"genotype {kind!r} must be a non-empty list of scales, each a list of {EDGES_PER_CELL} ops")
    checked = []
    for scale, scale_ops in enumerate(ops):
        if isinstance(scale_ops, str) or not isinstance(scale_ops, Sequence) or len(scale_ops) != EDGES_PER_CELL:
            raise ValueError(
                f"genotype {kind!r} scale {scale}: expected {EDGES_PER_CELL} operations (one per edge), "
                f"got {scale_ops!r}"
            )
        for name in scale_ops:
            if name not in OPS:
                raise ValueError(
                    f"genotype {kind!r} scale {scale}: unknown operation {name!r}; known: {', '.join(PRIMITIVES)}"
                )
        checked.append(tuple(scale_ops))
    return tuple(checked)


def derive_cell_ops(
    alpha: torch.Tensor, op_names: Sequence[str] = PRIMITIVES, name: str = "alpha"
) -> tuple[tuple[str, ...], ...]:
    """Per scale, the operation with the largest logit on each edge of one cell type.

    Args:
        alpha: ``(num_scales * 3, num_ops)`` logits, rows scale-major (finest scale first).
        op_names: the candidate operation of each column.
        name: how to call ``alpha`` in error messages.
    """
    if alpha.ndim != 2 or alpha.shape[1] != len(op_names) or alpha.shape[0] % EDGES_PER_CELL or alpha.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (num_scales * {EDGES_PER_CELL}, {len(op_names)}), got {tuple(alpha.shape)}"
        )
    chosen = [op_names[i] for i in alpha.detach().argmax(dim=1).tolist()]
    return tuple(tuple(chosen[i : i + EDGES_PER_CELL]) for i in range(0, len(chosen), EDGES_PER_CELL))


def edge_decisions(alpha: torch.Tensor, op_names: Sequence[str] = PRIMITIVES) -> list[dict[str, Any]]:
    """How decided each edge's choice is: the chosen operation's softmax weight and its margin over the runner-up.

    Args:
        alpha: ``(num_scales * 3, num_ops)`` logits, rows scale-major (finest scale first).
        op_names: the candidate operation of each column.

    Returns:
        one dict per edge: ``scale`` (0 = finest), ``edge``, ``op``, ``weight``, ``runner_up``,
        ``runner_up_weight``, ``margin`` (weight minus runner-up weight) and ``decided``: the chosen weight is
        at least twice uniform (``2 / num_ops``), the threshold below which an argmax is close to noise.
    """
    derive_cell_ops(alpha, op_names)  # the shape check
    weights = torch.softmax(alpha.detach().double().cpu(), dim=1)
    top = weights.topk(2, dim=1)
    rows = []
    for row, (values, indices) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        rows.append(
            {
                "scale": row // EDGES_PER_CELL,
                "edge": row % EDGES_PER_CELL,
                "op": op_names[indices[0]],
                "weight": round(values[0], 4),
                "runner_up": op_names[indices[1]],
                "runner_up_weight": round(values[1], 4),
                "margin": round(values[0] - values[1], 4),
                "decided": values[0] >= 2.0 / len(op_names),
            }
        )
    return rows


_GENOTYPE_KEYS = ("schema_version", "feature", "deformation", "loss_weights", "loss_terms")


@dataclass(frozen=True)
class Genotype:
    """Searched architecture and loss weights of an AutoReg network.

    Attributes:
        feature: for each scale (finest first: 1/2, 1/4, ...), the operation of each of the three edges
            of the feature cell.
        deformation: the same for the deformation cell.
        loss_weights: λ of ``L_reg``, in the order of :func:`loss_term_names` (similarity at full
            resolution, regularisation, similarity at 1/2, at 1/4, ...), all positive.

    Example::

        g = Genotype.derive(alpha_feature, alpha_deformation)  # argmax of (6, 8) logits each
        g.to_json("genotype.json"); Genotype.from_json("genotype.json") == g
    """

    feature: tuple[tuple[str, ...], ...]
    deformation: tuple[tuple[str, ...], ...]
    loss_weights: tuple[float, ...] = DEFAULT_LOSS_WEIGHTS

    def __post_init__(self) -> None:
        feature = _check_cell_ops("feature", self.feature)
        deformation = _check_cell_ops("deformation", self.deformation)
        if len(feature) != len(deformation):
            raise ValueError(
                f"genotype has {len(feature)} feature scales but {len(deformation)} deformation scales; they must match"
            )
        weights = tuple(float(w) for w in self.loss_weights)
        if len(weights) != len(feature) + 2:
            raise ValueError(
                f"{len(feature)} scales need {len(feature) + 2} loss weights {loss_term_names(len(feature) + 2)}, "
                f"got {len(weights)}: {weights}"
            )
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"loss weights must be finite and positive, got {weights}")
        object.__setattr__(self, "feature", feature)
        object.__setattr__(self, "deformation", deformation)
        object.__setattr__(self, "loss_weights", weights)

    @property
    def num_scales(self) -> int:
        """Number of scales of the network (2 in the paper)."""
        return len(self.feature)

    @classmethod
    def derive(
        cls,
        alpha_feature: torch.Tensor,
        alpha_deformation: torch.Tensor,
        loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
        op_names: Sequence[str] = PRIMITIVES,
    ) -> Genotype:
        """The genotype keeping, on every edge, the operation with the largest α.

        Args:
            alpha_feature: ``(num_scales * 3, num_ops)`` logits of the feature cells, rows scale-major.
            alpha_deformation: the same for the deformation cells.
            loss_weights: λ to store with the architecture.
            op_names: the candidate operation of each α column.
        """
        feature = derive_cell_ops(alpha_feature, op_names, "alpha_feature")
        deformation = derive_cell_ops(alpha_deformation, op_names, "alpha_deformation")
        return cls(feature=feature, deformation=deformation, loss_weights=tuple(loss_weights))

    @classmethod
    def paper_default(cls) -> Genotype:
        """A complete genotype in the paper's search space, for use before any search has been run.

        Deformation cells: the authors' released brain genotype (``Search_ABIDE``: fine scale
        ``sep_conv_3x3, dil_conv_3x3, sep_conv_5x5``; coarse scale ``sep_conv_3x3, dil_conv_3x3,
        sep_conv_3x3``). Feature cells: the authors' fixed feature extractor mapped into the eight-op
        space (its ``dil_conv_3x3`` with dilation 8 becomes ``dil_conv_3x3``). Loss weights: the paper's
        initial λ. The paper's own searched brain genotype is given only as a heatmap (its Fig. 3).
        """
        return cls(
            feature=(("conv_3x3", "sep_conv_5x5", "conv_5x5"), ("sep_conv_5x5", "dil_conv_3x3", "dil_conv_3x3")),
            deformation=(
                ("sep_conv_3x3", "dil_conv_3x3", "sep_conv_5x5"),
                ("sep_conv_3x3", "dil_conv_3x3", "sep_conv_3x3"),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the schema version and the name of each loss weight."""
        return {
            "schema_version": GENOTYPE_SCHEMA_VERSION,
            "feature": [list(ops) for ops in self.feature],
            "deformation": [list(ops) for ops in self.deformation],
            "loss_weights": list(self.loss_weights),
            "loss_terms": list(loss_term_names(len(self.loss_weights))),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Inverse of :meth:`to_dict`; refuses unknown keys, schema versions, ops and edge counts."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a genotype must be a JSON object, got {type(data).__name__}")
        unknown = sorted(str(key)[:40] for key in data if key not in _GENOTYPE_KEYS)
        if unknown:
            raise ValueError(f"unknown genotype key(s) {unknown}; a genotype holds only {', '.join(_GENOTYPE_KEYS)}")
        version = data.get("schema_version")
        if version != GENOTYPE_SCHEMA_VERSION:
            raise ValueError(
                f"unsupported genotype schema_version {version!r}; this version reads {GENOTYPE_SCHEMA_VERSION}"
            )
        missing = [key for key in ("feature", "deformation", "loss_weights") if key not in data]
        if missing:
            raise ValueError(f"genotype is missing the key(s) {missing}")
        weights = data["loss_weights"]
        if not isinstance(weights, list) or not all(type(w) in (int, float) for w in weights):
            raise ValueError(f"loss_weights must be a list of numbers, got {str(weights)[:80]}")
        for key in ("feature", "deformation"):
            if not isinstance(data[key], list) or not all(isinstance(ops, list) for ops in data[key]):
                raise ValueError(f"{key} must be a list of lists of operation names, got {str(data[key])[:80]}")
        return cls(feature=data["feature"], deformation=data["deformation"], loss_weights=tuple(weights))

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to ``path`` (through a temporary file, so a crash never leaves half a file)."""
        with atomic_write(path, "w") as handle:
            handle.write(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Genotype:
        """Read a genotype file written by :meth:`to_json`, naming the file in every error."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data)
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}: not a valid genotype file: {err}") from err

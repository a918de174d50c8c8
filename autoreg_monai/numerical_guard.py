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
"""Skipping the optimiser steps whose loss, gradients or updated variables are not finite.

A NaN or Inf (a corrupt pair, an overflow, a degenerate field) is caught at the step where it appears:
the step is not applied, a warning names the stage, epoch, iteration and pair, and after ``max_bad_steps``
consecutive bad steps the run stops with :class:`NumericalFaultError`. The stop happens inside an
iteration, before the epoch's checkpoint, so the newest checkpoint on disk is the last good state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from autoreg_monai.distributed import any_rank, is_distributed

__all__ = ["NumericalFaultError", "NumericalGuard", "non_finite"]

logger = logging.getLogger(__name__)


class NumericalFaultError(RuntimeError):
    """Raised after too many consecutive steps with non-finite values."""


def non_finite(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """The names whose tensor holds a NaN or an Inf (``None`` entries, e.g. absent gradients, are skipped)."""
    return [name for name, value in named if value is not None and not bool(torch.isfinite(value).all())]


def pair_names(batch: Mapping[str, Any]) -> str:
    """The ``pair`` entry of a collated batch as one string (``"?"`` when the data carries no names)."""
    names = batch.get("pair", "?")
    return ", ".join(map(str, names)) if isinstance(names, (list, tuple)) else str(names)


class NumericalGuard:
    """Skip the steps with non-finite values, and stop a run after ``max_bad_steps`` bad iterations in a row.

    Per iteration, :meth:`passed` is asked before each optimiser step, and :meth:`end_iteration` once at the end.

    Args:
        stage: what the run is, for the messages (e.g. ``"search, feature stage"``, ``"training"``).
        max_bad_steps: consecutive iterations with a skipped step that end the run (``K``).
    """

    def __init__(self, stage: str, max_bad_steps: int = 5) -> None:
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        self.stage = stage
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.skipped = 0
        self._problem: str | None = None

    def passed(self, engine: Any, step: str, pair: str, named: Iterable[tuple[str, torch.Tensor | None]]) -> bool:
        """Whether ``step`` may be applied: ``True`` if every tensor of ``named`` is finite, else log and ``False``.

        Under ``torchrun`` the answer is the same on every rank: a step is skipped everywhere when any rank
        sees a non-finite value (a collective, so every rank must ask).
        """
        named = list(named)
        bad = non_finite(named)
        if is_distributed():
            device = next((v.device for _, v in named if v is not None), torch.device("cpu"))
            if any_rank(bool(bad), device) and not bad:
                bad = ["values on another rank"]
        if not bad:
            return True
        self.skipped += 1
        where = f"{self.stage}, epoch {engine.state.epoch}, iteration {engine.state.iteration}, pair {pair}"
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        self._problem = f"{where}: non-finite {shown} in the {step}"
        logger.warning(f"{self._problem}: step skipped")
        return False

    def end_iteration(self) -> None:
        """Count the iteration as bad (a step was skipped) or good, and stop the run after too many bad ones.

        Raises:
            NumericalFaultError: naming the stage, epoch, iteration, pair and the non-finite values.
        """
        if self._problem is None:
            self.consecutive = 0
            return
        problem, self._problem = self._problem, None
        self.consecutive += 1
        if self.consecutive >= self.max_bad_steps:
            raise NumericalFaultError(
                f"{problem}; {self.consecutive} consecutive iterations had NaN/Inf values, so the run stops. "
                "The newest checkpoint holds the last good state: check the input pairs named in the warnings, "
                "or lower the learning rate, then resume"
            )

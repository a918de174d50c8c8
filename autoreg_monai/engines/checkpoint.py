# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Epoch checkpoints of a whole training run (weights, optimiser, engine state), and resuming from them."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

__all__ = ["ResumableCheckpoint", "latest_checkpoint", "prune_checkpoints"]

logger = logging.getLogger(__name__)


def _epoch_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the ``checkpoint_<epoch>.pt`` files of ``folder``, oldest first."""
    return sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("checkpoint_*.pt")
        if (m := re.fullmatch(r"checkpoint_(\d+)\.pt", p.name))
    )


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The ``checkpoint_<epoch>.pt`` of ``folder`` with the largest epoch, or ``None``."""
    found = _epoch_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | Path, n_saved: int) -> None:
    """Delete all but the ``n_saved`` newest ``checkpoint_<epoch>.pt`` of ``folder`` (whichever run wrote them)."""
    found = _epoch_checkpoints(folder)
    for _, path in found[: max(len(found) - n_saved, 0)]:
        path.unlink(missing_ok=True)


class ResumableCheckpoint:
    """Save ``save_dict`` plus the engine's own state after every epoch; optionally resume from the newest.

    Unlike MONAI's ``CheckpointSaver`` in a bundle config, the engine is added when the handler is attached,
    so a config need not refer to the trainer from inside the trainer's own handler list (a circular
    reference the config parser rejects).

    Args:
        save_dir: folder of ``checkpoint_<epoch>.pt`` (written atomically).
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g. ``{"network": net, "optimizer": opt}``.
        n_saved: how many epoch checkpoints to keep.
        resume: load the newest checkpoint of ``save_dir`` (if any) when the engine starts; without it,
            checkpoints of an earlier run in ``save_dir`` are removed when the engine starts.
        map_location: device the loaded tensors go to.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        n_saved: int = 2,
        resume: bool = False,
        map_location: str | torch.device | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.n_saved = n_saved
        self.resume = resume
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        state = {**self.save_dict, "trainer": engine}
        latest = latest_checkpoint(self.save_dir) if self.resume else None
        if latest is not None:
            CheckpointLoader(load_path=str(latest), load_dict=state, map_location=self.map_location).attach(engine)
            logger.info(f"resuming from {latest}")
        elif not self.resume:
            engine.add_event_handler(Events.STARTED, self.clear)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        saver = Checkpoint(  # keeps every file; ``prune`` removes old ones, including those of a resumed run
            state,
            DiskSaver(str(self.save_dir), require_empty=False, atomic=True),
            filename_prefix="",
            n_saved=None,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.prune)

    def clear(self, engine: Engine | None = None) -> None:
        """Remove the checkpoints of an earlier run: a run started from scratch must not mix with them."""
        stale = _epoch_checkpoints(self.save_dir)
        if stale:
            logger.warning(
                f"starting from scratch: removing {len(stale)} checkpoint(s) of an earlier run in {self.save_dir}"
            )
        for _, path in stale:
            path.unlink(missing_ok=True)

    def prune(self, engine: Engine | None = None) -> None:
        """Delete all but the ``n_saved`` newest epoch checkpoints (also those of a run this one resumed)."""
        prune_checkpoints(self.save_dir, self.n_saved)

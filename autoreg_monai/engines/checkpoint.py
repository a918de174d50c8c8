# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Epoch checkpoints of a whole run (weights, optimisers, engine, random generators), and resuming from them.

A checkpoint is written to a temporary file, flushed to disk (``fsync``) and renamed, so a crash at any
moment leaves the previous checkpoints intact; resuming takes the newest one that loads and skips (with a
warning) one that does not, e.g. a file truncated by a full disk. With the random generators restored, a
resumed run draws the same shuffles as an uninterrupted one and ends with the same result.

Under ``torchrun`` only rank 0 writes, prunes and cleans up; every rank resumes from the checkpoint rank 0
chose (so ``save_dir`` must be on a file system every rank can read).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader

from autoreg_monai.checkpoint import weights_mismatch
from autoreg_monai.distributed import broadcast_object, is_main_process
from autoreg_monai.utils.atomic import atomic_write

__all__ = [
    "AtomicDiskSaver",
    "RandomStates",
    "ResumableCheckpoint",
    "TrainedWeightsLoader",
    "checkpoint_problem",
    "latest_checkpoint",
    "prune_checkpoints",
    "remove_temporary_files",
    "resume_mode",
]

logger = logging.getLogger(__name__)


def resume_mode(resume: bool | str) -> bool:
    """``resume`` of a config or the command line as a flag: ``True``/``"auto"``/``"true"`` resume, else not.

    Raises:
        ValueError: for any other string.
    """
    if isinstance(resume, str):
        if resume.lower() not in ("auto", "true", "false", "no", "yes"):
            raise ValueError(f"resume must be auto, true or false, got {resume!r}")
        return resume.lower() in ("auto", "true", "yes")
    return bool(resume)


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing ``torch.save`` output through :func:`~autoreg_monai.io.atomic_write`.

    Unlike ignite's ``DiskSaver(atomic=True)``, the data is ``fsync``-ed before the rename, so that a power
    loss cannot leave a complete-looking name pointing to unwritten blocks. As ignite's, it writes on rank 0
    only under ``torchrun``.

    Args:
        dirname: folder of the checkpoints (created if missing).
    """

    def __init__(self, dirname: str | Path) -> None:
        self.dirname = Path(dirname)
        if is_main_process():
            self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if is_main_process():
            with atomic_write(self.dirname / filename, "wb") as handle:
                torch.save(checkpoint, handle)

    def remove(self, filename: str) -> None:
        if is_main_process():
            (self.dirname / filename).unlink(missing_ok=True)


class RandomStates:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) random generators, saved in a checkpoint.

    Saved at the end of an epoch and restored on resume, so the next epoch's shuffle is the one an
    uninterrupted run would have drawn. Stored as tensors and lists only (loadable with ``weights_only``).
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


def _epoch_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the ``checkpoint_<epoch>.pt`` files of ``folder``, oldest first."""
    return sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("checkpoint_*.pt")
        if (m := re.fullmatch(r"checkpoint_(\d+)\.pt", p.name))
    )


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (truncated, not a checkpoint...), or ``None`` when it loads."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # RuntimeError (zip reader), EOFError, UnpicklingError...
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if not isinstance(state, dict) or "trainer" not in state:
        return "no engine state in it"
    return None


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``checkpoint_<epoch>.pt`` of ``folder`` that loads, or ``None``.

    Newer ones that do not load (e.g. truncated) are skipped with a warning naming the file and the problem.
    """
    for _, path in reversed(_epoch_checkpoints(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"skipping the damaged checkpoint {path} ({problem}); resuming from an older one")
    return None


def remove_temporary_files(folder: str | Path) -> None:
    """Delete the temporary files of checkpoint writes a crash interrupted (``.checkpoint_<epoch>.pt.*.tmp``)."""
    for path in Path(folder).glob(".checkpoint_*.pt.*.tmp"):
        path.unlink(missing_ok=True)


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
        resume: ``True`` or ``"auto"``: load the newest checkpoint of ``save_dir`` that loads (if any) when the
            engine starts; ``False``: checkpoints of an earlier run in ``save_dir`` are removed when it starts.
        map_location: device the loaded tensors go to.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        n_saved: int = 2,
        resume: bool | str = False,
        map_location: str | torch.device | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.n_saved = n_saved
        self.resume = resume_mode(resume)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        state = {**self.save_dict, "random_states": RandomStates(), "trainer": engine}
        main = is_main_process()
        if main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.save_dir)
        latest = broadcast_object(latest_checkpoint(self.save_dir) if self.resume and main else None)
        if latest is not None:
            CheckpointLoader(load_path=str(latest), load_dict=state, map_location=self.map_location).attach(engine)
            logger.info(f"resuming from {latest}")
        elif not self.resume:
            engine.add_event_handler(Events.STARTED, self.clear)
        saver = Checkpoint(  # keeps every file; ``prune`` removes old ones, including those of a resumed run
            state,
            AtomicDiskSaver(self.save_dir),
            filename_prefix="",
            n_saved=None,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.prune)

    def clear(self, engine: Engine | None = None) -> None:
        """Remove the checkpoints of an earlier run: a run started from scratch must not mix with them."""
        if not is_main_process():
            return
        stale = _epoch_checkpoints(self.save_dir)
        if stale:
            logger.warning(
                f"starting from scratch: removing {len(stale)} checkpoint(s) of an earlier run in {self.save_dir}"
            )
        for _, path in stale:
            path.unlink(missing_ok=True)

    def prune(self, engine: Engine | None = None) -> None:
        """Delete all but the ``n_saved`` newest epoch checkpoints (also those of a run this one resumed)."""
        if is_main_process():
            prune_checkpoints(self.save_dir, self.n_saved)


class TrainedWeightsLoader:
    """Load a trained model's weights into the network when the engine starts, strictly and weights-only.

    What MONAI's ``CheckpointLoader(strict=True)`` does for a bundle's ``model.pt``, but weights that do not
    fit the network (a genotype file changed after training, e.g. rewritten by a search) are refused with
    both file names and what differs, instead of ``load_state_dict``'s list of tensor sizes.

    Args:
        load_path: the weights file: a state dict, or ``{"model": state dict}`` as MONAI's ``CheckpointSaver``
            writes it.
        network: the network built from the genotype.
        genotype_file: the genotype file the network was built from (named in the error).
        map_location: device the loaded tensors go to.
    """

    def __init__(
        self,
        load_path: str | Path,
        network: torch.nn.Module,
        genotype_file: str | Path | None = None,
        map_location: str | torch.device | None = None,
    ) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.genotype_file = genotype_file
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Load the weights.

        Raises:
            ValueError: naming the weights file and the genotype file, if the weights do not fit the network.
        """
        state = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        state = state.get("model", state) if isinstance(state, Mapping) else state
        problem = weights_mismatch(self.network, state)
        if problem is not None:
            genotype = "its genotype"
            if self.genotype_file is not None:
                genotype = f"the genotype of {Path(self.genotype_file).resolve()}"
            raise ValueError(
                f"{self.load_path.resolve()} does not fit {genotype}: {problem}. The genotype was changed after this "
                "model was trained (a search without --output_dir writes the bundle's models/genotype.json): train "
                "again, or put back the genotype the model was trained with"
            )
        self.network.load_state_dict(state, strict=True)

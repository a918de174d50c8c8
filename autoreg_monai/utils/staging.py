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
"""All-or-nothing output sets: a run writes into a hidden staging folder, then publishes every file at once.

A registration writes several files (warped image, field, Jacobian, labels, transform). Written straight
into the output folder, a run killed half way leaves some of them, and a second run into the same folder
mixes its files with the first's. :class:`StagedOutputs` gives the run a staging folder inside the output
folder (same file system, so publishing is a rename per file); :meth:`StagedOutputs.publish` first writes
a manifest of what it will replace and move, then moves. A run killed before the manifest leaves only its
staging folder, which the next run removes; one killed during the moves is finished by the next run from
the manifest. Either way the folder ends with nothing new or the whole new set.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from autoreg_monai.utils.atomic import atomic_write

__all__ = ["STAGING_PREFIX", "StagedOutputs", "recover_staging"]

STAGING_PREFIX = ".autoreg-staging-"
"""Start of a staging folder's name; the writing process's id follows, then 8 hex digits."""

_MANIFEST = "publish.json"


def _running(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _finish(staging: Path) -> None:
    """Replay a published staging folder's manifest (idempotent), then remove the folder."""
    manifest = json.loads((staging / _MANIFEST).read_text())
    folder = staging.parent
    for name in manifest["remove"]:
        (folder / name).unlink(missing_ok=True)
    for name in manifest["publish"]:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    shutil.rmtree(staging, ignore_errors=True)


def recover_staging(folder: str | Path) -> list[str]:
    """Finish or undo what killed runs left in ``folder``; returns the names of the staging folders handled.

    A staging folder whose process no longer runs is published if it holds a manifest (the run was
    moving its files into place) and removed otherwise (the run had not finished writing). Folders of
    runs still going are left alone.
    """
    handled = []
    for staging in sorted(Path(folder).glob(f"{STAGING_PREFIX}*")):
        pid_text = staging.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not staging.is_dir() or (pid_text.isdigit() and _running(int(pid_text))):
            continue
        if (staging / _MANIFEST).is_file():
            _finish(staging)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        handled.append(staging.name)
    return handled


class StagedOutputs:
    """A staging folder inside ``folder`` whose files appear in ``folder`` together, or not at all.

    Args:
        folder: the output folder (created if missing).
        overwrite: let :meth:`publish` replace files of an earlier run of the same outputs; without it, any
            such file makes :meth:`publish` (and :meth:`check`) refuse.

    Example::

        with StagedOutputs("out") as outputs:
            write_everything(outputs.staging)  # files named <pair>_warped.nii.gz, ...
            outputs.publish([f"{pair}_{suffix}" for suffix in ("warped.nii.gz", "ddf.nii.gz")])
    """

    def __init__(self, folder: str | Path, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.staging = self.folder / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._created = False

    def check_folder(self) -> None:
        """Refuse now, before any work, an output folder that is a file or cannot be created or written.

        Raises:
            NotADirectoryError: the folder (or a parent of it) is a file.
            PermissionError: the folder, or the nearest parent that exists, is not writable.
        """
        existing = self.folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing}: is a file, not a folder; --out must name a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing}: the folder is not writable; choose another --out")

    def check(self, names: Sequence[str]) -> None:
        """Refuse now, before any work, if publishing ``names`` would mix with or replace earlier files.

        Raises:
            FileExistsError: some of ``names`` exist in the folder and ``overwrite`` is off.
        """
        if self.folder.is_dir():
            recover_staging(self.folder)  # a killed run's set is finished or removed before it is judged
        existing = [name for name in names if (self.folder / name).exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{self.folder}: already holds {', '.join(existing)} from an earlier run; choose another --out, "
                "or pass --overwrite to replace that run's files"
            )

    def __enter__(self) -> StagedOutputs:
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            recover_staging(self.folder)
            self.staging.mkdir()
        except OSError as error:
            reason = "permission denied" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else error.strerror
            raise OSError(f"{self.folder}: cannot write the outputs there ({reason})") from None
        return self

    def publish(self, possible: Sequence[str]) -> list[str]:
        """Move the staged files into the folder at once; returns their names.

        Args:
            possible: every name this kind of run can write (the files it did not write this time are
                removed from the folder with ``overwrite``, so no file of an earlier run is left beside the
                new set).

        Raises:
            FileExistsError: see :meth:`check` (checked again: another run may have written meanwhile).
        """
        produced = sorted(p.name for p in self.staging.iterdir() if p.is_file() and not p.name.startswith("."))
        self.check(produced)
        stale = [name for name in possible if name not in produced and (self.folder / name).exists()]
        if stale and not self.overwrite:
            raise FileExistsError(
                f"{self.folder}: holds {', '.join(stale)} from an earlier run of the same pair; choose another "
                "--out, or pass --overwrite to replace that run's files"
            )
        with atomic_write(self.staging / _MANIFEST, "w") as handle:
            json.dump({"publish": produced, "remove": stale}, handle)
        _finish(self.staging)
        return produced

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.staging.exists() and not (self.staging / _MANIFEST).is_file():
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._created and error is not None and not any(self.folder.iterdir()):
            self.folder.rmdir()  # a failed run into a new folder leaves no trace

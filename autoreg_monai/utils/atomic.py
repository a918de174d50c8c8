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
"""Atomic file output: write to a temporary name next to the target, then rename it into place.

Readers (and a user looking at the folder after a crash) see either the old file or the complete new one,
never a truncated one. The temporary file is created with mode ``0o666`` so the process umask gives it
the same permissions as any other file the user creates (``tempfile.mkstemp`` would make it private).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["TEMPORARY_PREFIX", "atomic_path", "atomic_write"]

TEMPORARY_PREFIX = ".tmp-"
"""Start of the name of a file being written (hidden; followed by 8 hex digits, ``-`` and the final name)."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name next to ``path``, renamed to ``path`` when the block ends without error.

    The temporary name ends with ``path``'s own name, so writers that choose the format by extension
    (nibabel's ``.nii.gz``, SimpleITK's ``.tfm``) write the right one. If the block raises, the temporary
    file is removed and ``path`` is left as it was.

    Args:
        path: the final file name (its folder must exist).

    Example::

        with atomic_path("out/warped.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = Path(path)
    tmp = path.parent / f"{TEMPORARY_PREFIX}{secrets.token_hex(4)}-{path.name}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for any file
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success flush, fsync and rename it to ``path``.

    Args:
        path: the final file name (its folder must exist).
        mode: ``"wb"`` or ``"w"``.

    Example::

        with atomic_write("models/genotype.json", "w") as f:
            json.dump(genotype.to_dict(), f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()

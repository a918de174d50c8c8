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
"""File output that never leaves a half-written result behind."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform

from autoreg_monai.prealign import write_itk_transform
from autoreg_monai.utils.atomic import atomic_path

__all__ = ["AtomicNibabelWriter", "DisplacementFieldWriter", "SaveITKTransformd"]


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing to a temporary name next to the target, then renaming it.

    Give it to ``SaveImage``/``SaveImaged`` as ``writer="autoreg_monai.io.AtomicNibabelWriter"``: an
    interrupted run leaves either no file or a complete one.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        path = Path(filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


class DisplacementFieldWriter(AtomicNibabelWriter):
    """Write a ``(3, X, Y, Z)`` displacement field as an ITK-style NIfTI vector image.

    The file holds ``(X, Y, Z, 1, 3)`` with intent ``vector`` and millimetre units, the layout ITK,
    SimpleITK and ANTs read as a displacement field. The vector components are whatever the caller
    stored; :mod:`autoreg_monai.inference` stores physical displacements in ITK's LPS frame.
    """

    @classmethod
    def create_backend_obj(cls, data_array: Any, affine: Any = None, dtype: Any = None, **kwargs: Any) -> Any:
        image = super().create_backend_obj(data_array, affine=affine, dtype=dtype, **kwargs)
        data = np.asanyarray(image.dataobj)
        if data.ndim != 4 or data.shape[-1] != 3:
            raise ValueError(f"a displacement field must be (X, Y, Z, 3) channel-last, got {data.shape}")
        field = nib.Nifti1Image(data[:, :, :, None, :], image.affine, header=image.header)
        field.header.set_intent("vector")
        field.header.set_xyzt_units("mm")
        return field


class SaveITKTransformd(MapTransform):
    """Write ``(4, 4)`` RAS+ fixed-to-moving matrices as ITK ``.tfm`` files, for ``postprocessing``.

    Each file is ``<output_dir>/<data[name_key]>_<output_postfix>.tfm``, written atomically by
    :func:`~autoreg_monai.prealign.write_itk_transform` (ITK's LPS+ convention).

    Args:
        keys: keys of the matrices (e.g. ``"prealign_matrix"`` from :class:`~autoreg_monai.data.PreAlignd`).
        output_dir: folder of the files.
        output_postfix: appended to the name.
        name_key: key of the file-name stem (the ``pair`` name of the inference step).
        allow_missing_keys: skip absent keys (pairs registered without pre-alignment).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        output_postfix: str = "affine",
        name_key: str = "pair",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            write_itk_transform(d[key], self.output_dir / f"{d[self.name_key]}_{self.output_postfix}.tfm")
        return d

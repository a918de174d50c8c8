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
"""atomic_path / atomic_write: the whole new file or the old one, with the mode of any other new file."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from autoreg_monai.utils import atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "genotype.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, "w") as handle:
            handle.write("new, half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["genotype.json"]


def test_files_get_the_mode_of_any_new_file_and_keep_their_extension(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4))
    with atomic_path(tmp_path / "warped.nii.gz") as tmp:
        assert tmp.name.endswith("-warped.nii.gz") and tmp.name.startswith(".")
        nib.save(image, tmp)
    written = tmp_path / "warped.nii.gz"
    assert written.read_bytes()[:2] == b"\x1f\x8b"  # gzip: nibabel chose the format by the extension
    assert os.stat(written).st_mode & 0o777 == os.stat(reference).st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "warped.nii.gz"]


def test_only_text_and_binary_modes(tmp_path):
    with pytest.raises(ValueError, match="modes 'w' and 'wb', got 'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass

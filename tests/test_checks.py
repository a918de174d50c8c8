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
"""Checks of a user's scans: a DICOM series with a missing slice is refused, naming the gap."""

from __future__ import annotations

import shutil

import pytest

from autoreg_monai.checks import check_scan, dicom_slice_gap


def test_a_dicom_series_missing_a_slice_is_refused_naming_the_gap(sample_data, tmp_path):
    series = sample_data / "dicom_brain_t1_decubitus" / "HFS_t1_fl2d_sag"
    assert dicom_slice_gap(series) is None
    assert check_scan(series, "fixed image").ndim == 3
    files = sorted(series.iterdir())
    broken = tmp_path / "series"
    broken.mkdir()
    for file in files[:16] + files[17:]:  # one slice of the middle left out
        shutil.copy(file, broken / file.name)
    (broken / "README.txt").write_text("not DICOM: skipped")
    gap = dicom_slice_gap(broken)
    assert gap is not None and "a slice is missing" in gap
    assert "gap of 9.600 mm" in gap and "(the others 4.800 mm apart)" in gap
    with pytest.raises(ValueError, match=r"series: the fixed image.s DICOM series has a gap of 9.600 mm between"):
        check_scan(broken, "fixed image")

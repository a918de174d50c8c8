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
"""The request handling of the MONAI Label task, without a server (runs in the main test environment)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoreg_monai.label import RegistrationRequestd, new_request_id, resolve_image


class FakeDatastore:
    """The one method of a MONAI Label datastore the request handling uses."""

    def __init__(self, images: dict[str, str]) -> None:
        self.images = images

    def get_image_uri(self, image_id: str) -> str:
        return self.images.get(image_id, "")


@pytest.fixture()
def pair(sample_data: Path) -> tuple[str, str]:
    folder = sample_data / "ixi_dlmuse"
    return str(next(folder.glob("IXI012*_T1w_2mm.nii.gz"))), str(next(folder.glob("IXI013*_T1w_2mm.nii.gz")))


def test_fixed_image_from_datastore_id_or_server_path(pair: tuple[str, str]) -> None:
    moving, fixed = pair
    store = FakeDatastore({"IXI013": fixed})
    by_id = RegistrationRequestd(store)({"image": moving, "fixed": "IXI013", "device": "cpu"})
    assert by_id["moving_image"] == str(Path(moving).resolve())
    assert by_id["fixed_image"] == by_id["fixed_path"] == str(Path(fixed).resolve())
    assert by_id["device"] == "cpu"  # the rest of the request is kept
    by_path = RegistrationRequestd(None)({"image": moving, "fixed": fixed})
    assert by_path["fixed_image"] == str(Path(fixed).resolve())
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", by_path["request_id"])
    assert by_id["request_id"] != by_path["request_id"]


def test_request_ids_never_repeat() -> None:
    assert len({new_request_id() for _ in range(200)}) == 200


def test_missing_or_unknown_fixed_image_is_refused(pair: tuple[str, str]) -> None:
    moving, _ = pair
    with pytest.raises(ValueError, match=r"the request names no fixed image: .*params \{\"fixed\""):
        RegistrationRequestd(FakeDatastore({}))({"image": moving})
    with pytest.raises(ValueError, match=r"fixed image 'atlas' is neither a file on the server nor an image of the"):
        RegistrationRequestd(FakeDatastore({}))({"image": moving, "fixed": "atlas"})
    with pytest.raises(ValueError, match=r"fixed image 'atlas' is neither a file on the server$"):
        resolve_image("atlas", None, "fixed image")
    with pytest.raises(ValueError, match="must be a datastore image id or a server path"):
        resolve_image(3, None, "fixed image")


def test_bad_scans_are_refused_naming_the_file(pair: tuple[str, str], tmp_path: Path) -> None:
    moving, fixed = pair
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), flat)
    with pytest.raises(ValueError, match=rf"{re.escape(str(flat))}: the fixed image is constant"):
        RegistrationRequestd(None)({"image": moving, "fixed": str(flat)})
    slices = tmp_path / "slices.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), slices)
    with pytest.raises(ValueError, match=rf"{re.escape(str(slices))}: the moving image is 2-D"):
        RegistrationRequestd(None)({"image": str(slices), "fixed": fixed})

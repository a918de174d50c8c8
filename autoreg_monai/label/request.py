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
"""The pair of a MONAI Label registration request: moving image from the datastore, fixed image from the params."""

from __future__ import annotations

import time
import uuid
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol

from autoreg_monai.checks import check_scan

__all__ = ["RegistrationRequestd", "new_request_id", "resolve_image"]


class ImageSource(Protocol):
    """What is used of a MONAI Label datastore: ``get_image_uri(id)`` is the image's path, ``""`` if unknown."""

    def get_image_uri(self, image_id: str) -> str: ...


def new_request_id() -> str:
    """A name unique to one request: ``<UTC date>T<time>-<8 hex digits>`` (sorts by time, never repeats)."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def resolve_image(value: Any, datastore: ImageSource | None, role: str) -> str:
    """The server path of an image named in a request: a path on the server, or an image id of the datastore.

    Raises:
        ValueError: naming ``role`` and ``value`` when it is missing, or neither an existing path nor a
            datastore image.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(
            f"the request names no {role}: give it as a datastore image id or a path on the server "
            f'(params {{"fixed": ...}} for the fixed image)'
        )
    if not isinstance(value, str):
        raise ValueError(f"the {role} must be a datastore image id or a server path (a string), got {value!r}")
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    uri = datastore.get_image_uri(value) if datastore is not None else ""
    if uri and Path(uri).exists():
        return str(Path(uri).resolve())
    where = "a file on the server nor an image of the datastore" if datastore is not None else "a file on the server"
    raise ValueError(f"{role} {value!r} is neither {where}")


class RegistrationRequestd:
    """Turn a MONAI Label infer request into the pair the bundle's inference preprocessing loads.

    ``data[image_key]`` is the moving image (the app has already resolved a datastore id to its path, or it is
    an uploaded file); ``data[fixed_key]`` names the fixed image (datastore id or server path). Both are read
    and checked (:func:`~autoreg_monai.checks.check_scan`), so a bad scan is refused naming its file before
    anything runs.

    Args:
        datastore: the app's datastore, to resolve a fixed image id (``None``: server paths only).
        image_key: the request key of the moving image.
        fixed_key: the request key (from the params) of the fixed image.

    Returns (``__call__``):
        a copy of ``data`` with ``moving_image`` and ``fixed_image`` (absolute paths, loaded by the bundle's
        preprocessing), the same paths as ``moving_path`` and ``fixed_path`` (kept), and ``request_id``
        (:func:`new_request_id`).
    """

    def __init__(
        self, datastore: ImageSource | None = None, image_key: str = "image", fixed_key: str = "fixed"
    ) -> None:
        self.datastore = datastore
        self.image_key = image_key
        self.fixed_key = fixed_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        moving = resolve_image(data.get(self.image_key), self.datastore, "moving image")
        fixed = resolve_image(data.get(self.fixed_key), self.datastore, "fixed image")
        check_scan(moving, "moving image")
        check_scan(fixed, "fixed image")
        result.update(
            moving_image=moving, fixed_image=fixed, moving_path=moving, fixed_path=fixed, request_id=new_request_id()
        )
        return result

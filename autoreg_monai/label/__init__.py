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
"""MONAI Label integration: serve searched registration bundles to 3D Slicer / OHIF (docs/monai_label.md).

:class:`RegistrationInferTask` and :class:`RegistrationApp` need the ``label`` extra (``monailabel``); the
request handling of :mod:`autoreg_monai.label.request` does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .request import RegistrationRequestd, new_request_id, resolve_image

__all__ = [
    "SAMPLE_APP_DIR",
    "RegistrationApp",
    "RegistrationInferTask",
    "RegistrationRequestd",
    "new_request_id",
    "resolve_image",
]

SAMPLE_APP_DIR = Path(__file__).resolve().parent / "sample_app"
"""The sample MONAI Label app (its ``main.py``); ``autoreg label_app --out DIR`` copies it to a writable folder."""


def __getattr__(name: str) -> Any:
    if name in ("RegistrationInferTask", "RegistrationApp"):
        try:
            if name == "RegistrationInferTask":
                from .infer_task import RegistrationInferTask as found
            else:
                from .registration_app import RegistrationApp as found
        except ImportError as error:
            raise ImportError(
                f"autoreg_monai.label.{name} needs MONAI Label: pip install 'autoreg_monai[label]' in its own "
                f"environment (docs/monai_label.md) ({error})"
            ) from error
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

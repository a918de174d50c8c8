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
request handling (:mod:`~autoreg_monai.label.request`) and the app's options and copies
(:mod:`~autoreg_monai.label.app_config`, ``autoreg label_app``) do not.
"""

from __future__ import annotations

from typing import Any

from .app_config import APP_DIR, APP_OPTIONS, app_options, find_served_bundles, write_app
from .request import RegistrationRequestd, new_request_id, resolve_image

__all__ = [
    "APP_DIR",
    "APP_OPTIONS",
    "RegistrationApp",
    "RegistrationInferTask",
    "RegistrationRequestd",
    "app_options",
    "find_served_bundles",
    "new_request_id",
    "resolve_image",
    "write_app",
]


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

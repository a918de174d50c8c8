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
"""A MONAI Label app that serves every registration bundle under a folder (``bundles`` option)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from autoreg_monai._version import __version__

from .app_config import app_options
from .infer_task import RegistrationInferTask
from .request import resolve_image

__all__ = ["RegistrationApp"]


class RegistrationApp(MONAILabelApp):
    """Serves each trained bundle under the ``bundles`` folder as a registration model named after it.

    Options, from the app's ``config.json``, each overridden by ``--conf key value``
    (:func:`~autoreg_monai.label.app_config.app_options`): ``bundles`` (required), ``results`` (folder of the
    requests' outputs, one subfolder per bundle; default ``<app>/results``), ``prealign`` (default ``affine``),
    ``trust_bundles`` (``true`` to apply the bundles' own inference configs: code, for bundles of your own).

    A request whose scans are refused (missing, unreadable, not 3-D, NaN, ...) gets HTTP 400 with the reason
    naming the file, instead of MONAI Label's bare 500.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        options = app_options(app_dir, conf)
        self.bundles = options["bundles"]
        self.results = options["results"]
        self.prealign = options["prealign"]
        self.trust_bundles = options["trust_bundles"]
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="autoreg_monai",
            description="Deformable registration with AutoReg bundles (searched architecture and loss weights)",
            version=__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {
            name: RegistrationInferTask(
                folder,
                datastore=self.datastore(),
                output_dir=self.results / name,
                prealign=self.prealign,
                trust_bundle=self.trust_bundles,
            )
            for name, folder in self.bundles.items()
        }

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        image = request.get("image")
        if isinstance(image, str) and image:
            # MONAI Label turns an unknown image id into "" before the task sees it: refuse it here, by name
            try:
                resolve_image(image, datastore if datastore is not None else self.datastore(), "moving image")
            except ValueError as why:
                raise HTTPException(status_code=400, detail=str(why)) from why
        try:
            return super().infer(request, datastore)
        except ValueError as why:
            raise HTTPException(status_code=400, detail=str(why)) from why

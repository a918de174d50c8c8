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
"""A MONAI Label app that serves every registration bundle under a folder (``--conf bundles <dir>``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

from autoreg_monai._version import __version__
from autoreg_monai.bundle_runner import find_bundle

from .infer_task import RegistrationInferTask
from .request import resolve_image

__all__ = ["RegistrationApp", "find_served_bundles"]

logger = logging.getLogger(__name__)


def find_served_bundles(folder: str | Path) -> dict[str, Path]:
    """The trained bundles under ``folder`` by name: ``folder`` itself, its children, or ``autoreg fetch`` folders.

    A child without trained weights (``models/model.pt`` + ``models/genotype.json``) or that is not a bundle is
    skipped with a log line.

    Raises:
        ValueError: ``folder`` does not exist or holds no trained bundle.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"--conf bundles {folder}: no such folder")
    candidates = [root] if (root / "configs" / "metadata.json").is_file() else sorted(root.iterdir())
    found: dict[str, Path] = {}
    for candidate in candidates:
        if not candidate.is_dir():
            continue
        try:
            bundle = find_bundle(candidate, require_weights=True)
        except ValueError as why:
            logger.info("not serving %s: %s", candidate, why)
            continue
        found.setdefault(bundle.name, bundle)
    if not found:
        raise ValueError(f"--conf bundles {folder}: no trained bundle there (configs/metadata.json + models/model.pt)")
    return found


class RegistrationApp(MONAILabelApp):
    """Serves each trained bundle under ``--conf bundles <dir>`` as a registration model named after it.

    Options (``--conf key value``): ``bundles`` (required), ``results`` (folder of the requests' outputs;
    default ``<app>/results``, one subfolder per bundle), ``prealign`` (default ``affine``),
    ``trust_bundles`` (``true`` to serve bundles whose configs use code outside the allowed packages).

    A request whose scans are refused (missing, unreadable, not 3-D, NaN, ...) gets HTTP 400 with the reason
    naming the file, instead of MONAI Label's bare 500.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        if not conf.get("bundles"):
            raise ValueError(
                "start the server with --conf bundles <folder of bundles> (e.g. the repository's bundles/)"
            )
        self.bundles = find_served_bundles(conf["bundles"])
        self.results = Path(conf.get("results") or Path(app_dir) / "results").expanduser().resolve()
        self.prealign = conf.get("prealign", "affine")
        self.trust_bundles = str(conf.get("trust_bundles", "false")).lower() in ("1", "true", "yes")
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

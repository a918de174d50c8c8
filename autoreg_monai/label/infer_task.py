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
"""A MONAI Label infer task that registers a moving image to a fixed image with a searched bundle."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from autoreg_monai.bundle import check_bundle, find_bundle, load_bundle_config
from autoreg_monai.engines import TrainedWeightsLoader, register_item
from autoreg_monai.engines.report import pair_file_stem
from autoreg_monai.prealign import PREALIGN_MODES
from autoreg_monai.utils.atomic import atomic_write

from .request import ImageSource, RegistrationRequestd

__all__ = ["MAIN_OUTPUTS", "RegistrationInferTask"]

MAIN_OUTPUTS: dict[str, str] = {"warped": "warped_image", "ddf": "ddf", "jacobian": "jacobian"}
"""What a request may ask to get back as its file (params ``main_output``), and the result key of each."""

_OUTPUT_POSTFIXES = {"warped_image": "warped", "ddf": "ddf", "jacobian": "jacobian", "warped_label": "warped_label"}


def _metadata(bundle: Path) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` as plain data (read, never parsed as a config)."""
    try:
        metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{bundle / 'configs' / 'metadata.json'}: not readable bundle metadata ({error})") from error
    return metadata if isinstance(metadata, dict) else {}


class RegistrationInferTask(BasicInferTask):
    """Register the request's image (moving) to the fixed image named in its params, with a bundle's network.

    The bundle's own ``inference`` config gives the network (built from ``models/genotype.json``), the
    preprocessing (affine pre-alignment, working grid) and the writers, so results are those of
    ``autoreg register``. Weights are loaded strictly and weights-only: a ``model.pt`` that does not fit the
    genotype is refused naming both files (MONAI Label's own loader only warns).

    Request keys (MONAI Label params): ``fixed`` (required: a datastore image id or a path on the server),
    ``prealign`` (``affine``, ``rigid`` or ``none``; default the task's), ``main_output`` (the file sent back:
    ``warped`` (default), ``ddf`` or ``jacobian``), ``moving_name`` (names the moving image in the output files;
    default its file name, which for an upload is MONAI Label's temporary one), ``refine_steps`` (test-time
    refinement steps; default the bundle's ``refine_steps``, 0: the network alone), ``device``.

    Every request writes ``<output_dir>/<request id>/<moving>_to_<fixed>_{warped,ddf,jacobian}.nii.gz`` (+
    ``_affine.tfm`` when pre-aligned), all on the fixed image's grid (affine of the fixed image); the file sent
    back is a copy of the main output (MONAI Label deletes it once sent). The JSON result holds ``metrics``
    (``ncc_before`` in world coordinates, ``ncc_prealigned``, ``ncc_after``, ``folding_percent``,
    ``jacobian_min``, ``runtime_s`` of the network, ``refine_s`` and ``refine_steps`` of the refinement),
    ``outputs`` (server paths), ``request_id``, ``pair``.

    Args:
        bundle: the bundle folder (``.../bundles/<name>``, or a folder made by ``autoreg fetch``), with
            ``models/model.pt`` and ``models/genotype.json``.
        datastore: the app's datastore, to resolve a fixed image given by id.
        output_dir: where each request's folder goes (default ``<bundle>/results/label``).
        prealign: the default pre-alignment.
        trust_bundle: a bundle of your own: its ``configs/inference.json`` ids and ``$`` wiring apply (code;
            docs/security.md). Without it the bundle contributes data only.
    """

    def __init__(
        self,
        bundle: str | Path,
        datastore: ImageSource | None = None,
        output_dir: str | Path | None = None,
        prealign: str = "affine",
        trust_bundle: bool = False,
    ) -> None:
        folder = find_bundle(bundle, require_weights=True)
        check_bundle(folder, trust=trust_bundle)
        if prealign not in PREALIGN_MODES:
            raise ValueError(f"prealign must be one of {', '.join(PREALIGN_MODES)}, got {prealign!r}")
        self.bundle = folder
        self.trust_bundle = trust_bundle
        self.image_source = datastore
        self.output_dir = Path(output_dir) if output_dir is not None else folder / "results" / "label"
        self.default_prealign = prealign
        self._lock = threading.Lock()
        self._parsers: dict[str, ConfigParser] = {}
        parser = self._parser(prealign)
        metadata = _metadata(folder)
        super().__init__(
            path=str(folder / "models" / "model.pt"),
            network=parser.get_parsed_content("network_def"),
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=f"{metadata.get('name', folder.name)}: {metadata.get('task', 'deformable registration')}",
            input_key="moving_image",
            output_label_key="warped_image",
            config={"fixed": "", "prealign": prealign, "main_output": "warped"},
            load_strict=True,
        )

    def _parser(self, prealign: str) -> ConfigParser:
        """The bundle's inference config with ``prealign`` set, parsed once per mode."""
        if prealign not in PREALIGN_MODES:
            raise ValueError(f"prealign must be one of {', '.join(PREALIGN_MODES)}, got {prealign!r}")
        with self._lock:
            if prealign not in self._parsers:
                self._parsers[prealign] = load_bundle_config(
                    self.bundle, "inference", trust=self.trust_bundle, prealign=prealign
                )
            return self._parsers[prealign]

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        # the returned file is a warped image on the fixed grid, not a label of the moving image: never let the
        # app store it as one (MONAI Label reads "save_label" from this same request after the call)
        request["save_label"] = False
        main_output = request.get("main_output", self._config.get("main_output", "warped"))
        if main_output not in MAIN_OUTPUTS:
            raise ValueError(f"main_output must be one of {', '.join(MAIN_OUTPUTS)}, got {main_output!r}")
        refine_steps = request.get("refine_steps")
        if refine_steps is not None and (
            isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0
        ):
            raise ValueError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")
        moving_name = request.get("moving_name")
        if moving_name is not None and (not isinstance(moving_name, str) or not moving_name.strip("._- ")):
            raise ValueError(f"moving_name must be a name for the moving image's files, got {moving_name!r}")
        return super().__call__(request, callbacks)

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """Resolve and check the pair, then the bundle's inference preprocessing (load, pre-align, working grid)."""
        prealign = (data or {}).get("prealign") or self.default_prealign
        preprocessing = self._parser(prealign).get_parsed_content("preprocessing")
        return [RegistrationRequestd(self.image_source), *preprocessing.transforms]

    def inverse_transforms(self, data: dict[str, Any] | None = None) -> None:
        """None: :func:`~autoreg_monai.engines.register_item` maps the results to the fixed grid itself."""
        return None

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """None: the bundle's writers run in :meth:`writer`, into the request's own folder."""
        return []

    def inferer(self, data: dict[str, Any] | None = None) -> Any:
        """The bundle's inferer."""
        return self._parser(self.default_prealign).get_parsed_content("inferer")

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        """The network on ``device`` with the trained weights (loaded once per device, strictly)."""
        with self._lock:
            cached = self._networks.get(device)
            if cached is None:
                network = copy.deepcopy(self.network).to(torch.device(device))
                TrainedWeightsLoader(
                    self.get_path(), network, self.bundle / "models" / "genotype.json", map_location=device
                )()
                network.eval()
                cached = self._networks[device] = (network, Path(self.get_path()).stat().st_mtime)
            return cached[0]

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """Predict the field and map warped image, field and Jacobian to the fixed image's grid."""
        network = self._get_network(device, data)
        name = None
        if data.get("moving_name"):
            name = pair_file_stem(f"{data['moving_name']} -> {Path(data['fixed_path']).name}")
        refinement = self._parser(self.default_prealign).get_parsed_content("refinement")
        if data.get("refine_steps") is not None:  # this request's own copy: the parsed one serves every request
            refinement = copy.copy(refinement)
            refinement.steps = int(data["refine_steps"])
        data.update(
            register_item(network, self.inferer(data), data, torch.device(device), name=name, refinement=refinement)
        )
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Write the request's outputs into its own folder; return a copy of the main output and the JSON result.

        The folder is filled under a temporary name and renamed when complete, so a request that fails while
        writing leaves nothing behind.

        Raises:
            FileExistsError: the request's folder exists already (request ids never repeat).
        """
        folder = self.output_dir / data["request_id"]
        if folder.exists():
            raise FileExistsError(f"{folder}: the outputs of request {data['request_id']} exist already")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        outputs = {
            postfix: str(folder / f"{data['pair']}_{postfix}.nii.gz")
            for key, postfix in _OUTPUT_POSTFIXES.items()
            if key in data
        }
        if "prealign_matrix" in data:
            outputs["affine"] = str(folder / f"{data['pair']}_affine.tfm")
        result = {
            "request_id": data["request_id"],
            "bundle": self.bundle.name,
            "pair": data["pair"],
            "moving": data["moving_path"],
            "fixed": data["fixed_path"],
            "prealign": data.get("prealign") or self.default_prealign,
            "main_output": data.get("main_output", "warped"),
            "metrics": {
                "ncc_before": round(float(data["ncc_before"]), 6),
                "ncc_prealigned": round(float(data["ncc_prealigned"]), 6),
                "ncc_after": round(float(data["ncc"]), 6),
                "folding_percent": round(float(data["folding_percent"]), 6),
                "jacobian_min": round(float(data["jacobian"].min()), 6),
                "runtime_s": round(float(data["runtime_s"]), 4),
                "refine_s": round(float(data["refine_s"]), 4),
                "refine_steps": int(data["refine_steps"]),
            },
            "outputs": outputs,
        }
        try:
            parser = self._parser(data.get("prealign") or self.default_prealign)
            request_config = ConfigParser(config=copy.deepcopy(parser.get()), globals=dict(parser.globals))
            request_config["results_dir"] = str(staging)
            request_config.parse()
            postprocessing = request_config.get_parsed_content("postprocessing")
            keys = (*_OUTPUT_POSTFIXES, "prealign_matrix", "pair")
            postprocessing({key: data[key] for key in keys if key in data})
            with atomic_write(staging / "result.json", "w") as stream:
                stream.write(json.dumps(result, indent=2) + "\n")
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        main = MAIN_OUTPUTS[data.get("main_output", "warped")]
        handle, sent = tempfile.mkstemp(suffix=".nii.gz", prefix=f"{data['pair']}_{_OUTPUT_POSTFIXES[main]}_")
        with open(handle, "wb") as copy_to, open(outputs[_OUTPUT_POSTFIXES[main]], "rb") as copy_from:
            shutil.copyfileobj(copy_from, copy_to)
        return sent, result

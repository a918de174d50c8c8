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
"""Self-describing model files: the weights travel with everything needed to rebuild their network.

A model file is a ``torch.save`` dictionary of plain data (loadable with ``weights_only=True``)::

    {"format": "autoreg_monai.model", "format_version": 1, "package_version": "0.1.0",
     "class": "AutoRegNet", "config": {constructor arguments}, "genotype": {Genotype.to_dict()},
     "loss_weights": [λ...], "state_dict": {...}, "extra": {...}}

Only the network classes of :data:`MODEL_CLASSES` can be rebuilt: a file never names code to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autoreg_monai._version import __version__
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegBase, AutoRegNet, AutoRegSearchNet
from autoreg_monai.utils.atomic import atomic_write

__all__ = [
    "MODEL_CLASSES",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "load_model",
    "read_model_file",
    "save_model",
    "weights_mismatch",
]

MODEL_FORMAT = "autoreg_monai.model"
MODEL_FORMAT_VERSION = 1
MODEL_CLASSES: dict[str, type[AutoRegBase]] = {"AutoRegNet": AutoRegNet, "AutoRegSearchNet": AutoRegSearchNet}
"""Network classes a model file may ask for, by name."""


def save_model(net: AutoRegBase, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``net`` with its constructor config, genotype, λ and the package version (atomically).

    Args:
        net: an :class:`AutoRegNet` or :class:`AutoRegSearchNet`.
        path: output file (conventionally ``.pt``).
        extra: more plain data to store (e.g. the epoch, the training data set name).

    Returns:
        ``path``.
    """
    name = type(net).__name__
    if MODEL_CLASSES.get(name) is not type(net):
        raise ValueError(f"cannot save a {name}: model files hold one of {sorted(MODEL_CLASSES)}")
    genotype = net.genotype()
    record = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "class": name,
        "config": net.config,
        "genotype": genotype.to_dict(),
        "loss_weights": list(genotype.loss_weights),
        "state_dict": net.state_dict(),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save(record, handle)
    return path


def read_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check the record of a model file, with ``torch.load(weights_only=True)`` (no code runs).

    Raises:
        ValueError: naming ``path``, when it is missing, unreadable, truncated or not an autoreg_monai model file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: model file not found")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an autoreg_monai model file (no 'format': '{MODEL_FORMAT}' record)")
    if record.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{path}: model file format version {record.get('format_version')!r} is not supported "
            f"(this is autoreg_monai {__version__}, reading version {MODEL_FORMAT_VERSION})"
        )
    if record.get("class") not in MODEL_CLASSES:
        raise ValueError(
            f"{path}: unknown network class {record.get('class')!r}; expected one of {sorted(MODEL_CLASSES)}"
        )
    return record


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> AutoRegBase:
    """Rebuild the network stored by :func:`save_model` and load its weights strictly.

    Raises:
        ValueError: naming ``path``, if the file is not a valid model file or its weights do not fit the
            network its config describes.
    """
    record = read_model_file(path, map_location)
    cls = MODEL_CLASSES[record["class"]]
    try:
        net = cls(**record["config"])
        net.load_state_dict(record["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: the stored weights do not rebuild a {record['class']}: {err}") from err
    stored = Genotype.from_dict(record["genotype"])
    if net.genotype().feature != stored.feature or net.genotype().deformation != stored.deformation:
        raise ValueError(f"{path}: the stored genotype does not match the rebuilt network")
    return net


def weights_mismatch(network: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state_dict`` from loading strictly into ``network``, or ``None`` when it fits.

    Returns:
        e.g. ``"12 weights missing (moving_features.0.edges.0.conv.weight, ...), 3 of another shape
        (...)"``: a genotype with other operations than the weights were trained for.
    """
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    parts = [
        f"{len(names)} {what} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
        for names, what in ((missing, "weights missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
        if names
    ]
    return ", ".join(parts) or None

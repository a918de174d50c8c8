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
"""The MONAI Label app's options and its copies: ``config.json`` under ``--conf`` (no MONAI Label needed here)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoreg_monai.bundle import find_bundle
from autoreg_monai.prealign import PREALIGN_MODES
from autoreg_monai.utils.atomic import atomic_write

__all__ = ["APP_CONFIG", "APP_DIR", "APP_OPTIONS", "app_options", "find_served_bundles", "write_app"]

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent / "app"
"""The sample app shipped in the package: ``main.py`` (the app class) and ``config.json`` (its options)."""

APP_CONFIG = "config.json"
"""The options file of an app folder."""

APP_OPTIONS: dict[str, Any] = {"bundles": None, "results": "results", "prealign": "affine", "trust_bundles": False}
"""The app's options and their defaults: ``bundles`` (folder of bundles to serve), ``results`` (folder of the
requests' outputs), ``prealign`` (default pre-alignment), ``trust_bundles`` (apply the served bundles' own
inference configs, which are code: only for bundles of your own, docs/security.md)."""

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def find_served_bundles(folder: str | Path) -> dict[str, Path]:
    """The trained bundles under ``folder`` by name: ``folder`` itself, its children, or ``autoreg fetch`` folders.

    A child without trained weights (``models/model.pt`` + ``models/genotype.json``) or that is not a bundle is
    skipped with a log line.

    Raises:
        ValueError: ``folder`` does not exist or holds no trained bundle.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"bundles {folder}: no such folder")
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
        raise ValueError(f"bundles {folder}: no trained bundle there (configs/metadata.json + models/model.pt)")
    return found


def _prealign(value: Any, where: str) -> str:
    if value not in PREALIGN_MODES:
        raise ValueError(f"{where}: prealign must be one of {', '.join(PREALIGN_MODES)}, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in _TRUE + _FALSE:
        return str(value).strip().lower() in _TRUE
    raise ValueError(f"{where}: trust_bundles must be true or false, got {value!r}")


def _read_config(app_dir: Path) -> dict[str, Any]:
    file = app_dir / APP_CONFIG
    if not file.is_file():
        return {}
    try:
        options = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as why:
        raise ValueError(f"{file}: not a readable JSON file ({why})") from why
    if not isinstance(options, dict):
        raise ValueError(f"{file}: expected a JSON object of options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(APP_OPTIONS))
    if unknown:
        raise ValueError(f"{file}: unknown option(s) {', '.join(unknown)}; the options are {', '.join(APP_OPTIONS)}")
    return options


def app_options(app_dir: str | Path, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of the app in ``app_dir``: ``--conf`` values over its ``config.json`` over the defaults.

    Paths in ``config.json`` are relative to the app folder, paths given with ``--conf`` to the working
    directory. Keys of ``conf`` that are not app options (MONAI Label's own) are ignored.

    Returns:
        ``{"bundles": {name: folder}, "results": Path, "prealign": str, "trust_bundles": bool}``, the bundles
        found by :func:`find_served_bundles`.

    Raises:
        ValueError: naming the file or option: an unreadable ``config.json`` or an unknown option in it, no
            ``bundles`` given, a folder without trained bundles, an unknown ``prealign``, a ``trust_bundles``
            that is not a boolean.
    """
    app_dir = Path(app_dir).expanduser().resolve()
    conf = {key: value for key, value in (conf or {}).items() if key in APP_OPTIONS and value not in (None, "")}
    from_file = {key: value for key, value in _read_config(app_dir).items() if value not in (None, "")}
    options = {**APP_OPTIONS, **from_file, **conf}
    where = {key: ("--conf" if key in conf else str(app_dir / APP_CONFIG)) for key in APP_OPTIONS}

    def path_of(key: str) -> Path:
        path = Path(str(options[key])).expanduser()
        return (path if key in conf or path.is_absolute() else app_dir / path).resolve()

    if options["bundles"] is None:
        raise ValueError(
            f'no bundles to serve: set "bundles" in {app_dir / APP_CONFIG} (autoreg label_app --bundles <folder> '
            f"writes it) or start the server with --conf bundles <folder of bundles>"
        )
    try:
        bundles = find_served_bundles(path_of("bundles"))
    except ValueError as why:
        raise ValueError(f"{where['bundles']}: {why}") from why
    return {
        "bundles": bundles,
        "results": path_of("results"),
        "prealign": _prealign(options["prealign"], where["prealign"]),
        "trust_bundles": _flag(options["trust_bundles"], where["trust_bundles"]),
    }


def write_app(out: str | Path, **options: Any) -> tuple[Path, dict[str, Path]]:
    """Copy the sample app to ``out`` with its ``config.json`` holding ``options`` (paths made absolute).

    The options are checked as the server checks them at start-up, and the app is written into a temporary
    folder next to ``out`` and renamed, so ``out`` is either the complete app or absent.

    Args:
        out: the new app folder (must not exist, or be empty).
        options: app options to set (:data:`APP_OPTIONS`; ``None`` keeps the default).

    Returns:
        The app folder and the bundles it serves by name (:func:`find_served_bundles`; empty without ``bundles``,
        which the server then needs as ``--conf bundles``).

    Raises:
        ValueError: ``out`` is a file or a folder that is not empty, an unknown option, or a value the app would
            refuse (a ``bundles`` folder without trained bundles, an unknown ``prealign``, ...).
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new folder for the app")
    unknown = sorted(set(options) - set(APP_OPTIONS))
    if unknown:
        raise ValueError(f"unknown app option(s) {', '.join(unknown)}; the options are {', '.join(APP_OPTIONS)}")
    config = dict(APP_OPTIONS)
    for key, value in options.items():
        if value is None:
            continue
        config[key] = str(Path(value).expanduser().resolve()) if key in ("bundles", "results") else value
    _prealign(config["prealign"], "app options")
    config["trust_bundles"] = _flag(config["trust_bundles"], "app options")
    served = find_served_bundles(config["bundles"]) if config["bundles"] is not None else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        app = staging / "app"
        shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        with atomic_write(app / APP_CONFIG, "w") as stream:
            stream.write(json.dumps(config, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        app.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, served

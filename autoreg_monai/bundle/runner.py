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
"""Running a bundle: the package's own workflow configs, filled with the bundle's data.

The workflows (``search``, ``train``, ``evaluate``, ``inference``) are MONAI bundle configs installed with the
package (:data:`WORKFLOWS_DIR`); a bundle contributes its scenario settings (``configs/scenario.json``,
validated), its genotype and weights, and the folder its results go to. MONAI's ``ConfigWorkflow`` runs them,
exactly as ``python -m monai.bundle run`` would, from any working directory.

A bundle's own ``configs/<workflow>.json`` are read only when the bundle is trusted (``trust=True``, a user's
own bundle): then every id they set besides ``imports`` and the run id is an override of the package workflow
(``$`` wiring included) and their ``imports`` are added. The shipped ones hold a single expression that hands
MONAI's runner over to :func:`run_from_monai`, which is what keeps the mission's command working::

    python -m monai.bundle run search --config_file bundles/brain_t1/configs/search.json
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from monai.bundle import DEFAULT_EXP_MGMT_SETTINGS, ConfigParser, ConfigWorkflow
from monai.utils import ensure_tuple

from autoreg_monai.bundle.settings import load_scenario, scenario_values

__all__ = [
    "WORKFLOWS_DIR",
    "WORKFLOW_RUN_IDS",
    "absolute_paths",
    "bundle_item",
    "compose_workflow",
    "find_bundle",
    "load_bundle_config",
    "run_from_monai",
    "run_workflow",
]

WORKFLOWS_DIR = Path(__file__).with_name("workflows")
"""The package's workflow configs: ``common.json``, then ``<workflow>.json`` (and ``multi_gpu_<workflow>.json``)."""

WORKFLOW_RUN_IDS: dict[str, str] = {"search": "search", "train": "train", "evaluate": "evaluate", "inference": "run"}
"""The run id of each workflow."""

MULTI_GPU_KEY = "multi_gpu"
"""Override that adds the package's ``multi_gpu_<workflow>.json`` overlay (search and train)."""


def find_bundle(path: str | Path, require_weights: bool = False) -> Path:
    """The bundle folder of ``path``: a folder holding ``configs/metadata.json``, or a folder with one such bundle
    somewhere below ``bundles/`` (a fetched archive of an older release).

    Raises:
        ValueError: ``path`` is not a bundle, or (with ``require_weights``) has no ``models/model.pt`` and
            ``models/genotype.json``.
    """
    folder = Path(path).expanduser().resolve()
    if not (folder / "configs" / "metadata.json").is_file() and (folder / "bundles").is_dir():
        inside = [c for c in sorted((folder / "bundles").iterdir()) if (c / "configs" / "metadata.json").is_file()]
        if len(inside) == 1:
            folder = inside[0]
    if not (folder / "configs" / "metadata.json").is_file():
        raise ValueError(f"{path}: not a bundle folder (no configs/metadata.json)")
    if require_weights:
        for needed in ("models/genotype.json", "models/model.pt"):
            if not (folder / needed).is_file():
                raise ValueError(
                    f"{folder}: the bundle has no {needed} (no trained weights); run its search and train "
                    f"workflows first (autoreg search / autoreg train --bundle {folder})"
                )
    return folder


def absolute_paths(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides with every string naming an existing file or folder made absolute."""
    result = {}
    for key, value in overrides.items():
        if isinstance(value, (str, Path)) and str(value) and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        result[key] = value
    return result


def _config_files(workflow: str, multi_gpu: bool) -> list[str]:
    if workflow not in WORKFLOW_RUN_IDS:
        raise ValueError(f"unknown workflow {workflow!r}; use one of {', '.join(WORKFLOW_RUN_IDS)}")
    files = [WORKFLOWS_DIR / "common.json", WORKFLOWS_DIR / f"{workflow}.json"]
    if multi_gpu:
        overlay = WORKFLOWS_DIR / f"multi_gpu_{workflow}.json"
        if not overlay.is_file():
            raise ValueError(f"{MULTI_GPU_KEY}: the {workflow} workflow has no multi-GPU form (search and train do)")
        files.append(overlay)
    return [str(f) for f in files]


def _trusted_config(folder: Path, workflow: str) -> tuple[list[str], dict[str, Any]]:
    """The imports and the other ids of a trusted bundle's own config of ``workflow`` (none when it has none)."""
    path = folder / "configs" / f"{workflow}.json"
    if not path.is_file():
        return [], {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON config ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a JSON object")
    imports = [i for i in config.pop("imports", []) if i not in _HAND_OVER_IMPORTS]
    return imports, {k: v for k, v in config.items() if not _is_hand_over(v)}


def _tracking_settings(tracking: str | dict) -> dict:
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        return copy.deepcopy(DEFAULT_EXP_MGMT_SETTINGS[tracking])
    return tracking if isinstance(tracking, dict) else ConfigParser.load_config_files(tracking)


def compose_workflow(
    bundle: str | Path,
    workflow: str,
    trust: bool = False,
    quiet: bool = False,
    tracking: str | dict | None = None,
    run_id: str | None = None,
    **overrides: Any,
) -> ConfigWorkflow:
    """The package's ``workflow`` config for a bundle, as a MONAI ``ConfigWorkflow`` (not yet initialised).

    Values, later ones winning: the package's ``common.json`` then ``<workflow>.json``; the bundle's validated
    scenario settings; ``bundle_root``; for a trusted bundle, the ids of its own ``configs/<workflow>.json``;
    ``overrides``. The bundle's metadata and logging configuration are read only when it is trusted.

    Args:
        bundle: the bundle folder (see :func:`find_bundle`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        trust: also take the bundle's own workflow config and logging configuration (code: a user's own bundle).
        quiet: apply no logging configuration.
        tracking: MONAI's experiment tracking (``"mlflow"`` or settings), as ``--tracking`` of MONAI's runner.
        run_id: the id to run (default :data:`WORKFLOW_RUN_IDS`; the search also has ``search_feature``,
            ``search_deformation`` and ``search_objective``).
        overrides: config ids and values (``--id value`` on MONAI's command line); values naming existing files
            or folders are made absolute; ``multi_gpu=True`` adds the multi-GPU overlay; ``imports`` are added to
            the package's.

    Raises:
        ValueError: an unknown workflow, or settings, a config or metadata of the bundle that cannot be used.
    """
    folder = find_bundle(bundle)
    overrides = absolute_paths(overrides)
    files = _config_files(workflow, bool(overrides.pop(MULTI_GPU_KEY, False)))
    workflow_keys = set(ConfigParser.load_config_files(files[1:]))
    values = scenario_values(load_scenario(folder), workflow, workflow_keys)
    imports = [i for i in overrides.pop("imports", []) if i not in _HAND_OVER_IMPORTS]
    trusted: dict[str, Any] = {}
    if trust:
        own_imports, trusted = _trusted_config(folder, workflow)
        imports += own_imports
    logging_file: str | bool = False
    if not quiet:
        own_logging = folder / "configs" / "logging.conf"
        logging_file = str(own_logging if trust and own_logging.is_file() else WORKFLOWS_DIR / "logging.conf")
    meta = folder / "configs" / "metadata.json" if trust else WORKFLOWS_DIR / "metadata.json"
    monai_logger = logging.getLogger("monai.bundle.workflows")
    level = monai_logger.level
    if quiet:  # its "skipping logging" warning: quiet is what was asked for
        monai_logger.setLevel(logging.ERROR)
    try:
        instance = ConfigWorkflow(
            config_file=files,
            meta_file=str(meta),
            logging_file=logging_file,
            run_id=run_id or WORKFLOW_RUN_IDS[workflow],
            workflow_type="infer" if workflow == "inference" else "train",
        )
        instance.parser.update({**values, "bundle_root": str(folder), **trusted, **overrides})
        if tracking is not None:  # after the values: MONAI's patch names output_dir and the engines
            ConfigWorkflow.patch_bundle_tracking(instance.parser, _tracking_settings(tracking))
    finally:
        monai_logger.setLevel(level)
    if imports:
        instance.parser["imports"] = list(instance.parser["imports"]) + imports
    return instance


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """No log records below CRITICAL and no tqdm bars: an error ends the workflow as an exception, which the caller
    reports once (ignite's own "terminating due to exception" records would repeat it, naming Python objects)."""
    if not enabled:
        yield
        return
    previous_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm (>= 4.66) for every bar, ignite's ProgressBar included
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the effective log level of")  # StatsHandler: silenced on purpose
            yield
    finally:
        logging.disable(logging.NOTSET)
        if previous_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous_tqdm


def run_workflow(
    bundle: str | Path, workflow: str, quiet: bool = False, trust: bool = False, **overrides: Any
) -> ConfigWorkflow:
    """Run one workflow of a bundle (:func:`compose_workflow`) and return it, finalised.

    Args:
        bundle: the bundle folder (see :func:`find_bundle`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        quiet: log errors only and show no progress bars.
        trust: a user's own bundle: its configs' ids and ``$`` wiring apply (see :func:`compose_workflow`).
        overrides: config ids and values, as ``--id value`` on MONAI's command line.

    Returns:
        the ``ConfigWorkflow`` after ``run`` and ``finalize`` (its components can be inspected, e.g.
        ``workflow.evaluator.state.output``).
    """
    with _quiet(quiet):
        instance = compose_workflow(bundle, workflow, trust=trust, quiet=quiet, **overrides)
        instance.initialize()
        instance.run()
        instance.finalize()
    return instance


def load_bundle_config(bundle: str | Path, workflow: str, trust: bool = False, **overrides: Any) -> ConfigParser:
    """A workflow config of a bundle, parsed: ``get_parsed_content`` then instantiates its components, from any
    working directory and any thread (a server's).

    Args:
        bundle: the bundle folder (see :func:`find_bundle`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        trust: a user's own bundle (see :func:`compose_workflow`).
        overrides: config ids and values set before parsing.

    Returns:
        the parsed ``ConfigParser``.
    """
    parser = compose_workflow(bundle, workflow, trust=trust, quiet=True, **overrides).parser
    parser.parse()
    return parser


_HAND_OVER_IMPORTS = (
    "$from autoreg_monai.bundle import run_from_monai",
    "$from autoreg_monai.bundle import bundle_item",
)
"""The import lines of a bundle's own configs (:func:`run_from_monai`, :func:`bundle_item`)."""


def _is_hand_over(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$") and ("run_from_monai(" in value or "bundle_item(" in value)


@dataclasses.dataclass
class _MonaiCaller:
    """What MONAI's runner (or one of its scripts, e.g. ``ckpt_export``) was given, found on the call stack."""

    bundle: Path
    config: dict[str, Any]
    tracking: Any = None


def _monai_caller() -> _MonaiCaller:
    """The bundle config being evaluated by MONAI: its folder (above ``configs/``) and its ids, raw."""
    frame = inspect.currentframe()
    while frame is not None:
        local = frame.f_locals
        if frame.f_globals.get("__name__", "").startswith("monai.bundle"):
            if isinstance(local.get("self"), ConfigWorkflow):
                root, parser = Path(local["self"].config_root_path), local["self"].parser
                break
            if isinstance(local.get("parser"), ConfigParser) and local.get("config_file_"):
                root, parser = Path(ensure_tuple(local["config_file_"])[0]).parent, local["parser"]
                break
        frame = frame.f_back
    else:
        raise RuntimeError("a bundle config's hand-over expression runs only under python -m monai.bundle")
    tracking = None
    while frame is not None:  # run()/create_workflow() further up: the --tracking they were given
        tracking = tracking or frame.f_locals.get("tracking")
        frame = frame.f_back
    config = {k: v for k, v in dict(parser.get()).items() if k != "_meta_" and not _is_hand_over(v)}
    folder = config.pop("bundle_root", None) or (root.parent if root.name == "configs" else root)
    if tracking:
        config.pop("save_execute_config", None)  # the outer config's; the package workflow saves its own
    return _MonaiCaller(Path(folder), config, tracking)


def run_from_monai(workflow: str, run_id: str | None = None) -> ConfigWorkflow:
    """The run expression of a bundle's own configs: run the package's ``workflow`` for the bundle MONAI's runner
    was pointed at.

    Called while ``python -m monai.bundle run <id> --config_file <bundle>/configs/<workflow>.json`` (or
    ``monai.bundle.run``/``create_workflow``) runs that config: the bundle is the folder above ``configs/``
    (``--bundle_root`` names another), every other id of the config (the command line's ``--id value``
    overrides, a merged ``multi_gpu_<workflow>.json``) is an override of the package workflow, and
    ``--tracking`` applies to it. The config was given to MONAI's runner by the user, who trusts it.

    Args:
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        run_id: the package workflow's id to run (default: the workflow's own, :data:`WORKFLOW_RUN_IDS`).
    """
    caller = _monai_caller()
    return run_workflow(caller.bundle, workflow, tracking=caller.tracking, run_id=run_id, **caller.config)


def bundle_item(workflow: str, item: str) -> Any:
    """One component of the package's ``workflow`` for the bundle a MONAI script reads, e.g. ``network_def`` for
    ``python -m monai.bundle ckpt_export network_def --config_file <bundle>/configs/inference.json ...``."""
    caller = _monai_caller()
    return load_bundle_config(caller.bundle, workflow, trust=False, **caller.config).get_parsed_content(item)

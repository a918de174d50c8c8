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
"""Running a bundle's workflows from anywhere: MONAI's own ``create_workflow``, from the right folder.

A bundle's workflow configs take their shared definitions from ``bundles/<name>/configs/common.json``
with ``%`` macros, which MONAI resolves from the working directory, and write under ``bundle_root`` =
``bundles/<name>``, also relative to it. So every workflow runs from the folder that holds ``bundles/``:
the repository root, or the versioned folder ``autoreg fetch`` unpacks into. :func:`run_workflow` does
exactly what ``python -m monai.bundle run`` does (no second implementation), from that folder, with
the caller's relative paths made absolute first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow, create_workflow

__all__ = ["WORKFLOW_RUN_IDS", "absolute_paths", "find_bundle", "load_bundle_config", "run_workflow"]

WORKFLOW_RUN_IDS: dict[str, str] = {"search": "search", "train": "train", "evaluate": "evaluate", "inference": "run"}
"""The run id of each workflow config of a bundle."""


def find_bundle(path: str | Path, require_weights: bool = False) -> Path:
    """The bundle folder (``.../bundles/<name>``) of ``path``: a bundle folder or a fetched ``<name>_v<version>``.

    Raises:
        ValueError: ``path`` is not a bundle, does not sit in a ``bundles/`` folder, or (with
            ``require_weights``) has no ``models/model.pt`` and ``models/genotype.json``.
    """
    folder = Path(path).expanduser().resolve()
    if not (folder / "configs" / "metadata.json").is_file() and (folder / "bundles").is_dir():
        inside = [c for c in sorted((folder / "bundles").iterdir()) if (c / "configs" / "metadata.json").is_file()]
        if len(inside) == 1:
            folder = inside[0]
    if not (folder / "configs" / "metadata.json").is_file():
        raise ValueError(f"{path}: not a bundle folder (no configs/metadata.json)")
    if folder.parent.name != "bundles":
        raise ValueError(
            f"{folder}: a bundle must sit in a folder named 'bundles' (its configs name their files "
            f"bundles/{folder.name}/...); move it, or fetch it with autoreg fetch"
        )
    if require_weights:
        for needed in ("models/genotype.json", "models/model.pt"):
            if not (folder / needed).is_file():
                raise ValueError(
                    f"{folder}: the bundle has no {needed} (no trained weights); run its search and train "
                    f"workflows first (autoreg search / autoreg train --bundle {folder})"
                )
    return folder


def absolute_paths(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides with every string naming an existing file or folder made absolute (before a ``chdir``)."""
    result = {}
    for key, value in overrides.items():
        if isinstance(value, (str, Path)) and str(value) and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        result[key] = value
    return result


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


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


def run_workflow(bundle: str | Path, workflow: str, quiet: bool = False, **overrides: Any) -> ConfigWorkflow:
    """Run one workflow of a bundle as ``python -m monai.bundle run`` does, and return it (finalised).

    Args:
        bundle: the bundle folder (see :func:`find_bundle`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference`` (a key of :data:`WORKFLOW_RUN_IDS`).
        quiet: skip the bundle's logging configuration, log errors only and show no progress bars.
        overrides: config ids and values, as ``--id value`` on MONAI's command line; values naming existing
            files or folders are made absolute first.

    Returns:
        the ``ConfigWorkflow``, after ``run`` and ``finalize`` (its components can be inspected, e.g.
        ``workflow.evaluator.state.output``).
    """
    if workflow not in WORKFLOW_RUN_IDS:
        raise ValueError(f"unknown workflow {workflow!r}; use one of {', '.join(WORKFLOW_RUN_IDS)}")
    folder = find_bundle(bundle)
    configs = folder / "configs"
    overrides = absolute_paths(overrides)
    with _working_directory(folder.parent.parent), _quiet(quiet):
        instance = create_workflow(
            config_file=str(configs / f"{workflow}.json"),
            meta_file=str(configs / "metadata.json"),
            logging_file=False if quiet else str(configs / "logging.conf"),
            run_id=WORKFLOW_RUN_IDS[workflow],
            workflow_type="infer" if workflow == "inference" else "train",
            **overrides,
        )
        instance.run()
        instance.finalize()
    return instance


def load_bundle_config(bundle: str | Path, workflow: str, **overrides: Any) -> ConfigParser:
    """A workflow config of a bundle, parsed so that it no longer depends on the working directory.

    The ``%`` macros are resolved from the folder that holds ``bundles/`` and ``bundle_root`` is made absolute,
    so components can then be instantiated from any working directory and any thread (a server's).

    Args:
        bundle: the bundle folder (see :func:`find_bundle`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        overrides: config ids and values set before parsing (values naming existing files made absolute).

    Returns:
        the parsed ``ConfigParser`` (metadata under ``_meta_``); ``get_parsed_content`` instantiates components.
    """
    if workflow not in WORKFLOW_RUN_IDS:
        raise ValueError(f"unknown workflow {workflow!r}; use one of {', '.join(WORKFLOW_RUN_IDS)}")
    folder = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    parser.read_config(str(folder / "configs" / f"{workflow}.json"))
    parser.update({"bundle_root": str(folder), **absolute_paths(overrides)})
    with _working_directory(folder.parent.parent):
        parser.parse()
    return parser

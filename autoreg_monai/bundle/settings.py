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
"""A bundle's scenario settings: ``configs/scenario.json``, plain values checked against a JSON schema.

The schema (:data:`SCHEMA_FILE`, shipped with the package) admits numbers, booleans, lists of numbers and
a few enumerated words only, so no value of a valid settings file can be a MONAI expression (``$``),
reference (``@``), macro (``%``) or component (``_target_``): a bundle's settings are data by construction.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

__all__ = ["SCENARIO_FILE", "SCHEMA_FILE", "load_scenario", "scenario_values"]

SCENARIO_FILE = "configs/scenario.json"
"""Where a bundle keeps its scenario settings, relative to the bundle folder."""

SCHEMA_FILE = Path(__file__).with_name("scenario_schema.json")
"""The JSON schema of :data:`SCENARIO_FILE`."""

_NOT_FORWARDED = ("description", "workflows")


@lru_cache(maxsize=1)
def _validator() -> Draft7Validator:
    return Draft7Validator(json.loads(SCHEMA_FILE.read_text()))


def _where(path: Collection[Any]) -> str:
    return "/".join(str(p) for p in path) or "(top level)"


def load_scenario(bundle: str | Path) -> dict[str, Any]:
    """The validated scenario settings of a bundle folder.

    Raises:
        ValueError: naming the file and, for each problem (up to 5), the setting and what is wrong with it: the
            file is missing, not JSON, or breaks the schema (an unknown setting, a wrong type or value, a string
            where a plain value is expected).
    """
    path = Path(bundle) / SCENARIO_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"{path}: missing; a bundle describes its scenario there (docs/bundles.md)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error
    errors = sorted(_validator().iter_errors(settings), key=lambda e: list(e.absolute_path))
    if errors:
        shown = "; ".join(f"{_where(e.absolute_path)}: {e.message[:160]}" for e in errors[:5])
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ValueError(f"{path}: refused, not valid scenario settings ({shown}{more}); see {SCHEMA_FILE.name}")
    return settings


def scenario_values(settings: dict[str, Any], workflow: str, workflow_keys: Collection[str]) -> dict[str, Any]:
    """The config values the settings give one workflow.

    Top-level settings fill the ids the workflow's own config leaves to the scenario (not those in
    ``workflow_keys``: the search keeps its small grid when the scenario sets the registration grid);
    ``workflows.<workflow>`` settings win over both.

    Args:
        settings: validated settings (:func:`load_scenario`).
        workflow: ``search``, ``train``, ``evaluate`` or ``inference``.
        workflow_keys: the top-level ids the package's config of that workflow sets itself.
    """
    values = {k: v for k, v in settings.items() if k not in _NOT_FORWARDED and k not in workflow_keys}
    values.update(settings.get("workflows", {}).get(workflow, {}))
    return values

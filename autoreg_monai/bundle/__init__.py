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
"""Bundles as data: scenario settings, the package's own workflows that run them, and the checks a bundle passes."""

from .runner import (
    WORKFLOW_RUN_IDS,
    WORKFLOWS_DIR,
    bundle_item,
    compose_workflow,
    find_bundle,
    load_bundle_config,
    run_from_monai,
    run_workflow,
)
from .safety import check_bundle, links_outside, verify_manifest, weights_problem
from .settings import SCENARIO_FILE, SCHEMA_FILE, load_scenario, scenario_values

__all__ = [
    "SCENARIO_FILE",
    "SCHEMA_FILE",
    "WORKFLOWS_DIR",
    "WORKFLOW_RUN_IDS",
    "bundle_item",
    "check_bundle",
    "compose_workflow",
    "find_bundle",
    "links_outside",
    "load_bundle_config",
    "load_scenario",
    "run_from_monai",
    "run_workflow",
    "scenario_values",
    "verify_manifest",
    "weights_problem",
]

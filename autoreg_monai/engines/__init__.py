# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Train-evaluation, evaluation and inference iterations and handlers for MONAI's engines."""

from __future__ import annotations

from .checkpoint import (
    AtomicDiskSaver,
    RandomStates,
    ResumableCheckpoint,
    TrainedWeightsLoader,
    checkpoint_problem,
    latest_checkpoint,
    prune_checkpoints,
    resume_mode,
)
from .inference import RegistrationInferStep, map_to_fixed_grid, register_item
from .refinement import RefinementReport, TestTimeRefinement
from .report import METRIC_COLUMNS, RegistrationReport, pair_file_stem
from .steps import RegistrationEvalStep, RegistrationTrainStep

__all__ = [
    "METRIC_COLUMNS",
    "RegistrationEvalStep",
    "RegistrationInferStep",
    "RegistrationReport",
    "RegistrationTrainStep",
    "RefinementReport",
    "TestTimeRefinement",
    "ResumableCheckpoint",
    "TrainedWeightsLoader",
    "AtomicDiskSaver",
    "RandomStates",
    "checkpoint_problem",
    "resume_mode",
    "latest_checkpoint",
    "map_to_fixed_grid",
    "register_item",
    "pair_file_stem",
    "prune_checkpoints",
]

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
"""The triple-level AutoReg search: hypergradients, the search engine, its handlers and the stage driver."""

from __future__ import annotations

from .handlers import RankingStabilityStopper, SearchRecorder, StageExporter, variable_ranking
from .hypergrad import HYPERGRADIENT_ORDERS, hypergradient
from .searcher import AutoRegSearch, format_genotype
from .trainer import AutoRegSearchTrainer, SearchStage, mixing_entropy, prepare_pair, stage_variables

__all__ = [
    "HYPERGRADIENT_ORDERS",
    "AutoRegSearch",
    "AutoRegSearchTrainer",
    "RankingStabilityStopper",
    "SearchRecorder",
    "SearchStage",
    "StageExporter",
    "format_genotype",
    "hypergradient",
    "mixing_entropy",
    "prepare_pair",
    "stage_variables",
    "variable_ranking",
]

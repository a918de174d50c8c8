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
"""AutoReg networks, their blocks and the genotype that fixes a searched architecture."""

from __future__ import annotations

from .blocks import (
    OPS,
    PRIMITIVES,
    ComposeDDF,
    DeformationCell,
    DiffeomorphicTransform,
    FeatureCell,
    MixedOp,
    resize_ddf,
    resize_image,
)
from .genotype import DEFAULT_LOSS_WEIGHTS, Genotype, derive_cell_ops, edge_decisions, loss_term_names
from .nets import AutoRegNet, AutoRegPairNet, AutoRegSearchNet

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "OPS",
    "PRIMITIVES",
    "AutoRegNet",
    "AutoRegPairNet",
    "AutoRegSearchNet",
    "ComposeDDF",
    "DeformationCell",
    "DiffeomorphicTransform",
    "FeatureCell",
    "Genotype",
    "MixedOp",
    "derive_cell_ops",
    "edge_decisions",
    "loss_term_names",
    "resize_ddf",
    "resize_image",
]

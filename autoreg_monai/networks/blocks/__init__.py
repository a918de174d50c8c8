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
"""Building blocks of the AutoReg network: candidate operations, mixed ops, cells, diffeomorphic layers."""

from __future__ import annotations

from .cells import EDGES_PER_CELL, ChainCell, DeformationCell, FeatureCell
from .diffeo import ComposeDDF, DiffeomorphicTransform, resize_ddf, resize_image
from .mixed_op import MixedOp
from .ops import DILATION, OPS, PRIMITIVES, DilConv, RegConv, SepConv, make_op, receptive_field

__all__ = [
    "DILATION",
    "EDGES_PER_CELL",
    "OPS",
    "PRIMITIVES",
    "ChainCell",
    "ComposeDDF",
    "DeformationCell",
    "DiffeomorphicTransform",
    "DilConv",
    "FeatureCell",
    "MixedOp",
    "RegConv",
    "SepConv",
    "make_op",
    "receptive_field",
    "resize_ddf",
    "resize_image",
]

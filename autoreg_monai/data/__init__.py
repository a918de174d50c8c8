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
"""Data for AutoReg: datalists and pairing, the embedded demo set, generated phantoms."""

from __future__ import annotations

from .datalist import PAIR_KEYS, PAIRINGS, find_labels, load_datalist, make_pairs
from .demo import (
    BRAIN_LABELS,
    DEMO_SCENARIOS,
    demo_cache_dir,
    demo_datalist,
    demo_label_names,
    inference_pairs,
    scenario_datalist,
)
from .knee import KNEE_LABELS, knee_label_map, knee_tissue_map, render_knee
from .phantom import (
    CONTRASTS,
    PHANTOM_LABELS,
    make_phantom,
    make_phantom_pair,
    phantom_labels,
    random_diffeomorphism,
    render_phantom,
    smooth_random_field,
    warp_label_map,
)
from .transforms import FitToSized, PreAlignd

__all__ = [
    "BRAIN_LABELS",
    "CONTRASTS",
    "DEMO_SCENARIOS",
    "FitToSized",
    "KNEE_LABELS",
    "PAIRINGS",
    "PAIR_KEYS",
    "PHANTOM_LABELS",
    "PreAlignd",
    "demo_cache_dir",
    "demo_datalist",
    "demo_label_names",
    "find_labels",
    "inference_pairs",
    "knee_label_map",
    "knee_tissue_map",
    "load_datalist",
    "make_pairs",
    "make_phantom",
    "make_phantom_pair",
    "phantom_labels",
    "random_diffeomorphism",
    "render_knee",
    "render_phantom",
    "scenario_datalist",
    "smooth_random_field",
    "warp_label_map",
]

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
"""AutoReg losses: LNCC by box sums, MIND-SSC, the pyramid similarity, ``L_reg`` and the warped-label Dice."""

from __future__ import annotations

from .label_dice import WarpedLabelDiceLoss, one_hot_labels
from .lncc import BoxLNCCLoss, box_sum
from .mind import MINDSSCLoss, mind_ssc
from .pyramid import PyramidSimilarityLoss
from .registration import LNCC_KERNEL_SIZES, RegistrationLoss, build_similarities

__all__ = [
    "BoxLNCCLoss",
    "LNCC_KERNEL_SIZES",
    "MINDSSCLoss",
    "PyramidSimilarityLoss",
    "RegistrationLoss",
    "WarpedLabelDiceLoss",
    "box_sum",
    "build_similarities",
    "mind_ssc",
    "one_hot_labels",
]

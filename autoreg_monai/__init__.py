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
"""autoreg_monai: automated learning of deformable medical image registration (AutoReg) on MONAI.

Li, Li, Liu, Luo, Fan, "Automated Learning for Deformable Medical Image Registration by Jointly
Optimizing Network Architectures and Objective Functions", IEEE Transactions on Image Processing, 2023.
"""

from __future__ import annotations

import warnings

# MONAI warns on every Warp built without its C++ extension (the normal case), and its spatial_gradient
# uses list indexing that torch flags; both are harmless here (our tests check the values) and would
# bury a clinician's console under repeated warnings.
warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", module="monai")

from . import data, engines, search  # subpackages reachable as autoreg_monai.data, ... in bundle configs
from ._version import __version__
from .checkpoint import load_model, read_model_file, save_model
from .losses import (
    MINDSSCLoss,
    PyramidSimilarityLoss,
    RegistrationLoss,
    WarpedLabelDiceLoss,
    build_similarities,
    mind_ssc,
    one_hot_labels,
)
from .metrics import (
    dice_per_label,
    folding_percentage,
    hd95_per_label,
    jacobian_determinant,
    ncc,
    std_log_jacobian,
    warp_labels,
)
from .networks import (
    DEFAULT_LOSS_WEIGHTS,
    OPS,
    PRIMITIVES,
    AutoRegNet,
    AutoRegPairNet,
    AutoRegSearchNet,
    ComposeDDF,
    DeformationCell,
    DiffeomorphicTransform,
    FeatureCell,
    Genotype,
    MixedOp,
    derive_cell_ops,
    loss_term_names,
    resize_ddf,
    resize_image,
)
from .utils import atomic_path, atomic_write

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
    "MINDSSCLoss",
    "MixedOp",
    "PyramidSimilarityLoss",
    "RegistrationLoss",
    "WarpedLabelDiceLoss",
    "__version__",
    "data",
    "engines",
    "search",
    "atomic_path",
    "atomic_write",
    "build_similarities",
    "derive_cell_ops",
    "dice_per_label",
    "folding_percentage",
    "hd95_per_label",
    "jacobian_determinant",
    "load_model",
    "loss_term_names",
    "mind_ssc",
    "ncc",
    "one_hot_labels",
    "read_model_file",
    "resize_ddf",
    "resize_image",
    "save_model",
    "std_log_jacobian",
    "warp_labels",
]

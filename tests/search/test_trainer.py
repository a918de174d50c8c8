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
"""The α stages' entropy term: what it measures, when it acts, and that it turns weak preferences into decisions."""

from __future__ import annotations

import math

import pytest
import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from autoreg_monai.losses import RegistrationLoss
from autoreg_monai.networks import AutoRegSearchNet
from autoreg_monai.search import AutoRegSearchTrainer, mixing_entropy, stage_variables


def test_mixing_entropy_is_log_num_ops_when_uniform_and_falls_as_one_op_leads():
    assert mixing_entropy(torch.zeros(6, 8)).item() == pytest.approx(math.log(8))
    leading = torch.zeros(6, 8)
    leading[:, 3] = 2.0
    assert mixing_entropy(leading).item() < math.log(8) - 0.3
    leading[:, 3] = 30.0
    assert mixing_entropy(leading).item() < 1e-9
    alpha = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(mixing_entropy, (alpha,))


def _pairs(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        images = [torch.rand(1, 1, 5, 5, generator=generator) for _ in range(2)]
        images = [torch.nn.functional.interpolate(i, size=(24, 24), mode="bilinear")[0] for i in images]
        pairs.append({"moving_image": images[0], "fixed_image": images[1]})
    return pairs


def _feature_stage(entropy_weight: float, max_epochs: int = 4) -> AutoRegSearchTrainer:
    set_determinism(0)
    network = AutoRegSearchNet(spatial_dims=2, feature_channels=(4, 8), deformation_channels=(8, 8, 4))
    trainer = AutoRegSearchTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(_pairs(2, 1), batch_size=1),
        val_data_loader=DataLoader(_pairs(2, 2), batch_size=1),
        network=network,
        stage="feature",
        weight_optimizer=torch.optim.Adam(network.weight_parameters(), lr=1e-3),
        upper_optimizer=torch.optim.Adam(stage_variables(network, "feature"), lr=0.05, betas=(0.5, 0.999)),
        registration_loss=RegistrationLoss("lncc", spatial_dims=2, num_scales=2),
        warmup_epochs=1,
        order="first",
        entropy_weight=entropy_weight,
    )
    trainer.run()
    return trainer


def test_entropy_weight_is_zero_in_the_warm_up_then_ramps_to_its_value():
    trainer = _feature_stage(entropy_weight=2.0, max_epochs=2)
    assert [trainer.current_entropy_weight(e) for e in (1, 2)] == [0.0, 2.0]
    trainer.state.max_epochs = 5  # 4 epochs after the warm-up
    assert [trainer.current_entropy_weight(e) for e in (1, 2, 3, 5)] == [0.0, 0.5, 1.0, 2.0]


def test_entropy_term_sharpens_the_mixing_weights_the_hypergradient_alone_leaves_flat():
    plain = _feature_stage(entropy_weight=0.0, max_epochs=6).network.alpha_feature.detach()
    sharpened = _feature_stage(entropy_weight=100.0, max_epochs=6).network.alpha_feature.detach()
    assert mixing_entropy(sharpened) < mixing_entropy(plain) - 0.03  # 5 upper epochs of 2 steps


def test_entropy_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="entropy_weight must be >= 0"):
        _feature_stage(entropy_weight=-1.0)

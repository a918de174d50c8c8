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
from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from ignite.engine import Engine

from autoreg_monai.networks.genotype import loss_term_names
from autoreg_monai.search.handlers import RankingStabilityStopper, variable_ranking
from autoreg_monai.viz import plot_alpha_heatmaps, plot_loss_weight_trajectory


def test_ranking_of_alpha_and_lambda():
    alpha = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    lam = torch.tensor([10.0, 15.0, 3.2, 0.8])
    assert variable_ranking([alpha, lam]) == [[1, 0], [1, 0, 2, 3]]


@pytest.mark.parametrize("patience", [1, 3])
def test_stopper_ends_the_stage_after_patience_stable_epochs(patience):
    """The variable changes its argmax until epoch 4, then stays: the stage ends at epoch 4 + patience."""
    alpha = torch.zeros(1, 3)
    schedule = {1: 0, 2: 1, 3: 2, 4: 1}  # argmax per epoch; unchanged from epoch 5 on

    def step(engine, _):
        alpha.zero_()
        alpha[0, schedule.get(engine.state.epoch, 1)] = 1.0

    engine = Engine(step)
    stopper = RankingStabilityStopper(lambda: [alpha], patience=patience, start_epoch=1)
    stopper.attach(engine)
    engine.run(range(2), max_epochs=20)
    assert engine.state.epoch == 4 + patience
    assert stopper.state_dict()["stable_epochs"] == patience
    fresh = RankingStabilityStopper(lambda: [alpha], patience=patience)
    fresh.load_state_dict(stopper.state_dict())
    assert fresh.last_ranking == [[1]]
    with pytest.raises(ValueError, match="patience must be >= 1"):
        RankingStabilityStopper(lambda: [alpha], patience=0)


def test_figures_are_readable_pngs(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"α_F": rng.dirichlet(np.ones(8), size=6), "α_D": rng.dirichlet(np.ones(8), size=6)}
    heatmap = plot_alpha_heatmaps(weights, [f"op{i}" for i in range(8)], tmp_path / "alpha.png", title="test")
    trajectory = plot_loss_weight_trajectory(
        [[10, 15, 3.2, 0.8], [10.5, 14, 3.3, 0.9], [11, 13, 3.1, 1.0]], loss_term_names(4), tmp_path / "lambda.png"
    )
    for path in (heatmap, trajectory):
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="one row of 4 loss weights per epoch"):
        plot_loss_weight_trajectory([[1.0, 2.0]], loss_term_names(4), tmp_path / "bad.png")


def test_stage_variables_follow_the_stage_and_refuse_fixed_cells():
    from autoreg_monai.networks.nets.autoregnet import AutoRegSearchNet
    from autoreg_monai.search.trainer import stage_variables

    feature = (("conv_3x3",) * 3,) * 2
    net = AutoRegSearchNet(feature_channels=(2, 4), deformation_channels=(4, 4, 2), feature_ops=feature)
    assert stage_variables(net, "deformation") == [net.alpha_deformation]
    assert stage_variables(net, "objective") == [net.log_loss_weights]
    with pytest.raises(ValueError, match="the feature stage searches a cell type that this network has fixed"):
        stage_variables(net, "feature")

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The one-input, one-output network of exported bundles."""

from __future__ import annotations

import pytest
import torch

from autoreg_monai.networks import AutoRegNet, AutoRegPairNet, Genotype


def test_pair_net_is_autoregnet_on_the_stacked_pair():
    genotype = Genotype.paper_default()
    net = AutoRegNet(genotype, feature_channels=(4, 8), deformation_channels=(8, 8, 4)).eval()
    for p in net.velocity_heads.parameters():  # non-trivial fields
        torch.nn.init.normal_(p, std=0.05)
    pair_net = AutoRegPairNet(genotype, feature_channels=(4, 8), deformation_channels=(8, 8, 4)).eval()
    pair_net.load_state_dict(net.state_dict(), strict=True)
    moving, fixed = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        ddf, _ = net(moving, fixed)
        out = pair_net(torch.cat([moving, fixed], dim=1))
    assert out.shape == (2, 3, 16, 16, 16) and out.abs().max() > 0
    assert torch.equal(out, ddf)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_pair_net_traces_to_torchscript_with_equal_output():
    net = AutoRegPairNet(Genotype.paper_default(), feature_channels=(4, 8), deformation_channels=(8, 8, 4)).eval()
    for p in net.velocity_heads.parameters():
        torch.nn.init.normal_(p, std=0.05)
    image = torch.rand(1, 2, 16, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(net, image, check_trace=False)
        assert torch.allclose(traced(image), net(image), atol=1e-6)


def test_pair_net_names_the_expected_input():
    net = AutoRegPairNet(Genotype.paper_default(), feature_channels=(4, 8), deformation_channels=(8, 8, 4))
    with pytest.raises(ValueError, match=r"stacked pair \(B, 2, \*S\) = \[moving, fixed\]"):
        net(torch.rand(1, 1, 16, 16, 16))

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

import pytest
import torch

from autoreg_monai import __version__
from autoreg_monai.checkpoint import load_model, read_model_file, save_model
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet, AutoRegSearchNet
from autoreg_monai.utils import atomic_write


def _perturb(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))


def test_fixed_net_round_trip_rebuilds_the_same_network(tmp_path):
    genotype = Genotype.derive(torch.randn(6, 8), torch.randn(6, 8), loss_weights=(8.0, 12.0, 2.0, 1.0))
    net = AutoRegNet(genotype, feature_channels=(8, 16), deformation_channels=(24, 16, 8), integration_steps=5)
    _perturb(net)
    path = save_model(net, tmp_path / "model.pt", extra={"epoch": 7})
    record = torch.load(path, weights_only=True)  # plain data: no code runs on load
    assert record["package_version"] == __version__
    assert record["class"] == "AutoRegNet"
    assert record["loss_weights"] == [8.0, 12.0, 2.0, 1.0]
    assert record["extra"] == {"epoch": 7}
    loaded = load_model(path)
    assert isinstance(loaded, AutoRegNet)
    assert loaded.genotype() == genotype
    assert loaded.config == net.config
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(moving, fixed)[0], net(moving, fixed)[0])


def test_search_net_round_trip_keeps_alpha_lambda_and_fixed_cells(tmp_path):
    feature = (("conv_3x3", "conv_5x5", "conv_1x1"), ("sep_conv_3x3", "dil_conv_3x3", "conv_3x3"))
    net = AutoRegSearchNet(feature_channels=(4, 8), deformation_channels=(8, 8, 4), feature_ops=feature)
    with torch.no_grad():
        net.alpha_deformation.normal_()
        net.log_loss_weights.sub_(0.5)
    loaded = load_model(save_model(net, tmp_path / "search.pt"))
    assert isinstance(loaded, AutoRegSearchNet) and loaded.alpha_feature is None
    torch.testing.assert_close(loaded.alpha_deformation, net.alpha_deformation)
    torch.testing.assert_close(loaded.loss_weights, net.loss_weights)
    assert loaded.genotype() == net.genotype()


def test_damaged_or_foreign_files_are_refused_naming_the_file(tmp_path):
    path = save_model(AutoRegNet(Genotype.paper_default()), tmp_path / "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt: not a readable model file"):
        load_model(truncated)
    foreign = tmp_path / "weights_only.pt"
    torch.save(AutoRegNet(Genotype.paper_default()).state_dict(), foreign)
    with pytest.raises(ValueError, match="weights_only.pt: not an autoreg_monai model file"):
        load_model(foreign)
    with pytest.raises(ValueError, match="missing.pt: model file not found"):
        load_model(tmp_path / "missing.pt")
    record = read_model_file(path)
    record["class"] = "os.system"
    torch.save(record, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="unknown network class 'os.system'"):
        load_model(tmp_path / "evil.pt")
    record = read_model_file(path)
    record["config"]["feature_channels"] = [8, 16]
    torch.save(record, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: the stored weights do not rebuild a AutoRegNet"):
        load_model(tmp_path / "mismatch.pt")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half a new fi")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with atomic_write(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"

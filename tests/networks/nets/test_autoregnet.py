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

import math

import pytest
import torch

from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.networks.blocks.mixed_op import MixedOp
from autoreg_monai.networks.blocks.ops import PRIMITIVES, make_op
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet, AutoRegSearchNet


@pytest.fixture(scope="module")
def pair():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 1, 32, 32, 32, generator=generator), torch.rand(1, 1, 32, 32, 32, generator=generator)


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_search_net_field_shapes_and_parameter_groups(pair):
    net = AutoRegSearchNet()
    ddf, pyramid = net(*pair)
    assert tuple(ddf.shape) == (1, 3, 32, 32, 32)
    assert [tuple(f.shape) for f in pyramid] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(6, 8), (6, 8)]
    assert all(torch.count_nonzero(a) == 0 for a in net.arch_parameters())  # zero init: uniform mixtures
    torch.testing.assert_close(net.loss_weights, torch.tensor([10.0, 15.0, 3.2, 0.8]))
    groups = [net.weight_parameters(), net.arch_parameters(), net.hyper_parameters()]
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
    assert {"alpha_feature", "alpha_deformation", "log_loss_weights"} <= set(net.state_dict())


def test_gradients_reach_alpha_and_lambda_through_the_registration_loss(pair):
    net = AutoRegSearchNet()
    for head in net.velocity_heads:  # a non-trivial field (the default init predicts ~0 displacement)
        torch.nn.init.normal_(head.weight, std=0.05)
    moving, fixed = pair
    ddf, pyramid = net(moving, fixed)
    RegistrationLoss()(moving, fixed, ddf, pyramid, net.loss_weights).backward()
    for param in net.arch_parameters() + net.hyper_parameters():
        assert param.grad is not None and torch.all(torch.isfinite(param.grad)) and param.grad.abs().sum() > 0


def test_fixed_net_from_derived_genotype_has_exactly_the_chosen_ops(pair):
    alpha_f, alpha_d = torch.randn(6, 8), torch.randn(6, 8)
    genotype = Genotype.derive(alpha_f, alpha_d)
    net = AutoRegNet(genotype)
    assert not any(isinstance(m, MixedOp) for m in net.modules())
    chosen_f = [PRIMITIVES[i] for i in alpha_f.argmax(1)]
    chosen_d = [PRIMITIVES[i] for i in alpha_d.argmax(1)]
    for scale in range(2):
        for cells in (net.moving_features[scale], net.fixed_features[scale]):
            for k, (edge, spec) in enumerate(zip(cells.edges, cells.edge_specs)):
                reference = make_op(chosen_f[3 * scale + k], spec[0], spec[1], spec[2], 3)
                assert type(edge) is type(reference)
                assert [p.shape for p in edge.parameters()] == [p.shape for p in reference.parameters()]
        cell = net.deformation_cells[scale]
        assert cell.ops == tuple(chosen_d[3 * scale : 3 * scale + 3])
    ddf, pyramid = net(*pair)
    assert tuple(ddf.shape) == (1, 3, 32, 32, 32)
    assert net.genotype() == genotype


def test_default_fixed_net_size_is_of_the_papers_order():
    net = AutoRegNet(Genotype.paper_default())
    n = _n_params(net)
    print(f"\nAutoRegNet(Genotype.paper_default()): {n} parameters ({n / 1e6:.3f} M; paper 0.852 M)")
    assert 0.1e6 < n < 1.5e6
    search = AutoRegSearchNet()
    print(f"AutoRegSearchNet: {_n_params(search)} parameters ({len(search.weight_parameters())} weight tensors)")


def test_untrained_net_starts_near_identity(pair):
    ddf, _ = AutoRegNet(Genotype.paper_default())(*pair)
    assert ddf.abs().max() < 1e-2


def test_staged_search_fixes_cell_types():
    feature = (("conv_3x3", "sep_conv_5x5", "conv_5x5"), ("sep_conv_3x3", "dil_conv_5x5", "conv_1x1"))
    stage2 = AutoRegSearchNet(feature_ops=feature)
    assert stage2.alpha_feature is None and stage2.alpha_deformation is not None
    assert [tuple(p.shape) for p in stage2.arch_parameters()] == [(6, 8)]
    with torch.no_grad():
        stage2.alpha_deformation[:, 7] = 1.0
    genotype = stage2.genotype()
    assert genotype.feature == feature
    assert genotype.deformation == (("dil_conv_7x7",) * 3,) * 2
    stage3 = AutoRegSearchNet(feature_ops=feature, deformation_ops=genotype.deformation)
    assert stage3.arch_parameters() == []
    assert not any(isinstance(m, MixedOp) for m in stage3.modules())


def test_two_dimensional_and_three_scale_networks():
    net2d = AutoRegSearchNet(spatial_dims=2)
    ddf, pyramid = net2d(torch.rand(2, 1, 32, 40), torch.rand(2, 1, 32, 40))
    assert tuple(ddf.shape) == (2, 2, 32, 40) and tuple(pyramid[-1].shape) == (2, 2, 8, 10)
    genotype = Genotype(
        feature=(("conv_3x3",) * 3,) * 3, deformation=(("conv_3x3",) * 3,) * 3, loss_weights=(10, 15, 3.2, 0.8, 0.2)
    )
    net3 = AutoRegNet(genotype, feature_channels=(8, 16, 32), deformation_channels=(16, 16, 8))
    ddf, pyramid = net3(torch.rand(1, 1, 32, 32, 24), torch.rand(1, 1, 32, 32, 24))
    assert tuple(ddf.shape) == (1, 3, 32, 32, 24)
    assert [tuple(f.shape[2:]) for f in pyramid] == [(16, 16, 12), (8, 8, 6), (4, 4, 3)]


def test_odd_sizes_are_handled():
    net = AutoRegNet(Genotype.paper_default())
    ddf, pyramid = net(torch.rand(1, 1, 33, 30, 27), torch.rand(1, 1, 33, 30, 27))
    assert tuple(ddf.shape) == (1, 3, 33, 30, 27)
    assert tuple(pyramid[0].shape[2:]) == (17, 15, 14)


def test_bad_inputs_are_refused_with_clear_messages():
    net = AutoRegNet(Genotype.paper_default())
    with pytest.raises(ValueError, match="same shape"):
        net(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 20))
    with pytest.raises(ValueError, match=r"moving image must have shape \(B, 1, \*S\) with 3 spatial dims"):
        net(torch.rand(1, 16, 16, 16), torch.rand(1, 16, 16, 16))
    with pytest.raises(ValueError, match="must be >= 8 for 2 scales"):
        net(torch.rand(1, 1, 16, 16, 4), torch.rand(1, 1, 16, 16, 4))
    with pytest.raises(ValueError, match="genotype has 2 scales"):
        AutoRegNet(Genotype.paper_default(), feature_channels=(16,))
    with pytest.raises(ValueError, match="loss_weights must be 4 positive numbers"):
        AutoRegSearchNet(loss_weights=(1.0, -1.0, 1.0, 1.0))


def test_lambda_is_positive_and_its_gradient_matches_finite_differences():
    """λ = exp(log λ): positive for any parameter value, and d(objective)/d(log λ) = λ ⊙ d(objective)/dλ."""
    net = AutoRegSearchNet(feature_channels=(4, 8), deformation_channels=(8, 8, 4))
    with torch.no_grad():
        net.log_loss_weights.copy_(torch.tensor([-30.0, 0.0, 3.0, 30.0]))
    assert bool(torch.all(net.loss_weights > 0)) and bool(torch.all(torch.isfinite(net.loss_weights)))
    terms = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)

    def objective(log_weights: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            net.log_loss_weights.copy_(log_weights)
        return (net.loss_weights.double() * terms).sum()

    start = torch.tensor([2.3, 2.7, 1.16, -0.22])
    with torch.no_grad():
        net.log_loss_weights.copy_(start)
    net.log_loss_weights.grad = None
    (net.loss_weights.double() * terms).sum().backward()
    analytic = net.log_loss_weights.grad.double().clone()
    eps = 1e-3
    numeric = torch.stack(
        [(objective(start + eps * e) - objective(start - eps * e)) / (2 * eps) for e in torch.eye(4)]
    ).double()
    torch.testing.assert_close(analytic, numeric, rtol=1e-3, atol=1e-4)


def test_a_lambda_step_is_relative_whatever_lambda_is():
    """An Adam step of learning rate 0.05 on log λ moves every λ (0.8 or 15) by the same factor, about 5 %."""
    net = AutoRegSearchNet(feature_channels=(4, 8), deformation_channels=(8, 8, 4), loss_weights=(10, 15, 3.2, 0.8))
    before = net.loss_weights.detach().clone()
    optimizer = torch.optim.Adam(net.hyper_parameters(), lr=0.05)
    net.loss_weights.sum().backward()  # the same sign for every λ
    optimizer.step()
    ratio = net.loss_weights.detach() / before
    torch.testing.assert_close(ratio, torch.full((4,), math.exp(-0.05)), rtol=1e-4, atol=1e-6)


def test_search_state_dict_round_trip_restores_alpha_and_lambda():
    net = AutoRegSearchNet()
    with torch.no_grad():
        net.alpha_feature.normal_()
        net.log_loss_weights.add_(1.0)
    clone = AutoRegSearchNet()
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone.alpha_feature, net.alpha_feature)
    torch.testing.assert_close(clone.loss_weights, net.loss_weights)
    assert clone.genotype() == net.genotype()


@pytest.mark.parametrize("spatial_dims", (2, 3))
def test_channels_last_network_gives_the_same_field_and_state_dict(spatial_dims):
    size = (24, 20, 28)[:spatial_dims]
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    plain = AutoRegNet(Genotype.paper_default(), spatial_dims=spatial_dims).eval()
    fast = AutoRegNet(Genotype.paper_default(), spatial_dims=spatial_dims, channels_last=True).eval()
    for head in plain.velocity_heads:  # a field of a few voxels, not the near-zero one of a fresh network
        torch.nn.init.normal_(head.weight, std=0.02)
    fast.load_state_dict(plain.state_dict(), strict=True)
    assert set(fast.state_dict()) == set(plain.state_dict()) and fast.config == plain.config
    memory_format = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    conv = next(m for m in convs if m.kernel_size[0] > 1 and m.weight.shape[1] > 1)  # layouts differ
    assert conv.weight.is_contiguous(memory_format=memory_format) and not conv.weight.is_contiguous()
    with torch.no_grad():
        field, pyramid = plain(moving, fixed)
        fast_field, fast_pyramid = fast(moving, fixed)
    assert fast_field.is_contiguous() and all(f.is_contiguous() for f in fast_pyramid)
    assert field.abs().max() > 0.5
    assert torch.allclose(fast_field, field, rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_pyramid, pyramid):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mixed_precision_keeps_fields_in_float32_and_close_to_full_precision(pair):
    from monai.engines import SupervisedTrainer

    from autoreg_monai.engines import RegistrationTrainStep

    torch.manual_seed(0)
    genotype = Genotype.paper_default()
    net = AutoRegNet(genotype, feature_channels=(4, 8), deformation_channels=(8, 8, 4), integration_steps=4)
    moving, fixed = pair
    with torch.no_grad():
        reference, _ = net(moving, fixed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ddf, pyramid = net(moving, fixed)
    assert ddf.dtype == torch.float32 and all(field.dtype == torch.float32 for field in pyramid)
    scale = reference.abs().max().item()
    assert scale > 0 and (ddf - reference).abs().max().item() < 0.05 * scale  # bfloat16 convolutions, float32 rest

    before = {k: v.clone() for k, v in net.state_dict().items()}
    step = RegistrationTrainStep(RegistrationLoss("lncc", num_scales=2), genotype.loss_weights, amp=True)
    data = [{"moving_image": moving, "fixed_image": fixed}] * 2
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), loss_function=None, iteration_update=step,
        decollate=False,
    )  # fmt: skip
    trainer.run()
    assert step.guard.skipped == 0 and torch.isfinite(torch.tensor(trainer.state.output[0]["loss"]))
    assert all(v.dtype == before[k].dtype for k, v in net.state_dict().items())  # weights stay float32
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())

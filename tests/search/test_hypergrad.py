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
"""The finite-difference hypergradient against the exact gradient of the one-step-unrolled objective."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from autoreg_monai.data.phantom import PHANTOM_LABELS, make_phantom_pair
from autoreg_monai.losses.label_dice import WarpedLabelDiceLoss
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.networks.nets.autoregnet import AutoRegSearchNet
from autoreg_monai.search.hypergrad import hypergradient

# Float64 and a small finite-difference radius: the network (LeakyReLU) and the warps (linear interpolation)
# are piecewise smooth, so the default r = 0.01 can straddle kinks on a problem this small.
RADIUS = 1e-5


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = AutoRegSearchNet(feature_channels=(2, 4), deformation_channels=(4, 4, 2), integration_steps=3).double()
    with torch.no_grad():
        net.alpha_feature.normal_(std=0.5)
        net.alpha_deformation.normal_(std=0.5)
        for head in net.velocity_heads:
            head.weight.normal_(std=0.01)
    train = make_phantom_pair((16, 16, 16), seed=1, magnitude=2.0)
    val = make_phantom_pair((16, 16, 16), seed=2, magnitude=2.0)
    train = {k: v.double() if v.is_floating_point() else v for k, v in train.items()}
    val = {k: v.double() if v.is_floating_point() else v for k, v in val.items()}
    return net, train, val


def _losses(net, train, val, upper_kind):
    reg = RegistrationLoss("lncc", num_scales=2)
    dice = WarpedLabelDiceLoss(PHANTOM_LABELS)

    def train_loss(params):
        ddf, pyramid = functional_call(net, dict(params), (train["moving_image"], train["fixed_image"]))
        return reg(train["moving_image"], train["fixed_image"], ddf, pyramid, net.loss_weights)

    def upper_loss(params):
        ddf, pyramid = functional_call(net, dict(params), (val["moving_image"], val["fixed_image"]))
        if upper_kind == "lambda":
            return dice(val["moving_label"], val["fixed_label"], ddf)
        return reg(val["moving_image"], val["fixed_image"], ddf, pyramid, net.loss_weights.detach())

    return train_loss, upper_loss


def _exact_unrolled(net, train_loss, upper_loss, upper, xi):
    """d/du L_up(ω - ξ ∇_ω L_tr(ω, u), u) by double backward."""
    names = [
        n for n, p in net.named_parameters() if not any(p is q for q in net.arch_parameters() + net.hyper_parameters())
    ]
    params = dict(net.named_parameters())
    omega = [params[n] for n in names]
    step = torch.autograd.grad(train_loss({n: params[n] for n in names}), omega, create_graph=True)
    virtual = {n: w - xi * g for n, w, g in zip(names, omega, step)}
    return torch.autograd.grad(upper_loss(virtual), upper, allow_unused=True)


def _cosine(a, b):
    a, b = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    return float(torch.dot(a, b) / (a.norm() * b.norm())), float((a - b).norm() / b.norm())


# α: a large virtual step, so that the implicit term matters; λ: smaller, so ω' stays a sensible registration
@pytest.mark.parametrize("upper_kind, xi", [("alpha", 0.05), ("lambda", 0.01)])
def test_finite_difference_hypergradient_matches_double_backward(problem, upper_kind, xi):
    net, train, val = problem
    upper = net.arch_parameters() if upper_kind == "alpha" else net.hyper_parameters()
    train_loss, upper_loss = _losses(net, train, val, upper_kind)
    weights = {
        n: p for n, p in net.named_parameters() if n not in ("alpha_feature", "alpha_deformation", "log_loss_weights")
    }
    exact = _exact_unrolled(net, train_loss, upper_loss, upper, xi)
    exact = [torch.zeros_like(u) if g is None else g for u, g in zip(upper, exact)]
    second, value = hypergradient(train_loss, upper_loss, weights, upper, xi=xi, order="second", radius=RADIUS)
    assert float(value) < (0.9 if upper_kind == "lambda" else 0.0)  # a meaningful registration at ω'
    cosine, rel_error = _cosine(second, exact)
    print(f"\n{upper_kind}: cosine {cosine:.5f}, relative error {rel_error:.2e}")
    assert cosine > 0.99
    assert rel_error < 0.05
    first, _ = hypergradient(train_loss, upper_loss, weights, upper, xi=xi, order="first")
    first_cosine, first_error = _cosine(first, exact) if any(g.abs().sum() > 0 for g in first) else (0.0, 1.0)
    print(f"{upper_kind}: first order cosine {first_cosine:.5f}, relative error {first_error:.2e}")
    assert first_error > 0.1  # the first-order gradient is measurably different
    if upper_kind == "lambda":
        assert all(torch.count_nonzero(g) == 0 for g in first)  # L_seg does not depend on λ directly


def test_rejects_unknown_order(problem):
    net, train, val = problem
    train_loss, upper_loss = _losses(net, train, val, "alpha")
    with pytest.raises(ValueError, match="order must be one of"):
        hypergradient(train_loss, upper_loss, {}, net.arch_parameters(), xi=0.1, order="third")


def test_the_first_order_hypergradient_is_the_direct_term(problem):
    """``order="first"``: d L_up(ω, α) / dα at the current ω, no virtual step (DARTS' first-order mode)."""
    net, train, val = problem
    upper = net.arch_parameters()
    train_loss, upper_loss = _losses(net, train, val, "alpha")
    weights = {
        n: p for n, p in net.named_parameters() if n not in ("alpha_feature", "alpha_deformation", "log_loss_weights")
    }
    first, value = hypergradient(train_loss, upper_loss, weights, upper, xi=0.05, order="first")
    direct = torch.autograd.grad(upper_loss(weights), upper)
    for got, expected in zip(first, direct):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(value, upper_loss(weights).detach())

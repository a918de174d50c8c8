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
"""The CUDA path: the same numbers as on the CPU. Runs only where a CUDA device exists (CI has none)."""

from __future__ import annotations

import pytest
import torch

from autoreg_monai.checkpoint import load_model, save_model
from autoreg_monai.data.phantom import PHANTOM_LABELS, make_phantom_pair
from autoreg_monai.losses.label_dice import WarpedLabelDiceLoss
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.metrics import dice_per_label, folding_percentage, warp_labels
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet, AutoRegSearchNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def pair():
    return make_phantom_pair((32, 32, 32), seed=5, magnitude=3.0)


def _enable_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
def test_search_step_on_cuda_matches_cpu_after_moving_a_used_net(pair, similarity):
    """A net that already ran on the CPU (grids cached there) runs on CUDA with the same loss and gradients."""
    _enable_tf32(False)
    net = AutoRegSearchNet()
    for head in net.velocity_heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    loss_fn = RegistrationLoss(similarity)
    moving, fixed = pair["moving_image"], pair["fixed_image"]

    def step(device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.to(device).zero_grad()
        loss_fn.to(device)
        ddf, pyramid = net(moving.to(device), fixed.to(device))
        loss = loss_fn(moving.to(device), fixed.to(device), ddf, pyramid, net.loss_weights)
        loss.backward()
        return loss.detach().cpu(), [p.grad.detach().cpu() for p in net.arch_parameters() + net.hyper_parameters()]

    cpu_loss, cpu_grads = step("cpu")
    cuda_loss, cuda_grads = step("cuda")
    torch.testing.assert_close(cuda_loss, cpu_loss, rtol=1e-4, atol=1e-5)
    for g_cuda, g_cpu in zip(cuda_grads, cpu_grads):
        # float32 reductions run in another order on the GPU: compare relative to the gradient's scale
        torch.testing.assert_close(g_cuda, g_cpu, rtol=1e-2, atol=1e-3 * float(g_cpu.abs().max()))


def test_fixed_net_labels_and_metrics_on_cuda(pair, tmp_path):
    _enable_tf32(False)
    net = AutoRegNet(Genotype.paper_default()).cuda()
    for head in net.velocity_heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    moving, fixed = pair["moving_image"].cuda(), pair["fixed_image"].cuda()
    ddf, _ = net(moving, fixed)
    assert ddf.is_cuda
    dice_loss = WarpedLabelDiceLoss(PHANTOM_LABELS).cuda()(pair["moving_label"].cuda(), pair["fixed_label"].cuda(), ddf)
    dice_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    warped = warp_labels(pair["moving_label"].cuda(), ddf.detach())
    on_cuda = dice_per_label(warped, pair["fixed_label"].cuda(), PHANTOM_LABELS)
    on_cpu = dice_per_label(warped.cpu(), pair["fixed_label"], PHANTOM_LABELS)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu)
    assert float(folding_percentage(ddf.detach())[0]) < 100.0
    loaded = load_model(save_model(net, tmp_path / "model.pt"), map_location="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(moving.cpu(), fixed.cpu())[0], net(moving, fixed)[0].cpu(), atol=1e-4, rtol=1e-3
        )


def test_mixed_precision_forward_on_cuda_keeps_float32_fields_near_the_full_precision_ones(pair):
    _enable_tf32(False)
    net = AutoRegNet(Genotype.paper_default(), channels_last=True).cuda()
    for head in net.velocity_heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    moving, fixed = pair["moving_image"].cuda(), pair["fixed_image"].cuda()
    with torch.no_grad():
        reference, _ = net(moving, fixed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ddf, pyramid = net(moving, fixed)
    assert ddf.dtype == torch.float32 and all(field.dtype == torch.float32 for field in pyramid)
    assert (ddf - reference).abs().max().item() < 0.05 * reference.abs().max().item()

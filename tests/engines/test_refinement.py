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
"""Test-time refinement: a known smooth displacement recovered better than by the network alone, exactness
at 0 steps, determinism, the fall-back on a non-finite step, and the config keys that reach it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp

from autoreg_monai.bundle import load_bundle_config
from autoreg_monai.engines import RegistrationEvalStep, RegistrationInferStep, TestTimeRefinement
from autoreg_monai.losses import MINDSSCLoss, RegistrationLoss
from autoreg_monai.metrics import folding_percentage
from autoreg_monai.networks import AutoRegNet, Genotype

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def _phantom() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A textured moving image, a smooth displacement of up to ~2.5 voxels and the fixed image it makes.

    ``fixed = Warp()(moving, true_ddf)``: the displacement that registers the pair is ``true_ddf``.
    """
    axes = torch.meshgrid(*[torch.linspace(0, 1, SIZE)] * 3, indexing="ij")
    x, y, z = axes
    moving = (
        torch.sin(7 * x) * torch.cos(5 * y)
        + torch.sin(6 * z + 2 * x)
        + 2.0 * torch.exp(-((x - 0.5) ** 2 + (y - 0.45) ** 2 + (z - 0.55) ** 2) / 0.03)
    )[None, None]
    true_ddf = torch.stack(
        [
            2.5 * torch.sin(math.pi * x) * torch.sin(math.pi * y) * torch.sin(math.pi * z),
            -2.0 * torch.sin(math.pi * y) * torch.sin(math.pi * z) ** 2,
            1.5 * torch.sin(math.pi * x) ** 2 * torch.sin(math.pi * z),
        ]
    )[None]
    fixed = Warp(mode="bilinear", padding_mode="border")(moving, true_ddf)
    return moving, fixed, true_ddf


def _network() -> AutoRegNet:
    torch.manual_seed(0)
    return AutoRegNet(Genotype.paper_default(), feature_channels=(4, 8), deformation_channels=(8, 8, 4)).eval()


def _refinement(steps: int, **kwargs) -> TestTimeRefinement:
    return TestTimeRefinement(RegistrationLoss("lncc"), Genotype.paper_default().loss_weights, steps=steps, **kwargs)


def _interior_error(ddf: torch.Tensor, true_ddf: torch.Tensor) -> float:
    """Mean end-point error (voxels) away from the border, where the images carry the displacement."""
    inner = (slice(None), slice(None), *[slice(4, SIZE - 4)] * 3)
    return float((ddf - true_ddf)[inner].norm(dim=1).mean())


def test_refinement_recovers_a_known_displacement_better_than_the_network():
    moving, fixed, true_ddf = _phantom()
    with torch.no_grad():
        ddf, pyramid = _network()(moving, fixed)
    refined, refined_pyramid, report = _refinement(40, learning_rate=0.2)(moving, fixed, ddf, pyramid)
    before, after = _interior_error(ddf, true_ddf), _interior_error(refined, true_ddf)
    print(f"\nend-point error: network {before:.3f} voxels, refined {after:.3f} voxels ({report.seconds:.2f} s)")
    assert after < 0.5 * before
    assert report.steps == 40 and not report.fell_back
    assert report.loss_after < report.loss_before and report.similarity_after < report.similarity_before
    assert refined.shape == ddf.shape and [f.shape for f in refined_pyramid] == [f.shape for f in pyramid]
    assert float(folding_percentage(refined)[0]) == 0.0


def test_zero_steps_return_exactly_the_networks_field():
    moving, fixed, _ = _phantom()
    with torch.no_grad():
        ddf, pyramid = _network()(moving, fixed)
    refined, refined_pyramid, report = _refinement(0)(moving, fixed, ddf, pyramid)
    assert torch.equal(refined, ddf)
    assert all(torch.equal(a, b) for a, b in zip(refined_pyramid, pyramid))
    assert report.steps == 0 and report.loss_after == report.loss_before


def test_refinement_is_deterministic():
    moving, fixed, _ = _phantom()
    with torch.no_grad():
        ddf, pyramid = _network()(moving, fixed)
    first = _refinement(6)(moving, fixed, ddf, pyramid)[0]
    second = _refinement(6)(moving, fixed, ddf, pyramid)[0]
    assert torch.equal(first, second)
    assert not torch.equal(first, ddf)


def test_a_non_finite_step_falls_back_to_the_last_good_field():
    moving, fixed, _ = _phantom()
    with torch.no_grad():
        ddf, pyramid = _network()(moving, fixed)
    refinement = _refinement(10)  # 5 steps at 1/4, then 5 at 1/2
    terms, calls = refinement.registration_loss.terms, []

    def poisoned(*args):  # call 1 scores the network's field; calls 2, 3 are steps 1, 2; step 3 gives NaN
        calls.append(1)
        value = terms(*args)
        return value * float("nan") if len(calls) == 4 else value

    refinement.registration_loss.terms = poisoned
    with pytest.warns(RuntimeWarning, match="step 3 gave a non-finite loss or field; keeping the last good field"):
        refined, _, report = refinement(moving, fixed, ddf, pyramid)
    assert report.fell_back and report.steps == 2
    assert torch.isfinite(refined).all() and math.isfinite(report.loss_after)
    expected = _refinement(2, levels=(2,))(moving, fixed, ddf, pyramid)[0]  # the same two good steps
    assert torch.allclose(refined, expected, atol=1e-6)


def test_refinement_checks_its_arguments():
    loss = RegistrationLoss("lncc")
    with pytest.raises(ValueError, match="4 terms but \\(3,\\) loss weights"):
        TestTimeRefinement(loss, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        TestTimeRefinement(loss, [1.0] * 4, steps=-1)
    with pytest.raises(ValueError, match="levels must be pyramid levels in 1..2"):
        TestTimeRefinement(loss, [1.0] * 4, levels=(3, 1))
    assert TestTimeRefinement(loss, [1.0] * 4, steps=7).steps_per_level() == [4, 3]


@pytest.mark.parametrize("bundle", ["brain_t1", "brain_t1t2"])
def test_the_config_keys_reach_the_refinement(bundle):
    """``refine_steps`` and the genotype's λ and similarity reach the steps of inference and evaluation."""
    genotype = Genotype.from_json(REPO_ROOT / "bundles" / bundle / "models" / "genotype.json")
    for workflow, step_type in (("inference", RegistrationInferStep), ("evaluate", RegistrationEvalStep)):
        parser = load_bundle_config(REPO_ROOT / "bundles" / bundle, workflow, refine_steps=3, refine_learning_rate=0.05)
        step = parser.get_parsed_content("evaluator#iteration_update")
        assert isinstance(step, step_type)
        refinement = step.refinement
        assert refinement.steps == 3 and refinement.learning_rate == 0.05
        assert refinement.loss_weights.tolist() == pytest.approx(list(genotype.loss_weights))
        similarity = refinement.registration_loss.similarity.similarities[0]
        assert isinstance(similarity, MINDSSCLoss if bundle == "brain_t1t2" else LocalNormalizedCrossCorrelationLoss)

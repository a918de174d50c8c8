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
from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import Warp

from autoreg_monai.data.phantom import make_phantom_pair
from autoreg_monai.losses.mind import MINDSSCLoss
from autoreg_monai.losses.pyramid import PyramidSimilarityLoss
from autoreg_monai.losses.registration import RegistrationLoss, build_similarities
from autoreg_monai.networks.blocks.diffeo import DiffeomorphicTransform, resize_ddf


@pytest.fixture(scope="module")
def pair():
    return make_phantom_pair((32, 32, 32), seed=2, magnitude=3.0)


def _fields(ddf: torch.Tensor) -> list[torch.Tensor]:
    return [resize_ddf(ddf, (16, 16, 16)), resize_ddf(ddf, (8, 8, 8))]


def test_lncc_of_an_image_with_itself_is_minus_one(pair):
    image = pair["fixed_image"]
    for similarity in build_similarities("lncc", 3, 3):
        assert float(similarity(image, image)) == pytest.approx(-1.0, abs=1e-4)
    sims = PyramidSimilarityLoss(build_similarities("lncc", 3, 3))(image, image, [torch.zeros(1, 3, 32, 32, 32)] * 3)
    torch.testing.assert_close(sims, torch.full((3,), -1.0), atol=1e-4, rtol=0)


def test_diffusion_of_a_ramp_is_analytic():
    """MONAI's DiffusionLoss on u_0 = a * x_0: the only non-zero gradient is a, in one of 3 channels."""
    a = 0.5
    ramp = torch.zeros(1, 3, 10, 10, 10)
    ramp[:, 0] = a * torch.arange(10.0).view(10, 1, 1)
    assert float(DiffusionLoss()(ramp)) == pytest.approx(a**2 / 3)


def test_gradient_wrt_lambda_equals_the_terms(pair):
    moving, fixed = pair["moving_image"], pair["fixed_image"]
    ddf = 0.5 * torch.randn(1, 3, 32, 32, 32)
    loss_fn = RegistrationLoss("lncc")
    weights = torch.tensor([10.0, 15.0, 3.2, 0.8], requires_grad=True)
    loss = loss_fn(moving, fixed, ddf, _fields(ddf), weights)
    loss.backward()
    terms = loss_fn.terms(moving, fixed, ddf, _fields(ddf))
    torch.testing.assert_close(weights.grad, terms)
    torch.testing.assert_close(loss, (weights * terms).sum())
    # term order: similarity at full resolution, regularisation, similarity at 1/2, at 1/4
    # the regulariser has the scale of the authors' gradient loss: MONAI's DiffusionLoss averaged over the 3 axes
    assert float(terms[1]) == pytest.approx(float(DiffusionLoss()(ddf)) / 3, rel=1e-6)
    lncc9 = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    assert float(terms[0]) == pytest.approx(float(lncc9(Warp()(moving, ddf), fixed)), rel=1e-5)


def test_true_inverse_deformation_lowers_the_similarity_terms(pair):
    """The field that undoes the generated deformation scores better than the identity."""
    moving, fixed = pair["moving_image"], pair["fixed_image"]
    loss_fn = RegistrationLoss("lncc")
    zero = torch.zeros(1, 3, 32, 32, 32)
    inverse = DiffeomorphicTransform()(-pair["velocity"])
    identity_terms = loss_fn.terms(moving, fixed, zero, _fields(zero))
    inverse_terms = loss_fn.terms(moving, fixed, inverse, _fields(inverse))
    assert float(identity_terms[1]) == 0.0
    for k in (0, 2, 3):
        assert inverse_terms[k] < identity_terms[k]


def test_mind_variant_and_custom_terms(pair):
    loss_fn = RegistrationLoss("mind")
    assert all(isinstance(s, MINDSSCLoss) for s in loss_fn.similarity.similarities)
    zero = torch.zeros(1, 3, 32, 32, 32)
    terms = loss_fn.terms(pair["fixed_image"], pair["fixed_image"], zero, _fields(zero))
    assert float(terms.abs().max()) < 1e-10
    with pytest.raises(ValueError, match="unknown similarity 'mi'"):
        RegistrationLoss("mi")
    with pytest.raises(ValueError, match="need 3 similarities"):
        RegistrationLoss(build_similarities("lncc", 3, 2))
    with pytest.raises(ValueError, match="need 4 loss weights"):
        loss_fn(pair["fixed_image"], pair["fixed_image"], zero, _fields(zero), [1.0, 2.0])
    with pytest.raises(ValueError, match="expected 2 pyramid fields"):
        loss_fn.terms(pair["fixed_image"], pair["fixed_image"], zero, _fields(zero)[:1])

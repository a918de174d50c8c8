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
"""Gradients of an upper-level variable through one unrolled step of the lower level (AutoReg eqs. 6-9).

For lower weights ω trained on ``L_tr(ω, u)`` and an upper variable ``u`` (α_F, α_D or λ) judged by
``L_up(ω, u)``, the search approximates ``ω*(u)`` by one virtual gradient step
``ω' = ω - ξ ∇_ω L_tr(ω, u)`` and differentiates ``L_up(ω'(u), u)``::

    d/du L_up(ω', u) = ∇_u L_up(ω', u) - ξ ∇²_{u,ω} L_tr(ω, u) · ∇_ω' L_up(ω', u)

The mixed second derivative times a vector is a finite difference of first derivatives (DARTS, Liu et
al. 2019): with ``v = ∇_ω' L_up`` and ``ε = r / ‖v‖``,
``∇²_{u,ω} L_tr · v ≈ (∇_u L_tr(ω + εv, u) - ∇_u L_tr(ω - εv, u)) / 2ε``. No second-order autograd graph
is built and the model is never copied: the virtual weights are passed to the model with
``torch.func.functional_call``.

Under ``torchrun`` every gradient is averaged over the ranks as soon as it is computed (``reduce``), so the
virtual weights, the direction ``v``, the radius ``ε`` and the result are those of the global batch, the same
on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.profiler import record_function

__all__ = ["HYPERGRADIENT_ORDERS", "hypergradient"]

HYPERGRADIENT_ORDERS = ("first", "second")
"""``first``: ``∇_u L_up(ω, u)`` (no unrolling, DARTS' first-order approximation); ``second``: the
one-step-unrolled gradient above."""

LossOfWeights = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
Reduction = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def _unreduced(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(tensors)


def _grads(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def hypergradient(
    train_loss: LossOfWeights,
    upper_loss: LossOfWeights,
    weights: Mapping[str, nn.Parameter],
    upper: Sequence[torch.Tensor],
    xi: float,
    order: str = "second",
    radius: float = 0.01,
    reduce: Reduction = _unreduced,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradient of the upper objective with respect to the upper variables.

    Args:
        train_loss: ``L_tr`` as a function of the lower weights (a name -> tensor mapping, e.g. evaluated
            with ``torch.func.functional_call(model, weights, inputs)``); must depend on ``upper``.
        upper_loss: ``L_up`` as a function of the lower weights (α: ``L_reg`` on a validation pair;
            λ: the warped-label Dice loss, which does not depend on λ directly).
        weights: the current lower weights ω, by parameter name.
        upper: the upper variables ``u`` (leaf tensors requiring grad, used inside the losses).
        xi: step size ξ of the virtual step.
        order: ``"second"`` (unrolled, with the finite-difference correction) or ``"first"``.
        radius: ``r`` of the finite-difference step ``ε = r / ‖∇_ω' L_up‖``.
        reduce: applied to every list of gradients (and to the upper loss) right after it is computed; under
            ``torchrun``, :func:`autoreg_monai.distributed.all_reduce_mean`. Default: unchanged.

    Returns:
        ``(grads, value)``: one gradient per upper variable (same shapes) and the detached upper loss
        (at ω' for ``second``, at ω for ``first``), both passed through ``reduce``.
    """
    if order not in HYPERGRADIENT_ORDERS:
        raise ValueError(f"order must be one of {HYPERGRADIENT_ORDERS}, got {order!r}")
    names = list(weights)
    omega = [weights[n] for n in names]
    if order == "first":
        value = upper_loss(weights)
        *grads, mean_value = reduce([*_grads(value, upper), value.detach()])
        return grads, mean_value

    with record_function("autoreg::virtual_step"):  # scopes named for torch.profiler (benchmarks/search_cost.py)
        step = reduce(_grads(train_loss(weights), omega))
        virtual = {n: (w.detach() - xi * g).requires_grad_(True) for n, w, g in zip(names, omega, step)}
    with record_function("autoreg::upper_gradient"):
        value = upper_loss(virtual)
        *grads, value = reduce([*_grads(value, [*upper, *virtual.values()]), value.detach()])
    direct, v = grads[: len(upper)], grads[len(upper) :]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in v))
    if norm == 0:  # the upper loss does not see the weights: nothing to correct
        return direct, value
    eps = radius / float(norm)
    with record_function("autoreg::hessian_vector_product"):
        plus = {n: w.detach() + eps * g for n, w, g in zip(names, omega, v)}
        minus = {n: w.detach() - eps * g for n, w, g in zip(names, omega, v)}
        grad_plus = _grads(train_loss(plus), upper)
        grad_minus = _grads(train_loss(minus), upper)
        difference = reduce([gp - gm for gp, gm in zip(grad_plus, grad_minus)])  # linear: one reduction
    corrected = [d - xi * diff / (2 * eps) for d, diff in zip(direct, difference)]
    return corrected, value

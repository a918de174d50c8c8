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
"""One stage of the AutoReg search (Algorithm 1) as a MONAI engine.

Each iteration takes a training pair and the next validation pair (cycling through the validation set),
updates the stage's upper variable with the hypergradient of :mod:`autoreg_monai.search.hypergrad`
(after ``warmup_epochs`` of ω-only training), then takes an ordinary step of the network weights ω.

Under ``torchrun`` (``configs/multi_gpu_search.json``) each rank takes its own shard of the pairs and every
gradient (of ω, α, λ, and inside the hypergradient) is averaged over the ranks before it is used, so ω, α and
λ stay identical on every rank and follow the global batch: the network is not wrapped in
``DistributedDataParallel``, whose gradient hooks ``functional_call`` and ``autograd.grad`` bypass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from monai.engines import Trainer
from torch.func import functional_call
from torch.nn.modules.loss import _Loss
from torch.profiler import record_function
from torch.utils.data import DataLoader

from autoreg_monai.data.datalist import PAIR_KEYS
from autoreg_monai.distributed import all_reduce_mean
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.networks.nets.autoregnet import AutoRegSearchNet
from autoreg_monai.numerical_guard import NumericalGuard, pair_names
from autoreg_monai.search.hypergrad import HYPERGRADIENT_ORDERS, hypergradient

__all__ = ["AutoRegSearchTrainer", "SearchStage", "mixing_entropy", "prepare_pair", "stage_variables"]


class SearchStage(str, Enum):
    """The three stages of Algorithm 1, each learning one upper variable with ω re-initialised."""

    FEATURE = "feature"  # α_F, with λ fixed and α_D uniform
    DEFORMATION = "deformation"  # α_D, with α_F fixed to the feature stage's genotype
    OBJECTIVE = "objective"  # λ, with the whole architecture fixed


def prepare_pair(batch: Mapping[str, Any], device: torch.device, non_blocking: bool = False) -> dict[str, torch.Tensor]:
    """Plain tensors on ``device`` for the pair keys present in a collated batch (MetaTensor metadata dropped)."""
    return {k: torch.as_tensor(batch[k]).to(device, non_blocking=non_blocking) for k in PAIR_KEYS if k in batch}


def stage_variables(network: AutoRegSearchNet, stage: SearchStage | str) -> list[torch.Tensor]:
    """The upper variables a stage learns: α_F, α_D, or the parameters behind λ.

    Raises:
        ValueError: the network has fixed the cell type the stage searches.
    """
    stage = SearchStage(stage)
    variables = {
        SearchStage.FEATURE: [network.alpha_feature],
        SearchStage.DEFORMATION: [network.alpha_deformation],
        SearchStage.OBJECTIVE: network.hyper_parameters(),
    }[stage]
    if any(v is None for v in variables):
        raise ValueError(f"the {stage.value} stage searches a cell type that this network has fixed")
    return variables


def mixing_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """The mean over edges of the entropy of each edge's mixing weights ``softmax(α)``: ``log(num_ops)`` when
    every operation weighs the same, 0 when each edge has chosen one (DiNTS' entropy loss, He et al. 2021).

    Args:
        alpha: ``(edges, num_ops)`` logits.

    Returns:
        a scalar tensor, differentiable with respect to ``alpha``.
    """
    log_weights = torch.log_softmax(alpha, dim=1)
    return -(log_weights.exp() * log_weights).sum(dim=1).mean()


class AutoRegSearchTrainer(Trainer):
    """Bilevel search of one AutoReg variable: upper step on validation pairs, then an ω step.

    Args:
        device: where the network and data live.
        max_epochs: the stage stops at this epoch if the ranking handler has not stopped it before.
        train_data_loader: training pairs (``moving_image``, ``fixed_image``; labels unused).
        val_data_loader: validation pairs, cycled one per iteration (with ``moving_label`` and
            ``fixed_label`` for the objective stage).
        network: the search network of this stage (see :class:`SearchStage` for which cells are fixed).
        stage: which variable is searched.
        weight_optimizer: optimiser of ``network.weight_parameters()``.
        upper_optimizer: optimiser of the stage's upper variable (α_F, α_D or the λ parameters).
        registration_loss: ``L_reg``, the lower objective (and the upper one for α).
        label_loss: the warped-label Dice loss, the upper objective for λ (objective stage only).
        warmup_epochs: epochs of ω-only training before the upper variable moves (authors' code: 15 of 45).
        order: ``"second"`` (unrolled, finite-difference correction) or ``"first"`` (α only).
        xi: virtual step size ξ; default: the learning rate of ``weight_optimizer``.
        fd_radius: ``r`` of the finite-difference step.
        epoch_length: iterations per epoch (default: the length of ``train_data_loader``).
        handlers: MONAI/ignite handlers to attach.
        non_blocking: non-blocking host-to-device copies.
        max_bad_steps: consecutive iterations with a NaN/Inf (loss, gradient, α or λ) that stop the stage with
            :class:`~autoreg_monai.numerical_guard.NumericalFaultError`; fewer are skipped with a warning.
        entropy_weight: α stages: the weight of :func:`mixing_entropy` added to the upper objective, ramped
            linearly from 0 after the warm-up to this value at ``max_epochs``: the hypergradient leads while the
            ranking forms, the entropy term then turns the leading operation of each edge into a decision
            (0: plain DARTS, the argmax of weights that may stay near uniform).

    The engine output of an iteration is ``{"loss": L_tr before the ω step, "upper_loss": L_up at ω'
    (nan during warm-up), "skipped": whether a step was skipped for a non-finite value}``; under ``torchrun``
    the losses are averaged over the ranks.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        val_data_loader: Iterable | DataLoader,
        network: AutoRegSearchNet,
        stage: SearchStage | str,
        weight_optimizer: torch.optim.Optimizer,
        upper_optimizer: torch.optim.Optimizer,
        registration_loss: RegistrationLoss,
        label_loss: _Loss | None = None,
        warmup_epochs: int = 0,
        order: str = "second",
        xi: float | None = None,
        fd_radius: float = 0.01,
        epoch_length: int | None = None,
        handlers: Sequence | None = None,
        non_blocking: bool = False,
        max_bad_steps: int = 5,
        entropy_weight: float = 0.0,
    ) -> None:
        stage = SearchStage(stage)
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
        if order not in HYPERGRADIENT_ORDERS:
            raise ValueError(f"order must be one of {HYPERGRADIENT_ORDERS}, got {order!r}")
        upper = stage_variables(network, stage)
        if stage == SearchStage.OBJECTIVE:
            if network.arch_parameters():
                raise ValueError(
                    "the objective stage needs a network with a fixed architecture (feature_ops and deformation_ops)"
                )
            if label_loss is None:
                raise ValueError(
                    "the objective stage needs label_loss (the warped-label Dice loss on validation pairs)"
                )
            if order == "first":
                raise ValueError(
                    "order='first' gives λ no gradient: the Dice upper loss does not depend on λ directly; use 'second'"
                )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=handlers,
            decollate=False,
        )
        self.network = network
        self.stage = stage
        self.weight_optimizer = weight_optimizer
        self.upper_optimizer = upper_optimizer
        self.upper_variables: list[torch.Tensor] = list(upper)
        self.registration_loss = registration_loss
        self.label_loss = label_loss
        self.warmup_epochs = warmup_epochs
        self.order = order
        self.xi = float(weight_optimizer.param_groups[0]["lr"]) if xi is None else float(xi)
        self.fd_radius = fd_radius
        self.entropy_weight = 0.0 if stage == SearchStage.OBJECTIVE else float(entropy_weight)
        special = {id(p) for p in network.arch_parameters() + network.hyper_parameters()}
        self.weight_names = [n for n, p in network.named_parameters() if id(p) not in special]
        self.val_data_loader = val_data_loader
        self._val_iterator: Iterator | None = None
        self.guard = NumericalGuard(f"search, {stage.value} stage", max_bad_steps)
        self._upper_names = {
            SearchStage.FEATURE: ["α_F"],
            SearchStage.DEFORMATION: ["α_D"],
            SearchStage.OBJECTIVE: [f"λ parameter {i}" for i in range(len(self.upper_variables))],
        }[stage]

    def current_entropy_weight(self, epoch: int) -> float:
        """The weight of the entropy term in ``epoch`` (1-based): 0 up to the warm-up's end, then linear to
        ``entropy_weight`` at ``max_epochs``."""
        upper_epochs = self.state.max_epochs - self.warmup_epochs
        return self.entropy_weight * min(max(epoch - self.warmup_epochs, 0) / upper_epochs, 1.0)

    def _next_validation_pair(self) -> dict[str, torch.Tensor]:
        try:
            if self._val_iterator is None:
                raise StopIteration
            batch = next(self._val_iterator)
        except StopIteration:
            self._val_iterator = iter(self.val_data_loader)
            batch = next(self._val_iterator)
        return prepare_pair(batch, self.state.device, self.non_blocking)

    def _registration(self, pair: dict[str, torch.Tensor], learn_weights: bool) -> Callable:
        """``L_reg`` on ``pair`` as a function of ω; λ takes part in autograd only if ``learn_weights``."""

        def loss(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
            ddf, pyramid = functional_call(self.network, dict(params), (pair["moving_image"], pair["fixed_image"]))
            weights = self.network.loss_weights  # recomputed per call: each call is differentiated once
            weights = weights if learn_weights else weights.detach()
            return self.registration_loss(pair["moving_image"], pair["fixed_image"], ddf, pyramid, weights)

        return loss

    def _label_overlap(self, pair: dict[str, torch.Tensor]) -> Callable:
        if "moving_label" not in pair or "fixed_label" not in pair:
            raise ValueError("the objective stage needs validation pairs with moving_label and fixed_label")
        label_loss = self.label_loss
        if label_loss is None:
            raise ValueError("the objective stage needs label_loss")

        def loss(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
            ddf, _ = functional_call(self.network, dict(params), (pair["moving_image"], pair["fixed_image"]))
            return label_loss(pair["moving_label"], pair["fixed_label"], ddf)

        return loss

    def _upper_step(self, engine: Any, pair: str, train: dict[str, torch.Tensor], weights: dict) -> float | None:
        """The hypergradient step of the stage's variable; ``None`` if skipped for a non-finite value."""
        val = self._next_validation_pair()
        if self.stage == SearchStage.OBJECTIVE:
            upper_loss = self._label_overlap(val)
        else:
            upper_loss = self._registration(val, learn_weights=False)
        train_loss = self._registration(train, learn_weights=self.stage == SearchStage.OBJECTIVE)
        grads, value = hypergradient(
            train_loss,
            upper_loss,
            weights,
            self.upper_variables,
            self.xi,
            self.order,
            self.fd_radius,
            reduce=all_reduce_mean,
        )
        weight = self.current_entropy_weight(engine.state.epoch)
        if weight > 0:  # α only: its own term, no ω in it
            variables = self.upper_variables
            grads = [g + weight * torch.autograd.grad(mixing_entropy(v), v)[0] for g, v in zip(grads, variables)]
        named = [("upper loss", value), *((f"hypergradient of {n}", g) for n, g in zip(self._upper_names, grads))]
        if not self.guard.passed(engine, "upper step", pair, named):
            return None
        before = [v.detach().clone() for v in self.upper_variables]
        self.upper_optimizer.zero_grad(set_to_none=True)
        for variable, grad in zip(self.upper_variables, grads):
            variable.grad = grad
        self.upper_optimizer.step()
        if not self.guard.passed(engine, "upper step", pair, list(zip(self._upper_names, self.upper_variables))):
            with torch.no_grad():  # the step overflowed: back to the values before it
                for variable, value_before in zip(self.upper_variables, before):
                    variable.copy_(value_before)
            return None
        return value.item()

    def _iteration(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        train = prepare_pair(batchdata, engine.state.device, engine.non_blocking)
        pair = pair_names(batchdata)
        params = dict(self.network.named_parameters())
        weights = {n: params[n] for n in self.weight_names}
        upper_value, skipped = float("nan"), False
        if engine.state.epoch > self.warmup_epochs:
            upper = self._upper_step(engine, pair, train, weights)
            skipped = upper is None
            upper_value = float("nan") if upper is None else upper

        with record_function("autoreg::weight_step"):  # a scope for torch.profiler (benchmarks/search_cost.py)
            loss = self._registration(train, learn_weights=False)(weights)
            *grads, loss = all_reduce_mean([*torch.autograd.grad(loss, list(weights.values())), loss.detach()])
            named = [("loss", loss), *((f"gradient of {n}", g) for n, g in zip(weights, grads))]
            if self.guard.passed(engine, "weight step", pair, named):
                self.weight_optimizer.zero_grad(set_to_none=True)
                for weight, grad in zip(weights.values(), grads):
                    weight.grad = grad
                self.weight_optimizer.step()
            else:
                skipped = True
        self.guard.end_iteration()
        return {"loss": loss.item(), "upper_loss": upper_value, "skipped": skipped}

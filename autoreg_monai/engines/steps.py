# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Iterations of train-evaluation for MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator``.

MONAI's engines call ``loss_function(pred, label)``, which cannot express an unsupervised registration
loss (similarity of the warped image plus a regulariser of the field, at several scales). The engines
accept an ``iteration_update`` callable instead; these are those callables. Each fires the engine's
iteration events (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
``MODEL_COMPLETED``) as MONAI's own iterations do, so handlers, decollation and postprocessing work.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.networks.blocks import Warp
from torch.nn.modules.loss import _Loss

from autoreg_monai.engines.refinement import TestTimeRefinement
from autoreg_monai.losses.label_dice import one_hot_labels
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.metrics import warp_labels
from autoreg_monai.numerical_guard import NumericalGuard, pair_names
from autoreg_monai.search.trainer import prepare_pair

__all__ = ["RegistrationEvalStep", "RegistrationTrainStep"]


class RegistrationTrainStep:
    """One ω step of ``L_reg`` (Eq. 5 with the searched λ) for ``SupervisedTrainer(iteration_update=...)``.

    The trainer's ``network`` is an :class:`~autoreg_monai.networks.AutoRegNet` (``forward(moving, fixed)``
    returning the field and its pyramid); its ``loss_function`` is unused (give ``None``).

    Args:
        registration_loss: the multi-scale similarity + regularisation loss.
        loss_weights: λ, one weight per term of ``registration_loss`` (the genotype's ``loss_weights``).
        label_loss: optional warped-label Dice loss added with weight ``label_weight`` (semi-supervised
            training; the paper trains without it).
        label_weight: weight of ``label_loss``.
        max_grad_norm: clip the gradient norm of ω to this value (``None``: no clipping).
        max_bad_steps: consecutive iterations with a non-finite loss or gradient that stop the training with
            :class:`~autoreg_monai.numerical_guard.NumericalFaultError`; fewer are skipped with a warning.
        amp: mixed precision: the network's convolutions in bfloat16 under ``torch.autocast`` (on a GPU about
            half the activation memory), while the field integration, compositions and warps
            (:func:`~autoreg_monai.networks.blocks.diffeo.full_precision`), the losses and the weights stay
            float32. bfloat16 has float32's exponent range, so no loss scaling (``GradScaler``) is needed.

    The engine output is, as for a decollated MONAI trainer, one dictionary per pair of the batch, each
    ``{"loss": L, "similarity": L_sim at full resolution, "regularization": L_smooth}`` (floats of the
    batch), so MONAI's ``from_engine(["loss"], first=True)`` reads it in handlers (stats, TensorBoard,
    MLflow).
    """

    def __init__(
        self,
        registration_loss: RegistrationLoss,
        loss_weights: Sequence[float] | torch.Tensor,
        label_loss: _Loss | None = None,
        label_weight: float = 0.0,
        max_grad_norm: float | None = None,
        max_bad_steps: int = 5,
        amp: bool = False,
    ) -> None:
        weights = registration_loss.check_weights(loss_weights)
        if label_weight > 0 and label_loss is None:
            raise ValueError("label_weight > 0 needs a label_loss")
        self.registration_loss = registration_loss
        self.loss_weights = weights
        self.label_loss = label_loss
        self.label_weight = float(label_weight)
        self.max_grad_norm = max_grad_norm
        self.guard = NumericalGuard("training", max_bad_steps)
        self.amp = bool(amp)

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> Any:
        pair = prepare_pair(batchdata, engine.state.device, engine.non_blocking)
        moving, fixed = pair["moving_image"], pair["fixed_image"]
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=moving.device.type, dtype=torch.bfloat16, enabled=self.amp):
            ddf, pyramid = engine.network(moving, fixed)  # float32 fields (integrated outside autocast)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        terms = self.registration_loss.terms(moving, fixed, ddf, pyramid)
        loss = (self.loss_weights.to(terms) * terms).sum()
        if self.label_weight > 0 and self.label_loss is not None:
            if "moving_label" not in pair or "fixed_label" not in pair:
                raise ValueError("label_weight > 0 needs training pairs with moving_label and fixed_label")
            loss = loss + self.label_weight * self.label_loss(pair["moving_label"], pair["fixed_label"], ddf)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        named = [("loss", loss), *((f"gradient of {n}", p.grad) for n, p in engine.network.named_parameters())]
        if self.guard.passed(engine, "weight step", pair_names(batchdata), named):
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_grad_norm)
            engine.optimizer.step()
        else:
            engine.optimizer.zero_grad(set_to_none=True)
        self.guard.end_iteration()
        values = {"loss": loss.item(), "similarity": terms[0].item(), "regularization": terms[1].item()}
        output = [dict(values) for _ in range(moving.shape[0])]
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by the engine's MODEL_COMPLETED handler when decollate=True


class RegistrationEvalStep:
    """Register a pair without gradients, for ``SupervisedEvaluator(iteration_update=...)``.

    The evaluator's ``network`` is an :class:`~autoreg_monai.networks.AutoRegNet`.

    Args:
        labels: label values scored by Dice; the output carries their one-hot maps for MONAI's
            ``MeanDice`` (``pred`` = warped moving labels, ``label`` = fixed labels).
        refinement: test-time refinement of each pair's field (the bundle's ``refinement``, ``refine_steps``
            of the config); ``None``: the network alone.

    The engine output holds ``(B, ...)`` tensors: ``moving_image``, ``fixed_image``, ``warped_image``
    (bilinear), ``ddf`` (voxels), ``runtime`` (seconds per pair of the forward pass and the refinement) and,
    when the pair has label maps, ``moving_label``, ``fixed_label``, ``warped_label`` (nearest neighbour),
    ``pred`` and ``label`` (one-hot, float).
    """

    def __init__(self, labels: Sequence[int], refinement: TestTimeRefinement | None = None) -> None:
        self.labels = [int(v) for v in labels]
        self.refinement = refinement
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> Any:
        pair = prepare_pair(batchdata, engine.state.device, engine.non_blocking)
        moving, fixed = pair["moving_image"], pair["fixed_image"]
        engine.network.eval()
        with torch.no_grad():
            if moving.is_cuda:
                torch.cuda.synchronize(moving.device)
            start = time.perf_counter()
            ddf, pyramid = engine.network(moving, fixed)
            if self.refinement is not None and self.refinement.steps > 0:
                ddf = torch.cat(
                    [
                        self.refinement(
                            moving[i : i + 1], fixed[i : i + 1], ddf[i : i + 1], [f[i : i + 1] for f in pyramid]
                        )[0]
                        for i in range(moving.shape[0])
                    ]
                )
            if moving.is_cuda:
                torch.cuda.synchronize(moving.device)
            runtime = (time.perf_counter() - start) / moving.shape[0]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            output = dict(pair)
            output.update(
                warped_image=self.warp(moving, ddf),
                ddf=ddf,
                runtime=torch.full((moving.shape[0],), runtime),
            )
            if "moving_label" in pair and "fixed_label" in pair:
                warped_label = warp_labels(pair["moving_label"], ddf)
                output.update(
                    warped_label=warped_label,
                    pred=one_hot_labels(warped_label, self.labels),
                    label=one_hot_labels(pair["fixed_label"], self.labels),
                )
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output  # decollated by the engine's MODEL_COMPLETED handler when decollate=True

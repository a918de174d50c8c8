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
"""Ignite handlers of a search stage: ranking-stability stopping, α/λ records, stage exports.

Each stateful handler has ``state_dict``/``load_state_dict`` so that it is saved in, and restored from,
the stage checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from autoreg_monai.networks.genotype import edge_decisions, loss_term_names
from autoreg_monai.networks.nets.autoregnet import AutoRegSearchNet
from autoreg_monai.utils.atomic import atomic_write
from autoreg_monai.viz import plot_alpha_heatmaps, plot_loss_weight_trajectory

__all__ = ["RankingStabilityStopper", "SearchRecorder", "StageExporter", "variable_ranking"]

logger = logging.getLogger(__name__)


def variable_ranking(variables: Sequence[torch.Tensor]) -> list[list[int]]:
    """What the search has decided so far: for α ``(edges, ops)`` the argmax per edge, for λ the order of
    its values (largest first)."""
    ranking = []
    for v in variables:
        v = v.detach()
        ranking.append(v.argmax(dim=1).tolist() if v.ndim == 2 else torch.argsort(v, descending=True).tolist())
    return ranking


class RankingStabilityStopper:
    """Stop a stage once the ranking of its variables has not changed for ``patience`` epochs.

    The paper's criterion (section IV-A): the search stops "when the ranking of architecture parameters
    and upper objective ... become stable for 10 epochs". Epochs up to ``start_epoch`` (the ω warm-up,
    when the variables do not move) are not counted.

    Args:
        variables: returns the stage's upper variables.
        patience: number of consecutive epochs without a ranking change that ends the stage.
        start_epoch: last warm-up epoch.
    """

    def __init__(self, variables: Callable[[], Sequence[torch.Tensor]], patience: int, start_epoch: int = 0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.variables = variables
        self.patience = patience
        self.start_epoch = start_epoch
        self.last_ranking: list[list[int]] | None = None
        self.stable_epochs = 0
        self.stopped = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.STARTED, self._stop_if_stopped)  # after a checkpoint loader attached earlier

    def _stop_if_stopped(self, engine: Engine) -> None:
        """A run resumed from the checkpoint of the epoch that ended the stage ends at once, like the original."""
        if self.stopped:
            engine.terminate()

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch <= self.start_epoch:
            return
        ranking = variable_ranking(self.variables())
        self.stable_epochs = self.stable_epochs + 1 if ranking == self.last_ranking else 0
        self.last_ranking = ranking
        if self.stable_epochs >= self.patience:
            logger.info(f"ranking unchanged for {self.stable_epochs} epochs: stopping at epoch {engine.state.epoch}")
            self.stopped = True
            engine.terminate()

    def state_dict(self) -> dict[str, Any]:
        return {"last_ranking": self.last_ranking, "stable_epochs": self.stable_epochs, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_ranking = state["last_ranking"]
        self.stable_epochs = int(state["stable_epochs"])
        self.stopped = bool(state.get("stopped", False))


class SearchRecorder:
    """Per epoch: mean losses, λ, the mixing weights ``softmax(α)`` and the current choice of operations.

    The values go to ``engine.state.metrics`` (so MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler``
    log them: ``loss``, ``upper_loss``, ``lambda/<term>``, ``alpha_feature/entropy``, ...) and to
    :attr:`history`, which is also written to ``history.json`` after every epoch.

    Args:
        network: the stage's search network.
        path: the JSON file for the history (written atomically); ``None``: keep it in memory only.
    """

    def __init__(self, network: AutoRegSearchNet, path: str | Path | None = None) -> None:
        self.network = network
        self.path = None if path is None else Path(path)
        self.history: list[dict[str, Any]] = []
        self._sums = {"loss": 0.0, "upper_loss": 0.0}
        self._counts = {"loss": 0, "upper_loss": 0}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums = {k: 0.0 for k in self._sums}
        self._counts = {k: 0 for k in self._counts}

    def _accumulate(self, engine: Engine) -> None:
        for key in self._sums:
            value = engine.state.output.get(key, float("nan"))
            if math.isfinite(value):
                self._sums[key] += value
                self._counts[key] += 1

    def __call__(self, engine: Engine) -> None:
        net = self.network
        record: dict[str, Any] = {"epoch": engine.state.epoch}
        for key in self._sums:
            record[key] = self._sums[key] / self._counts[key] if self._counts[key] else None
        weights = net.loss_weights.detach().cpu().tolist()
        record["loss_weights"] = weights
        metrics = {key: record[key] for key in self._sums if record[key] is not None}
        for name, value in zip(loss_term_names(len(weights)), weights):
            metrics[f"lambda/{name}"] = value
        for name in ("alpha_feature", "alpha_deformation"):
            alpha = getattr(net, name)
            if alpha is None:
                continue
            probs = torch.softmax(alpha.detach().cpu(), dim=1)
            record[f"softmax_{name}"] = probs.tolist()
            metrics[f"{name}/entropy"] = float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean())
        genotype = net.genotype()
        record["genotype"] = {"feature": genotype.feature, "deformation": genotype.deformation}
        self.history.append(record)
        engine.state.metrics.update(metrics)
        if self.path is not None:
            with atomic_write(self.path, "w") as handle:
                json.dump(self.history, handle, indent=1)

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = json.loads(state["history"])


class StageExporter:
    """At the end of a stage: ``genotype.json``, ``decisions.json`` (per searched edge, the chosen operation's
    softmax weight and its margin over the runner-up, :func:`edge_decisions`), the α heatmap and the λ
    trajectory, in ``output_dir``; the log says how many edges are decided.

    Args:
        network: the stage's search network.
        recorder: the stage's :class:`SearchRecorder` (for the λ trajectory).
        output_dir: the stage folder.
        title: figure title (e.g. the stage name).
        searched_cells: the cells (``feature``, ``deformation``) whose α the stage learns: their decisions are
            written (the others are uniform or fixed).
    """

    def __init__(
        self,
        network: AutoRegSearchNet,
        recorder: SearchRecorder,
        output_dir: str | Path,
        title: str = "",
        searched_cells: Sequence[str] = ("feature", "deformation"),
    ) -> None:
        self.network = network
        self.searched_cells = tuple(searched_cells)
        self.recorder = recorder
        self.output_dir = Path(output_dir)
        self.title = title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        net = self.network
        self.output_dir.mkdir(parents=True, exist_ok=True)
        heatmaps = {}
        for label, name, fixed in (
            ("feature cell α_F", "alpha_feature", net.fixed_feature_ops),
            ("deformation cell α_D", "alpha_deformation", net.fixed_deformation_ops),
        ):
            alpha = getattr(net, name)
            if alpha is not None:
                heatmaps[label] = torch.softmax(alpha.detach().cpu(), dim=1).numpy()
            else:  # a fixed cell: its operations carry all the weight
                one_hot = torch.zeros(len(fixed) * len(fixed[0]), len(net.op_names))
                for row, op in enumerate(op for scale in fixed for op in scale):
                    one_hot[row, net.op_names.index(op)] = 1.0
                heatmaps[label + " (fixed)"] = one_hot.numpy()
        plot_alpha_heatmaps(heatmaps, net.op_names, self.output_dir / "alpha_heatmap.png", self.title)
        trajectory = [r["loss_weights"] for r in self.recorder.history]
        weights = net.loss_weights.detach().cpu().tolist()
        plot_loss_weight_trajectory(
            trajectory or [weights],
            loss_term_names(len(weights)),
            self.output_dir / "lambda_trajectory.png",
            self.title,
        )
        net.genotype().to_json(self.output_dir / "genotype.json")
        decisions = {
            cell: edge_decisions(alpha, net.op_names)
            for cell, alpha in (("feature", net.alpha_feature), ("deformation", net.alpha_deformation))
            if alpha is not None and cell in self.searched_cells
        }
        with atomic_write(self.output_dir / "decisions.json", "w") as handle:
            json.dump(decisions, handle, indent=2)
        for cell, rows in decisions.items():
            decided = sum(r["decided"] for r in rows)
            weakest = min(rows, key=lambda r: r["weight"])
            logger.info(
                f"{cell} cell: {decided} of {len(rows)} edges decided (chosen op >= 2x uniform weight "
                f"{2 / len(net.op_names):.3f}); weakest edge scale {weakest['scale']} edge {weakest['edge']}: "
                f"{weakest['op']} {weakest['weight']:.3f} vs {weakest['runner_up']} {weakest['runner_up_weight']:.3f}"
            )
        logger.info(f"stage outputs written to {self.output_dir}")

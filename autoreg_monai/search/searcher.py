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
"""The whole AutoReg search: three stages of :class:`AutoRegSearchTrainer`, each from fresh weights.

This is what a bundle's ``search`` run id calls (``"search": ["$@searcher.run()"]``). The bundle config
declares the pieces (data loaders, the network, losses and optimisers as callables); this class wires
them into one engine per stage with MONAI/ignite handlers for logging, checkpoints and exports.

Outputs in ``output_dir``::

    genotype.json                       the searched genotype: operations and λ (after the objective stage)
    search/<stage>/genotype.json        the genotype after each stage
    search/<stage>/alpha_heatmap.png    softmax(α) per edge, chosen operations boxed (paper Fig. 3)
    search/<stage>/lambda_trajectory.png
    search/<stage>/history.json         losses, λ and softmax(α) per epoch
    search/<stage>/checkpoint_<epoch>.pt  resumable checkpoints (ω, α, λ, optimisers, engine, handlers)
    search/<stage>/logs/                TensorBoard event files

Under ``torchrun`` (``configs/multi_gpu_search.json``) every rank runs the same stages on its shard of the
pairs with the gradients averaged over the ranks (:mod:`autoreg_monai.search.trainer`); rank 0 alone writes
these outputs, and the decisions taken from files (a finished stage, the checkpoint to resume from) are rank
0's, sent to the others. Resuming needs ``output_dir`` on a file system every rank can read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader, StatsHandler, TensorBoardStatsHandler
from monai.utils import set_determinism
from torch.nn.modules.loss import _Loss

from autoreg_monai.distributed import broadcast_module, broadcast_object, is_main_process
from autoreg_monai.engines.checkpoint import (
    AtomicDiskSaver,
    RandomStates,
    latest_checkpoint,
    prune_checkpoints,
    remove_temporary_files,
    resume_mode,
)
from autoreg_monai.losses.registration import RegistrationLoss
from autoreg_monai.networks.genotype import Genotype, loss_term_names
from autoreg_monai.networks.nets.autoregnet import AutoRegSearchNet
from autoreg_monai.resources import check_memory
from autoreg_monai.search.handlers import RankingStabilityStopper, SearchRecorder, StageExporter
from autoreg_monai.search.trainer import AutoRegSearchTrainer, SearchStage, stage_variables

__all__ = ["AutoRegSearch", "format_genotype"]

logger = logging.getLogger(__name__)

_PREVIOUS = {SearchStage.DEFORMATION: SearchStage.FEATURE, SearchStage.OBJECTIVE: SearchStage.DEFORMATION}


def _spatial_size(loader: Iterable) -> tuple[int, ...] | None:
    """The working grid of a loader's first pair, read from its dataset (no iteration: no shuffle drawn)."""
    source = getattr(loader, "dataset", loader)
    try:
        image = source[0]["moving_image"]  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return None
    return tuple(int(s) for s in image.shape[-3:])


def format_genotype(genotype: Genotype) -> str:
    """A readable table of a genotype: one row per cell and scale, then λ."""
    rows = [f"{'cell':<12}{'scale':<7}{'edge 1':<15}{'edge 2':<15}{'edge 3':<15}"]
    for cell, ops in (("feature", genotype.feature), ("deformation", genotype.deformation)):
        for scale, scale_ops in enumerate(ops):
            rows.append(f"{cell:<12}{'1/' + str(2 ** (scale + 1)):<7}" + "".join(f"{op:<15}" for op in scale_ops))
    names = loss_term_names(len(genotype.loss_weights))
    rows.append("loss weights: " + ", ".join(f"{n} {w:.4g}" for n, w in zip(names, genotype.loss_weights)))
    return "\n".join(rows)


class AutoRegSearch:
    """Run the AutoReg search stages: α_F, then α_D, then λ, re-initialising ω for each.

    Args:
        network_def: builds an :class:`AutoRegSearchNet`, called with ``feature_ops``, ``deformation_ops``
            and ``loss_weights`` for the later stages (in a bundle: the network with ``"_mode_": "callable"``).
        train_loader: training pairs.
        val_loader: validation pairs with labels.
        registration_loss: ``L_reg``.
        label_loss: warped-label Dice loss (objective stage).
        weight_optimizer: ``params -> optimizer`` for ω (paper: Adam, lr 1e-4).
        arch_optimizer: ``params -> optimizer`` for α (paper: Adam, lr 1e-4, betas (0.5, 0.999)).
        hyper_optimizer: ``params -> optimizer`` for ``log λ`` (the bundles: Adam, lr 0.05 = about 5 % of λ per
            step, betas (0.5, 0.999); the paper's 4e-3 was an absolute step on λ).
        output_dir: where the outputs go (see the module docstring).
        device: ``"cpu"``, ``"cuda"``, or a ``torch.device``.
        max_epochs: maximum epochs per stage (paper: 45).
        warmup_epochs: ω-only epochs at the start of each stage; default ``max_epochs // 3`` (authors' code: 15 of 45).
        patience: a stage ends when its ranking is unchanged this many epochs (paper: 10).
        order: ``"second"`` or ``"first"`` (α stages only; λ always uses ``second``).
        xi: virtual step size; default: the ω learning rate.
        fd_radius: finite-difference radius ``r``.
        genotype: a genotype (file, dict or :class:`Genotype`) to start later stages from, instead of the
            previous stage's output; required to run ``deformation``/``objective`` on their own without it.
        resume: ``True`` or ``"auto"``: continue each unfinished stage from its newest checkpoint that loads
            (a damaged one is skipped with a warning), and skip finished stages.
        seed: random seed (each stage uses ``seed + stage index``).
        keep_checkpoints: how many epoch checkpoints to keep per stage.
        epoch_length: iterations per epoch (default: all training pairs).
        progress: show a progress bar.
        handlers: more MONAI/ignite handlers (objects with ``attach(engine)``), attached to every stage's engine.
        max_bad_steps: consecutive iterations with a NaN/Inf that stop a stage (fewer are skipped and logged).
        cudnn_benchmark: on a GPU, let cuDNN time its kernels on the first pair and reuse the fastest (every
            pair has the working grid); set after each stage's ``set_determinism``, which turns it off.
        entropy_weight: weight of the mixing-entropy term of the α stages, ramped up after the warm-up
            (:class:`AutoRegSearchTrainer`); 0 = plain DARTS.
    """

    def __init__(
        self,
        network_def: Callable[..., AutoRegSearchNet],
        train_loader: Iterable,
        val_loader: Iterable,
        registration_loss: RegistrationLoss,
        label_loss: _Loss | None,
        weight_optimizer: Callable[..., torch.optim.Optimizer],
        arch_optimizer: Callable[..., torch.optim.Optimizer],
        hyper_optimizer: Callable[..., torch.optim.Optimizer],
        output_dir: str | Path,
        device: str | torch.device = "cpu",
        max_epochs: int = 45,
        warmup_epochs: int | None = None,
        patience: int = 10,
        order: str = "second",
        xi: float | None = None,
        fd_radius: float = 0.01,
        genotype: str | Path | Mapping | Genotype | None = None,
        resume: bool | str = False,
        seed: int = 0,
        keep_checkpoints: int = 2,
        epoch_length: int | None = None,
        progress: bool = True,
        handlers: Sequence[Any] | None = None,
        max_bad_steps: int = 5,
        cudnn_benchmark: bool = False,
        entropy_weight: float = 0.0,
    ) -> None:
        warmup_epochs = max_epochs // 3 if warmup_epochs is None else warmup_epochs
        if max_epochs < 1 or not 0 <= warmup_epochs < max_epochs:
            raise ValueError(
                f"need max_epochs >= 1 and 0 <= warmup_epochs < max_epochs, got {max_epochs}, {warmup_epochs}"
            )
        self.network_def = network_def
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.registration_loss = registration_loss
        self.label_loss = label_loss
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.hyper_optimizer = hyper_optimizer
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.patience = patience
        self.order = order
        self.xi = xi
        self.fd_radius = fd_radius
        self.genotype = None if genotype is None else self._read_genotype(genotype)
        self.resume = resume_mode(resume)
        self.seed = seed
        self.keep_checkpoints = keep_checkpoints
        self.epoch_length = epoch_length
        self.progress = progress
        self.handlers = list(handlers or [])
        self.max_bad_steps = max_bad_steps
        self.cudnn_benchmark = cudnn_benchmark
        self.entropy_weight = entropy_weight

    @staticmethod
    def _read_genotype(genotype: str | Path | Mapping | Genotype) -> Genotype:
        if isinstance(genotype, Genotype):
            return genotype
        if isinstance(genotype, Mapping):
            return Genotype.from_dict(genotype)
        return Genotype.from_json(genotype)

    def stage_dir(self, stage: SearchStage | str) -> Path:
        """The output folder of one stage."""
        return self.output_dir / "search" / SearchStage(stage).value

    def _start_genotype(self, stage: SearchStage, previous: Genotype | None) -> Genotype | None:
        if stage == SearchStage.FEATURE:
            return None
        if self.genotype is not None:
            return self.genotype
        if previous is not None:
            return previous
        path = self.stage_dir(_PREVIOUS[stage]) / "genotype.json"
        found = broadcast_object(Genotype.from_json(path) if is_main_process() and path.is_file() else None)
        if found is None:
            raise ValueError(
                f"the {stage.value} stage starts from the {_PREVIOUS[stage].value} stage's genotype, but {path} "
                "does not exist: run the earlier stage first, or give a genotype (--genotype FILE)"
            )
        return found

    def _finished_genotype(self, folder: Path) -> Genotype | None:
        """The genotype of a stage a resumed run already finished (rank 0's file), else ``None``."""
        if not self.resume:
            return None
        path = folder / "genotype.json"
        return broadcast_object(Genotype.from_json(path) if is_main_process() and path.is_file() else None)

    def _build_network(self, stage: SearchStage, start: Genotype | None) -> AutoRegSearchNet:
        if start is None:
            return self.network_def()
        if stage == SearchStage.DEFORMATION:
            return self.network_def(feature_ops=start.feature, loss_weights=start.loss_weights)
        return self.network_def(
            feature_ops=start.feature, deformation_ops=start.deformation, loss_weights=start.loss_weights
        )

    def run_stage(self, stage: SearchStage | str, previous: Genotype | None = None) -> Genotype:
        """Run one stage (from scratch, or from its newest checkpoint with ``resume``); return its genotype.

        Args:
            stage: the stage.
            previous: the genotype of the stage before, the start of this one unless a ``genotype`` was given
                (default: the earlier stage's ``genotype.json``).
        """
        stage = SearchStage(stage)
        folder = self.stage_dir(stage)
        finished = self._finished_genotype(folder)
        if finished is not None:
            logger.info(f"{stage.value} stage already finished ({folder / 'genotype.json'}): skipped")
            return finished
        set_determinism(self.seed + list(SearchStage).index(stage))
        if self.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        network = self._build_network(stage, self._start_genotype(stage, previous)).to(self.device)
        broadcast_module(network)  # every rank starts from rank 0's ω and α
        spatial_size = _spatial_size(self.train_loader)
        if spatial_size is not None:  # before anything of the stage is written
            partial = stage != SearchStage.OBJECTIVE and self.order == "first" and network.channel_fraction <= 0.25
            check_memory(
                f"the {stage.value} stage of the search",
                "search_partial" if partial else "search",
                spatial_size,
                network.feature_channels,
                network.deformation_channels,
                self.device,
                batch_size=getattr(self.train_loader, "batch_size", None) or 1,
            )
        main = is_main_process()
        if main:
            folder.mkdir(parents=True, exist_ok=True)
        variables = stage_variables(network, stage)
        make_optimizer = self.hyper_optimizer if stage == SearchStage.OBJECTIVE else self.arch_optimizer
        weight_optimizer = self.weight_optimizer(network.weight_parameters())
        upper_optimizer = make_optimizer(variables)
        recorder = SearchRecorder(network, folder / "history.json")
        stopper = RankingStabilityStopper(lambda: variables, self.patience, self.warmup_epochs)
        trainer = AutoRegSearchTrainer(
            device=self.device,
            max_epochs=self.max_epochs,
            train_data_loader=self.train_loader,
            val_data_loader=self.val_loader,
            network=network,
            stage=stage,
            weight_optimizer=weight_optimizer,
            upper_optimizer=upper_optimizer,
            registration_loss=self.registration_loss.to(self.device),
            label_loss=None if self.label_loss is None else self.label_loss.to(self.device),
            warmup_epochs=self.warmup_epochs,
            order="second" if stage == SearchStage.OBJECTIVE else self.order,
            xi=self.xi,
            fd_radius=self.fd_radius,
            epoch_length=self.epoch_length,
            max_bad_steps=self.max_bad_steps,
            entropy_weight=self.entropy_weight,
        )
        state = {
            "network": network,
            "weight_optimizer": weight_optimizer,
            "upper_optimizer": upper_optimizer,
            "trainer": trainer,
            "recorder": recorder,
            "stopper": stopper,
            "random_states": RandomStates(),
        }
        if main:
            remove_temporary_files(folder)
        latest = broadcast_object(latest_checkpoint(folder) if self.resume and main else None)
        if latest is not None:
            CheckpointLoader(load_path=str(latest), load_dict=state, map_location=self.device).attach(trainer)
            logger.info(f"{stage.value} stage resumes from {latest}")
        # order matters: record and decide on stopping before the checkpoint of the epoch is written;
        # α is the same on every rank, so is the stopper's decision
        if main:
            recorder.attach(trainer)
        stopper.attach(trainer)
        if main:
            saver = Checkpoint(
                state,
                AtomicDiskSaver(folder),
                filename_prefix="",
                n_saved=None,  # pruned below by epoch, which also covers the checkpoints of a resumed run
                global_step_transform=lambda engine, _: engine.state.epoch,
            )
            trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)
            trainer.add_event_handler(
                Events.EPOCH_COMPLETED, lambda _: prune_checkpoints(folder, self.keep_checkpoints)
            )
            StatsHandler(iteration_log=False, tag_name=f"search[{stage.value}]").attach(trainer)
            TensorBoardStatsHandler(log_dir=str(folder / "logs"), iteration_log=False).attach(trainer)
            searched = {SearchStage.FEATURE: ("feature",), SearchStage.DEFORMATION: ("deformation",)}.get(stage, ())
            StageExporter(
                network, recorder, folder, title=f"AutoReg search, {stage.value} stage", searched_cells=searched
            ).attach(trainer)
        for handler in self.handlers:
            handler.attach(trainer)
        if self.progress and main:
            ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": out["loss"]})
        trainer.run()
        genotype = network.genotype()
        if main:
            logger.info(f"{stage.value} stage finished after epoch {trainer.state.epoch}:\n{format_genotype(genotype)}")
        return genotype

    def run(self) -> Genotype:
        """Run the three stages in order; write and print the searched genotype (rank 0 under ``torchrun``)."""
        genotype = self.run_stage(SearchStage.FEATURE)
        for stage in (SearchStage.DEFORMATION, SearchStage.OBJECTIVE):
            genotype = self.run_stage(stage, previous=genotype)
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            genotype.to_json(self.output_dir / "genotype.json")
            table = format_genotype(genotype)
            print(f"\nSearched genotype ({self.output_dir / 'genotype.json'}):\n{table}", flush=True)
        return genotype

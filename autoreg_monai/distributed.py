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
"""The few ``torch.distributed`` operations the search and the training need under ``torchrun``.

Every function is a no-op (or the single-process answer) when no process group is initialised, so the
same code runs in one process and in N. The process group itself is created by the bundle's
``configs/multi_gpu_*.json`` overlay (``torch.distributed.init_process_group``, as MONAI's own bundles do).

The bilevel search cannot use ``DistributedDataParallel``: its hypergradient takes gradients at virtual
weights through ``torch.func.functional_call`` and ``torch.autograd.grad``, which bypass DDP's gradient
hooks. It averages each gradient over the ranks with :func:`all_reduce_mean` instead, so every rank
applies the same update to ω, α and λ and they stay identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_mean",
    "any_rank",
    "broadcast_module",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "local_device",
    "setup_device",
    "shutdown",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (a ``torchrun`` run)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    return get_rank() == 0


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is available (``torchrun`` sets ``LOCAL_RANK``;
    0 without it), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def setup_device(device: torch.device | str, cudnn_benchmark: bool = True) -> torch.device:
    """Make ``device`` this process's current CUDA device and let cuDNN pick its fastest kernels.

    ``cudnn_benchmark`` suits the search and the training, whose pairs all have the bundle's working grid:
    cuDNN times its algorithms on the first batch of a shape and reuses the fastest. Nothing happens on CPU.

    Returns:
        ``device`` as a ``torch.device``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cudnn_benchmark
    return device


def shutdown() -> None:
    """End this process's part of the run: wait at a barrier until every rank got here, then destroy the process
    group (a no-op without one).

    Without the barrier a rank that finishes first tears its connections down while a peer still reads from
    them, and the peer's communication thread can abort the process (``terminate called without an active
    exception``) after a run that was otherwise complete.
    """
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over the ranks, in one collective.

    Args:
        tensors: floating-point tensors of any shapes on one device, e.g. the gradients of every weight.

    Returns:
        New tensors of the same shapes and dtypes; the inputs themselves when not distributed.
    """
    tensors = list(tensors)
    world = get_world_size()
    if world == 1 or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])  # one buffer: one collective
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on at least one rank, so that every rank takes the same branch."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of ``module`` on rank ``src`` to every rank (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (any picklable object; returned unchanged in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]

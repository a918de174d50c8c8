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
"""What the benchmark scripts share: a description of the machine, and writing their JSON atomically."""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import queue as queues
import resource
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine", "peak_rss_mib", "run_isolated", "write_json"]


def machine(device: str = "cpu") -> dict[str, Any]:
    """Date, CPU model, logical CPUs, torch threads and versions (and the GPU for a CUDA device)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cpus": mp.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(out)
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss`` is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(function: Callable[..., dict[str, Any]], arguments: tuple, queue: Any) -> None:
    try:
        queue.put(function(*arguments))
    except Exception as error:  # handed back to the parent, which decides whether the run goes on
        queue.put({"error": f"{type(error).__name__}: {error}"})


def run_isolated(
    function: Callable[..., dict[str, Any]], *arguments: Any, start_method: str = "fork"
) -> dict[str, Any]:
    """``function(*arguments)`` in a fresh process, so its peak memory and caches are its own.

    ``"fork"`` (the default, CPU runs) starts the child with the parent's imported modules, saving the
    10-20 s an interpreter takes to import torch and MONAI; the parent must not have run multi-threaded
    torch work before. ``"spawn"`` starts a clean interpreter (needed once CUDA may be initialised);
    ``function`` must then be importable by the child (a module-level function of the script). Returns
    its result dict, or ``{"error": "<type>: <message>"}`` when it raised or died without a result (killed
    for memory, for instance).
    """
    context = mp.get_context(start_method)
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, arguments, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not process.is_alive():
                result = {"error": f"the process ended with exit code {process.exitcode} before reporting a result"}
                break
    process.join()
    return result

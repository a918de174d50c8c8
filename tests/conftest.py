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
"""Shared test fixtures: the real sample data folder, seeded tensors, the CLI in-process, the brain_t1 searcher."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_data_dir() -> Path:
    """``$AUTOREG_SAMPLE_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("AUTOREG_SAMPLE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real sample data folder; tests using it are skipped where it is not present."""
    root = sample_data_dir()
    if not (root / "README.md").is_file():
        pytest.skip(f"real sample data not found at {root} (set AUTOREG_SAMPLE_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _demo_dir(tmp_path_factory):
    """Generate demo data sets into the test session's temporary folder, never into the user's cache."""
    previous = os.environ.get("AUTOREG_DEMO_DIR")
    os.environ["AUTOREG_DEMO_DIR"] = str(tmp_path_factory.mktemp("demo"))
    yield
    if previous is None:
        os.environ.pop("AUTOREG_DEMO_DIR", None)
    else:
        os.environ["AUTOREG_DEMO_DIR"] = previous


@pytest.fixture()
def autoreg_main(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """The console script's entry point, ``autoreg_monai.cli:main``, in this process: ``(exit code, stdout, stderr)``.

    For the refusals, which must not pay a fresh interpreter's start-up each; the successful commands of
    tests/test_cli_commands.py run the installed script through ``subprocess``.
    """
    from autoreg_monai.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as stop:
            code = int(stop.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def brain_t1_searcher() -> Callable[..., Any]:
    """Build the brain_t1 bundle's ``AutoRegSearch`` from its search config: ``make(output_dir, **overrides)``.

    The caller runs it from the repository root (the config's ``%`` references are relative to it).
    """
    from monai.bundle import ConfigParser

    def make(output_dir: Path, **overrides: Any) -> Any:
        parser = ConfigParser()
        parser.read_config(REPO_ROOT / "bundles" / "brain_t1" / "configs" / "search.json")
        parser.update({**overrides, "output_dir": str(output_dir)})
        parser.parse()
        searcher = parser.get_parsed_content("searcher")
        searcher.progress = False
        return searcher

    return make

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
"""StagedOutputs: a run's files appear together or not at all, and a killed run's leftovers are settled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import autoreg_monai
from autoreg_monai.utils import StagedOutputs, recover_staging
from autoreg_monai.utils.staging import STAGING_PREFIX

NAMES = ["p_warped.nii.gz", "p_ddf.nii.gz", "p_affine.tfm"]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_files_appear_together_and_the_staging_folder_goes(tmp_path):
    with StagedOutputs(tmp_path / "out") as outputs:
        for name in NAMES[:2]:
            (outputs.staging / name).write_text(name)
        assert _visible(tmp_path / "out") == []
        assert outputs.publish(NAMES) == sorted(NAMES[:2])
    assert sorted(os.listdir(tmp_path / "out")) == sorted(NAMES[:2])  # the staging folder is gone


def test_a_failing_run_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="network failed"):
        with StagedOutputs(tmp_path) as outputs:
            (outputs.staging / NAMES[0]).write_text("x")
            raise RuntimeError("network failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="network failed"):
        with StagedOutputs(tmp_path / "new" / "out"):
            raise RuntimeError("network failed")
    assert list(tmp_path.iterdir()) == [tmp_path / "new"]  # the folder the run made is gone, not its parents


def test_an_earlier_run_is_refused_or_replaced_as_a_whole(tmp_path):
    for name in NAMES:
        (tmp_path / name).write_text("old")
    with pytest.raises(FileExistsError, match=r"already holds p_warped.nii.gz.*pass --overwrite"):
        StagedOutputs(tmp_path).check(["p_warped.nii.gz"])
    with StagedOutputs(tmp_path, overwrite=True) as outputs:
        (outputs.staging / "p_warped.nii.gz").write_text("new")
        outputs.publish(NAMES)
    # the old run's files the new run did not write are gone: no mix of two runs
    assert _visible(tmp_path) == ["p_warped.nii.gz"] and (tmp_path / "p_warped.nii.gz").read_text() == "new"


def test_an_unfinished_staging_folder_of_a_dead_run_is_removed(tmp_path):
    stale = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / NAMES[0]).write_text("half")
    assert recover_staging(tmp_path) == [stale.name]
    assert list(tmp_path.iterdir()) == []


def test_a_dead_run_that_was_publishing_is_finished(tmp_path):
    stale = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-abcd1234"
    stale.mkdir()
    (tmp_path / NAMES[0]).write_text("moved already")
    (stale / NAMES[1]).write_text("still staged")
    (tmp_path / "p_warped_label.nii.gz").write_text("of an older run")
    (stale / "publish.json").write_text(json.dumps({"publish": NAMES[:2], "remove": ["p_warped_label.nii.gz"]}))
    recover_staging(tmp_path)
    assert _visible(tmp_path) == sorted(NAMES[:2])
    assert not stale.exists()


def test_the_staging_folder_of_a_running_process_is_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f"{STAGING_PREFIX}{sleeper.pid}-abcd1234"
        busy.mkdir()
        assert recover_staging(tmp_path) == [] and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_file_as_output_folder_is_refused_before_work(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"out: is a file, not a folder; --out must name a folder"):
        StagedOutputs(tmp_path / "out" / "sub").check_folder()


_WRITER = textwrap.dedent(
    """
    import sys, time, types
    package = types.ModuleType("autoreg_monai")  # the real modules, without the package's heavy __init__
    package.__path__ = [sys.argv[1]]
    sys.modules["autoreg_monai"] = package
    from autoreg_monai.utils.staging import StagedOutputs
    with StagedOutputs(sys.argv[2], overwrite=True) as outputs:
        for name in sys.argv[3:]:
            (outputs.staging / name).write_bytes(b"x" * 1_000_000)
            time.sleep(0.05)
        outputs.publish(sys.argv[3:])
    """
)
_PACKAGE = str(Path(autoreg_monai.__file__).parent)


def test_killed_at_random_moments_the_folder_holds_nothing_new_or_the_whole_set(tmp_path):
    """kill -9 of a writer at random moments of its writing; the next run settles the folder, no temporaries."""
    names = [f"p_{i}.nii.gz" for i in range(6)]
    out = tmp_path / "out"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _WRITER, _PACKAGE, str(tmp_path / "timing"), *names], check=True)
    duration = time.perf_counter() - start  # start-up, then about 0.3 s of writing
    rng = random.Random(0)
    for _ in range(10):
        process = subprocess.Popen([sys.executable, "-c", _WRITER, _PACKAGE, str(out), *names])
        time.sleep(max(0.0, duration - rng.uniform(-0.3, 0.6)))  # before, during and after the writing
        process.send_signal(signal.SIGKILL)
        process.wait()
        if out.is_dir():
            assert _visible(out) in ([], sorted(names)) or any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir())
            recover_staging(out)
            assert _visible(out) in ([], sorted(names))
            assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    subprocess.run([sys.executable, "-c", _WRITER, _PACKAGE, str(out), *names], check=True)
    assert sorted(os.listdir(out)) == sorted(names)

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Smoke runs of the benchmark scripts at a tiny size, so that they do not rot (no assertion on speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )


def test_inference_speed_writes_its_table_and_json(tmp_path):
    out = tmp_path / "speed.json"
    result = _run(
        "inference_speed.py", "--sizes", "16x16x16", "--models", "autoreg,voxelmorph", "--repeats", "2",
        "--warmup", "1", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| model | size | median s | ratio to VoxelMorph |" in result.stdout
    report = json.loads(out.read_text())
    assert report["benchmark"] == "inference_speed" and report["machine"]["torch"]
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"autoreg", "voxelmorph"}
    for row in rows.values():
        assert row["size"] == "16x16x16" and row["threads"] == 1 and len(row["times_s"]) == 2
        assert row["median_s"] > 0 and row["parameters"] > 0 and row["weights_mib"] > 0 and row["peak_rss_mib"] > 0
    assert rows["voxelmorph"]["ratio_to_voxelmorph"] == 1.0
    assert rows["autoreg"]["ratio_to_voxelmorph"] == rows["autoreg"]["median_s"] / rows["voxelmorph"]["median_s"]

# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Per-pair evaluation report: metrics.csv, summary.json and panels."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import torch

from autoreg_monai.engines import METRIC_COLUMNS, RegistrationReport, pair_file_stem
from autoreg_monai.engines.report import MAX_STEM_BYTES
from autoreg_monai.metrics import warp_labels


def _output(shift: float) -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 16, 16, 16, dtype=torch.int64)
    label[:, 4:10, 4:12, 4:12] = 1
    label[:, 10:13, 4:12, 4:12] = 2
    moving_label = torch.roll(label, 2, dims=1)
    ddf = torch.zeros(3, 16, 16, 16)
    ddf[0] = shift  # pulls the moving labels back by ``shift`` voxels along axis 0
    image = label.float() / 2
    return {
        "moving_image": torch.roll(image, 2, dims=1),
        "fixed_image": image,
        "warped_image": image,
        "ddf": ddf,
        "moving_label": moving_label,
        "fixed_label": label,
        "warped_label": warp_labels(moving_label[None], ddf[None])[0],
        "runtime": torch.tensor(0.25),
    }


def test_report_scores_every_pair_and_label(tmp_path):
    report = RegistrationReport(tmp_path, labels=[1, 2], label_names={1: "body", 2: "cap"})
    report.add_pair(_output(2.0), "m1.nii.gz -> atlas.nii.gz")
    report.add_pair(_output(0.0), "m2.nii.gz -> atlas.nii.gz")
    report.write()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [(r["pair"], r["label"], r["name"]) for r in rows] == [
        ("m1.nii.gz -> atlas.nii.gz", "1", "body"),
        ("m1.nii.gz -> atlas.nii.gz", "2", "cap"),
        ("m2.nii.gz -> atlas.nii.gz", "1", "body"),
        ("m2.nii.gz -> atlas.nii.gz", "2", "cap"),
    ]
    assert float(rows[0]["dice"]) == 1.0 and float(rows[0]["dice_before"]) < 0.8  # the shift is undone exactly
    assert float(rows[2]["dice"]) == float(rows[2]["dice_before"])  # zero field: nothing changes
    assert float(rows[0]["hd95"]) == 0.0 and float(rows[0]["hd95_before"]) == 2.0
    assert float(rows[0]["folding_percent"]) == 0.0 and float(rows[0]["runtime_s"]) == 0.25
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_pairs"] == 2 and summary["labels"] == [1, 2]
    assert summary["per_pair"][0]["mean_dice"] == 1.0
    assert summary["per_label"]["2"]["name"] == "cap"
    assert abs(summary["mean"]["mean_dice"] - (1.0 + summary["per_pair"][1]["mean_dice"]) / 2) < 1e-6
    panel = matplotlib.image.imread(tmp_path / "panels" / "m1_to_atlas.png")
    assert panel.shape[0] > 400 and panel.shape[1] > 800


def test_pair_file_stem():
    assert pair_file_stem("sub 01_T1.nii.gz -> atlas.nii") == "sub_01_T1_to_atlas"
    assert pair_file_stem("a.mha->b.nrrd") == "a_to_b"


def test_pair_file_stems_keep_other_scripts_and_stay_short():
    """Names differing only in non-ASCII letters stay apart; a long name is cut, with a hash of the whole."""
    assert pair_file_stem("患者01.nii.gz -> atlas.nii.gz") == "患者01_to_atlas"
    assert pair_file_stem("病人01.nii.gz -> atlas.nii.gz") == "病人01_to_atlas"
    long_a, long_b = "x" * 247 + "a.nii.gz -> atlas.nii.gz", "x" * 247 + "b.nii.gz -> atlas.nii.gz"
    stem_a, stem_b = pair_file_stem(long_a), pair_file_stem(long_b)
    assert stem_a != stem_b
    assert len(stem_a.encode()) == MAX_STEM_BYTES and stem_a.startswith("x" * 150)
    assert len(pair_file_stem("éé" * 150 + ".nii -> b.nii").encode()) <= MAX_STEM_BYTES  # cut on a character

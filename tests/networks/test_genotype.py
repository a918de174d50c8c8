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
from __future__ import annotations

import json
import math

import pytest
import torch

from autoreg_monai.networks.blocks.ops import PRIMITIVES
from autoreg_monai.networks.genotype import GENOTYPE_SCHEMA_VERSION, Genotype, edge_decisions, loss_term_names


def test_derive_takes_the_argmax_of_every_edge():
    alpha_f = torch.zeros(6, 8)
    alpha_d = torch.zeros(6, 8)
    for edge in range(6):
        alpha_f[edge, edge] = 1.0
        alpha_d[edge, 7 - edge] = 2.0
    genotype = Genotype.derive(alpha_f, alpha_d, loss_weights=(1, 2, 3, 4))
    assert genotype.feature == (PRIMITIVES[0:3], PRIMITIVES[3:6])
    assert genotype.deformation == ((PRIMITIVES[7], PRIMITIVES[6], PRIMITIVES[5]), PRIMITIVES[4:1:-1])
    assert genotype.loss_weights == (1.0, 2.0, 3.0, 4.0)
    assert genotype.num_scales == 2


def test_json_round_trip(tmp_path):
    genotype = Genotype.derive(torch.randn(6, 8), torch.randn(6, 8), loss_weights=(9.5, 14.2, 3.3, 0.7))
    path = tmp_path / "genotype.json"
    genotype.to_json(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == GENOTYPE_SCHEMA_VERSION
    assert data["loss_terms"] == ["similarity", "regularization", "similarity_1/2", "similarity_1/4"]
    assert Genotype.from_json(path) == genotype
    assert [p.name for p in tmp_path.iterdir()] == ["genotype.json"]  # no temporary file left


def test_invalid_genotypes_are_refused():
    good = Genotype.paper_default().to_dict()
    with pytest.raises(ValueError, match="unknown operation 'skip_connect'"):
        Genotype.from_dict({**good, "feature": [["skip_connect", "conv_3x3", "conv_3x3"], good["feature"][1]]})
    with pytest.raises(ValueError, match="expected 3 operations"):
        Genotype.from_dict({**good, "deformation": [["conv_3x3", "conv_3x3"], good["deformation"][1]]})
    with pytest.raises(ValueError, match="2 feature scales but 1 deformation scales"):
        Genotype.from_dict({**good, "deformation": good["deformation"][:1]})
    with pytest.raises(ValueError, match="need 4 loss weights"):
        Genotype.from_dict({**good, "loss_weights": [1.0, 2.0]})
    with pytest.raises(ValueError, match="finite and positive"):
        Genotype.from_dict({**good, "loss_weights": [1.0, 0.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match=r"unknown genotype key\(s\) \['_target_'\]; a genotype holds only"):
        Genotype.from_dict({**good, "_target_": "os.system"})
    with pytest.raises(ValueError, match="loss_weights must be a list of numbers, got \\[\\{'_target_'"):
        Genotype.from_dict({**good, "loss_weights": [{"_target_": "os.system"}, 1, 1, 1]})
    with pytest.raises(ValueError, match="loss_weights must be a list of numbers"):
        Genotype.from_dict({**good, "loss_weights": [True, 1, 1, 1]})
    with pytest.raises(ValueError, match="feature must be a list of lists of operation names, got conv_3x3"):
        Genotype.from_dict({**good, "feature": "conv_3x3"})
    with pytest.raises(ValueError, match="schema_version 99"):
        Genotype.from_dict({**good, "schema_version": 99})
    with pytest.raises(ValueError, match=r"must have shape \(num_scales \* 3, 8\)"):
        Genotype.derive(torch.zeros(5, 8), torch.zeros(6, 8))


def test_edge_decisions_give_the_weight_and_margin_of_each_choice():
    alpha = torch.zeros(6, 8)
    alpha[0, 2] = math.log(6.0)  # weights: 6/13 for op 2, 1/13 for the seven others
    alpha[1, 5], alpha[1, 4] = 0.2, 0.1  # nearly uniform: an argmax close to noise
    rows = edge_decisions(alpha, PRIMITIVES)
    assert len(rows) == 6 and [(r["scale"], r["edge"]) for r in rows[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert rows[0]["op"] == PRIMITIVES[2] and rows[0]["weight"] == pytest.approx(6 / 13, abs=1e-4)
    assert rows[0]["margin"] == pytest.approx(5 / 13, abs=1e-4) and rows[0]["decided"]
    assert rows[1]["op"] == PRIMITIVES[5] and rows[1]["runner_up"] == PRIMITIVES[4] and not rows[1]["decided"]
    assert rows[1]["margin"] == pytest.approx(
        (math.exp(0.2) - math.exp(0.1)) / (math.exp(0.2) + math.exp(0.1) + 6), abs=1e-4
    )


def test_unreadable_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1, "feature": [')
    with pytest.raises(ValueError, match="broken.json: not a valid genotype file"):
        Genotype.from_json(path)


def test_loss_term_names():
    assert loss_term_names(5)[-1] == "similarity_1/8"
    with pytest.raises(ValueError):
        loss_term_names(1)

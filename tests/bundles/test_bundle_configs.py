# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Every scenario bundle: metadata valid against the bundle schema, settings that validate, workflows that parse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import verify_metadata
from monai.bundle.reference_resolver import ReferenceResolver

from autoreg_monai.bundle import WORKFLOW_RUN_IDS, compose_workflow, load_bundle_config, load_scenario

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("brain_t1", "brain_t2", "brain_t1t2", "knee_t1")
WORKFLOWS = ("search", "train", "evaluate", "inference")
STAGES = ("feature", "deformation", "objective")
SCHEMA = REPO_ROOT / "bundles" / "schema" / "meta_schema.json"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_against_the_schema(bundle):
    verify_metadata(meta_file=str(REPO_ROOT / f"bundles/{bundle}/configs/metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((REPO_ROOT / f"bundles/{bundle}/configs/metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], pred["num_channels"], pred["format"]) == (2, 3, "displacement")
    assert (REPO_ROOT / f"bundles/{bundle}/LICENSE").is_file()
    assert (REPO_ROOT / f"bundles/{bundle}/docs/README.md").is_file()


def test_schema_rejects_incomplete_metadata(tmp_path):
    meta = json.loads((REPO_ROOT / "bundles/brain_t1/configs/metadata.json").read_text())
    del meta["authors"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="authors"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((REPO_ROOT / "bundles/brain_t1/configs/metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_composed_workflow_parses_and_every_reference_is_defined(bundle, workflow, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing depends on the working directory
    parser = compose_workflow(REPO_ROOT / "bundles" / bundle, workflow, quiet=True).parser
    parser.parse()
    content = parser.get()
    assert content["bundle_root"] == str(REPO_ROOT / "bundles" / bundle)
    missing = [ref for ref in ReferenceResolver.find_refs_in_config(content, "") if ref not in parser]
    assert not missing, f"{workflow} refers to undefined ids {missing}"
    assert WORKFLOW_RUN_IDS[workflow] in content
    assert parser.get_parsed_content("output_dir") == str(REPO_ROOT / "bundles" / bundle / "models")


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_a_bundle_config_only_hands_monai_runner_over_to_the_package(bundle, workflow):
    config = json.loads((REPO_ROOT / f"bundles/{bundle}/configs/{workflow}.json").read_text())
    expected = {
        "imports": ["$from autoreg_monai.bundle import run_from_monai"],
        WORKFLOW_RUN_IDS[workflow]: f"$run_from_monai('{workflow}')",
    }
    if workflow == "search":  # one stage at a time
        expected.update({f"search_{s}": f"$run_from_monai('search', 'search_{s}')" for s in STAGES})
    if workflow == "inference":  # for MONAI's scripts that read the network, e.g. ckpt_export
        expected["imports"].append("$from autoreg_monai.bundle import bundle_item")
        expected["network_def"] = "$bundle_item('inference', 'network_def')"
    assert config == expected


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow", ["search", "train"])
def test_multi_gpu_overlay_is_one_setting_and_adds_the_distributed_wiring(bundle, workflow):
    overlay = REPO_ROOT / f"bundles/{bundle}/configs/multi_gpu_{workflow}.json"
    assert not overlay.is_symlink() and json.loads(overlay.read_text()) == {"multi_gpu": True}
    parser = compose_workflow(REPO_ROOT / "bundles" / bundle, workflow, quiet=True, multi_gpu=True).parser
    parser.parse()
    content = parser.get()
    missing = [ref for ref in ReferenceResolver.find_refs_in_config(content, "") if ref not in parser]
    assert not missing, f"{workflow} + overlay refer to undefined ids {missing}"
    assert content["train_sampler"]["_target_"] == "DistributedSampler"
    assert any("init_process_group" in expression for expression in content["initialize"])
    assert content["finalize"] == ["$autoreg_monai.distributed.shutdown()"]  # barrier, then destroy the group
    if workflow == "train":
        assert content["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
        assert content["validate"]["evaluator"]["network"] == "@network_def"  # validation without DDP's hooks


def test_the_evaluate_workflow_has_no_multi_gpu_form():
    with pytest.raises(ValueError, match="multi_gpu: the evaluate workflow has no multi-GPU form"):
        compose_workflow(REPO_ROOT / "bundles/brain_t1", "evaluate", quiet=True, multi_gpu=True)


def test_scenarios_differ_where_the_paper_says():
    settings = {b: load_scenario(REPO_ROOT / "bundles" / b) for b in BUNDLES}
    assert {b: (c["scenario"], c["similarity"], c["pairing"]) for b, c in settings.items()} == {
        "brain_t1": ("brain_t1", "lncc", "atlas"),
        "brain_t2": ("brain_t2", "lncc", "atlas"),
        "brain_t1t2": ("brain_t1t2", "mind", "cross_modal"),
        "knee_t1": ("knee_t1", "lncc", "atlas"),
    }
    loss = load_bundle_config(REPO_ROOT / "bundles/brain_t1t2", "inference").get_parsed_content("registration_loss")
    assert {type(s).__name__ for s in loss.similarity.similarities} == {"MINDSSCLoss"}


def test_settings_fill_what_a_workflow_leaves_open_and_workflows_settings_win(tmp_path):
    bundle = tmp_path / "anywhere" / "mine"
    shutil.copytree(REPO_ROOT / "bundles/brain_t1/configs", bundle / "configs")
    settings = json.loads((bundle / "configs/scenario.json").read_text())
    settings.update(spatial_size=[96, 96, 96], refine_steps=3, workflows={"inference": {"refine_steps": 4}})
    (bundle / "configs/scenario.json").write_text(json.dumps(settings))

    def value(workflow, key):
        return compose_workflow(bundle, workflow, quiet=True).parser[key]

    assert value("train", "spatial_size") == [96, 96, 96]
    assert value("search", "spatial_size") == [64, 64, 64]  # the search's own small grid stays
    assert value("evaluate", "refine_steps") == 3
    assert value("inference", "refine_steps") == 4
    assert value("inference", "prealign") == "affine"  # the inference workflow's own default, not the scenario's
    assert compose_workflow(bundle, "inference", quiet=True, refine_steps=0).parser["refine_steps"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"similarity": "$__import__('os').system('true')"}, "similarity: .* is not one of"),
        ({"scenario": "@network_def"}, "scenario: .* does not match"),
        ({"spatial_size": "%configs/x.json#y"}, "spatial_size: .* is not of type 'array'"),
        ({"network_def": {"_target_": "os.system"}}, "Additional properties are not allowed .*network_def"),
        (
            {"workflows": {"search": {"genotype": "/etc/passwd"}}},
            "workflows/search: Additional properties are not allowed .*genotype",
        ),
        ({"refine_steps": -1}, "refine_steps: -1 is less than the minimum of 0"),
        ({"demo_options": {"size": "$1"}}, "demo_options/size: '\\$1' is not of type 'integer'"),
    ],
)
def test_settings_that_are_not_plain_values_are_refused_naming_the_file_and_the_setting(tmp_path, change, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundles/brain_t1/configs", bundle / "configs")
    settings = json.loads((bundle / "configs/scenario.json").read_text())
    settings.update(change)
    (bundle / "configs/scenario.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=f"{bundle / 'configs/scenario.json'}: refused, .*{message}"):
        load_scenario(bundle)


def test_a_bundle_without_settings_or_with_broken_json_is_refused(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundles/brain_t1/configs", bundle / "configs")
    (bundle / "configs/scenario.json").write_text("{not json")
    with pytest.raises(ValueError, match="scenario.json: not a readable JSON file"):
        load_scenario(bundle)
    (bundle / "configs/scenario.json").unlink()
    with pytest.raises(ValueError, match="scenario.json: missing"):
        load_scenario(bundle)


def test_the_bundles_json_is_at_most_half_of_the_copied_configs_it_replaces():
    lines = sum(len(p.read_text().splitlines()) for p in (REPO_ROOT / "bundles").rglob("*.json"))
    assert lines <= 3908 // 2, f"the bundles hold {lines} lines of JSON"


def test_search_learning_rates_and_entropy_weight_are_flat_ids_a_command_line_can_set():
    """MONAI's runner cannot set ``arch_optimizer#lr`` through a bundle config that only hands over: flat ids."""
    overrides = {"search_learning_rate": 2e-4, "arch_learning_rate": 0.01, "hyper_learning_rate": 0.02}
    parser = compose_workflow(REPO_ROOT / "bundles/brain_t1", "search", quiet=True, entropy_weight=0.0, **overrides)
    parser = parser.parser
    parser.parse()
    weight = torch.nn.Parameter(torch.zeros(1))
    for optimizer, name in (("weight_optimizer", "search_learning_rate"), ("arch_optimizer", "arch_learning_rate"),
                            ("hyper_optimizer", "hyper_learning_rate")):  # fmt: skip
        assert parser.get_parsed_content(optimizer)([weight]).param_groups[0]["lr"] == overrides[name]
    assert parser.get_parsed_content("searcher#entropy_weight") == 0.0


def test_the_search_network_takes_the_channel_fraction_a_command_line_sets():
    for fraction in (0.5, 1.0):
        parser = compose_workflow(
            REPO_ROOT / "bundles/brain_t1", "search", quiet=True, search_channel_fraction=fraction
        )
        parser = parser.parser
        parser.parse()
        network = parser.get_parsed_content("network_def")()
        assert network.channel_fraction == fraction
        assert {edge.groups for cell in network.moving_features for edge in cell.edges} == {1, round(1 / fraction)}

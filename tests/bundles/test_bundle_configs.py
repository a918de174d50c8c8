# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""Every scenario bundle: metadata valid against the bundle schema, configs that parse and agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, verify_metadata
from monai.bundle.reference_resolver import ReferenceResolver

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ("brain_t1", "brain_t2", "brain_t1t2", "knee_t1")
WORKFLOWS = ("search", "train", "evaluate", "inference")
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
def test_config_parses_and_every_reference_is_defined(bundle, workflow, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the % macros are relative to the repository root
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/configs/{workflow}.json")
    parser.parse()
    content = parser.get()
    assert content["bundle_root"] == f"bundles/{bundle}"
    missing = [ref for ref in ReferenceResolver.find_refs_in_config(content, "") if ref not in parser]
    assert not missing, f"{workflow}.json refers to undefined ids {missing}"
    run_id = {"search": "search", "train": "train", "evaluate": "evaluate", "inference": "run"}[workflow]
    assert run_id in content


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_workflow_configs_are_shared_between_bundles(workflow):
    """Only common.json differs between scenarios; the workflow files are the same but for their bundle path."""
    reference = (REPO_ROOT / f"bundles/brain_t1/configs/{workflow}.json").read_text()
    for bundle in BUNDLES[1:]:
        text = (REPO_ROOT / f"bundles/{bundle}/configs/{workflow}.json").read_text()
        assert text.replace(f"bundles/{bundle}/", "bundles/brain_t1/") == reference


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow", ["search", "train"])
def test_multi_gpu_overlays_are_shared_and_refer_only_to_defined_ids(bundle, workflow, monkeypatch):
    overlay = REPO_ROOT / f"bundles/{bundle}/configs/multi_gpu_{workflow}.json"
    assert overlay.resolve() == (REPO_ROOT / f"bundles/multi_gpu/multi_gpu_{workflow}.json").resolve()
    monkeypatch.chdir(REPO_ROOT)
    parser = ConfigParser()
    parser.read_config([f"bundles/{bundle}/configs/{workflow}.json", str(overlay)])
    parser.parse()
    content = parser.get()
    missing = [ref for ref in ReferenceResolver.find_refs_in_config(content, "") if ref not in parser]
    assert not missing, f"{workflow}.json + overlay refer to undefined ids {missing}"
    assert content["train_sampler"]["_target_"] == "DistributedSampler"
    assert any("init_process_group" in expression for expression in content["initialize"])
    assert any("destroy_process_group" in expression for expression in content["finalize"])
    if workflow == "train":
        assert content["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
        assert content["validate"]["evaluator"]["network"] == "@network_def"  # validation without DDP's hooks


def test_scenarios_differ_where_the_paper_says():
    common = {b: json.loads((REPO_ROOT / f"bundles/{b}/configs/common.json").read_text()) for b in BUNDLES}
    assert {b: (c["scenario"], c["similarity"], c["pairing"]) for b, c in common.items()} == {
        "brain_t1": ("brain_t1", "lncc", "atlas"),
        "brain_t2": ("brain_t2", "lncc", "atlas"),
        "brain_t1t2": ("brain_t1t2", "mind", "cross_modal"),
        "knee_t1": ("knee_t1", "lncc", "atlas"),
    }
    strip = {"bundle_root", "scenario", "similarity", "pairing"}
    shared = [{k: v for k, v in c.items() if k not in strip} for c in common.values()]
    assert all(s == shared[0] for s in shared)

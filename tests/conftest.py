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

import json
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
    """Build the brain_t1 bundle's ``AutoRegSearch`` from its search workflow: ``make(output_dir, **overrides)``."""
    from autoreg_monai.bundle import load_bundle_config

    def make(output_dir: Path, **overrides: Any) -> Any:
        parser = load_bundle_config(REPO_ROOT / "bundles" / "brain_t1", "search", **overrides, output_dir=output_dir)
        searcher = parser.get_parsed_content("searcher")
        searcher.progress = False
        return searcher

    return make


@pytest.fixture()
def phantom_scans(tmp_path: Path) -> dict[str, str]:
    """A generated 32³ pair written as NIfTI (2 mm voxels), for commands that only need some valid scans."""
    import nibabel as nib
    import numpy as np

    from autoreg_monai.data.phantom import make_phantom_pair

    pair = make_phantom_pair((32, 32, 32), seed=0, magnitude=2.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {}
    for role in ("fixed", "moving"):
        paths[role] = str(tmp_path / f"{role}.nii.gz")
        nib.save(nib.Nifti1Image(pair[f"{role}_image"][0, 0].numpy().astype(np.float32), affine), paths[role])
    return paths


class PickledPayload:
    """Unpickling this calls ``Path(marker).touch()``: code in a weights or array file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def hostile_values(bundle: Path, markers: Path) -> dict[str, Any]:
    """One value per class of config payload a hostile author would plant in ``bundle``; each touches
    ``markers/<class>``. Every class is live: tests/bundles/test_hostile_bundles.py runs each one through MONAI."""
    m = {name: str(markers / name) for name in HOSTILE_CLASSES}
    return {
        "builtin_import": f"$__import__('os').system('touch {m['builtin_import']}')",
        "os_through_monai": f"$monai.utils.optional_import('os')[0].system('touch {m['os_through_monai']}')",
        "subscript_root": f"$[__import__('pathlib')][0].Path('{m['subscript_root']}').touch()",
        "run_cmd": f"$monai.utils.run_cmd(['touch', '{m['run_cmd']}'])",
        "collect_env_run": f"$torch.utils.collect_env.run('touch {m['collect_env_run']}')",
        "target_subprocess": {"_target_": "subprocess.run", "args": ["touch", m["target_subprocess"]]},
        "pickle_reader": {"_target_": "numpy.load", "file": f"{bundle}/configs/array.npy", "allow_pickle": True},
        "macro_elsewhere": f"%{bundle}/configs/extra/payload.json#code",
        "shadowed_exec": f"$(lambda exec: exec)(exec)(\"__import__('os').system('touch {m['shadowed_exec']}')\")",
        "import_then_attribute": f"$os.system('touch {m['import_then_attribute']}')",
        "nested_parser": "$monai.bundle.ConfigParser({'x': \"$__import__('os').system('touch "
        + m["nested_parser"]
        + "')\"}).get_parsed_content('x')",
        "requires": {"_target_": "Identity", "_requires_": f"$__import__('os').system('touch {m['requires']}')"},
    }


HOSTILE_CLASSES = (
    "builtin_import",
    "os_through_monai",
    "subscript_root",
    "run_cmd",
    "collect_env_run",
    "target_subprocess",
    "pickle_reader",
    "macro_elsewhere",
    "shadowed_exec",
    "import_then_attribute",
    "nested_parser",
    "requires",
)
"""The config payload classes of :func:`hostile_values` (plus a logging configuration and pickled weights)."""


def plant_hostile_payloads(bundle: Path, markers: Path) -> None:
    """Plant every payload class in every JSON file of ``bundle`` that is not validated data, in its logging
    configuration, in an extra JSON file a macro names and in a pickled array; the run ids run them too."""
    import numpy as np

    markers.mkdir(parents=True, exist_ok=True)
    values = hostile_values(bundle, markers)
    payloads = {f"payload_{name}": value for name, value in values.items()}
    expressions = [v for v in values.values() if isinstance(v, str) and v.startswith("$")]
    (bundle / "configs" / "extra").mkdir(exist_ok=True)
    (bundle / "configs" / "extra" / "payload.json").write_text(
        json.dumps({"code": f"$__import__('os').system('touch {markers / 'macro_elsewhere'}')", **payloads})
    )
    np.save(bundle / "configs" / "array.npy", np.array([PickledPayload(markers / "pickle_reader")], dtype=object))
    for path in sorted((bundle / "configs").glob("*.json")):
        if path.name == "scenario.json":
            continue
        config = json.loads(path.read_text())
        config.update(payloads)
        if path.name != "metadata.json":
            config["imports"] = ["$import os", *config.get("imports", []), *expressions]
            for run_id in ("run", "search", "train", "evaluate", "initialize", "finalize", "network_def"):
                config[run_id] = (
                    [*expressions, *config.get(run_id, [])] if run_id != "network_def" else values["target_subprocess"]
                )
        path.write_text(json.dumps(config, indent=2))
    (bundle / "configs" / "logging.conf").write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=f\n[logger_root]\nlevel=INFO\nhandlers=h\n"
        f"[handler_h]\nclass=StreamHandler\nlevel=INFO\nformatter=f\n"
        f"args=(__import__('os').system('touch {markers / 'logging_conf'}'),)\n[formatter_f]\nformat=%(message)s\n"
    )


@pytest.fixture()
def hostile_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of brain_t1 (in a folder not named ``bundles``) with every payload planted: (bundle, markers folder)."""
    import shutil

    bundle = tmp_path / "downloads" / "brain_t1_hostile"
    shutil.copytree(REPO_ROOT / "bundles" / "brain_t1", bundle, ignore=shutil.ignore_patterns("search", "train"))
    markers = tmp_path / "markers"
    plant_hostile_payloads(bundle, markers)
    return bundle, markers

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
"""The MONAI Label app's options (config.json under --conf) and ``autoreg label_app``, without MONAI Label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoreg_monai.label import APP_DIR, app_options, find_served_bundles, write_app

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
SHIPPED = ["brain_t1", "brain_t1t2", "brain_t2", "knee_t1"]


def test_label_app_writes_a_complete_app_serving_the_bundles(autoreg_main, tmp_path: Path) -> None:
    app = tmp_path / "apps" / "autoreg"
    code, out, err = autoreg_main("label_app", "--out", str(app), "--bundles", str(BUNDLES), "--prealign", "rigid")
    assert code == 0, err
    assert f"MONAI Label app in {app} serving {', '.join(SHIPPED)}" in out
    assert f"monailabel start_server --app {app} --studies" in out
    assert sorted(p.name for p in app.iterdir()) == ["config.json", "main.py"]
    assert (app / "main.py").read_text() == (APP_DIR / "main.py").read_text()
    config = json.loads((app / "config.json").read_text())
    assert config == {"bundles": str(BUNDLES), "results": "results", "prealign": "rigid", "trust_bundles": False}
    options = app_options(app)
    assert sorted(options["bundles"]) == SHIPPED
    assert options["bundles"]["brain_t1"] == BUNDLES / "brain_t1"
    assert options["results"] == app / "results"  # relative to the app folder
    assert options["prealign"] == "rigid" and options["trust_bundles"] is False


def test_conf_overrides_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, served = write_app(tmp_path / "app", bundles=BUNDLES)
    assert sorted(served) == SHIPPED
    monkeypatch.chdir(tmp_path)
    conf = {"results": "served", "prealign": "none", "trust_bundles": "true", "models": "ignored", "sam2": "false"}
    options = app_options(app, conf)
    assert options["results"] == tmp_path / "served"  # --conf paths are relative to the working directory
    assert options["prealign"] == "none" and options["trust_bundles"] is True
    one = app_options(app, {"bundles": str(BUNDLES / "knee_t1")})  # one bundle folder
    assert list(one["bundles"]) == ["knee_t1"]


def test_untrained_bundles_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "bundles"
    shutil.copytree(BUNDLES / "knee_t1", folder / "knee_t1", ignore=shutil.ignore_patterns("results", "eval"))
    shutil.copytree(BUNDLES / "knee_t1" / "configs", folder / "untrained" / "configs")
    (folder / "notes.txt").write_text("not a bundle")
    assert find_served_bundles(folder) == {"knee_t1": folder / "knee_t1"}
    shutil.rmtree(folder / "knee_t1")
    with pytest.raises(ValueError, match=r"no trained bundle there \(configs/metadata.json \+ models/model.pt\)"):
        find_served_bundles(folder)


def test_bad_options_are_refused_naming_where_they_come_from(tmp_path: Path) -> None:
    app, served = write_app(tmp_path / "app")  # no bundles yet: the server would have to get --conf bundles
    assert served == {}
    with pytest.raises(ValueError, match=r'no bundles to serve: set "bundles" in .*config\.json .*--conf bundles'):
        app_options(app)
    assert list(app_options(app, {"bundles": str(BUNDLES)})["bundles"]) == SHIPPED
    config = app / "config.json"
    with pytest.raises(ValueError, match=r"^--conf: prealign must be one of none, rigid, affine, got 'bspline'"):
        app_options(app, {"bundles": str(BUNDLES), "prealign": "bspline"})
    with pytest.raises(ValueError, match=r"^--conf: bundles .*nowhere: no such folder"):
        app_options(app, {"bundles": str(tmp_path / "nowhere")})
    config.write_text(json.dumps({"bundles": str(BUNDLES), "trust_bundle": True}))
    with pytest.raises(ValueError, match=rf"^{config}: unknown option\(s\) trust_bundle; the options are bundles,"):
        app_options(app)
    config.write_text(json.dumps({"bundles": str(BUNDLES), "trust_bundles": "maybe"}))
    with pytest.raises(ValueError, match=rf"^{config}: trust_bundles must be true or false, got 'maybe'"):
        app_options(app)
    config.write_text('{"bundles": ')
    with pytest.raises(ValueError, match=rf"^{config}: not a readable JSON file"):
        app_options(app)


def test_label_app_refusals_leave_nothing_behind(autoreg_main, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "main.py").write_text("# someone's app\n")
    code, _, err = autoreg_main("label_app", "--out", str(taken), "--bundles", str(BUNDLES))
    assert code == 1
    assert err.strip() == f"autoreg: error: {taken}: exists and is not an empty folder; choose a new folder for the app"
    assert (taken / "main.py").read_text() == "# someone's app\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = autoreg_main("label_app", "--out", str(tmp_path / "app"), "--bundles", str(empty))
    assert code == 1
    assert f"bundles {empty}: no trained bundle there" in err
    code, _, err = autoreg_main("label_app", "--out", str(tmp_path / "app"), "--prealign", "bspline")
    assert code == 1
    assert err.strip() == "autoreg: error: app options: prealign must be one of none, rigid, affine, got 'bspline'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no app, no staging folder

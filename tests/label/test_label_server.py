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
"""End to end: a real MONAI Label server on 127.0.0.1 serving the shipped brain_t1 bundle over HTTP.

Runs only where MONAI Label is installed (the ``label`` extra, in its own environment: docs/monai_label.md);
skipped in the main test environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")
multipart = pytest.importorskip("requests_toolbelt.multipart.decoder")

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sample_data: Path):
    root = tmp_path_factory.mktemp("label")
    app = root / "app"
    # the app as a user makes it: its config.json names the bundles; --conf results overrides its results folder
    made = subprocess.run(
        [str(BIN / "autoreg"), "label_app", "--out", str(app), "--bundles", str(REPO_ROOT / "bundles")],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    studies = root / "studies"
    studies.mkdir()
    fixed = next((sample_data / "ixi_dlmuse").glob("IXI013*_T1w_2mm.nii.gz"))
    shutil.copy(fixed, studies / "IXI013.nii.gz")  # the fixed image as a datastore image (id IXI013)
    port = _free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        str(BIN / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "results", str(root / "results"), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # until it answers or stops: no deadline, a slow machine only takes longer
            if process.poll() is not None:
                tail = (root / "server.log").read_text()[-4000:]
                pytest.fail(f"the server stopped (rc {process.returncode}):\n{tail}")
            try:
                if requests.get(f"{url}/info/").ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        yield {"url": url, "root": root, "fixed": fixed, "app": app, "studies": studies, "env": env}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert process.poll() is not None  # stopped by the test


def _infer(server: dict, params: dict, moving: Path, output: str = "all") -> requests.Response:
    with open(moving, "rb") as upload:
        return requests.post(
            f"{server['url']}/infer/brain_t1?output={output}",
            files={"file": (moving.name, upload, "application/octet-stream")},
            data={"params": json.dumps(params)},
        )


def test_info_lists_every_bundle_as_a_registration_model(server: dict) -> None:
    info = requests.get(f"{server['url']}/info/").json()
    assert info["name"] == "autoreg_monai"
    assert sorted(info["models"]) == ["brain_t1", "brain_t1t2", "brain_t2", "knee_t1"]
    for model in info["models"].values():
        assert model["type"] == "others"
        assert model["config"]["main_output"] == "warped"


def test_infer_returns_the_warped_image_on_the_fixed_grid_and_metrics(server: dict, sample_data: Path) -> None:
    moving = next((sample_data / "ixi_dlmuse").glob("IXI012*_T1w_2mm.nii.gz"))
    named = {"fixed": "IXI013", "device": "cpu", "moving_name": moving.name}  # an upload's name is a temporary one
    responses = [_infer(server, {"fixed": "IXI013", "device": "cpu"}, moving), _infer(server, named, moving)]
    results = []
    for response in responses:
        assert response.status_code == 200, response.text[:2000]
        parts = multipart.MultipartDecoder(response.content, response.headers["content-type"]).parts
        result = json.loads(next(p for p in parts if b'name="params"' in p.headers[b"Content-Disposition"]).text)
        image = next(p for p in parts if b'name="image"' in p.headers[b"Content-Disposition"])
        returned = server["root"] / f"returned_{result['request_id']}.nii.gz"
        returned.write_bytes(image.content)
        warped, fixed = nib.load(returned), nib.load(server["fixed"])
        assert warped.shape == fixed.shape
        np.testing.assert_allclose(warped.affine, fixed.affine, atol=1e-5)
        data = np.asarray(warped.dataobj, dtype=np.float32)
        assert np.isfinite(data).all() and data.std() > 0
        metrics = result["metrics"]
        assert set(metrics) >= {"ncc_before", "ncc_after", "folding_percent", "runtime_s"}
        assert -1.0 <= metrics["ncc_before"] < metrics["ncc_after"] <= 1.0
        assert 0.0 <= metrics["folding_percent"] < 1.0
        assert metrics["runtime_s"] > 0
        for kind in ("warped", "ddf", "jacobian"):
            written = Path(result["outputs"][kind])
            assert written.parent == server["root"] / "results" / "brain_t1" / result["request_id"]
            assert nib.load(written).shape[:3] == fixed.shape
        assert nib.load(result["outputs"]["ddf"]).shape == (*fixed.shape, 1, 3)
        results.append(result)
    first, second = results
    assert first["request_id"] != second["request_id"]
    assert second["pair"] == "IXI012-HH-1211_T1w_2mm_to_IXI013"
    assert Path(second["outputs"]["warped"]).name == "IXI012-HH-1211_T1w_2mm_to_IXI013_warped.nii.gz"
    assert Path(first["outputs"]["warped"]).exists() and Path(second["outputs"]["warped"]).exists()
    assert first["metrics"]["ncc_after"] == pytest.approx(second["metrics"]["ncc_after"], abs=1e-4)


def test_bad_requests_get_a_clear_error(server: dict, sample_data: Path) -> None:
    moving = next((sample_data / "ixi_dlmuse").glob("IXI012*_T1w_2mm.nii.gz"))
    response = _infer(server, {"device": "cpu"}, moving, output="json")
    assert response.status_code == 400
    assert "the request names no fixed image" in response.json()["detail"]
    response = requests.post(
        f"{server['url']}/infer/brain_t1?image=no_such_scan&output=json",
        data={"params": json.dumps({"fixed": "IXI013"})},
    )
    assert response.status_code == 400
    assert (
        "moving image 'no_such_scan' is neither a file on the server nor an image of the datastore"
        in (response.json()["detail"])
    )
    response = _infer(server, {"fixed": "no_such_atlas", "device": "cpu"}, moving, output="json")
    assert response.status_code == 400
    assert (
        "fixed image 'no_such_atlas' is neither a file on the server nor an image of the datastore"
        in (response.json()["detail"])
    )


def test_a_bad_option_stops_the_server_at_start_up(server: dict) -> None:
    command = [
        str(BIN / "monailabel"), "start_server", "--app", str(server["app"]), "--studies", str(server["studies"]),
        "--conf", "prealign", "bspline", "--host", "127.0.0.1", "--port", str(_free_port()),
    ]  # fmt: skip
    stopped = subprocess.run(command, capture_output=True, text=True, env=server["env"])
    assert stopped.returncode != 0
    log = stopped.stdout + stopped.stderr
    assert "ValueError: --conf: prealign must be one of none, rigid, affine, got 'bspline'" in log

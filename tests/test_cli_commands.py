# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
"""The ``autoreg`` console script, driven through ``subprocess`` on the real sample data."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import load_decathlon_datalist

from autoreg_monai.metrics import dice_per_label
from autoreg_monai.networks import Genotype

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "brain_t1"
SCRIPT = Path(sysconfig.get_path("scripts")) / "autoreg"


def autoreg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (``python -m autoreg_monai`` where the script is not on this venv)."""
    command = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "autoreg_monai"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd)


def _ixi(sample_data: Path, subject: str, kind: str = "T1w") -> Path:
    return next((sample_data / "ixi_dlmuse").glob(f"{subject}*_{kind}_2mm.nii.gz"))


def _dice(warped: Path, fixed_label: Path) -> float:
    a = np.asarray(nib.load(warped).dataobj).astype(np.int64)
    b = np.asarray(nib.load(fixed_label).dataobj).astype(np.int64)
    labels = sorted(set(np.unique(a)) & set(np.unique(b)) - {0})
    return float(dice_per_label(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], labels).nanmean())


def test_register_real_scans_not_pre_aligned(sample_data, tmp_path):
    """Two IXI subjects in native scanner space: the affine pre-alignment raises the DLMUSE label Dice."""
    fixed, moving = _ixi(sample_data, "IXI012"), _ixi(sample_data, "IXI013")
    fixed_label, moving_label = _ixi(sample_data, "IXI012", "dlmuse"), _ixi(sample_data, "IXI013", "dlmuse")
    scores = {}
    for mode in ("none", "affine"):
        out = tmp_path / mode
        result = autoreg(
            "register",
            "--fixed",
            str(fixed),
            "--moving",
            str(moving),
            "--moving_label",
            str(moving_label),
            "--bundle",
            str(BUNDLE),
            "--out",
            str(out),
            "--prealign",
            mode,
            "--refine",
            "2",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "folded voxels" in result.stdout and "NCC" in result.stdout
        assert "for 2 steps)" in result.stdout  # the flag reaches the refinement
        stem = "IXI013-HH-1212_T1w_2mm_to_IXI012-HH-1211_T1w_2mm"
        expected = {f"{stem}_{w}.nii.gz" for w in ("warped", "ddf", "jacobian", "warped_label")}
        if mode == "affine":
            expected.add(f"{stem}_affine.tfm")
        assert {p.name for p in out.iterdir()} == expected
        reference = nib.load(fixed)
        for name in expected - {f"{stem}_affine.tfm"}:
            image = nib.load(out / name)
            assert np.allclose(image.affine, reference.affine, atol=1e-4) and image.shape[:3] == reference.shape
        scores[mode] = _dice(out / f"{stem}_warped_label.nii.gz", fixed_label)
    print(
        f"\nIXI013 -> IXI012, DLMUSE ROIs: Dice {scores['none']:.4f} (prealign none), {scores['affine']:.4f} (affine)"
    )
    assert scores["affine"] > scores["none"]


def test_register_onto_a_dicom_series(sample_data, tmp_path):
    """A DICOM series folder as the fixed image: the outputs lie on the series' grid as SimpleITK reads it."""
    series = sample_data / "dicom_brain_t1_decubitus" / "HFS_t1_fl2d_sag"
    moving = _ixi(sample_data, "IXI014")
    out = tmp_path / "out"
    result = autoreg(
        "register", "--fixed", str(series), "--moving", str(moving), "--bundle", str(BUNDLE), "--out", str(out),
        "--refine", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()

    def corners(image: sitk.Image) -> np.ndarray:
        size = image.GetSize()[:3]
        points = [
            image.TransformContinuousIndexToPhysicalPoint([i * (size[0] - 1), j * (size[1] - 1), k * (size[2] - 1)])
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ]
        return np.array(sorted(np.round(points, 3).tolist()))

    for name in ("warped", "jacobian"):
        written = sitk.ReadImage(str(next(out.glob(f"*_{name}.nii.gz"))))
        assert sorted(written.GetSize()) == sorted(reference.GetSize())
        assert sorted(np.round(written.GetSpacing(), 4)) == sorted(np.round(reference.GetSpacing(), 4))
        assert np.allclose(corners(written), corners(reference), atol=1e-2), name
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(next(out.glob("*_warped.nii.gz")))))
    assert warped.max() > 0  # the moving head lands in the series' field of view


def test_datalist_reports_the_unmatched_image(tmp_path):
    data = np.zeros((8, 8, 8), dtype=np.float32)
    data[2:6, 2:6, 2:6] = 1.0
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(5):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "images" / f"sub{i:02d}.nii.gz"))
        if i < 4:
            nib.save(
                nib.Nifti1Image(data.astype(np.int16), np.eye(4)), str(tmp_path / "labels" / f"sub{i:02d}_seg.nii.gz")
            )
    out = tmp_path / "study" / "datalist.json"
    result = autoreg(
        "datalist",
        "--images",
        str(tmp_path / "images"),
        "--labels",
        str(tmp_path / "labels"),
        "--pairing",
        "pairwise",
        "--val",
        "0.4",
        "--test",
        "0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "images without a label map (1): sub04.nii.gz" in result.stdout
    training = load_decathlon_datalist(str(out), data_list_key="training")
    validation = load_decathlon_datalist(str(out), data_list_key="validation")
    assert len(training) + len(validation) == 5 and all(Path(s["image"]).is_file() for s in training)
    assert all("label" in s for s in validation)


def test_datalist_then_evaluate_on_real_scans(sample_data, tmp_path, autoreg_main):
    """The user's path: a datalist from a folder of real scans, then a bundle workflow run on it by the CLI."""
    images, labels = tmp_path / "scans", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for subject in ("IXI012", "IXI013", "IXI014"):
        (images / _ixi(sample_data, subject).name).symlink_to(_ixi(sample_data, subject))
        (labels / _ixi(sample_data, subject, "dlmuse").name).symlink_to(_ixi(sample_data, subject, "dlmuse"))
    atlas = images / _ixi(sample_data, "IXI012").name
    study = tmp_path / "study"
    code, _, err = autoreg_main(
        "datalist", "--images", str(images), "--labels", str(labels), "--atlas", str(atlas),
        "--atlas_label", str(labels / _ixi(sample_data, "IXI012", "dlmuse").name),
        "--val", "0", "--test", "0.5", "--out", str(study / "datalist.json"),
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert len(load_decathlon_datalist(str(study / "datalist.json"), data_list_key="test")) == 1
    code, out, err = autoreg_main(
        "evaluate", "--bundle", str(BUNDLE), "--dataset_dir", str(study), "--eval_dir", str(tmp_path / "eval"),
        "--prealign", "affine", "--panels", "False", "--quiet",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert out == ""  # --quiet: no log lines, no progress bars
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_pairs"] == 1 and len(summary["labels"]) > 100  # the DLMUSE regions of the real scans
    assert summary["mean"]["mean_dice"] > 0.2


def test_package_fetch_round_trip_and_refusals(tmp_path, autoreg_main):
    archive = tmp_path / "dist" / "brain_t1.zip"
    result = autoreg("package", "--bundle", str(BUNDLE), "--out", str(archive))
    assert result.returncode == 0, result.stderr[-3000:]
    result = autoreg("fetch", "--source", str(archive), "--out", str(tmp_path / "fetched"))
    assert result.returncode == 0, result.stderr[-3000:]
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    fetched = tmp_path / "fetched" / f"brain_t1_v{version}" / "bundles" / "brain_t1"
    with zipfile.ZipFile(archive) as zf:
        files = [n.split("/", 1)[1] for n in zf.namelist() if not n.endswith("SHA256SUMS")]
    for relative in files:
        assert (fetched / relative).read_bytes() == (BUNDLE / relative).read_bytes(), relative
    info = autoreg("info", "--bundle", str(tmp_path / "fetched" / f"brain_t1_v{version}"))
    assert info.returncode == 0 and "parameters:" in info.stdout and "lncc" in info.stdout
    tampered = tmp_path / "tampered" / "brain_t1.zip"
    tampered.parent.mkdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF
    tampered.write_bytes(bytes(data))
    shutil.copy(archive.with_name("brain_t1.zip.sha256"), tampered.with_name("brain_t1.zip.sha256"))
    code, _, err = autoreg_main("fetch", "--source", str(tampered), "--out", str(tmp_path / "bad"))
    assert code == 1 and "SHA-256 check of the archive failed" in err and "Traceback" not in err
    slip = tmp_path / "slip.zip"
    shutil.copy(archive, slip)
    with zipfile.ZipFile(slip, "a") as zf:
        zf.writestr("brain_t1/../../escaped.txt", b"x")
    code, _, err = autoreg_main("fetch", "--source", str(slip), "--out", str(tmp_path / "bad"))
    assert code == 1 and "points outside the archive folder" in err
    assert not (tmp_path / "escaped.txt").exists()


@pytest.fixture()
def bad_inputs(sample_data, tmp_path):
    """Broken files next to real ones."""
    unreadable = tmp_path / "broken.nii.gz"
    unreadable.write_bytes(gzip.compress(b"this is not a NIfTI file"))
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(32, 32).astype(np.float32), np.eye(4)), str(flat))
    tiny = tmp_path / "tiny.nii.gz"  # a real head written with 0.001 mm voxels
    head = nib.load(_ixi(sample_data, "IXI013"))
    nib.save(nib.Nifti1Image(np.asarray(head.dataobj, np.float32), np.diag([0.001, 0.001, 0.001, 1.0])), str(tiny))
    weightless = tmp_path / "bundles" / "brain_t1"
    shutil.copytree(BUNDLE, weightless, ignore=shutil.ignore_patterns("search", "train", "model.pt"))
    return {
        "fixed": str(_ixi(sample_data, "IXI012")),
        "moving": str(_ixi(sample_data, "IXI013")),
        "unreadable": str(unreadable),
        "flat": str(flat),
        "tiny": str(tiny),
        "weightless": str(weightless),
        "other_label": str(sample_data / "freesurfer_mne_sample" / "aseg_3mm.nii.gz"),
        "ct": str(sample_data / "totalseg_abdomen_ct" / "ct_3mm_crop.nii.gz"),
    }


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "missing.nii.gz: moving image not found"),
        ("unreadable", "broken.nii.gz: cannot read the moving image as an image"),
        ("flat", "slice.nii.gz: the moving image is 2-D"),
        ("weightless", "the bundle has no models/model.pt (no trained weights)"),
        ("label", "aseg_3mm.nii.gz: the label map (shape (86, 86, 86)) does not match its image"),
        ("tiny", "tiny.nii.gz -> IXI012-HH-1211_T1w_2mm.nii.gz: affine pre-alignment failed"),
    ],
)
def test_bad_input_is_refused_with_a_message(bad_inputs, tmp_path, autoreg_main, case, message):
    args = {"fixed": bad_inputs["fixed"], "moving": bad_inputs["moving"], "bundle": str(BUNDLE)}
    if case == "missing":
        args["moving"] = str(tmp_path / "missing.nii.gz")
    elif case in ("unreadable", "flat", "tiny"):
        args["moving"] = bad_inputs[case]
    elif case == "weightless":
        args["bundle"] = bad_inputs["weightless"]
    else:
        args["moving_label"] = bad_inputs["other_label"]
    out = tmp_path / "out"
    code, stdout, stderr = autoreg_main(
        "register", *[x for k, v in args.items() for x in (f"--{k}", v)], "--out", str(out)
    )
    assert code == 1, stdout[-2000:] + stderr[-2000:]
    assert "autoreg: error: " in stderr and message in stderr
    assert "Traceback" not in stderr and " object at 0x" not in stderr
    assert not out.exists()  # refused before any work (or failed in a new folder): no partial results


def test_numeric_names_and_a_file_as_out_are_refused_with_their_own_message(bad_inputs, tmp_path, autoreg_main):
    common = ["--fixed", bad_inputs["fixed"], "--bundle", str(BUNDLE)]
    code, _, err = autoreg_main("register", *common, "--moving", "20230101", "--out", str(tmp_path / "out"))
    assert code == 1 and "20230101: moving image not found" in err and "TypeError" not in err
    (tmp_path / "taken").write_text("a file")
    code, _, err = autoreg_main("register", *common, "--moving", bad_inputs["moving"], "--out", str(tmp_path / "taken"))
    assert code == 1 and "taken: is a file, not a folder" in err
    assert (tmp_path / "taken").read_text() == "a file"


def test_register_outputs_are_all_or_nothing(bad_inputs, tmp_path, autoreg_main):
    """kill -9 while registering leaves nothing; the next run writes the whole set; a third needs --overwrite."""
    out = tmp_path / "out"
    args = ["register", "--fixed", bad_inputs["fixed"], "--moving", bad_inputs["moving"], "--bundle", str(BUNDLE),
            "--out", str(out), "--prealign", "none", "--refine", "0"]  # fmt: skip
    command = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "autoreg_monai"]
    process = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def writing() -> bool:
        try:
            return any(any(staging.iterdir()) for staging in out.glob(".autoreg-staging-*"))
        except FileNotFoundError:
            return False

    try:
        while process.poll() is None and not writing():
            time.sleep(0.02)  # until the run has written its first output
        assert process.poll() is None, "the run ended before it was killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    code, _, err = autoreg_main(*args)
    assert code == 0, err[-3000:]
    stem = "IXI013-HH-1212_T1w_2mm_to_IXI012-HH-1211_T1w_2mm"
    expected = sorted(f"{stem}_{w}.nii.gz" for w in ("ddf", "jacobian", "warped"))
    assert sorted(os.listdir(out)) == expected  # the killed run's staging folder is gone too
    modes = {os.stat(out / name).st_mode & 0o777 for name in expected}
    assert len(modes) == 1
    code, _, err = autoreg_main(*args)
    assert code == 1 and f"already holds {stem}_warped.nii.gz, {stem}_ddf.nii.gz" in err and "pass --overwrite" in err
    code, _, err = autoreg_main(*args, "--overwrite")
    assert code == 0, err[-3000:]
    assert sorted(os.listdir(out)) == expected


def test_very_different_fields_of_view_warn(bad_inputs, tmp_path, autoreg_main):
    code, out, err = autoreg_main(
        "register", "--fixed", bad_inputs["fixed"], "--moving", bad_inputs["ct"], "--bundle", str(BUNDLE),
        "--out", str(tmp_path / "out"), "--prealign", "none", "--quiet",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "fields of view differ a lot" in err and "use --prealign affine" in err
    assert out == ""  # --quiet


def test_a_genotype_changed_after_training_is_refused_with_both_files(tmp_path, autoreg_main):
    bundle = tmp_path / "bundles" / "brain_t1"
    shutil.copytree(REPO_ROOT / "bundles" / "brain_t1", bundle, ignore=shutil.ignore_patterns("search", "train"))
    Genotype.paper_default().to_json(bundle / "models" / "genotype.json")  # as a search would rewrite it
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    scans = []
    for name, seed in (("fixed", 0), ("moving", 1)):
        data = np.random.default_rng(seed).random((32, 32, 32)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
        scans.append(str(tmp_path / f"{name}.nii.gz"))
    code, _, err = autoreg_main(
        "register", "--bundle", str(bundle), "--fixed", scans[0], "--moving", scans[1], "--prealign", "none",
        "--out", str(tmp_path / "out"), "--trust-bundle", "true",
    )  # fmt: skip
    assert code != 0
    assert f"{bundle / 'models' / 'model.pt'} does not fit the genotype of" in err and "genotype.json" in err
    assert "weights missing" in err and "train again" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

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
"""Metrics and networks on real scans of ../shared/data (skipped where the folder is absent)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from autoreg_monai.metrics import dice_per_label, jacobian_determinant, ncc, warp_labels
from autoreg_monai.networks.genotype import Genotype
from autoreg_monai.networks.nets.autoregnet import AutoRegNet


def _load(path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def test_identity_dice_on_real_brain_pair_equals_numpy_overlap(sample_data):
    """FreeSurfer subject vs fsaverage atlas: both conformed 256^3 1 mm LIA volumes with aseg labels."""
    subject, subject_affine = _load(sample_data / "freesurfer_niivue_subject" / "aseg.nii.gz")
    atlas, atlas_affine = _load(sample_data / "freesurfer_fsaverage_atlas" / "aseg.nii.gz")
    assert subject.shape == atlas.shape == (256, 256, 256)
    np.testing.assert_allclose(subject_affine[:3, :3], atlas_affine[:3, :3], atol=1e-3)  # same axes and voxel size
    labels = sorted(set(np.unique(atlas).tolist()) & set(np.unique(subject).tolist()) - {0})
    assert len(labels) > 30

    moving = torch.from_numpy(subject.astype(np.int64))[None, None]
    fixed = torch.from_numpy(atlas.astype(np.int64))[None, None]
    warped = warp_labels(moving, torch.zeros(1, 3, 256, 256, 256))
    assert torch.equal(warped, moving)
    ours = dice_per_label(warped, fixed, labels)[0].numpy()

    reference = []
    for value in labels:
        a, b = subject == value, atlas == value
        reference.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    np.testing.assert_allclose(ours, np.array(reference), rtol=1e-6, atol=1e-7)
    print(
        f"\nidentity Dice, FreeSurfer subject vs fsaverage ({len(labels)} aseg labels): mean {ours.mean():.4f}, "
        f"range {ours.min():.4f}..{ours.max():.4f}"
    )
    assert 0.0 < ours.mean() < 0.95  # different brains, not aligned: partial overlap


def test_network_runs_on_a_real_brain_pair(sample_data):
    """IXI T1 volumes (120x120x90, 2 mm): an untrained AutoRegNet returns a near-identity, fold-free field."""
    moving, _ = _load(sample_data / "ixi_dlmuse" / "IXI012-HH-1211_T1w_2mm.nii.gz")
    fixed, _ = _load(sample_data / "ixi_dlmuse" / "IXI013-HH-1212_T1w_2mm.nii.gz")

    def to_tensor(volume: np.ndarray) -> torch.Tensor:
        block = volume[28:92, 28:92, 13:77].astype(np.float32)  # central 64^3 (128 mm) of the head
        return torch.from_numpy((block - block.min()) / (block.max() - block.min()))[None, None]

    m, f = to_tensor(moving), to_tensor(fixed)
    with torch.no_grad():
        ddf, pyramid = AutoRegNet(Genotype.paper_default())(m, f)
    assert tuple(ddf.shape) == (1, 3, 64, 64, 64)
    assert torch.all(jacobian_determinant(ddf) > 0)
    assert 0.0 < float(ncc(m, f)[0]) < 1.0

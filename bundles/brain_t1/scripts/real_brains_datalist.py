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
"""The training datalist of the shipped brain_t1 model: real T1 brains of the sample data plus the demo set.

Reads the scans where they are (``AUTOREG_SAMPLE_DATA``, default ``../shared/data`` beside the repository)
and writes only a ``datalist.json`` of absolute paths: no scan is copied.

Training subjects (real): the six OASIS scans (``oasis_c2fvit/image_A``, ``image_B`` and the four
``oasis_unlabelled`` ones) and the stroke T1 (``stroke_t1_t2_flair/T1``), plus the first ``--demo`` subjects
of the generated demo set. Validation and test: the demo set's labelled subjects.

Held out (the subjects of ``benchmarks/accuracy.py``): the six IXI subjects, the FreeSurfer niivue subject,
the MNE sample subject and the fsaverage atlas. Not used: the BraTS T1c scans (z-scored with tumours, their
background is not the image minimum, so the bundle's percentile scaling and foreground crop do not fit
them without a preparation of their own).

    python bundles/brain_t1/scripts/real_brains_datalist.py --out runs/real_brains
    python -m monai.bundle run train --config_file bundles/brain_t1/configs/train.json \\
        --dataset_dir runs/real_brains --pairing pairwise --max_pairs 48 --output_dir runs/brain_t1_real \\
        --init_weights bundles/brain_t1/models/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from autoreg_monai.data import demo_datalist

REPO_ROOT = Path(__file__).resolve().parents[3]
TRAINING_SCANS = (
    "oasis_c2fvit/image_A.nii.gz",
    "oasis_c2fvit/image_B.nii.gz",
    "oasis_unlabelled/clapirn_image_A_160x192x224.nii.gz",
    "oasis_unlabelled/clapirn_image_B_160x192x224.nii.gz",
    "oasis_unlabelled/symnet_image_A_160x192x224.nii.gz",
    "oasis_unlabelled/symnet_image_B_160x192x224.nii.gz",
    "stroke_t1_t2_flair/T1.nii.gz",
)
HELD_OUT = ("ixi_dlmuse", "freesurfer_niivue_subject", "freesurfer_mne_sample", "freesurfer_fsaverage_atlas")


def real_brains_datalist(data: Path, demo_subjects: int = 8) -> dict:
    """The datalist (absolute paths): real training scans + ``demo_subjects`` demo subjects; demo validation/test."""
    missing = [name for name in TRAINING_SCANS if not (data / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{data}: missing {', '.join(missing)} (set AUTOREG_SAMPLE_DATA to the sample data)")
    demo = demo_datalist("brain_t1", num_training=32, num_validation=4, num_test=4, size=64)
    training = [{"image": str(data / name)} for name in TRAINING_SCANS]
    training += [{"image": subject["image"]} for subject in demo["training"][:demo_subjects]]
    return {"training": training, "validation": demo["validation"], "test": demo["test"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write datalist.json into")
    parser.add_argument("--demo", type=int, default=8, help="demo subjects added to the training split")
    default_data = os.environ.get("AUTOREG_SAMPLE_DATA", str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", default=default_data, help="the sample data (default: $AUTOREG_SAMPLE_DATA)")
    args = parser.parse_args()
    datalist = real_brains_datalist(Path(args.data).resolve(), args.demo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / ".datalist.json.tmp"
    temporary.write_text(json.dumps(datalist, indent=2) + "\n")
    temporary.replace(out / "datalist.json")
    print(
        f"{out / 'datalist.json'}: {len(datalist['training'])} training subjects "
        f"({len(TRAINING_SCANS)} real), held out: {', '.join(HELD_OUT)}"
    )


if __name__ == "__main__":
    main()

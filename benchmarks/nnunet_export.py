"""Does nnU-Net v2 take a synthesized set as it is? Its own integrity check, then its 2-D planning
and preprocessing, on a folder written by ``python -m mmldm synthesize``.

nnU-Net is not in environment.yml (its dependencies replace the pinned torch), so run this with
an interpreter that has it, e.g. a separate venv::

    python3 -m venv /tmp/nnv && /tmp/nnv/bin/pip install nnunetv2
    python -m mmldm synthesize --checkpoint runs/<run>/ldm/last.pt --input STORE --out /tmp/raw/Dataset501_CardiacSynth
    /tmp/nnv/bin/python benchmarks/nnunet_export.py /tmp/raw/Dataset501_CardiacSynth

``nnUNet_raw`` is taken as the set's parent folder; the preprocessed output goes to a temporary
folder that is deleted at the end. Prints what nnU-Net planned (spacing, patch size) and the time.
Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="a synthesized set, named Dataset<id:03d>_<name>")
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args()
    folder = Path(args.dataset).resolve()
    m = re.fullmatch(r"Dataset(\d{3})_.+", folder.name)
    if m is None:
        raise SystemExit(f"{folder}: nnU-Net wants the folder named Dataset<id:03d>_<name>")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(nnUNet_raw=str(folder.parent), nnUNet_preprocessed=tmp, nnUNet_results=tmp)
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        t0 = time.perf_counter()
        verify_dataset_integrity(str(folder), num_processes=args.processes)
        print(f"verify_dataset_integrity: passed in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        dataset_id = int(m.group(1))
        extract_fingerprints([dataset_id], num_processes=args.processes)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=("2d",), num_processes=(args.processes,))
        plans = json.loads((Path(tmp) / folder.name / "nnUNetPlans.json").read_text())
        c = plans["configurations"]["2d"]
        print(
            f"planned and preprocessed (2d) in {time.perf_counter() - t0:.1f} s: spacing {c['spacing']}, "
            f"patch {c['patch_size']}, batch {c['batch_size']}"
        )


if __name__ == "__main__":
    main()

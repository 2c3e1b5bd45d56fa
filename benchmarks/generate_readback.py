"""Does ``generate`` turn an ACDC label volume into images the evaluation's segmenter reads back?

    python benchmarks/generate_readback.py --ldm runs/acdc_laptop/ldm/last.pt \\
        --segmenter runs/acdc_laptop/segmenter/segmenter.pt --root ../shared/data/acdc/training \\
        --subjects patient006 patient017 --edges auto none

For each subject's end-diastolic label volume (``Info.cfg``'s ED frame, ``*_gt.nii.gz``), every
labelled slice is generated as ``python -m mmldm generate --labels acdc`` would, on the model's
grid; the segmenter (trained on real training images only) segments each generated slice, and
per-class Dice against the input labels is averaged over slices, then over subjects
(:func:`mmldm.generate_nifti.readback_dice`). The same segmenter on the real slices, cropped by the same
windows, is the ceiling. Use held-out subjects (the store's ``val`` split): a subject the LDM
trained on measures memory, not generation. Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm.data.readers.acdc import read_info  # noqa: E402
from mmldm.generate_nifti import readback_dice  # noqa: E402

CLASSES = ("LV", "MYO", "RV", "fg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ldm", required=True, help="LDM checkpoint")
    p.add_argument("--segmenter", required=True, help="segmenter checkpoint (train/segmenter.py)")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "acdc" / "training"))
    p.add_argument("--subjects", nargs="+", required=True, help="patient folders, e.g. patient006")
    p.add_argument("--edges", nargs="+", choices=["auto", "none"], default=["auto", "none"])
    p.add_argument("--scale-mask", type=float, default=None)
    p.add_argument("--scale-edge", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    print(
        f"{'subject':<12}{'edges':<7}{'slices':>7}"
        + "".join(f"{c:>8}" for c in CLASSES)
        + "   ceiling "
        + " ".join(CLASSES)
        + "   s"
    )
    for subject in args.subjects:
        folder = Path(args.root) / subject
        stem = folder / f"{subject}_frame{read_info(folder / 'Info.cfg')['ED']:02d}"
        for edges in args.edges:
            r = readback_dice(
                args.ldm,
                args.segmenter,
                f"{stem}_gt.nii.gz",
                "acdc",
                f"{stem}.nii.gz",
                edges=edges,
                scale_mask=args.scale_mask,
                scale_edge=args.scale_edge,
                steps=args.steps,
                seed=args.seed,
                device=args.device,
            )
            rows.append(
                {
                    "subject": subject,
                    "edges": edges,
                    "slices": len(r["slices"]),
                    "dice": r["dice"],
                    "ceiling": r["ceiling"],
                    "seconds": r["seconds"],
                    "guidance": r["guidance"],
                    "sampler": r["sampler"]["name"],
                    "steps": r["sampler"]["num_inference_steps"],
                }
            )
            print(
                f"{subject:<12}{edges:<7}{len(r['slices']):>7}"
                + "".join(f"{r['dice'][c]:>8.3f}" for c in CLASSES)
                + "   "
                + " ".join(f"{r['ceiling'][c]:.3f}" for c in CLASSES)
                + f"   {r['seconds']:.1f}",
                flush=True,
            )
    for edges in args.edges:
        sel = [row for row in rows if row["edges"] == edges]
        mean = {c: float(np.nanmean([row["dice"][c] for row in sel])) for c in CLASSES}
        ceil = {c: float(np.nanmean([row["ceiling"][c] for row in sel])) for c in CLASSES}
        print(
            f"{'mean':<12}{edges:<7}{len(sel):>7}"
            + "".join(f"{mean[c]:>8.3f}" for c in CLASSES)
            + "   "
            + " ".join(f"{ceil[c]:.3f}" for c in CLASSES)
            + "   (subjects)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

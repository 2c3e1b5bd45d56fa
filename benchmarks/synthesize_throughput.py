"""How many slices a second does ``mmldm synthesize`` make? DDIM-50, no extra guidance, in batches.

    python benchmarks/synthesize_throughput.py --checkpoint runs/acdc_laptop/ldm/last.pt \\
        --store data/processed/acdc_laptop.h5 --n 64 --batch-sizes 8 16 32 --threads 2

The first ``--n`` labelled slices of ``--store`` (its ``--split``, default all rows) are copied
into a temporary store, and for each batch size :func:`mmldm.synthesize.synthesize` turns them
into a temporary nnU-Net set: DDIM with ``--steps`` (50) steps, edges from the masks, guidance
scales 1 and 1 (mode "both": with both scales 1 the guidance formula is one conditional UNet
pass a step), one sample per mask, no mask augmentation and no audit. Printed per batch size:
the seconds of the generation loop (sampling, VQ-VAE decoding and writing the NIfTI files; loading
the model excluded) and slices per second. The issue's target: at least 10 slices/s at the
``laptop`` profile on the 2-core development CPU. Each batch size runs once, cold (its first
batch included); benchmarks print, they never assert.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm.data.store import META_COLUMNS, StoreWriter, open_store, read_meta  # noqa: E402
from mmldm.precision import resolve_precision  # noqa: E402
from mmldm.synthesize import synthesize  # noqa: E402


def subset_store(store: Path, out: Path, n: int, split: str) -> int:
    """Copy the first ``n`` labelled rows of ``store`` (of ``split``, or all) to ``out``; returns the count."""
    with open_store(store) as f:
        meta = read_meta(f)
        labels = f["label"][()]
        rows = [i for i in range(len(labels)) if labels[i].any() and split in ("all", meta["split"][i])][:n]
        if not rows:
            raise SystemExit(f"{store}: no labelled slice in split {split!r}")
        writer = StoreWriter(out, int(labels.shape[-1]))
        writer.append(f["image"][rows], labels[rows], f["edge"][rows])
        attrs = {key: f.attrs[key] for key in ("config", "sources", "pixel_mm") if key in f.attrs}
    writer.finish({name: meta[name][rows] for name in META_COLUMNS if name in meta}, attrs)
    return len(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="LDM checkpoint")
    p.add_argument("--store", required=True, help="preprocessed store whose label maps are used")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--n", type=int, default=64, help="slices per batch size (default 64)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16], help="default: 16 (synthesize's default)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precisions", nargs="+", choices=["fp32", "bf16", "auto"], default=["fp32", "auto"],
        help="networks' arithmetic, each measured (default: fp32 and auto)",
    )  # fmt: skip
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmldm-synth-bench-") as tmp:
        tmp = Path(tmp)
        n = subset_store(Path(args.store), tmp / "subset.h5", args.n, args.split)
        print(
            f"{n} slices of {args.store}; DDIM-{args.steps}, guidance scales 1/1, "
            f"{args.threads} thread(s), {args.device}"
        )
        print(f"{'precision':>10}{'batch':>6}{'slices':>8}{'loop s':>9}{'slices/s':>10}{'wall s':>9}")
        for precision, batch in [(p, b) for p in args.precisions for b in args.batch_sizes]:
            start = time.perf_counter()
            s = synthesize(
                args.checkpoint,
                tmp / "subset.h5",
                tmp / f"out_{precision}_b{batch}",
                sampler="ddim",
                steps=args.steps,
                scale_mask=1.0,
                scale_edge=1.0,
                edges="auto",
                batch_size=batch,
                device=args.device,
                precision=precision,
                progress=False,
                audit=False,
            )
            wall = time.perf_counter() - start
            rate = s["images_per_second"] or float("nan")
            resolved = resolve_precision(precision, args.device)
            print(f"{resolved:>10}{batch:>6}{s['generated']:>8}{s['seconds']:>9.2f}{rate:>10.2f}{wall:>9.2f}")
            rows.append(
                {
                    "precision": resolved,
                    "batch_size": batch,
                    "slices": s["generated"],
                    "loop_seconds": round(s["seconds"], 3),
                    "slices_per_second": None if np.isnan(rate) else round(rate, 3),
                    "wall_seconds": round(wall, 3),
                    "steps": args.steps,
                    "threads": args.threads,
                    "device": args.device,
                    "checkpoint": str(args.checkpoint),
                }
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()

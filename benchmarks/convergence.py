"""What makes a small latent diffusion model converge on a 2-core CPU? Measured, not guessed.

Trains several LDM variants with the *same* VQVAE, data, step budget and seeds, then generates
each held-out slice from its own conditions and prints paired SSIM / NMSE / PSNR, the fraction
of blown-out or blank images, and the anatomy Dice of a segmenter trained on real images. The
`laptop` profile keeps what wins here (see configs/laptop.yaml and report/).

    python benchmarks/convergence.py --source ../shared/data/acdc/training \\
        --vqvae runs/tune/vqA/last.pt --segmenter runs/tune/seg/segmenter.pt \\
        --variants seed ours_x0_lr1e-3 --steps 1000 --n 96 --out runs/tune

Each variant is a list of config overrides on top of the laptop profile (VARIANTS below), so
any row can be reproduced with `python -m mmldm train-ldm --config laptop --set ...`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

# Overrides on the laptop profile, which holds the network sizes these runs used (0.62 M VQVAE,
# 2.87 M UNet); each variant states the rest of its recipe, so a row stays reproducible whatever
# laptop.yaml's defaults become.
VARIANTS = {
    # The seed's recipe at laptop size: nearest-downsampled condition, epsilon prediction, raw
    # latents, no EMA, no clipping, no guidance.
    "seed": ["unet.conditioning=concat_nearest", "unet.view_embedding=false", "diffusion.prediction_type=epsilon",
             "train_ldm.latent_norm=none", "train_ldm.ema=false", "guidance.p_drop_edge=0.0",
             "guidance.p_drop_mask=0.0", "train_ldm.lr=2e-4"],
    # Ours: learned hint encoder, per-channel latent normalisation, EMA, x0 clipped to the
    # training latents' range at sampling (set at evaluation from the checkpoint's stats).
    "ours_eps": ["diffusion.prediction_type=epsilon", "train_ldm.lr=2e-4"],
    "ours_v": ["diffusion.prediction_type=v", "train_ldm.lr=2e-4"],
    "ours_v_minsnr": ["diffusion.prediction_type=v", "diffusion.min_snr_gamma=5.0", "train_ldm.lr=2e-4"],
    "ours_x0": ["diffusion.prediction_type=sample", "train_ldm.lr=2e-4"],
    "ours_v_lr1e-3": ["diffusion.prediction_type=v", "train_ldm.lr=1e-3"],
    "ours_x0_lr1e-3": ["diffusion.prediction_type=sample", "train_ldm.lr=1e-3"],
    "ours_v_spade": ["diffusion.prediction_type=v", "unet.conditioning=spade", "unet.spade_hidden=32",
                     "train_ldm.lr=2e-4"],
}


def evaluate(ckpt: Path, store: Path, segmenter_path: Path | None, n: int, clip: bool, steps: int) -> dict:
    import dataclasses

    from mmldm.evaluate.anatomy import anatomy_dice
    from mmldm.evaluate.generate import generate_paired, saturated_fraction
    from mmldm.evaluate.metrics import paired_metrics
    from mmldm.train.ldm import load_ldm
    from mmldm.train.segmenter import load_segmenter

    ldm = load_ldm(ckpt)
    cfg = ldm["config"]
    sampler = dataclasses.replace(cfg.sampler, name="ddim", num_inference_steps=steps, eta=0.0, clip_to_latents=clip)
    res = generate_paired(ldm, store, split="val", n=n, sampler=sampler, progress=False)
    m = paired_metrics(res["generated"], res["real"])
    out = {k: float(np.mean(v[np.isfinite(v)])) for k, v in m.items()}
    out["saturated"] = saturated_fraction(res["generated"])
    out["s_per_image"] = res["seconds_per_image"]
    if segmenter_path is not None:
        seg = load_segmenter(segmenter_path)
        d = anatomy_dice(seg, res["generated"], res["label"])
        out.update({k: float(np.nanmean(v)) for k, v in d.items()})
        ceiling = anatomy_dice(seg, res["real"], res["label"])
        out.update({f"real_{k}": float(np.nanmean(v)) for k, v in ceiling.items()})
    return out, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="dataset folder (e.g. ACDC training)")
    p.add_argument("--vqvae", required=True, help="a trained VQVAE checkpoint (same for every variant)")
    p.add_argument("--segmenter", default=None, help="segmenter checkpoint for anatomy Dice")
    p.add_argument("--variants", nargs="+", default=["seed", "ours_v"], choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=1000, help="LDM optimiser steps per variant")
    p.add_argument("--n", type=int, default=96, help="held-out slices generated per variant")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps at evaluation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--eval-only", action="store_true", help="evaluate existing runs, no training")
    args = p.parse_args()

    from mmldm.config import load_config
    from mmldm.train.ldm import train_ldm

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = {}
    for name in args.variants:
        overrides = [f"paths.source={Path(args.source).resolve()}", *VARIANTS[name],
                     f"train_ldm.steps={args.steps}", f"train_ldm.cpu_threads={args.threads}",
                     "train_ldm.sample_every=0", f"train_ldm.ckpt_every={max(args.steps // 4, 1)}"]
        cfg = load_config("laptop", overrides=overrides)
        run = out / f"ldm_{name}"
        t0 = time.time()
        if not args.eval_only:
            train_ldm(cfg, vqvae_ckpt=args.vqvae, out_dir=run, figures_dir=run, progress=False, resume=True)
        train_s = time.time() - t0
        seg = Path(args.segmenter) if args.segmenter else None
        clip = name != "seed"
        metrics, res = evaluate(run / "last.pt", cfg.store_path, seg, args.n, clip, args.sample_steps)
        metrics["train_s"] = train_s
        rows[name] = metrics
        torch.save({k: res[k] for k in ("generated", "real", "label", "cond")}, run / "eval_samples.pt")
        print(name, json.dumps({k: round(v, 4) for k, v in metrics.items()}), flush=True)
    cols = ["ssim", "nmse", "psnr", "saturated", "dice_LV", "dice_MYO", "dice_RV", "dice_fg", "train_s"]
    print("\n| variant | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in cols) + " |")
    existing = json.loads((out / "convergence.json").read_text()) if (out / "convergence.json").exists() else {}
    existing.update(rows)
    (out / "convergence.json").write_text(json.dumps(existing, indent=1))


if __name__ == "__main__":
    main()

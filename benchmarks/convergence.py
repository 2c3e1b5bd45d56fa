"""What makes a small latent diffusion model converge on a 2-core CPU? Measured, not guessed.

Trains several LDM variants with the *same* VQVAE, data, step budget and seeds, then generates
each held-out slice from its own conditions and prints paired SSIM / NMSE / PSNR, the fraction
of blown-out or blank images, and the anatomy Dice of a segmenter trained on real images. The
profiles keep what wins here (see configs/quick.yaml and report/). The rows in report/ablation.json
and report/compute.json were measured with `--profile quick` (the 64x64 profile, called `laptop`
when they were made).

    python benchmarks/convergence.py --source ../shared/data/acdc/training \\
        --vqvae runs/tune/vqA/last.pt --segmenter runs/tune/seg/segmenter.pt \\
        --variants seed ours_x0_lr1e-3 --steps 1000 --n 96 --out runs/tune

Each variant is a list of config overrides on top of the chosen profile (`--profile`, default
quick; VARIANTS below), so any row can be reproduced with
`python -m mmldm train-ldm --config quick --set ...`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# Overrides on the profile (quick, which holds the network sizes these runs used: 0.62 M VQVAE,
# 2.87 M UNet); each variant states the rest of its recipe, so a row stays reproducible whatever
# the profile's defaults become.
VARIANTS = {
    # The seed's recipe at the profile's size: nearest-downsampled condition, epsilon prediction, raw
    # latents, no EMA, no clipping, no guidance.
    "seed": [
        "unet.conditioning=concat_nearest",
        "unet.view_embedding=false",
        "diffusion.prediction_type=epsilon",
        "train_ldm.latent_norm=none",
        "train_ldm.ema=false",
        "guidance.p_drop_edge=0.0",
        "guidance.p_drop_mask=0.0",
        "guidance.scale_mask=1.0",
        "guidance.scale_edge=1.0",
        "sampler.clip_to_latents=false",
        "train_ldm.lr=2e-4",
    ],
    # Ours: the profile exactly as its YAML file has it.
    "ours": [],
    # Ours with SPADE instead of the hint encoder (the condition modulates every normalisation).
    "ours_spade": ["unet.conditioning=spade", "unet.spade_hidden=32"],
    # Ours: learned hint encoder, per-channel latent normalisation, EMA, x0 clipped to the
    # training latents' range at sampling (set at evaluation from the checkpoint's stats).
    "ours_eps": ["diffusion.prediction_type=epsilon", "train_ldm.lr=2e-4"],
    "ours_v": ["diffusion.prediction_type=v", "train_ldm.lr=2e-4"],
    "ours_v_minsnr": ["diffusion.prediction_type=v", "diffusion.min_snr_gamma=5.0", "train_ldm.lr=2e-4"],
    "ours_x0": ["diffusion.prediction_type=sample", "train_ldm.lr=2e-4"],
    "ours_v_lr1e-3": ["diffusion.prediction_type=v", "train_ldm.lr=1e-3"],
    "ours_x0_lr1e-3": ["diffusion.prediction_type=sample", "train_ldm.lr=1e-3"],
    "ours_v_spade": [
        "diffusion.prediction_type=v",
        "unet.conditioning=spade",
        "unet.spade_hidden=32",
        "train_ldm.lr=2e-4",
    ],
}


SAMPLERS = {"ddim50": ("ddim", 50), "dpm20": ("dpm_solver", 20), "ddpm1000": ("ddpm", 1000)}


def parse_variant(spec: str) -> tuple[str, float, str | None]:
    """``name[*mult][@sampler]``: a VARIANTS recipe, trained ``mult`` x the step budget, evaluated
    with one of SAMPLERS (default: the recipe's own sampler)."""
    rest, _, sampler = spec.partition("@")
    name, _, mult = rest.partition("*")
    if name not in VARIANTS or (sampler and sampler not in SAMPLERS):
        raise SystemExit(f"unknown variant {spec!r}: recipes {sorted(VARIANTS)}, samplers {sorted(SAMPLERS)}")
    return name, float(mult or 1), sampler or None


def evaluate(
    ckpt: Path, store: Path, segmenter_path: Path | None, n: int, sampler: str | None = None
) -> tuple[dict, dict]:
    """One row, scored by the evaluation engine (mmldm/evaluate/run.py) on ``n`` held-out slices:
    the checkpoint's own guidance and sampler, or the SAMPLERS entry ``sampler`` (name and steps
    replaced, clipping kept). Returns (metrics, generate_paired's result)."""
    import dataclasses

    from mmldm.evaluate.anatomy import anatomy_dice
    from mmldm.evaluate.run import dice_means, evaluate_variant
    from mmldm.inference import LatentDiffusion
    from mmldm.models.segmenter import load_segmenter

    ldm = LatentDiffusion.from_checkpoint(ckpt)
    cfg = ldm.config
    sampler_cfg = cfg.sampler
    if sampler is not None:
        name, steps = SAMPLERS[sampler]
        sampler_cfg = dataclasses.replace(
            cfg.sampler, name=name, num_inference_steps=min(steps, cfg.diffusion.num_train_timesteps)
        )
    seg = load_segmenter(segmenter_path) if segmenter_path is not None else None
    run = evaluate_variant(ldm, store, sampler_cfg, segmenter=seg, n=n, progress=False)
    summary, res = run["summary"], run["result"]
    nan = float("nan")
    out = {"sampler": f"{sampler_cfg.name}{sampler_cfg.num_inference_steps}"}
    out.update({m: summary[m]["mean"] for m in ("ssim", "nmse", "psnr")})
    out["saturated"], out["s_per_image"] = summary["saturated"], summary["s_per_image"]
    if seg is not None:
        names = {"LV": "dice_LV", "MYO": "dice_MYO", "RV": "dice_RV", "mean_fg": "dice_fg"}
        out.update({names[k]: nan if v is None else v for k, v in summary["dice"].items()})
        ceiling = dice_means(anatomy_dice(seg, res["real"], res["label"]))
        out.update({f"real_{names[k]}": nan if v is None else v for k, v in ceiling.items()})
    return out, res


def save_rows(rows: dict, paths: list[Path]) -> None:
    """Merge ``rows`` into each JSON file (temporary name, then rename): a variant's row is kept
    as soon as it is measured, so a stopped run loses nothing already done."""
    from mmldm.atomic import write_text

    for path in paths:
        existing = json.loads(path.read_text()) if path.exists() else {}
        existing.update(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(existing, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="dataset folder (e.g. ACDC training)")
    p.add_argument("--vqvae", required=True, help="a trained VQVAE checkpoint (same for every variant)")
    p.add_argument("--segmenter", default=None, help="segmenter checkpoint for anatomy Dice")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["seed", "ours"],
        help="name[*mult][@sampler], e.g. seed@ddpm1000 ours ours*0.5 ours*4 ours_spade; names: "
        + ", ".join(sorted(VARIANTS)),
    )
    p.add_argument("--profile", default="quick", help="profile the variants start from (default: quick, 64x64)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="LDM optimiser steps per variant (default: the profile's train_ldm.steps), times the variant's mult",
    )
    p.add_argument("--n", type=int, default=96, help="held-out slices generated per variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--json", default=None, help="also write the rows here (e.g. report/ablation.json)")
    p.add_argument("--eval-only", action="store_true", help="evaluate existing runs, no training")
    args = p.parse_args()

    from mmldm.atomic import torch_save, write_text
    from mmldm.config import load_config
    from mmldm.train.ldm import train_ldm

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = {}
    for spec in args.variants:
        name, mult, sampler = parse_variant(spec)
        base_steps = args.steps or load_config(args.profile).train_ldm.steps
        steps = max(int(round(base_steps * mult)), 1)
        overrides = [
            f"paths.source={Path(args.source).resolve()}",
            *VARIANTS[name],
            f"train_ldm.steps={steps}",
            f"train_ldm.cpu_threads={args.threads}",
            "train_ldm.sample_every=0",
            f"train_ldm.ckpt_every={max(steps // 4, 1)}",
        ]
        cfg = load_config(args.profile, overrides=overrides)
        run = out / (f"ldm_{name}" + (f"_x{mult:g}" if mult != 1 else ""))
        timing = run / "train_seconds.json"  # wall time of the training, kept for --eval-only and reruns
        if not args.eval_only and not timing.exists():  # not trained to the end yet: train, or continue
            resumed = (run / "last.pt").exists()
            t0 = time.time()
            train_ldm(cfg, vqvae_ckpt=args.vqvae, out_dir=run, figures_dir=run, progress=False, resume=True)
            write_text(timing, json.dumps({"train_s": time.time() - t0, "threads": args.threads, "resumed": resumed}))
        train_s = json.loads(timing.read_text())["train_s"] if timing.exists() else float("nan")
        seg = Path(args.segmenter) if args.segmenter else None
        metrics, res = evaluate(run / "last.pt", cfg.store_path, seg, args.n, sampler)
        metrics.update(
            variant=spec,
            steps=steps,
            n=args.n,
            source=str(args.source),
            threads=args.threads,
            train_s=train_s,
            overrides=VARIANTS[name],
        )
        rows[spec] = metrics
        save_rows({spec: metrics}, [out / "convergence.json", *([Path(args.json)] if args.json else [])])
        torch_save(
            {k: res[k] for k in ("generated", "real", "label", "cond")},
            run / f"eval_samples{'_' + sampler if sampler else ''}.pt",
        )
        print(spec, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}), flush=True)
    cols = ["ssim", "nmse", "psnr", "saturated", "dice_LV", "dice_MYO", "dice_RV", "dice_fg", "s_per_image", "train_s"]
    print("\n| variant | sampler | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    for spec, m in rows.items():
        print(f"| {spec} | {m['sampler']} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()

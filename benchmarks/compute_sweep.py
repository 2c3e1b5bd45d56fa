"""Quality against compute: the profile's whole recipe (VQ-VAE + LDM) at a multiple of its budget.

    python benchmarks/compute_sweep.py train --scale 0.25 --source ../shared/data/acdc/training \\
        --store data/processed/acdc_laptop.h5 --segmenter runs/acdc_laptop/segmenter/segmenter.pt
    python benchmarks/compute_sweep.py point --name laptop --vqvae runs/acdc_laptop/vqvae \\
        --ldm runs/exp21/ldm_spade --metrics runs/exp21/eval_spade/metrics.json
    python benchmarks/compute_sweep.py collect --out runs/compute/compute.json

``train`` scales every step count of both trainings by ``--scale`` (steps, warm-up, the start of
the adversarial loss, checkpoint and sample intervals), trains the VQ-VAE and then the LDM into
``runs/<profile>_x<scale>/``, evaluates the profile's main row (the mask alone) with the run's
fixed evaluation segmenter (``--segmenter``: the same judge at every scale, linked, never
retrained) and writes the point. ``point`` makes a point from runs trained otherwise (the
1x default). ``collect`` gathers the points into one ``compute.json`` for the report (rows with
``cpu_minutes``, the C2ST accuracy and its real-vs-real floor, both FID ratios, mask-only Dice
and its real-image ceiling) and draws the figure beside it.

CPU minutes are the training time read back from each ``log.csv`` (optimiser steps only: logging
interval x batch / images per second, summed) times the threads it ran on, so a run that waited
for another job is not charged for it; the wall time of each stage is kept too. Latent caching,
evaluation and the segmenter are not counted: they cost the same at every scale.
Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm import atomic  # noqa: E402
from mmldm.formatting import mean_std_entry  # noqa: E402

# (section, key) of every step count the recipe's schedule is written in
SCALED = {
    "train_vqvae": ("steps", "warmup_steps", "sample_every", "ckpt_every"),
    "vqvae": ("adversarial_start",),
    "train_ldm": ("steps", "warmup_steps", "sample_every", "ckpt_every"),
}


def cpu_name() -> str:
    """``lscpu``'s model name and whether the CPU has AMX / AVX-512 bf16 (what ``auto`` precision needs)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in text.splitlines() if ln.startswith("Flags")), "")
    bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    return f"{model}, {'bf16' if bf16 else 'no bf16 (fp32)'}"


def train_seconds(log: Path, batch: int) -> float:
    """Seconds of optimiser steps in a trainer's ``log.csv``: per row, the steps since the last row
    times ``batch`` over its ``images_per_s``."""
    seconds, last = 0.0, 0
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            step, ips = int(row["step"]), float(row["images_per_s"] or "nan")
            if ips > 0:
                seconds += (step - last) * batch / ips
            last = step
    return seconds


def scaled_overrides(cfg, scale: float) -> list[str]:
    out = []
    for section, keys in SCALED.items():
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            if value is not None:
                out.append(f"{section}.{key}={max(1, round(value * scale))}")
    return out


def point_from(name: str, scale: float, vqvae: Path, ldm: Path, metrics_path: Path, threads: int, wall=None) -> dict:
    """One row of compute.json from a trained VQ-VAE and LDM folder and an evaluation's metrics.json."""
    from mmldm.checkpoint import load_checkpoint

    m = json.loads(metrics_path.read_text())
    cv = load_checkpoint(vqvae / "last.pt", stage="vqvae")["config"]
    cl = load_checkpoint(ldm / "last.pt", stage="ldm")["config"]
    vq_s = train_seconds(vqvae / "log.csv", cv["train_vqvae"]["batch_size"])
    ldm_s = train_seconds(ldm / "log.csv", cl["train_ldm"]["batch_size"])
    main = m["variants"][m["main"]]
    r = m.get("realism") or {}
    c2st = r.get("c2st") or {}

    def ratio(space):
        return (r.get(space) or {}).get("ratio")

    return {
        "variant": name,
        "scale": scale,
        "vqvae_steps": cv["train_vqvae"]["steps"],
        "steps": cl["train_ldm"]["steps"],
        "threads": threads,
        "vqvae_s": round(vq_s, 1),
        "ldm_s": round(ldm_s, 1),
        "train_s": round(vq_s + ldm_s, 1),
        "cpu_minutes": round((vq_s + ldm_s) * threads / 60, 1),
        "wall_s": wall,
        "row": m["main"],
        "c2st": (c2st.get("generated") or {}).get("accuracy"),
        "c2st_auc": (c2st.get("generated") or {}).get("auc"),
        "c2st_floor": (c2st.get("real_vs_real") or {}).get("accuracy"),
        "c2st_autoencoder": (c2st.get("autoencoder") or {}).get("accuracy"),
        "fid_ratio": ratio("inception"),
        "seg_fid_ratio": ratio("segmenter"),
        "fid_ratio_autoencoder": ((r.get("inception") or {}).get("autoencoder") or {}).get("ratio"),
        "n_realism": r.get("n_generated"),
        "dice_fg": main["dice"]["mean_fg"],
        "real_dice_fg": (m.get("ceiling") or {}).get("dice", {}).get("mean_fg"),
        "ssim": mean_std_entry(main.get("ssim"))[0],
        "nmse": mean_std_entry(main.get("nmse"))[0],
        "n": main.get("n"),
        "metrics": str(metrics_path),
        "cpu": cpu_name(),
        "unet_conditioning": cl["unet"]["conditioning"],
    }


def run(cmd: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{log}: `{' '.join(cmd[2:4])}` failed with status {rc}")
    return round(time.perf_counter() - start, 1)


def cmd_train(args) -> None:
    from mmldm.config import load_config

    extra = sum((["--set", s] for s in args.set), [])
    base = ["--config", args.profile, "--set", f"paths.source={args.source}", *extra]
    cfg = load_config(args.profile, [f"paths.source={args.source}", *args.set])
    tag = f"{args.profile}_x{args.scale:g}" + (f"_{args.tag}" if args.tag else "")
    folder = Path("runs") / tag  # paths.runs: runs/{run}
    folder.mkdir(parents=True, exist_ok=True)
    sets = sum((["--set", s] for s in scaled_overrides(cfg, args.scale)), [])
    sets += ["--set", f"train_vqvae.cpu_threads={args.threads}", "--set", f"train_ldm.cpu_threads={args.threads}"]
    sets += ["--set", f"paths.name={tag}"]
    seg = folder / "segmenter"
    seg.mkdir(exist_ok=True)
    if not (seg / "segmenter.pt").exists():  # the same judge at every scale
        (seg / "segmenter.pt").symlink_to(Path(args.segmenter).resolve())
    py = [sys.executable, "-m", "mmldm"]
    log, wall = folder / "sweep.log", {}
    store = ["--store", args.store]
    for stage in ("vqvae", "ldm"):  # an interrupted sweep resumes each training where it stopped
        resume = ["--resume"] if (folder / stage / "last.pt").exists() else []
        cmd = [*py, f"train-{stage}", *base, *sets, *store, "--out", str(folder / stage), "--quiet", *resume]
        wall[stage] = run(cmd, args.threads, log)
    metrics = folder / "evaluation" / "metrics.json"
    wall["evaluate"] = run([*py, "evaluate", *base, *sets, *store, "--checkpoint", str(folder / "ldm" / "last.pt"),
                            "--variants", cfg.evaluation.main, "--out", str(metrics), "--quiet"],
                           args.threads, log)  # fmt: skip
    row = point_from(tag, args.scale, folder / "vqvae", folder / "ldm", metrics, args.threads, wall)
    row.update(recipe=args.tag or "default", overrides=args.set)
    atomic.write_text(folder / "compute_point.json", json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


def cmd_point(args) -> None:
    row = point_from(args.name, args.scale, Path(args.vqvae), Path(args.ldm), Path(args.metrics), args.threads)
    row["recipe"] = args.recipe
    out = Path(args.out or Path("runs") / args.name / "compute_point.json")
    atomic.write_text(out, json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


def cmd_collect(args) -> None:
    from mmldm.viz.report_figures import compute_plot

    points = [Path(p) for p in args.points] or sorted(Path("runs").glob("*/compute_point.json"))
    rows = sorted((json.loads(p.read_text()) for p in points), key=lambda r: r["cpu_minutes"])
    if not rows:
        raise SystemExit("no compute_point.json under runs/*/: run `train` or `point` first")
    for r in rows:  # budgets as multiples of today's default, when the default moved after training
        r["scale_trained"] = r.get("scale_trained", r["scale"])
        r["scale"] = r["scale_trained"] / args.default_scale
    out = Path(args.out)
    meta = {
        "profile": args.profile,
        "made_by": "benchmarks/compute_sweep.py",
        "cpu": rows[0]["cpu"],
        "data": "the held-out split of the store",
        "default_scale_trained": args.default_scale,
    }
    table = {"meta": meta, **{r["variant"]: r for r in rows}}
    atomic.write_text(out, json.dumps(table, indent=1) + "\n")
    fig = compute_plot(rows)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    for r in rows:
        print(f"{r['variant']:>14}: {r['cpu_minutes']:7.1f} CPU min  C2ST {r['c2st']:.3f} (floor {r['c2st_floor']:.3f})"
              f"  FID ratio {r['fid_ratio']:.2f}  seg-FID ratio {r['seg_fid_ratio']:.2f}  "
              f"mask-only Dice {r['dice_fg']:.3f} (ceiling {r['real_dice_fg']:.3f})")  # fmt: skip
    print(f"wrote {out} and {out.with_suffix('.png')}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate the recipe at --scale times its budget")
    t.add_argument("--scale", type=float, required=True)
    t.add_argument("--profile", default="laptop")
    t.add_argument("--source", required=True)
    t.add_argument("--store", required=True, help="the preprocessed store (made once, shared by every scale)")
    t.add_argument("--segmenter", required=True, help="the evaluation segmenter, the same at every scale")
    t.add_argument("--set", action="append", default=[], help="further overrides (SECTION.KEY=VALUE)")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--tag", help="a variant's name: runs/<profile>_x<scale>_<tag> (with its --set overrides)")
    q = sub.add_parser("point", help="a point from trained runs")
    q.add_argument("--name", required=True)
    q.add_argument("--scale", type=float, default=1.0)
    q.add_argument("--vqvae", required=True, help="VQ-VAE run folder (last.pt, log.csv)")
    q.add_argument("--ldm", required=True, help="LDM run folder (last.pt, log.csv)")
    q.add_argument("--metrics", required=True, help="the LDM's evaluation metrics.json")
    q.add_argument("--threads", type=int, default=1, help="threads the trainings ran on")
    q.add_argument("--recipe", default="default", help="the line it belongs to in the figure")
    q.add_argument("--out")
    c = sub.add_parser("collect", help="gather points into compute.json and its figure")
    c.add_argument("points", nargs="*", help="compute_point.json files (default runs/*/compute_point.json)")
    c.add_argument("--out", default="runs/compute/compute.json")
    c.add_argument("--profile", default="laptop")
    c.add_argument("--default-scale", type=float, default=1.0,
                   help="the trained scale that is the profile's default now (scales are shown over it)")  # fmt: skip
    args = p.parse_args(argv)
    {"train": cmd_train, "point": cmd_point, "collect": cmd_collect}[args.command](args)


if __name__ == "__main__":
    main()

"""Training throughput and peak memory of the real trainers, per stage and profile.

    python benchmarks/training.py                          # smoke, laptop, paper; CPU (and GPU if present)
    python benchmarks/training.py --profiles laptop --steps 5
    python benchmarks/training.py --device cuda --batch paper=36

What is timed: ``train_step()`` of :class:`~mmldm.train.vqvae.VQVAETrainer` and
:class:`~mmldm.train.ldm.LDMTrainer`, i.e. exactly what ``python -m mmldm train-*`` runs per
optimiser step, data loading from an HDF5 store included, checkpoints and logs excluded:

- ``vqvae``: generator forward + losses + backward + clip + Adam step, then the discriminator's
  (``adversarial_start`` is set to 0 so that the GAN phase, the expensive one, is measured);
- ``ldm``: condition dropout, timesteps and noise, UNet forward + loss + backward + clip +
  optimiser step, EMA update (when the profile keeps one), from the cached latents.

Each (profile, stage, device) runs in its own process, so that its peak memory is its own:
on the CPU the peak resident set (``ru_maxrss``) and its rise over the process's resident size
just before the trainer is built (psutil, when installed); on CUDA ``max_memory_allocated``.
Data: a synthetic store of concentric label rings at the profile's image size, two batches'
worth of training slices (the numbers do not depend on the pixels). The VQVAE the LDM encodes
with is untrained (its speed does not depend on its weights).

Steps: ``--warmup`` untimed, then ``--steps`` timed (on the CPU the ``paper`` profile runs at
batch 2 for 2 steps: a 256x256 VQVAE step takes most of a minute on 2 cores). Runs use ``amp``
(bf16 autocast where the device computes it natively: CUDA, or a CPU with AMX tiles; fp32
elsewhere; ``--no-amp`` for fp32 everywhere), and channels_last on CUDA. Benchmarks print; they
never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm.config import load_config, to_dict  # noqa: E402
from mmldm.data.store import StoreWriter  # noqa: E402
from mmldm.models import param_count  # noqa: E402

PROFILES = ("smoke", "laptop", "paper")
STAGES = ("vqvae", "ldm")
CPU_PAPER_BATCH, CPU_PAPER_STEPS = 2, 2


def write_store(path: Path, size: int, train: int, val: int = 2) -> Path:
    """``train`` + ``val`` slices of concentric LV / myocardium / RV rings with noise."""
    rng = np.random.default_rng(0)
    n = train + val
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r = np.hypot(*(np.stack([yy, xx]) - (size / 2 + rng.uniform(-size / 10, size / 10, 2))[:, None, None]))
        for lab, frac in ((3, 0.35), (2, 0.25), (1, 0.15)):
            labels[i][r < size * frac] = lab
    images = np.array([-0.8, 0.6, -0.2, 0.3], np.float32)[labels] + rng.normal(0, 0.05, labels.shape)
    edges = np.zeros_like(labels)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    writer = StoreWriter(path, size)
    writer.append(np.clip(images, -1, 1).astype(np.float32), labels, edges)
    writer.finish(
        {
            "subject": [f"{i:03d}" for i in range(n)],
            "view": ["SA"] * n,
            "phase": ["ED"] * n,
            "slice_index": list(range(n)),
            "source": ["phantom"] * n,
            "split": ["train"] * train + ["val"] * val,
            "vendor": [""] * n,
            "centre": [""] * n,
            "pathology": [""] * n,
            "spacing": [(1.0, 1.0)] * n,
        },
        {"config": f"size: {size}\n", "sources": "[]"},
    )
    return path


def rss_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(
    profile: str, stage: str, device: str, batch: int, steps: int, warmup: int, amp: bool, threads: int | None
) -> dict:
    """One (profile, stage, device) measurement, in this process."""
    from mmldm.checkpoint import save_checkpoint
    from mmldm.models.vqvae import VQVAE
    from mmldm.train.ldm import LDMTrainer
    from mmldm.train.loop import torch_settings
    from mmldm.train.vqvae import VQVAETrainer

    cuda = device == "cuda"
    section = f"train_{stage}"
    overrides = [
        f"{section}.{k}={v}"
        for k, v in dict(
            steps=warmup + steps + 1,
            batch_size=batch,
            grad_accum=1,
            warmup_steps=0,
            lr_schedule="constant",
            num_workers=0,
            in_memory=True,
            log_every=10**6,
            sample_every=0,
            ckpt_every=10**6,
            deterministic=False,
            amp=str(amp).lower(),
            channels_last=str(cuda).lower(),
        ).items()
    ]
    if threads is not None:
        overrides.append(f"{section}.cpu_threads={threads}")
    overrides.append("vqvae.adversarial_start=0")
    cfg = load_config(profile, overrides=overrides)
    tc = getattr(cfg, section)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = write_store(tmp / "store.h5", cfg.data.size, train=2 * batch)
        before = rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch_settings(tc):
            if stage == "vqvae":
                trainer = VQVAETrainer(cfg, store, tmp / "run", tmp, device=device, progress=False)
                params = param_count(trainer.model) + param_count(trainer.disc)
            else:
                vqvae_ckpt = tmp / "vqvae.pt"
                save_checkpoint(
                    {"stage": "vqvae", "step": 0, "config": to_dict(cfg), "model": VQVAE(cfg.vqvae).state_dict()},
                    vqvae_ckpt,
                )
                trainer = LDMTrainer(cfg, store, vqvae_ckpt, tmp / "run", tmp, device=device, progress=False)
                params = param_count(trainer.model)
            for _ in range(warmup):
                trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                out = trainer.train_step()
            float(out.get("loss", out.get("total")))  # wait for the device
            seconds = (time.perf_counter() - t) / steps
            threads = torch.get_num_threads()
    row = {
        "profile": profile,
        "stage": stage,
        "device": device,
        "image": cfg.data.size,
        "batch": batch,
        "steps": steps,
        "params_m": params / 1e6,
        "s_per_step": seconds,
        "images_per_s": batch / seconds,
        "threads": None if cuda else threads,
    }
    if cuda:
        row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["memory"] = "GPU allocated"
    else:
        row["peak_mb"] = peak_rss_mb()
        row["rise_mb"] = None if before is None else row["peak_mb"] - before
        row["memory"] = "process RSS"
    return row


def run_child(args: argparse.Namespace, profile: str, stage: str, device: str, batch: int, steps: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        f"{profile},{stage},{device},{batch},{steps}",
        "--warmup",
        str(args.warmup),
    ]
    if args.no_amp:
        cmd.append("--no-amp")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {
            "profile": profile,
            "stage": stage,
            "device": device,
            "batch": batch,
            "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
        }
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    head = (
        f"{'device':<7}{'profile':<8}{'stage':<7}{'image':>6}{'params':>9}{'batch':>6}{'steps':>6}{'thr':>4}"
        f"{'s/step':>9}{'images/s':>10}{'peak MB':>10}{'rise MB':>9}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['device']:<7}{r['profile']:<8}{r['stage']:<7}  failed: {r['error']}")
            continue
        rise = "" if r.get("rise_mb") is None else f"{r['rise_mb']:.0f}"
        out.append(
            f"{r['device']:<7}{r['profile']:<8}{r['stage']:<7}{r['image']:>6}{r['params_m']:>8.2f}M"
            f"{r['batch']:>6}{r['steps']:>6}{r['threads'] or '-':>4}{r['s_per_step']:>9.3f}"
            f"{r['images_per_s']:>10.2f}"
            f"{r['peak_mb']:>10.0f}{rise:>9}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA if present")
    p.add_argument("--steps", type=int, default=3, help=f"timed steps (CPU paper: {CPU_PAPER_STEPS})")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--batch",
        action="append",
        default=[],
        metavar="PROFILE=N",
        help=f"batch per profile (default: the profile's; CPU paper: {CPU_PAPER_BATCH})",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast (where native)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:  # child: one measurement, one JSON line
        profile, stage, device, batch, steps = args.one.split(",")
        row = measure(profile, stage, device, int(batch), int(steps), args.warmup, not args.no_amp, args.threads)
        print(json.dumps(row), flush=True)
        return

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    batches = dict(item.split("=") for item in args.batch)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU: {gpu}, "
        f"torch {torch.__version__}"
    )
    rows = []
    for device in devices:
        for profile in args.profiles:
            for stage in args.stages:
                cfg = load_config(profile)
                batch = int(batches.get(profile, getattr(cfg, f"train_{stage}").batch_size))
                steps = args.steps
                if device == "cpu" and profile == "paper" and profile not in batches:
                    batch, steps = CPU_PAPER_BATCH, min(steps, CPU_PAPER_STEPS)
                print(f"  {device} {profile} {stage}: batch {batch}, {args.warmup} + {steps} steps ...", flush=True)
                rows.append(run_child(args, profile, stage, device, batch, steps))
    print()
    print(table(rows))
    print(
        "\nimages/s: training images per second of whole optimiser steps (vqvae: generator + "
        "discriminator; ldm: UNet + EMA). peak MB: CPU process peak RSS / GPU max allocated; "
        "rise MB: CPU peak over the RSS before the trainer was built."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Latency of notebook 06's widget callbacks: what a user waits for after moving a slider.

    python benchmarks/widgets.py                                  # the laptop profile's trained model
    python benchmarks/widgets.py --profile smoke --train-smoke    # a smoke model trained here, in seconds
    python benchmarks/widgets.py --ckpt runs/x/ldm/last.pt --store data/processed/x.h5

What is timed: setting a widget's value on :class:`mmldm.viz.widgets.ExplorerUI`, which runs the
very observer the browser triggers (Explorer call, PNG encoding, widget update), without the
browser's round trip. ``t`` moves to a timestep not seen before pay one guided UNet pass and two
VQ-VAE decodes; moves back to one seen before are cache hits. Guidance-scale moves recompute the
forward panel; sampler-step moves only pick a stored frame; Regenerate (a button) runs DDIM and
decodes every step. Each row: median and max over the moves, in milliseconds. One torch thread by
default (``--threads``). Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mmldm.config import load_config  # noqa: E402


def train_smoke(root: Path) -> tuple[Path, Path]:
    """A smoke VQ-VAE + LDM on a small ring store (seconds); returns (LDM checkpoint, store)."""
    from training import write_store

    from mmldm.train.ldm import train_ldm
    from mmldm.train.vqvae import train_vqvae

    cfg = load_config("smoke", overrides=[f"paths.runs={root / 'runs'}", f"paths.figures={root / 'figures'}"])
    store = write_store(root / "store.h5", cfg.data.size, train=16, val=4)
    train_vqvae(cfg, store, progress=False)
    train_ldm(cfg, store, progress=False)
    return cfg.run_dir / "ldm" / "last.pt", store


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def row(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {max(ms):.1f} |"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="laptop", help="profile whose run folder and store to use")
    p.add_argument("--ckpt", type=Path, help="LDM checkpoint (default: <run dir>/ldm/last.pt of --profile)")
    p.add_argument("--store", type=Path, help="HDF5 store (default: the profile's paths.store)")
    p.add_argument("--train-smoke", action="store_true", help="train a smoke model in a temporary folder first")
    p.add_argument("--moves", type=int, default=20, help="slider moves per measurement")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mmldm.inference import LatentDiffusion
    from mmldm.viz.widgets import Explorer, build_ui

    tmp = tempfile.TemporaryDirectory(prefix="mmldm-bench-widgets-")
    cfg = load_config(args.profile)
    if args.train_smoke:
        t0 = time.perf_counter()
        ckpt, store = train_smoke(Path(tmp.name))
        print(f"trained a smoke VQ-VAE + LDM in {time.perf_counter() - t0:.1f} s")
    else:
        ckpt = args.ckpt or cfg.run_dir / "ldm" / "last.pt"
        store = args.store or cfg.store_path
    for path, what in ((ckpt, "LDM checkpoint"), (store, "store")):
        if not Path(path).is_file():
            sys.exit(
                f"benchmarks/widgets.py: no {what} at {path}: train the profile first, pass --ckpt/--store, "
                "or use --train-smoke"
            )

    t0 = time.perf_counter()
    ldm = LatentDiffusion.from_checkpoint(ckpt)
    load_s = time.perf_counter() - t0
    gen = ldm.config if args.train_smoke else cfg
    t0 = time.perf_counter()
    ex = Explorer(ldm, store, sampler=gen.sampler, guidance=gen.guidance)
    explorer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ui = build_ui(ex)
    ui_s = time.perf_counter() - t0
    c = ldm.config
    T, n = ex.num_timesteps, args.moves
    print(
        f"model: {ckpt} (step {ldm.step}, {c.profile} profile, {c.data.size}x{c.data.size} slices, T = {T}, "
        f"{c.diffusion.prediction_type} target); store {store}, {len(ex.slices)} validation slices"
    )
    print(
        f"guidance {ex.guidance.mode}, scales {ex.guidance.scale_mask:g} / {ex.guidance.scale_edge:g}; "
        f"DDIM {ui.steps.value} steps; {args.threads} torch thread(s); {torch.__version__}"
    )
    print(
        f"from_checkpoint {load_s * 1000:.0f} ms; Explorer (first slice encoded) {explorer_s * 1000:.0f} ms; "
        f"build_ui (first Regenerate included) {ui_s * 1000:.0f} ms\n"
    )

    rng = np.random.default_rng(0)
    fresh = rng.choice(np.setdiff1d(np.arange(T), [ui.t.value]), size=min(n, T - 1), replace=False)
    rows = []

    def move(widget, value):
        return timed(lambda: setattr(widget, "value", value))

    rows.append(row("forward t slider, new t (UNet pass + 2 decodes)", [move(ui.t, int(t)) for t in fresh]))
    rows.append(row("forward t slider, t seen before (cache)", [move(ui.t, int(t)) for t in fresh[::-1]]))
    scales = [float(s) for s in rng.choice(np.arange(0, 6.01, 0.25), size=n)]
    rows.append(
        row(
            "guidance scale slider (forward panel recomputed)",
            [move(ui.scale_mask, s) for s in scales if s != ui.scale_mask.value] or [0.0],
        )
    )
    ks = rng.integers(0, ui.k.max + 1, size=n)
    rows.append(row("sampler step slider (stored frame)", [move(ui.k, int(k)) for k in ks]))
    edits = []
    for structure, pixels in [("LV", 2), ("myocardium", 1), ("RV", -1), ("LV", -1)] * max(1, n // 4):
        ui.structure.value, ui.pixels.value = structure, pixels
        edits.append(timed(ui.on_apply))
        if "edit mask" not in ui.latency:  # a structure missing from this slice: reported in the UI
            break
    ui.on_reset()
    rows.append(row("Apply edit (mask, edges, forward panel)", edits))
    choices = [v for _, v in ex.choices()]
    rows.append(
        row(
            "slice picker (VQ-VAE encode of a new slice)",
            [move(ui.slice, int(v)) for v in rng.permutation(choices)[: min(n, len(choices))]],
        )
    )
    regen = {}
    for steps in sorted({10, 25, min(ui.steps.max, 50), ui.steps.value}):
        ui.steps.value = steps
        regen[steps] = [timed(ui.on_regenerate) for _ in range(2)]
    print("| callback | calls | median ms | max ms |\n|---|---:|---:|---:|")
    print("\n".join(rows))
    for steps, seconds in regen.items():
        print(row(f"Regenerate, DDIM {steps} steps", seconds))
    tmp.cleanup()


if __name__ == "__main__":
    main()

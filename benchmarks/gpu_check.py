"""GPU check of the ``paper`` profile: training speed and peak memory per precision / layout /
compile setting, and the DDIM-50 time for 16 images; one JSON file and a table.

    python benchmarks/gpu_check.py                        # on a CUDA machine: everything (compilation dominates)
    python benchmarks/gpu_check.py --combos fp32 bf16+channels_last --stages ldm sampling
    python benchmarks/gpu_check.py --out runs/gpu_check/h100.json --steps 20
    python benchmarks/gpu_check.py --cpu-dry-run          # the same code paths on the CPU, tiny (a test)

Without CUDA it says so and exits with status 2 (``--cpu-dry-run`` runs anyway, on the CPU).

What is measured, each in every **combination** of bf16 autocast (``amp``), ``channels_last``
and ``torch.compile`` (on / off: 8 combinations, named ``fp32``, ``bf16+channels_last+compile``,
...; ``--combos`` picks some):

- ``vqvae``: one optimiser step of :class:`~mmldm.train.vqvae.VQVAETrainer` (the generator's
  forward, losses, backward and Adam step, then the discriminator's: ``adversarial_start`` is set
  to 0 so that the GAN phase, the expensive one, is measured), at the profile's batch (36);
- ``ldm``: one optimiser step of :class:`~mmldm.train.ldm.LDMTrainer` (condition dropout,
  timesteps, noise, UNet forward + loss + backward + Adam step) from the cached latents, at the
  profile's batch (36);
- ``sampling``: :meth:`mmldm.inference.LatentDiffusion.sample` with the evaluation's ``ddim50_both``
  settings (:func:`mmldm.evaluate.run.variant_settings`: DDIM, 50 steps, the profile's guidance)
  for a batch of 16 conditions, the VQVAE decode included; the decode alone is timed beside it.
  ``amp`` wraps the call in bf16 autocast, ``channels_last`` converts the UNet and the VQVAE,
  ``compile`` passes ``torch.compile(unet)``.

The training steps are the trainers' own ``train_step()`` (what ``python -m mmldm train-*`` runs),
with the flags set through the config (``train_*.amp``, ``channels_last``, ``compile``), so what is
measured is what a paper run gets with ``--set train_ldm.amp=true`` etc. Data: a synthetic store
of label rings at the profile's image size (benchmarks/training.py's), two batches of training
slices; weights are untrained (speed does not depend on them).

Per measurement: ``--warmup`` untimed steps (the first one, which includes compilation, is timed
on its own as ``first_step_s``), then ``--steps`` timed ones; images/s = batch / mean step time.
Peak memory is ``torch.cuda.max_memory_allocated`` from the end of the trainer's construction to
the last timed step (so it includes the weights and optimiser state, not the latent encoding done
at construction); ``max_memory_reserved`` beside it. An out-of-memory error or a compile failure
is recorded in that row's ``error`` and the check goes on with the next one.

``--cpu-dry-run`` runs every one of these code paths on the CPU at a tiny size (images of at most
64x64, batch 1, one step, DDIM 2 steps for 2 images): the flags are no-ops there (the trainers
apply them on CUDA only), memory is not measured, and the numbers mean nothing; it checks the
plumbing (1-2 minutes for the paper models and all 8 combinations; ``--profile smoke``: seconds).
On a 2-core CPU, torch.compile (inductor) of the two paper training steps was checked to work
(about 4 and 10 minutes of compilation), so a compile failure on a GPU would be the GPU
backend's own.

Output: ``--out`` (default ``runs/gpu_check/gpu_check.json``, written atomically) holds the
device, torch / CUDA versions, the settings, the model sizes and one row per measurement.
Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import itertools
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm import atomic  # noqa: E402
from mmldm.config import Config, load_config, to_dict  # noqa: E402
from mmldm.models import param_count  # noqa: E402

STAGES = ("vqvae", "ldm", "sampling")
DEFAULT_OUT = REPO / "runs" / "gpu_check" / "gpu_check.json"
SAMPLE_VARIANT = "ddim50_both"  # the evaluation's main row: DDIM 50 steps, the profile's guidance
DRY = {"size": 64, "train_batch": 1, "steps": 1, "warmup": 0, "sample_batch": 2, "sample_steps": 2, "sample_repeats": 1}


@dataclasses.dataclass(frozen=True)
class Combo:
    """One setting of the three speed switches."""

    amp: bool
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        return "+".join(
            ["bf16" if self.amp else "fp32"]
            + (["channels_last"] if self.channels_last else [])
            + (["compile"] if self.compile else [])
        )


COMBOS = [Combo(*flags) for flags in itertools.product((False, True), repeat=3)]
COMBO_NAMES = [c.name for c in COMBOS]


def _load_benchmark(name: str):
    """Another script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_text(e: BaseException) -> str:
    """A one-line account of a failed measurement (out of memory said as such)."""
    oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{'out of memory' if oom else type(e).__name__}: {first}"


def free_memory(device: torch.device) -> None:
    """Forget compiled graphs and give cached GPU memory back between measurements."""
    gc.collect()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(device: torch.device) -> dict:
    """Peak GPU memory since :func:`reset_peak` in MiB (None on the CPU)."""
    if device.type != "cuda":
        return {"peak_allocated_mb": None, "peak_reserved_mb": None}
    return {
        "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
    }


# ---------------------------------------------------------------------------------------------
# Training steps: the real trainers, with the flags set in the config
# ---------------------------------------------------------------------------------------------


def train_config(profile: str, stage: str, combo: Combo, batch: int, extra: list[str]) -> Config:
    """The profile with the trainer set up for timing: ``batch`` images a step, no logging,
    checkpoints or sample grids, data in memory, the combination's flags, the GAN on from step 0."""
    section = f"train_{stage}"
    values = dict(
        steps=10**6,
        batch_size=batch,
        grad_accum=1,
        num_workers=0,
        in_memory=True,
        log_every=10**6,
        sample_every=0,
        ckpt_every=10**6,
        deterministic=False,
        amp=combo.amp,
        channels_last=combo.channels_last,
        compile=combo.compile,
    )
    overrides = [f"{section}.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]
    return load_config(profile, overrides=[*extra, *overrides, "vqvae.adversarial_start=0"])


def vqvae_checkpoint(cfg: Config, path: Path) -> Path:
    """An untrained VQVAE checkpoint for the LDM trainer to encode with (its speed is the same)."""
    from mmldm.checkpoint import save_checkpoint
    from mmldm.models.vqvae import VQVAE

    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(
            {"stage": "vqvae", "step": 0, "config": to_dict(cfg), "model": VQVAE(cfg.vqvae).state_dict()}, path
        )
    return path


def measure_training(stage: str, combo: Combo, args, device: torch.device, work: Path, write_store) -> dict:
    """One row: ``stage`` (vqvae | ldm) trained for warmup + steps optimiser steps in ``combo``."""
    from mmldm.train.ldm import LDMTrainer
    from mmldm.train.loop import torch_settings
    from mmldm.train.vqvae import VQVAETrainer

    batch = args.train_batch or getattr(load_config(args.profile, overrides=args.extra), f"train_{stage}").batch_size
    row = {
        "stage": stage,
        "combo": combo.name,
        **dataclasses.asdict(combo),
        "flags_applied": device.type == "cuda",
        "batch": batch,
        "warmup": args.warmup,
        "steps": args.steps,
    }
    trainer = None
    try:
        cfg = train_config(args.profile, stage, combo, batch, args.extra)
        tc = getattr(cfg, f"train_{stage}")
        row["image"] = cfg.data.size
        store = work / f"store_{cfg.data.size}_{batch}.h5"
        if not store.exists():
            write_store(store, cfg.data.size, train=2 * batch, val=2)
        with torch_settings(tc):
            if stage == "vqvae":
                trainer = VQVAETrainer(cfg, store, work / "vqvae_run", work, device=str(device), progress=False)
                row["params"] = param_count(trainer.model) + param_count(trainer.disc)
            else:
                ckpt = vqvae_checkpoint(cfg, work / f"vqvae_{cfg.data.size}.pt")
                # One run folder for every combination: the latents are encoded once, then reused.
                trainer = LDMTrainer(cfg, store, ckpt, work / "ldm_run", work, device=str(device), progress=False)
                row["params"] = param_count(trainer.model)
            reset_peak(device)
            times = []
            for _ in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                out = trainer.train_step()
                float(out.get("loss", out.get("total")))  # waits for the device
                sync(device)
                times.append(time.perf_counter() - t0)
            timed = times[args.warmup :]
            row["first_step_s"] = times[0]
            row["s_per_step"] = sum(timed) / len(timed)
            row["images_per_s"] = batch / row["s_per_step"]
            row.update(peak(device))
    except Exception as e:  # noqa: BLE001 - OOM, a compile failure...: recorded, and the check goes on
        row["error"] = error_text(e)
        row["traceback"] = traceback.format_exc(limit=-4)
    finally:
        del trainer
        free_memory(device)
    return row


# ---------------------------------------------------------------------------------------------
# Sampling: DDIM-50 for a batch of conditions through the project's sampler, then the decode
# ---------------------------------------------------------------------------------------------


def sampling_inputs(cfg: Config, store: Path, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` conditions (B, 5, H, W) and views (B,) from the store's validation slices."""
    from mmldm.data.dataset import CardiacSliceDataset

    ds = CardiacSliceDataset(store, split="val")
    items = [ds[i % len(ds)] for i in range(batch)]
    ds.close()
    return torch.stack([it["cond"] for it in items]), torch.stack([it["view"] for it in items])


def measure_sampling(combo: Combo, args, device: torch.device, work: Path, write_store) -> dict:
    """One row: ``LatentDiffusion.sample`` with the ddim50_both settings for ``sample_batch`` images."""
    from mmldm.diffusion.latent_norm import latent_stats
    from mmldm.evaluate.run import variant_settings
    from mmldm.inference import LatentDiffusion
    from mmldm.models import VQVAE, UNet

    row = {
        "stage": "sampling",
        "combo": combo.name,
        **dataclasses.asdict(combo),
        "flags_applied": device.type == "cuda",
        "batch": args.sample_batch,
        "repeats": args.sample_repeats,
    }
    unet = vqvae = model = None
    cuda = device.type == "cuda"
    try:
        cfg = load_config(args.profile, overrides=args.extra)
        sampler, guidance = variant_settings(
            SAMPLE_VARIANT, cfg.sampler, cfg.guidance, cfg.diffusion.num_train_timesteps
        )
        sampler = dataclasses.replace(sampler, num_inference_steps=min(args.sample_steps, sampler.num_inference_steps))
        row.update(
            image=cfg.data.size,
            sampler=sampler.name,
            sampler_steps=sampler.num_inference_steps,
            guidance=dataclasses.asdict(guidance),
        )
        store = work / f"sampling_store_{cfg.data.size}_{args.sample_batch}.h5"
        if not store.exists():
            write_store(store, cfg.data.size, train=2, val=args.sample_batch)
        cond, view = sampling_inputs(cfg, store, args.sample_batch)
        torch.manual_seed(0)
        unet, vqvae = UNet(cfg.unet).to(device).eval(), VQVAE(cfg.vqvae).to(device).eval()
        row["params"] = {"unet": param_count(unet), "vqvae": param_count(vqvae)}
        if combo.channels_last and cuda:
            unet.to(memory_format=torch.channels_last)
            vqvae.to(memory_format=torch.channels_last)
        model = torch.compile(unet) if combo.compile and cuda else unet
        f = vqvae.config.downsample_factor
        z = torch.randn(args.sample_batch, cfg.unet.latent_channels, cfg.data.size // f, cfg.data.size // f)
        stats = latent_stats(z, cfg.train_ldm.latent_norm)

        def amp():  # what the trainers' autocast does: bf16 on CUDA when asked
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=combo.amp and cuda)

        pipe = LatentDiffusion(cfg, model, vqvae, stats, device=device)

        def run():
            with amp(), torch.no_grad():
                return pipe.sample(cond, view, sampler=sampler, guidance=guidance, seed=0)

        reset_peak(device)
        t0 = time.perf_counter()
        images = run()  # warm-up (compiles when asked)
        row["first_run_s"] = time.perf_counter() - t0
        times = []
        for _ in range(args.sample_repeats):
            sync(device)
            t0 = time.perf_counter()
            images = run()  # ends with .cpu(): waits for the device
            times.append(time.perf_counter() - t0)
        row["seconds"] = min(times)
        row["s_per_image"] = row["seconds"] / args.sample_batch
        row["images_per_s"] = args.sample_batch / row["seconds"]
        row["output_shape"] = list(images.shape)
        row["output_finite"] = bool(torch.isfinite(images.float()).all())
        # The decode alone, at the same batch and settings.
        latents = z.to(device)
        with amp(), torch.no_grad():
            vqvae.decode_latent(latents)
            sync(device)
            t0 = time.perf_counter()
            vqvae.decode_latent(latents)
            sync(device)
        row["decode_s"] = time.perf_counter() - t0
        row.update(peak(device))
    except Exception as e:  # noqa: BLE001 - recorded, and the check goes on
        row["error"] = error_text(e)
        row["traceback"] = traceback.format_exc(limit=-4)
    finally:
        del unet, vqvae, model
        free_memory(device)
    return row


# ---------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["name"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


def clean(obj):
    """JSON-safe: NaN / inf -> None, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = (
        f"{'stage':<9}{'combination':<28}{'batch':>6}{'images/s':>10}{'s/step':>9}{'first s':>9}{'peak MiB':>10}  note"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        s = r.get("s_per_step", r.get("seconds"))
        first = r.get("first_step_s", r.get("first_run_s"))
        note = r.get("error", "")
        if not note and r["stage"] == "sampling":
            note = (
                f"{r['sampler']}-{r['sampler_steps']}, {r['batch']} images in {r['seconds']:.2f} s, "
                f"decode {r['decode_s']:.2f} s"
            )
        out.append(
            f"{r['stage']:<9}{r['combo']:<28}{r['batch']:>6}{_num(r.get('images_per_s'), '.2f'):>10}"
            f"{_num(s, '.3f'):>9}{_num(first, '.1f'):>9}{_num(r.get('peak_allocated_mb'), '.0f'):>10}  {note}"
        )
    return "\n".join(out)


def run(args, device: torch.device, log=print) -> dict:
    write_store = _load_benchmark("training").write_store
    combos = [c for c in COMBOS if c.name in args.combos]
    cfg = load_config(args.profile, overrides=args.extra)
    f = cfg.vqvae.downsample_factor
    result = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": device.type != "cuda",
        "profile": args.profile,
        "device": device_info(device),
        "settings": {
            "train_batch": args.train_batch or "profile",
            "warmup": args.warmup,
            "steps": args.steps,
            "sample_batch": args.sample_batch,
            "sample_steps": args.sample_steps,
            "sample_repeats": args.sample_repeats,
            "overrides": args.extra,
            "combos": [c.name for c in combos],
            "stages": list(args.stages),
        },
        "model": {
            "image": [1, cfg.data.size, cfg.data.size],
            "latent": [cfg.vqvae.latent_channels, cfg.data.size // f, cfg.data.size // f],
            "conditioning": cfg.unet.conditioning,
            "prediction_type": cfg.diffusion.prediction_type,
        },
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for stage in args.stages:
            for combo in combos:
                log(f"  {stage:<9}{combo.name} ...")
                t0 = time.perf_counter()
                if stage == "sampling":
                    row = measure_sampling(combo, args, device, work, write_store)
                else:
                    row = measure_training(stage, combo, args, device, work, write_store)
                row["wall_s"] = time.perf_counter() - t0
                log(
                    f"    {row.get('error') or _num(row.get('images_per_s'), '.2f') + ' images/s'}"
                    f" ({row['wall_s']:.0f} s)"
                )
                result["rows"].append(row)
                if args.out:  # after every row, so an interrupted check keeps what it measured
                    write_json(result, args.out)
    return result


def write_json(result: dict, path: str | Path) -> Path:
    return atomic.write_text(path, json.dumps(clean(result), indent=1, allow_nan=False) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="GPU check of the paper profile: training images/s and peak memory "
        "with bf16 / channels_last / torch.compile on and off, and DDIM-50 "
        "time for 16 images; writes JSON (see the module docstring)"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file (default: %(default)s)")
    p.add_argument("--profile", default="paper", help="config profile (default: paper)")
    p.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override, as in run_all.sh (repeatable)",
    )
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument(
        "--combos",
        nargs="+",
        default=None,
        choices=COMBO_NAMES,
        metavar="COMBO",
        help=f"combinations to run (default: all 8): {', '.join(COMBO_NAMES)}",
    )
    p.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="images per training step (default: the profile's train_vqvae / train_ldm batch_size)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 3)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10)")
    p.add_argument("--sample-batch", type=int, default=None, help="images sampled at once (default 16)")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default 50)")
    p.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs, fastest kept (default 2)")
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="no GPU needed: the same code paths on the CPU at a tiny size (numbers meaningless)",
    )
    args = p.parse_args(argv)
    args.combos = args.combos or list(COMBO_NAMES)
    dry = args.cpu_dry_run
    defaults = {
        "warmup": DRY["warmup"] if dry else 3,
        "steps": DRY["steps"] if dry else 10,
        "sample_batch": DRY["sample_batch"] if dry else 16,
        "sample_steps": DRY["sample_steps"] if dry else 50,
        "sample_repeats": DRY["sample_repeats"] if dry else 2,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if dry and load_config(args.profile, overrides=args.extra).data.size > DRY["size"]:
        args.extra = [f"data.size={DRY['size']}", *args.extra]
    if args.train_batch is None and dry:
        args.train_batch = DRY["train_batch"]
    if args.steps < 1 or args.sample_repeats < 1 or args.warmup < 0:
        p.error("--steps and --sample-repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        if args.cpu_dry_run:
            print("gpu_check: --cpu-dry-run given: running on the CPU although CUDA is available")
            device = torch.device("cpu")
    elif args.cpu_dry_run:
        device = torch.device("cpu")
    else:
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
            "this check measures a GPU and has nothing to measure here. --cpu-dry-run runs the same "
            "code paths on the CPU at a tiny size.",
            file=sys.stderr,
        )
        return 2
    info = device_info(device)
    print(
        f"gpu_check: {info['name']}, torch {info['torch']}, profile {args.profile}"
        f"{' (CPU dry run: tiny sizes, numbers meaningless)' if device.type == 'cpu' else ''}"
    )
    result = run(args, device)
    print()
    print(table(result["rows"]))
    print(
        "\nimages/s: training images per second of whole optimiser steps (vqvae: generator + discriminator), "
        "or sampled images per second (DDIM + VQVAE decode); first s: the first step / run, compilation "
        "included; peak MiB: torch.cuda.max_memory_allocated."
    )
    if args.out:
        print(f"written: {write_json(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

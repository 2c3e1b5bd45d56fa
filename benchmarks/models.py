"""Model size and speed: parameter counts, training throughput and sampling time per image.

    python benchmarks/models.py                                # laptop + paper, GPU if present
    python benchmarks/models.py --profiles laptop --quick      # a quick look (fewer repeats)
    python benchmarks/models.py --device cpu --json bench.json # numbers to a file as well

What is measured, per profile (``configs/<profile>.yaml``):

- parameters: the VQVAE, and the UNet in each conditioning mode (``concat_nearest``,
  ``hint_encoder``, ``spade``); the profile's own mode is marked ``*``;
- training throughput, images/s, of one optimiser step (forward + backward + Adam step,
  ``zero_grad`` included) on random data of the right shapes:
  the VQVAE on (B, 1, S, S) images with the generator losses (reconstruction, codebook,
  commitment; the PatchGAN only switches on at ``adversarial_start`` and is not included), and
  the UNet on (B, latent_channels, S/f, S/f) latents with the 5-channel condition at the image
  size S, condition dropout and the epsilon / v loss at random timesteps, in every conditioning
  mode (``--profile-mode-only`` times just the profile's own);
- sampling time per image, for DDPM-1000, DDIM-50 and DPM-Solver++(2M)-20, with the profile's
  conditioning mode: the conditioned ``model_fn`` from
  :func:`~mmldm.diffusion.guidance.guided_model_fn` with both guidance scales 1 (one UNet pass
  per step; guidance scales other than 1 batch 2-3 passes and cost about that much more),
  through :func:`~mmldm.diffusion.sampling_loop.sample`; plus the VQVAE decode of the sampled latent.
  Each sampling step is timed first (one ``model_fn`` call, and one sampler update); a whole run
  is then timed when its estimate (steps x time per step) is at most ``--max-full`` seconds,
  otherwise the estimate is reported, marked ``~`` (on a CPU: DDPM-1000 and, for ``paper``,
  every sampler).

Timing: one warm-up call, then repeats until ``--repeats`` are done or ``--budget`` seconds have
passed (at least ``--min-repeats``); the median is reported. On CUDA the models run under bf16
autocast in channels_last memory format with ``cudnn.benchmark``, and the device is
synchronised before every clock read. On the CPU they run in float32 with torch's default
threads (one per core; ``--threads 1`` is steadier on a machine others are using). Benchmarks
print; they never assert (timings vary with load).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm.config import Config, load_config  # noqa: E402
from mmldm.diffusion import (  # noqa: E402
    NoiseSchedule,
    guided_model_fn,
    make_sampler,
    sample,
)
from mmldm.models import VQVAE, UNet, param_count  # noqa: E402
from mmldm.models.vqvae import vqvae_generator_loss  # noqa: E402
from mmldm.train.ldm import ldm_loss, noised_batch  # noqa: E402

MODES = ("concat_nearest", "hint_encoder", "spade")
SAMPLERS = (("ddpm", "DDPM", 1000), ("ddim", "DDIM", 50), ("dpm_solver", "DPM-Solver", 20))

# Batch sizes (images per optimiser step / per sampling batch); --train-batch / --sample-batch override.
TRAIN_BATCH = {
    "cpu": {"paper": {"vqvae": 2, "unet": 4}, "laptop": {"vqvae": 16, "unet": 16}},
    "cuda": {"paper": {"vqvae": 16, "unet": 32}, "laptop": {"vqvae": 64, "unet": 64}},
}
DEFAULT_TRAIN_BATCH = {"cpu": 8, "cuda": 32}  # profiles not listed above (smoke, custom files)
SAMPLE_BATCH = {"cpu": 4, "cuda": 16}


@dataclasses.dataclass
class Settings:
    """How hard to measure. ``quick()`` is for a first look and for the tests."""

    repeats: int = 5  # timed calls per measurement at most (after the warm-up)
    min_repeats: int = 2  # ... and at least, whatever the budget
    budget: float = 20.0  # seconds of timed calls per measurement before stopping early
    max_full: float = 30.0  # run a whole sampler when steps x time per step is at most this
    train_batch: int | None = None  # None: the table above
    sample_batch: int | None = None
    modes: tuple[str, ...] | None = None  # UNet training modes; None: all three

    @classmethod
    def quick(cls, **over) -> Settings:
        return dataclasses.replace(cls(repeats=2, min_repeats=1, budget=5.0, max_full=15.0), **over)


# ---------------------------------------------------------------------------------------------
# Device handling and the stopwatch
# ---------------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when ``torch.cuda.is_available()``, else the CPU (said so on stdout)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            print("no GPU found (torch.cuda.is_available() is False): CPU numbers only", flush=True)
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU found (torch.cuda.is_available() is False)")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing (float32) on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    t = t.to(device)
    if device.type == "cuda" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def timeit(
    fn: Callable[[], object], device: torch.device, s: Settings, warmup: int = 1, repeats: int | None = None
) -> dict:
    """Median wall time of ``fn()`` over repeats after ``warmup`` untimed calls."""
    repeats = s.repeats if repeats is None else repeats
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < s.min_repeats or time.perf_counter() - start < s.budget):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


# ---------------------------------------------------------------------------------------------
# Inputs of the right shapes
# ---------------------------------------------------------------------------------------------


def latent_shape(cfg: Config, batch: int) -> tuple[int, int, int, int]:
    h = cfg.data.size // cfg.vqvae.downsample_factor
    return (batch, cfg.unet.latent_channels, h, h)


def random_condition(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 5, S, S): a sparse binary edge map and a random one-hot label map, like the real thing."""
    edge = (torch.rand(batch, 1, size, size, generator=generator) < 0.05).float()
    labels = torch.randint(0, 4, (batch, size, size), generator=generator)
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    return torch.cat([edge, onehot], dim=1)


def random_views(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (batch,), generator=generator)


def unet_config(cfg: Config, mode: str):
    return dataclasses.replace(cfg.unet, conditioning=mode)


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def count_parameters(cfg: Config) -> dict:
    """{"vqvae": n, "unet": {mode: n}} for the profile."""
    out = {"vqvae": param_count(VQVAE(cfg.vqvae)), "unet": {}}
    for mode in MODES:
        out["unet"][mode] = param_count(UNet(unet_config(cfg, mode)))
    return out


def _adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    # The seed's optimiser and learning rate (TrainConfig's defaults).
    return torch.optim.Adam(model.parameters(), lr=8e-5)


def vqvae_train_throughput(cfg: Config, batch: int, device: torch.device, s: Settings) -> dict:
    torch.manual_seed(0)
    model = prepare(VQVAE(cfg.vqvae), device).train()
    opt = _adam(model)
    g = torch.Generator().manual_seed(0)
    x = tensor(torch.rand(batch, cfg.vqvae.image_channels, cfg.data.size, cfg.data.size, generator=g) * 2 - 1, device)

    def step():
        with autocast(device):
            recon, info = model(x)
            loss = vqvae_generator_loss(cfg.vqvae, x, recon.float(), info, step=0)["total"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    r = timeit(step, device, s)
    r.update(batch=batch, images_per_s=batch / r["median_s"])
    return r


def unet_train_throughput(cfg: Config, mode: str, batch: int, device: torch.device, s: Settings) -> dict:
    torch.manual_seed(0)
    model = prepare(UNet(unet_config(cfg, mode)), device).train()
    opt = _adam(model)
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    g = torch.Generator().manual_seed(0)
    x0 = tensor(torch.randn(latent_shape(cfg, batch), generator=g), device)
    cond = tensor(random_condition(batch, cfg.data.size, g), device)
    view = random_views(batch, g).to(device)

    def step():  # the trainer's own loss (mmldm.train.ldm), on random latents of the right shape
        # (the random edge channel stands in for the mask-drawn edges of mask-first training)
        c, t, noise = noised_batch(schedule, x0.cpu(), cond.cpu(), cfg.guidance, g, cond[:, :1].cpu())
        loss = ldm_loss(
            model, cfg, schedule, x0, tensor(c, device), view, t.to(device), tensor(noise, device), autocast(device)
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    r = timeit(step, device, s)
    r.update(batch=batch, images_per_s=batch / r["median_s"])
    return r


def make_benchmark_sampler(name: str, steps: int, schedule: NoiseSchedule, cfg: Config):
    """The profile's sampler settings with another name and step count, through the real factory
    (no x0 clipping: random weights have no latent range to clip to)."""
    sampler_cfg = dataclasses.replace(
        cfg.sampler, name=name, num_inference_steps=steps, eta=0.0, clip_to_latents=False, clip_x0=None
    )
    return make_sampler(sampler_cfg, schedule, cfg.diffusion.prediction_type)


def sampling_times(cfg: Config, batch: int, device: torch.device, s: Settings, samplers=SAMPLERS) -> dict:
    """Per-image sampling time of each sampler (measured or extrapolated), and the VQVAE decode."""
    torch.manual_seed(0)
    unet = prepare(UNet(cfg.unet), device).eval()
    vqvae = prepare(VQVAE(cfg.vqvae), device).eval()
    diffusion = cfg.diffusion
    longest = max(steps for _, _, steps in samplers)
    if diffusion.num_train_timesteps < longest:  # smoke: 100 training steps; timing only needs the count
        diffusion = dataclasses.replace(diffusion, num_train_timesteps=longest)
    schedule = NoiseSchedule.from_config(diffusion)
    g = torch.Generator().manual_seed(0)
    cond = tensor(random_condition(batch, cfg.data.size, g), device)
    view = random_views(batch, g).to(device)
    guided = guided_model_fn(unet, cond, view, scale_mask=1.0, scale_edge=1.0, mode="both")

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(device):  # bf16 inside the UNet on CUDA; the sampler's arithmetic stays float32
            return guided(x_t, t).float()

    shape = latent_shape(cfg, batch)
    x = tensor(torch.randn(shape, generator=g), device)
    t = torch.full((batch,), len(schedule) // 2, dtype=torch.long, device=device)

    def forward():
        with torch.no_grad():
            return model_fn(x, t)

    # The extrapolations rest on this one: time it more often than the rest (it is the cheapest).
    out = {"batch": batch, "unet_forward": timeit(forward, device, s, repeats=max(s.repeats, 10))}
    per_forward = out["unet_forward"]["median_s"]
    eps = forward()

    for name, label, steps in samplers:
        sampler = make_benchmark_sampler(name, steps, schedule, cfg)
        mid = len(sampler) // 2

        def update(sampler=sampler, mid=mid):
            sampler.reset()
            sampler.step(eps, mid, x, generator=g)

        upd = timeit(update, device, dataclasses.replace(s, budget=min(s.budget, 2.0)), repeats=20)
        per_step = per_forward + upd["median_s"]
        estimate = per_step * len(sampler)
        entry = {
            "label": f"{label}-{len(sampler)}",
            "steps": len(sampler),
            "per_step_s": per_step,
            "update_s": upd["median_s"],
            "estimate_s": estimate,
        }
        if estimate <= s.max_full:

            def run(sampler=sampler):
                sample(model_fn, sampler, shape, torch.Generator().manual_seed(0), device=device)

            # Warm-up only when a run is cheap; the step timings above already warmed the model.
            full = timeit(run, device, s, warmup=1 if estimate < s.budget / 4 else 0)
            entry.update(full, extrapolated=False, seconds=full["median_s"])
        else:
            entry.update(extrapolated=True, seconds=estimate)
        entry["per_image_s"] = entry["seconds"] / batch
        out[name] = entry

    z = x.float()

    def decode():
        with torch.no_grad(), autocast(device):
            return vqvae.decode_latent(z)

    out["vqvae_decode"] = timeit(decode, device, s)
    out["vqvae_decode"]["per_image_s"] = out["vqvae_decode"]["median_s"] / batch
    return out


def benchmark_profile(profile: str, device: torch.device, s: Settings, log=print) -> dict:
    """Every measurement for one profile, as a JSON-able dict."""
    cfg = load_config(profile)
    kind = device.type
    batches = TRAIN_BATCH[kind].get(cfg.profile, {})
    tb = lambda model: s.train_batch or batches.get(model, DEFAULT_TRAIN_BATCH[kind])  # noqa: E731
    sb = s.sample_batch or SAMPLE_BATCH[kind]
    res = {
        "profile": cfg.profile,
        "device": kind,
        "conditioning": cfg.unet.conditioning,
        "image_size": cfg.data.size,
        "latent_shape": list(latent_shape(cfg, 1)[1:]),
    }

    t0 = time.perf_counter()
    res["params"] = count_parameters(cfg)
    log(f"[{profile}] parameters: {res['params']}  ({time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    r = vqvae_train_throughput(cfg, tb("vqvae"), device, s)
    res["train_vqvae"] = r
    log(
        f"[{profile}] VQVAE train: {r['images_per_s']:.3g} images/s, batch {r['batch']}, "
        f"{r['median_s']:.3g} s/step (n={r['n']}; {time.perf_counter() - t0:.0f} s)"
    )

    res["train_unet"] = {}
    for mode in s.modes or MODES:
        t0 = time.perf_counter()
        r = unet_train_throughput(cfg, mode, tb("unet"), device, s)
        res["train_unet"][mode] = r
        log(
            f"[{profile}] UNet train {mode}: {r['images_per_s']:.3g} images/s, batch {r['batch']}, "
            f"{r['median_s']:.3g} s/step (n={r['n']}; {time.perf_counter() - t0:.0f} s)"
        )

    t0 = time.perf_counter()
    res["sampling"] = smp = sampling_times(cfg, sb, device, s)
    for name, *_ in SAMPLERS:
        e = smp[name]
        how = "extrapolated" if e["extrapolated"] else f"measured (n={e['n']}, estimate {e['estimate_s']:.3g} s)"
        log(f"[{profile}] {e['label']}: {e['per_image_s']:.3g} s/image, {how}")
    log(
        f"[{profile}] UNet forward {smp['unet_forward']['median_s'] * 1e3:.1f} ms per batch of {sb}; "
        f"VQVAE decode {smp['vqvae_decode']['per_image_s']:.3g} s/image ({time.perf_counter() - t0:.0f} s)"
    )
    return res


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _num(x: float) -> str:
    """Three significant figures, no scientific notation for everyday sizes."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table_rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per profile); the rows are the same for every profile."""
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, cell: Callable[[dict], str]):
        rows.append((label, [cell(r) for r in results]))

    star = lambda r, mode: " *" if r["conditioning"] == mode else ""  # noqa: E731
    add(
        "Image / latent",
        lambda r: f"{r['image_size']}² / {'×'.join(map(str, r['latent_shape'][1:]))}×{r['latent_shape'][0]}",
    )
    add("VQVAE parameters", lambda r: _millions(r["params"]["vqvae"]))
    for mode in MODES:
        add(f"UNet parameters, {mode}", lambda r, m=mode: _millions(r["params"]["unet"][m]) + star(r, m))
    add(
        "VQVAE training, images/s (batch)",
        lambda r: f"{_num(r['train_vqvae']['images_per_s'])} ({r['train_vqvae']['batch']})",
    )
    for mode in MODES:

        def unet_cell(r, m=mode):
            e = r["train_unet"].get(m)
            return "–" if e is None else f"{_num(e['images_per_s'])} ({e['batch']}){star(r, m)}"

        add(f"UNet training, images/s (batch), {mode}", unet_cell)
    add(
        "UNet forward, ms per sampling batch (batch)",
        lambda r: f"{_num(r['sampling']['unet_forward']['median_s'] * 1e3)} ({r['sampling']['batch']})",
    )
    for name, label, steps in SAMPLERS:

        def sample_cell(r, n=name):
            e = r["sampling"][n]
            return ("~" if e["extrapolated"] else "") + _num(e["per_image_s"])

        add(f"{label}-{steps} sampling, s/image", sample_cell)
    add("VQVAE decode, s/image", lambda r: _num(r["sampling"]["vqvae_decode"]["per_image_s"]))
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU ({os.cpu_count()} cores, {n} torch thread{'' if n == 1 else 's'})"


def markdown_table(
    results: list[dict],
    device: torch.device,
    s: Settings,
    load: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> str:
    header = ["", *[f"{r['profile']} ({r['device'].upper() if r['device'] == 'cpu' else 'GPU'})" for r in results]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(results)) + "|"]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in table_rows(results)]
    notes = [
        f"Device: {device_name(device)}, torch {torch.__version__}"
        + (", bf16 autocast, channels_last." if device.type == "cuda" else ", float32."),
        f"Median of up to {s.repeats} timed calls after a warm-up (at least {s.min_repeats}, "
        f"stopping after {s.budget:g} s).",
        "\\* the profile's own conditioning mode; the sampling rows use it.",
        "Training: one optimiser step (forward, backward, Adam) on random data of the right shapes; "
        "the VQVAE's generator losses only (no PatchGAN, which starts at `adversarial_start`).",
        "Sampling: guidance scales 1 (one UNet pass per step), timesteps `trailing`; "
        "s/image = time for the batch / batch size; the VQVAE decode is extra.",
        "~ extrapolated, not run: (one UNet forward + one sampler update) × number of steps, "
        f"used where a whole run would take over {s.max_full:g} s.",
    ]
    if device.type == "cpu":
        busy = "" if load is None else (f" (1-minute load average {load[0][0]:.1f} before, {load[1][0]:.1f} after)")
        notes.insert(
            1,
            f"CPU numbers were taken on a shared {os.cpu_count()}-core machine while other "
            f"processes ran{busy}: treat them as rough.",
        )
        if torch.get_num_threads() < (os.cpu_count() or 1):
            notes.insert(
                2,
                f"torch used {torch.get_num_threads()} of {os.cpu_count()} cores (`--threads`): with "
                "every core busy, more threads spin-wait on each other and timings scatter; "
                "on an idle machine all cores are somewhat faster.",
            )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["laptop", "paper"], help="profiles (names or YAML paths)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="fewer repeats and a shorter budget per measurement")
    p.add_argument("--repeats", type=int, help="timed calls per measurement at most")
    p.add_argument("--min-repeats", type=int, help="timed calls per measurement at least")
    p.add_argument("--budget", type=float, help="seconds per measurement before stopping early")
    p.add_argument("--max-full", type=float, help="run a sampler fully when its estimate is at most this (s)")
    p.add_argument("--train-batch", type=int, help="one batch size for every training measurement")
    p.add_argument("--sample-batch", type=int, help="sampling batch size (default 4 on CPU, 16 on GPU)")
    p.add_argument(
        "--profile-mode-only",
        action="store_true",
        help="time UNet training only in each profile's own conditioning mode",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's, one per core). On a busy shared machine "
        "1 is steadier: with every core taken, 2 threads wait on each other",
    )
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = p.parse_args(argv)

    s = Settings.quick() if args.quick else Settings()
    over = {
        k: v
        for k, v in dict(
            repeats=args.repeats,
            min_repeats=args.min_repeats,
            budget=args.budget,
            max_full=args.max_full,
            train_batch=args.train_batch,
            sample_batch=args.sample_batch,
        ).items()
        if v is not None
    }
    s = dataclasses.replace(s, **over)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {device_name(device)}; torch {torch.__version__}; python {platform.python_version()}", flush=True)
    if device.type == "cpu":
        print("note: CPU timings on a shared machine vary with what else runs; medians are reported", flush=True)
    load_before = os.getloadavg()
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}", flush=True)

    start = time.perf_counter()
    results = []
    for profile in args.profiles:
        settings = s
        if args.profile_mode_only:
            settings = dataclasses.replace(s, modes=(load_config(profile).unet.conditioning,))
        results.append(benchmark_profile(profile, device, settings, log=lambda m: print(m, flush=True)))
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    print()
    print(markdown_table(results, device, s, load=(load_before, load_after)))
    print(f"\nwall time of the whole benchmark: {wall:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "device": device_name(device),
            "torch": torch.__version__,
            "settings": dataclasses.asdict(s),
            "threads": torch.get_num_threads(),
            "load_before": load_before,
            "load_after": load_after,
            "wall_s": wall,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"numbers written to {args.json}")


if __name__ == "__main__":
    main()

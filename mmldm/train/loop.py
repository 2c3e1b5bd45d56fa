"""The training loop both stages share (:class:`Trainer`) and its pieces: seeds, data order, devices.

Reproducibility rules, the reason for most of this file:

- the **data order** is a pure function of (seed, epoch, position): epoch e shuffles with
  DistributedSampler's permutation for ``set_epoch(e)``, and a run resumed at optimiser step s
  starts at micro-batch ``s * grad_accum`` of that stream (:class:`ResumableSampler`), so no
  sampler state needs saving;
- **noise, timesteps and condition dropout** come from the trainer's own ``torch.Generator``
  (seeded per rank by :func:`stream_seed`), saved in every checkpoint;
- **dropout layers and the quantiser's restarts** use torch's global generator, also saved;
- the DataLoader gets its own generator (its workers' base seed), so creating one never
  consumes numbers from the global generator.

With ``deterministic: true`` torch is told to use deterministic kernels (on the CPU they mostly
are already); then a resumed run ends bit-identical to an uninterrupted one. (One caveat: the
Dataset's optional augmentation draws from torch's generator in whichever process loads the
data; with ``num_workers: 0`` that is the saved global one, with worker processes it is not.)

Below the helpers is :class:`Trainer`, the loop itself, which both stages subclass.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from mmldm import atomic
from mmldm.checkpoint import (
    LAST,
    PREVIOUS,
    CheckpointError,
    capture_rng,
    find_resume,
    restore_rng,
    save_checkpoint,
    weights_hash,
)
from mmldm.config import Config, to_dict
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.errors import ConfigError, DataError, MMLDMError, check_terminated, warn
from mmldm.lock import run_lock
from mmldm.precision import autocast as precision_autocast
from mmldm.precision import resolve_precision
from mmldm.train import distributed
from mmldm.train.distributed import Dist
from mmldm.train.log import CSVLog, read_log, save_loss_curve
from mmldm.train.optim import TrainConfig

# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


def stream_seed(seed: int, rank: int, stream: str) -> int:
    """An independent 63-bit seed for one named random stream of one process."""
    words = [seed, rank, *stream.encode()]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU) with one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_settings(cfg: TrainConfig):
    """``deterministic`` kernels and ``cpu_threads`` for the duration of a training run
    (the previous settings come back afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # pick the fastest conv kernels (CUDA)
    try:
        yield
    finally:
        if cfg.deterministic or before:
            torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = bench
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """An endless stream of this rank's indices, epoch after epoch, starting at any micro-batch.

    Epoch e is ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` after
    ``set_epoch(e)``, cut to whole micro-batches (the last partial one is dropped, so a batch
    never spans two epochs). Starting at micro-batch k means epoch ``k // per_epoch``, batch
    ``k % per_epoch`` of it: a resumed run continues with exactly the batches the killed one
    would have drawn.
    """

    def __init__(self, dataset: Dataset, micro_batch: int, d: Dist, seed: int, start_batch: int = 0):
        self.inner = DistributedSampler(
            dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.micro_batch = micro_batch
        self.per_epoch = len(self.inner) // micro_batch
        if self.per_epoch == 0:
            raise ConfigError(
                f"{len(dataset)} training items give no full micro-batch of {micro_batch} per process "
                f"({d.world_size} processes): lower train_*.batch_size or add data"
            )
        self.start_batch = start_batch

    def position(self, batch: int) -> tuple[int, int]:
        """(epoch, batch within it) of micro-batch number ``batch``."""
        return divmod(batch, self.per_epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = self.position(self.start_batch)
        for e in itertools.count(epoch):
            self.inner.set_epoch(e)
            order = list(self.inner)[: self.per_epoch * self.micro_batch]
            yield from order[offset * self.micro_batch :]
            offset = 0


def batch_stream(dataset: Dataset, cfg: TrainConfig, d: Dist, start_step: int) -> Iterator[dict]:
    """Micro-batches from optimiser step ``start_step`` on, endlessly (see ResumableSampler)."""
    micro = cfg.micro_batch(d.world_size)
    sampler = ResumableSampler(dataset, micro, d, cfg.seed, start_batch=start_step * cfg.grad_accum)
    loader = DataLoader(
        dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=d.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(stream_seed(cfg.seed, d.rank, "loader")),
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# Device, precision, wrapping
# ---------------------------------------------------------------------------------------------


def training_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``bf16`` when ``amp`` is on and ``device`` computes bf16 natively (:mod:`mmldm.precision`), else ``fp32``."""
    return resolve_precision("auto" if cfg.amp else "fp32", device)


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast when ``amp`` is on and the device computes bf16 natively: a CUDA GPU with bf16
    or a CPU with AMX tiles; a no-op context otherwise (on other CPUs bf16 is slower than fp32)."""
    return precision_autocast(training_precision(cfg, device), device)


def to_device(x: torch.Tensor, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Move an image-like batch to the device (channels_last on CUDA if asked)."""
    x = x.to(device, non_blocking=True)
    if cfg.channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def place(model: nn.Module, cfg: TrainConfig, d: Dist) -> nn.Module:
    """``model`` on this process's device (channels_last on CUDA if asked), in place.

    Do it before building the optimiser and loading its state: optimiser state lives on the
    device of the parameters it was loaded next to.
    """
    model.to(d.device)
    if cfg.channels_last and d.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def wrap(model: nn.Module, cfg: TrainConfig, d: Dist) -> nn.Module:
    """The module to train with: ``model`` compiled (if asked, CUDA only), then DDP-wrapped.

    ``model`` itself stays the bare module: save, EMA-average and sample with it (a compiled
    module's names gain ``_orig_mod.``, a DDP module's ``module.``).
    """
    wrapped = model
    if cfg.compile and d.device.type == "cuda":
        wrapped = torch.compile(model)
    if d.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[d.local_rank] if d.device.type == "cuda" else None
        )
    return wrapped


def no_sync(wrapped: nn.Module, last_micro: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step (grad_accum)."""
    if last_micro or not isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, params, cfg: TrainConfig) -> torch.Tensor:
    """Clip the global gradient norm (if asked), step, advance the LR schedule (if given).

    Returns the gradient norm before clipping (a tensor: reading it would wait for the GPU).
    """
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip is not None else float("inf"))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return norm


class Throughput:
    """Training images per second between two calls of :meth:`rate`; time spent inside
    :meth:`paused` (checkpoints, sample grids) does not count."""

    def __init__(self):
        self.t0, self.images, self.excluded = time.perf_counter(), 0, 0.0

    def add(self, images: int) -> None:
        self.images += images

    @contextlib.contextmanager
    def paused(self):
        _sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t

    def rate(self) -> float:
        """Images/s since the last call (waits for the GPU first, so the time is real)."""
        _sync()
        now = time.perf_counter()
        out = self.images / max(now - self.t0 - self.excluded, 1e-9)
        self.t0, self.images, self.excluded = now, 0, 0.0
        return out


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Resuming, showing, summarising
# ---------------------------------------------------------------------------------------------


def restore_rank_rng(ckpt: dict, d: Dist, seed: int, generators: dict[str, torch.Generator] | None = None) -> None:
    """This rank's random streams from a checkpoint; re-seeded (with a warning) if the number of
    processes changed, which makes the continuation valid but not bit-identical."""
    rngs = ckpt["rng"]
    if ckpt.get("world_size", 1) == d.world_size and len(rngs) == d.world_size:
        restore_rng(rngs[d.rank], generators)
        return
    warn(
        f"checkpoint written by {ckpt.get('world_size')} processes, resuming with {d.world_size}: "
        "random streams are re-seeded, so the run will not repeat the original bit for bit"
    )
    seed_everything(stream_seed(seed, d.rank, f"torch-resume-{ckpt['step']}"))
    for name, g in (generators or {}).items():
        g.manual_seed(stream_seed(seed, d.rank, f"{name}-resume-{ckpt['step']}"))


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"section.key: old -> new"`` for every value that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def fixed_items(store_path: str | Path, n: int) -> list[dict]:
    """``n`` items spread over the validation split (the training split if there is none): the
    same slices in every sample grid of a run."""
    try:
        ds = CardiacSliceDataset(store_path, split="val")
    except DataError:  # no validation slices in this store
        ds = CardiacSliceDataset(store_path, split="train")
    stride = max(1, len(ds) // n)
    items = [ds[i] for i in range(0, len(ds), stride)][:n]
    ds.close()
    return items


def progress_line(stage: str, step: int, total: int, row: dict, first_step: int, elapsed: float) -> str:
    """``vqvae: step 150/600 (25%) loss 0.0123, 41.2 images/s, ETA 3m05s`` (ETA from the steps so far)."""
    done = step - first_step
    eta = elapsed / done * (total - step) if done > 0 else float("nan")
    eta_text = (
        "?"
        if eta != eta
        else (
            f"{int(eta // 3600)}h{int(eta % 3600 // 60):02d}m"
            if eta >= 3600
            else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        )
    )
    loss = row.get("loss", row.get("total"))
    loss_text = f" loss {loss:.4f}," if isinstance(loss, (int, float)) else ""
    return (
        f"{stage}: step {step}/{total} ({100 * step // max(total, 1)}%){loss_text} "
        f"{row.get('images_per_s', 0.0):.1f} images/s, ETA {eta_text}"
    )


def mean_rate(log_path: str | Path) -> float | None:
    """Mean images/s over a run's ``log.csv`` rows."""
    rates = read_log(log_path).get("images_per_s")
    return float(np.mean(rates)) if rates is not None and len(rates) else None


# ---------------------------------------------------------------------------------------------
# The run folder: one writer, nothing replaced unasked
# ---------------------------------------------------------------------------------------------


class RunExistsError(MMLDMError):
    """A fresh run asked for in a folder that holds another run's checkpoint."""


RESUME_MODES = (False, True, "auto", "replace")


def holds_checkpoint(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / LAST).exists() or (run_dir / PREVIOUS).exists()


@contextlib.contextmanager
def run_folder(out_dir: str | Path, stage: str, resume: bool | str):
    """What a trainer holds while it writes ``out_dir``: the folder's lock (rank 0; see
    :mod:`mmldm.lock`), after which temporary files of killed runs are swept; and the rule that a
    fresh run (``resume=False``) never replaces a checkpoint: it is refused, naming ``--resume``
    and ``--replace`` (``resume="replace"`` sets the old run aside in ``<run>/replaced/``)."""
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    out_dir = Path(out_dir)
    main = int(os.environ.get("RANK", "0")) == 0  # before the process group exists: torchrun's variable
    with run_lock(out_dir, f"train-{stage}", enabled=main):
        if main:
            for folder in (out_dir, out_dir / "samples"):
                atomic.sweep_stale(folder)
        if resume is False and holds_checkpoint(out_dir):
            found = out_dir / LAST if (out_dir / LAST).exists() else out_dir / PREVIOUS
            raise RunExistsError(
                f"{out_dir} already holds a run ({found.name}); pass --resume to continue it, or --replace to "
                f"start afresh and keep the old checkpoints and log in {out_dir / 'replaced'} "
                '(in Python: resume=True or resume="replace")'
            )
        yield out_dir


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class Trainer:
    """The loop both stages share; a stage (``VQVAETrainer``, ``LDMTrainer``) says what one
    step is and what its checkpoint holds.

    A stage's ``__init__`` builds data, models and optimisers (after ``seed_everything(seed)``,
    so every rank starts from the same weights), then calls :meth:`start`, which resumes from
    the run folder or seeds this rank's own random streams, and then wraps its models for
    training. :meth:`fit` runs::

        while step < steps:
            values = train_step()                       # one optimiser step
            every log_every:    log.csv row, progress bar
            every sample_every: sample grid + loss curve (rank 0)
            every ckpt_every:   checkpoint (rank 0 writes, all ranks give their RNG states)

    Subclasses implement ``train_step() -> dict``, ``state() -> dict`` (the checkpoint's model,
    ema, optimizers, schedulers and extra entries), ``load(ckpt)`` and ``draw_samples(path)``;
    they set ``stage``, ``columns`` (of log.csv) and ``curve`` (the losses to plot), and keep the
    bare model being trained as ``self.model``.
    """

    stage = ""
    columns: list[str] = []
    curve: list[str] = []

    def __init__(self, cfg: Config, tc: TrainConfig, d: Dist, out_dir: Path, figures_dir: Path):
        self.cfg, self.tc, self.d = cfg, tc, d
        self.out_dir, self.figures_dir = Path(out_dir), Path(figures_dir)
        self.step = 0
        self.generators: dict[str, torch.Generator] = {}  # the stage's own random streams
        self.last_row: dict = {}
        self.sample_path: Path | None = None

    # -- what a stage provides ----------------------------------------------------------------
    def train_step(self) -> dict:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load(self, ckpt: dict) -> None:
        raise NotImplementedError

    def draw_samples(self, path: Path) -> None:
        raise NotImplementedError

    # -- start, checkpoint, samples ------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / LAST

    @property
    def curve_path(self) -> Path:
        return self.figures_dir / f"{self.stage}_loss_{self.cfg.profile}.png"

    # Config sections that define what a stage trains; a checkpoint made with other values there
    # is a different model, which ``resume="auto"`` does not continue. Keys in CONTINUABLE may
    # change between a run and its continuation (more steps, other logging, other threads).
    sections: tuple[str, ...] = ()
    CONTINUABLE = (
        "steps",
        "log_every",
        "sample_every",
        "ckpt_every",
        "num_workers",
        "cpu_threads",
        "in_memory",
        "workers",
        "skip_bad",
    )

    def resume_blockers(self, ckpt: dict) -> list[str]:
        """Why ``ckpt`` is not this run's earlier self (empty when it is): changed config keys."""
        new = to_dict(self.cfg)
        changed = []
        for section in self.sections:
            old_s, new_s = ckpt["config"].get(section, {}), new.get(section, {})
            changed += [
                c
                for c in config_changes(old_s, new_s, f"{section}.")
                if c.split(":")[0].split(".")[-1].strip() not in self.CONTINUABLE
            ]
        return changed

    def start(self, resume: bool | str, progress: bool = True) -> None:
        """Resume from the run folder (if asked and there is a checkpoint), else seed this rank.

        ``resume=True`` continues whatever checkpoint is there (warning about config changes;
        one of another architecture is an error naming the changed keys);
        ``resume="auto"`` (what the notebooks use) continues only a checkpoint of the same
        model and data (see :meth:`resume_blockers`) and otherwise starts afresh, after moving
        the old checkpoints to ``<run>/replaced/`` so nothing is lost. ``resume="replace"``
        always starts afresh, setting any old checkpoints aside the same way. (``resume=False``
        into a folder with a checkpoint is refused earlier, by :func:`run_folder`.)
        """
        if resume == "replace":
            if holds_checkpoint(self.out_dir):
                if self.d.is_main:
                    print(
                        f"{self.stage}: starting afresh, old checkpoints moved to {self.out_dir / 'replaced'}",
                        flush=True,
                    )
                    self.set_aside()
                distributed.barrier()
            resume = False
        found = find_resume(self.out_dir, self.stage) if resume else None
        if found is not None and resume == "auto":
            blockers = self.resume_blockers(found[0])
            if blockers:
                if self.d.is_main:
                    print(
                        f"{self.stage}: {found[1]} is another model ({'; '.join(blockers[:4])}); "
                        f"starting afresh, old checkpoints moved to {self.out_dir / 'replaced'}",
                        flush=True,
                    )
                    self.set_aside()
                distributed.barrier()
                found = None
        if found is None:
            if resume and self.d.is_main and progress:
                print(f"{self.stage}: no checkpoint in {self.out_dir}, starting from scratch", flush=True)
            seed_everything(stream_seed(self.tc.seed, self.d.rank, "torch"))
        else:
            ckpt, path = found
            try:
                self.load(ckpt)
            except (RuntimeError, KeyError, ValueError, TypeError) as e:  # shapes or names that do not fit
                blockers = self.resume_blockers(ckpt)
                why = "; ".join(blockers[:6]) if blockers else str(e).strip().splitlines()[0][:300]
                raise CheckpointError(
                    path,
                    f"cannot resume from it with this config, it is another model ({why}); "
                    "resume with the checkpoint's config, or start afresh with --replace",
                ) from None
            changed = config_changes(ckpt["config"], to_dict(self.cfg))
            if changed and self.d.is_main:
                warn(
                    f"{path}: resuming with a config that differs from the checkpoint's "
                    f"({'; '.join(changed[:8])}); the run continues, but not as the original would"
                )
            self.step = int(ckpt["step"])
            self.resumed_from = path
            restore_rank_rng(ckpt, self.d, self.tc.seed, self.generators)
            if self.d.is_main and progress:
                print(f"{self.stage}: resuming from {path} at step {self.step}", flush=True)
        self.log = CSVLog(self.out_dir / "log.csv", self.columns, resume_step=self.step) if self.d.is_main else None

    def set_aside(self) -> None:
        """Move this run's checkpoints and log into ``<run>/replaced/`` (replacing an older set)."""
        import shutil

        target = self.out_dir / "replaced"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for f in self.out_dir.iterdir():
            if f.is_file() and (f.suffix == ".pt" or f.name == "log.csv"):
                f.replace(target / f.name)

    def checkpoint(self) -> Path:
        """Every rank gives its random state; rank 0 writes ``last.pt`` (see checkpoint.py)."""
        rngs = distributed.gather_objects(capture_rng(self.generators), self.d)
        with distributed.rank0_writes(self.d):
            if self.d.is_main:
                save_checkpoint(
                    {
                        "stage": self.stage,
                        "step": self.step,
                        "config": to_dict(self.cfg),
                        **self.state(),
                        "rng": rngs,
                        "world_size": self.d.world_size,
                    },
                    self.checkpoint_path,
                )
        return self.checkpoint_path

    def samples(self) -> Path:
        """Rank 0 draws the sample grid of this step and redraws the loss curve."""
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        if self.d.is_main:
            self.draw_samples(path)
            save_loss_curve(self.out_dir / "log.csv", self.curve_path, self.curve, f"{self.stage} ({self.cfg.profile})")
        self.sample_path = path
        return path

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict:
        """Train to ``tc.steps``; returns a summary (see the stage's ``train_*`` function)."""
        tc, d = self.tc, self.d
        start_time = time.perf_counter()
        # Headless (./run_all.sh sets MMLDM_PROGRESS=lines), a printed line per log row replaces the bar.
        lines = progress and d.is_main and os.environ.get("MMLDM_PROGRESS") == "lines"
        bar = tqdm(
            total=tc.steps,
            initial=self.step,
            desc=self.stage,
            unit="step",
            dynamic_ncols=True,
            disable=lines or not (progress and d.is_main),
        )
        first_step = self.step
        sums: dict = defaultdict(float)
        count, meter = 0, Throughput()
        while self.step < tc.steps:
            check_terminated()
            for k, v in self.train_step().items():  # tensors: read only when logging (no GPU waits)
                sums[k] += v
            self.step += 1
            count += 1
            meter.add(tc.batch_size)
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                row = distributed.all_mean({k: float(v) / count for k, v in sums.items()}, d)
                row.update(step=self.step, images_per_s=meter.rate())
                if self.log is not None:
                    self.log.write(row)
                bar.set_postfix(
                    loss=f"{row.get('loss', row.get('total', 0.0)):.4f}", img_s=f"{row['images_per_s']:.1f}"
                )
                if lines:
                    print(
                        progress_line(
                            self.stage, self.step, tc.steps, row, first_step, time.perf_counter() - start_time
                        ),
                        flush=True,
                    )
                sums, count, self.last_row = defaultdict(float), 0, row
            with meter.paused():
                if tc.sample_every and (self.step % tc.sample_every == 0 or self.step == tc.steps):
                    self.samples()
                if self.step % tc.ckpt_every == 0 or self.step == tc.steps:
                    self.checkpoint()
        bar.close()
        if self.step == first_step and getattr(self, "resumed_from", None) is not None:
            if self.resumed_from.name != LAST:  # resumed from prev.pt, nothing left to train:
                self.checkpoint()  # write last.pt again, so the run is whole (its last.pt was unreadable)
        distributed.barrier()
        return {
            "step": self.step,
            "checkpoint": self.checkpoint_path,
            "log": self.out_dir / "log.csv",
            "loss_curve": self.curve_path,
            "samples": self.sample_path,
            "weights_hash": weights_hash(self.model.state_dict()),
            "seconds": time.perf_counter() - start_time,
            "images_per_s": mean_rate(self.out_dir / "log.csv") if d.is_main else None,
            "last": self.last_row,
        }

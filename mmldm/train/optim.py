"""How a stage is trained: :class:`TrainConfig`, and the optimiser and learning-rate schedule it builds.

One dataclass serves both stages; a profile has two sections of it, ``train_vqvae`` and
``train_ldm``. Counting is in **optimiser steps**: one step consumes ``batch_size`` images in
total, split over ``grad_accum`` micro-batches and over the processes of a ``torchrun`` job, so a
profile trains the same model on one GPU or eight (``batch_size`` must be divisible by
``grad_accum * world_size``).

The learning rate at step s (0-based, the number of steps already taken)::

    warm-up     lr(s) = lr * (s + 1) / warmup_steps                     for s < warmup_steps
    constant    lr(s) = lr                                              afterwards
    cosine      lr(s) = lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)       afterwards,
                p = (s - warmup_steps) / (steps - warmup_steps),  m = min_lr_ratio

(linear warm-up: Goyal et al. 2017; cosine decay: Loshchilov & Hutter 2017, SGDR, without
restarts). The seed trains both stages with a constant learning rate and no warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmldm.errors import ConfigError


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing of one stage (a ``train_vqvae`` or ``train_ldm`` section)."""

    steps: int = 20000  # optimiser steps in the whole run
    batch_size: int = 36  # images per optimiser step, summed over grad_accum and processes
    lr: float = 8e-5
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # adamw: decoupled decay; adam: L2 added to the gradient
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the warm-up
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    grad_clip: float | None = None  # clip the global gradient norm to this; None: no clipping
    grad_accum: int = 1  # micro-batches per optimiser step
    seed: int = 0  # model init, data order, noise, condition dropout
    num_workers: int = 2  # DataLoader worker processes (0: load in the training process)
    in_memory: bool = False  # read the store's arrays into memory once instead of per item
    log_every: int = 50  # steps between log.csv rows (and progress-bar updates)
    sample_every: int = 1000  # steps between sample grids + loss-curve redraws, and at the end (0: never)
    ckpt_every: int = 1000  # steps between checkpoints (one is always written at the end)
    amp: bool = False  # bf16 autocast where native: CUDA with bf16, a CPU with AMX (fp32 elsewhere)
    channels_last: bool = False  # channels_last memory format (CUDA only)
    compile: bool = False  # torch.compile the model (CUDA only)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact resume and reruns
    cpu_threads: int | None = None  # torch intra-op threads on the CPU (None: torch's default, one per core)
    # LDM only (the VQVAE trainer requires them off):
    ema: bool = False  # keep an EMA of the UNet's weights (settings in the `ema` section); sample with it
    cache_latents: bool = True  # encode the training set once into <run>/latents.h5
    latent_norm: Literal["none", "channel"] = "none"  # "channel": train on per-channel standardised latents

    def __post_init__(self):
        self.betas = tuple(self.betas)
        positive = ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.sample_every < 0 or self.num_workers < 0:
            raise ValueError("weight_decay, warmup_steps, sample_every and num_workers must be >= 0")
        if self.warmup_steps >= self.steps and self.lr_schedule == "cosine":
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps}) for a cosine schedule")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    def micro_batch(self, world_size: int = 1) -> int:
        """Images per forward pass on each process."""
        if self.batch_size % (self.grad_accum * world_size):
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by grad_accum ({self.grad_accum}) x "
                f"processes ({world_size}); change train_*.batch_size or grad_accum"
            )
        return self.batch_size // (self.grad_accum * world_size)


def paper_vqvae_training() -> TrainConfig:
    """The ``paper`` profile's ``train_vqvae``: the seed's Adam (betas 0.5, 0.999) at the study's
    lr 8e-5 and batch 36, constant rate. 5,000 steps = about 20 epochs of the ~9,000 M&Ms-2 training
    slices, the seed's ``autoencoder_epochs: 20``."""
    return TrainConfig(steps=5000, batch_size=36, lr=8e-5, optimizer="adam", betas=(0.5, 0.999), num_workers=4)


def paper_ldm_training() -> TrainConfig:
    """The ``paper`` profile's ``train_ldm``: the seed's Adam (default betas) at the study's lr 8e-6
    and batch 36, constant rate, no EMA, raw latents. 25,000 steps = about 100 epochs, the seed's
    ``ldm_epochs: 100``."""
    return TrainConfig(steps=25000, batch_size=36, lr=8e-6, optimizer="adam", betas=(0.9, 0.999), num_workers=4)


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the seed's) or AdamW with the config's lr, betas and weight decay."""
    params = [p for p in params if p.requires_grad]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """lr(step) / lr, the formula in the module docstring."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + constant/cosine schedule; call ``scheduler.step()`` after each optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))

"""Stage 2: train the conditional latent UNet on the frozen VQVAE's latents.

    from mmldm.config import load_config
    from mmldm.train.ldm import train_ldm
    result = train_ldm(load_config("laptop"))      # or: python -m mmldm train-ldm --config laptop

Before the loop the training slices are encoded once by the frozen VQVAE into ``latents.h5``
(:mod:`mmldm.train.latents`; rebuilt when the VQVAE or the store changes), and with
``latent_norm: channel`` their per-channel mean and std are measured.

One optimiser step (``grad_accum`` micro-batches, ``batch_size`` images in all), for each latent
z0 (normalised), condition c (edges + one-hot mask) and view v of a micro-batch::

    c      <- drop_conditions(c, p_drop_edge, p_drop_mask,     classifier-free guidance training;
                              mask_edges(c), p_mask_edge)      mask-first: a share with the mask's own edges
    t      ~  U{0, ..., T-1}                                   one per sample
    eps    ~  N(0, I)
    x_t    =  sqrt(a_t) z0 + sqrt(1 - a_t) eps                 (Ho et al. 2020, eq. 4)
    loss   =  w(t) || unet(x_t, t, c, v) - target ||^2         target: eps, v or z0; w: min-SNR or 1
    backward; clip; Adam(W) step; LR schedule; EMA update

The condition drops, t and eps come from the trainer's own generator (per rank), so a resumed
run draws the very same ones. Every ``sample_every`` steps, rank 0 samples fixed validation
conditions with DDIM (at most 25 steps) using the EMA weights and saves condition | sample | real.

The checkpoint's ``extra`` holds ``latent_stats`` (mean, std, and the normalised range) and
``vqvae`` (the checkpoint path it was trained on, the hash of its weights and its config);
:meth:`mmldm.inference.LatentDiffusion.from_checkpoint` rebuilds everything needed to sample
from an LDM checkpoint.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mmldm.checkpoint import LAST, CheckpointError
from mmldm.config import Config, from_dict
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.store import check_same_size, store_size
from mmldm.diffusion.guidance import drop_conditions
from mmldm.diffusion.latent_norm import latent_stats
from mmldm.diffusion.objectives import diffusion_loss
from mmldm.diffusion.schedule import NoiseSchedule
from mmldm.errors import ConfigError
from mmldm.inference import LatentDiffusion, load_vqvae
from mmldm.models.unet import UNet
from mmldm.models.vqvae import VQVAEConfig
from mmldm.train import distributed
from mmldm.train.ema import EMA
from mmldm.train.latents import LatentDataset, encode_dataset, ensure_cache
from mmldm.train.loop import (
    Trainer,
    autocast,
    batch_stream,
    fixed_items,
    no_sync,
    optimizer_step,
    place,
    run_folder,
    seed_everything,
    stream_seed,
    to_device,
    torch_settings,
    wrap,
)
from mmldm.train.optim import build_optimizer, build_scheduler
from mmldm.viz.plots import condition_rgb, save_grid

SAMPLE_STEPS = 25  # DDIM steps for the progress grids


def train_ldm(
    cfg: Config,
    store_path: str | Path | None = None,
    vqvae_ckpt: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool | str = False,
    progress: bool = True,
    figures_dir: str | Path | None = None,
    device: str | None = None,
) -> dict:
    """Train the UNet of ``cfg`` for ``cfg.train_ldm.steps`` optimiser steps; returns a summary.

    Defaults: ``store_path`` = ``cfg.store_path``, ``vqvae_ckpt`` = ``cfg.run_dir/vqvae/last.pt``,
    ``out_dir`` = ``cfg.run_dir/ldm``, ``figures_dir`` = ``cfg.figures_dir`` (``paths.figures``).
    ``resume`` continues from ``out_dir/last.pt`` (or ``prev.pt``) bit-exactly; it must be the
    same VQVAE. Without it a folder holding a checkpoint is refused (``resume="replace"`` sets it
    aside; see :func:`~mmldm.train.vqvae.train_vqvae`). Under ``torchrun`` every process calls
    this and rank 0 writes, holding ``out_dir``'s lock.

    Returns ``{"step", "checkpoint", "log", "loss_curve", "samples", "latent_cache",
    "latent_stats", "weights_hash", "seconds", "images_per_s", "last"}``.
    """
    out_dir = Path(out_dir) if out_dir is not None else cfg.run_dir / LDMTrainer.stage
    with run_folder(out_dir, LDMTrainer.stage, resume), torch_settings(cfg.train_ldm):
        trainer = LDMTrainer(cfg, store_path, vqvae_ckpt, out_dir, figures_dir, device, resume, progress)
        result = trainer.fit(progress)
    return {**result, "latent_cache": trainer.cache_path, "latent_stats": trainer.stats}


def noised_batch(
    schedule: NoiseSchedule,
    z0: torch.Tensor,
    cond: torch.Tensor,
    guidance,
    generator: torch.Generator,
    mask_edge: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random part of one training step, drawn on the CPU from ``generator`` (the same numbers
    on any device): condition drops for classifier-free guidance (and, mask-first, the mask's own
    edges ``mask_edge`` in a share of the samples), one timestep per sample and the noise.
    Returns ``(cond, t, noise)``; x_t = schedule.add_noise(z0, noise, t)."""
    cond = drop_conditions(
        cond,
        guidance.p_drop_edge,
        guidance.p_drop_mask,
        generator=generator,
        mask_edge=mask_edge,
        p_mask_edge=guidance.p_mask_edge,
    )
    t = torch.randint(0, len(schedule), (z0.shape[0],), generator=generator)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
    return cond, t, noise


def ldm_loss(
    model,
    cfg: Config,
    schedule: NoiseSchedule,
    z0: torch.Tensor,
    cond: torch.Tensor,
    view: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    autocast_ctx=None,
) -> torch.Tensor:
    """The loss of one batch (everything on the model's device)::

    x_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise;   loss = w(t) || model(x_t, t, cond, view) - target ||^2
    """
    x_t = schedule.add_noise(z0, noise, t)
    with autocast_ctx if autocast_ctx is not None else contextlib.nullcontext():
        out = model(x_t, t, cond=cond, view=view)
    return diffusion_loss(schedule, out, z0, noise, t, cfg.diffusion.prediction_type, cfg.diffusion.min_snr_gamma)


class LDMTrainer(Trainer):
    """The frozen VQVAE, the cached latents, the UNet with its EMA and optimiser, one training step."""

    stage = "ldm"
    sections = ("data", "vqvae", "unet", "diffusion", "train_ldm", "ema")

    def resume_blockers(self, ckpt: dict) -> list[str]:
        ref = ckpt["extra"]["vqvae"]
        other_vqvae = (
            [f"VQVAE weights {ref['hash']} -> {self.vq_ref['hash']}"] if ref["hash"] != self.vq_ref["hash"] else []
        )
        return other_vqvae + super().resume_blockers(ckpt)

    columns = ["step", "loss", "grad_norm", "lr", "ema_decay", "images_per_s"]
    curve = ["loss"]

    def __init__(
        self,
        cfg: Config,
        store_path=None,
        vqvae_ckpt=None,
        out_dir=None,
        figures_dir=None,
        device: str | None = None,
        resume: bool | str = False,
        progress: bool = True,
    ):
        d = distributed.setup(device)
        super().__init__(
            cfg,
            cfg.train_ldm,
            d,
            Path(out_dir) if out_dir is not None else cfg.run_dir / self.stage,
            Path(figures_dir) if figures_dir is not None else cfg.figures_dir,
        )
        tc = self.tc
        store_path = Path(store_path) if store_path is not None else cfg.store_path
        vqvae_ckpt = Path(vqvae_ckpt) if vqvae_ckpt is not None else cfg.run_dir / "vqvae" / LAST

        # 1. The frozen VQVAE, and the training latents (cached by rank 0, then read by every rank).
        self.vqvae, self.vq_ref = load_vqvae(vqvae_ckpt, d.device)
        _check_compatible(cfg, self.vq_ref["config"], vqvae_ckpt)
        check_same_size(
            {
                f"store {store_path}": store_size(store_path),
                f"VQVAE {vqvae_ckpt}": self.vq_ref["size"],
                "the config's data.size": cfg.data.size,
            },
            "train the LDM on the store and at the size the VQVAE was trained on",
        )
        slices = CardiacSliceDataset(store_path, split="train", in_memory=tc.in_memory)
        self.cache_path = self.out_dir / "latents.h5" if tc.cache_latents else None
        batch = tc.micro_batch(d.world_size)
        if tc.cache_latents:
            if d.is_main:
                _, rebuilt = ensure_cache(
                    self.cache_path, self.vqvae, self.vq_ref["hash"], slices, batch, d.device, progress
                )
                if rebuilt and progress:
                    print(f"ldm: encoded {len(slices)} training slices into {self.cache_path}", flush=True)
            distributed.barrier()
            latents, _ = ensure_cache(self.cache_path, self.vqvae, self.vq_ref["hash"], slices, batch, d.device, False)
        else:  # no file: encode once into memory
            latents = encode_dataset(self.vqvae, slices, batch, d.device, progress and d.is_main)
        self.stats = latent_stats(latents, tc.latent_norm)
        self.shown = fixed_items(store_path, n=6)

        # 2. The UNet, its EMA, optimiser and LR schedule; the same initial weights on every rank.
        seed_everything(tc.seed)
        self.model = place(UNet(cfg.unet), tc, d)
        self.ema = EMA.from_config(self.model, cfg.ema) if tc.ema else None
        self.optimizer = build_optimizer(self.model.parameters(), tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.schedule = NoiseSchedule.from_config(cfg.diffusion)
        self.generators["noise"] = torch.Generator().manual_seed(stream_seed(tc.seed, d.rank, "noise"))

        # 3. Resume (or seed this rank), then wrap for training; the data, normalised by the stats.
        self.vqvae_ckpt = vqvae_ckpt
        self.start(resume, progress)
        self.model_t = wrap(self.model, tc, d)
        self.model.train()
        mask_edges_from = cfg.data if cfg.guidance.p_mask_edge > 0 else None  # mask-first training
        latent_set = LatentDataset(slices, latents, self.stats, mask_edges_from)
        self.batches = batch_stream(latent_set, tc, d, start_step=self.step)

    def train_step(self) -> dict:
        tc, d, g, schedule = self.tc, self.d, self.cfg.guidance, self.schedule
        noise_gen = self.generators["noise"]
        logged: dict = {"loss": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(tc.grad_accum):
            batch = next(self.batches)
            z0 = to_device(batch["latent"], tc, d.device)
            # The step's randomness, drawn on the CPU from this rank's generator (same numbers on any device).
            cond, t, noise = noised_batch(schedule, z0, batch["cond"], g, noise_gen, batch.get("mask_edge"))
            cond, t, noise = to_device(cond, tc, d.device), t.to(d.device), to_device(noise, tc, d.device)
            with no_sync(self.model_t, micro == tc.grad_accum - 1):
                loss = ldm_loss(
                    self.model_t,
                    self.cfg,
                    schedule,
                    z0,
                    cond,
                    batch["view"].to(d.device),
                    t,
                    noise,
                    autocast(tc, d.device),
                )
                (loss / tc.grad_accum).backward()
            logged["loss"] += loss.detach() / tc.grad_accum
        logged["lr"] = self.optimizer.param_groups[0]["lr"]
        logged["grad_norm"] = optimizer_step(self.optimizer, self.scheduler, self.model.parameters(), tc).float()
        if self.ema is not None:
            logged["ema_decay"] = self.ema.current_decay()
            self.ema.update(self.model)
        return logged

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {"unet": self.optimizer.state_dict()},
            "schedulers": {"unet": self.scheduler.state_dict()},
            "extra": {"latent_stats": self.stats, "vqvae": self.vq_ref},
        }

    def load(self, ckpt: dict) -> None:
        ref = ckpt["extra"]["vqvae"]
        if ref["hash"] != self.vq_ref["hash"]:
            raise CheckpointError(
                self.out_dir / LAST,
                f"was trained on the VQVAE with weights {ref['hash']} "
                f"({ref['path']}), but {self.vqvae_ckpt} has {self.vq_ref['hash']}: resume "
                "with that VQVAE, or start afresh",
            )
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizers"]["unet"])
        self.scheduler.load_state_dict(ckpt["schedulers"]["unet"])
        self.stats = ckpt["extra"]["latent_stats"]  # equal to the measured ones for the same VQVAE and store

    def draw_samples(self, path: Path) -> None:
        """The progress grid: fixed validation conditions sampled with the EMA weights (DDIM, at
        most ``SAMPLE_STEPS`` steps) through the same inference object a trained model uses."""
        cond = torch.stack([item["cond"] for item in self.shown])
        view = torch.stack([item["view"] for item in self.shown])
        model = LatentDiffusion(self.cfg, self.model, self.vqvae, self.stats, self.step, self.d.device)
        sampler = model.sampler_config("ddim", min(self.cfg.sampler.num_inference_steps, SAMPLE_STEPS), eta=0.0)
        with self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext():
            images = model.sample(cond, view, sampler=sampler)
        save_grid(
            {
                "condition": [condition_rgb(c) for c in cond],
                "sample": list(images),
                "real": [item["image"] for item in self.shown],
            },
            path,
        )


def _check_compatible(cfg: Config, vq_config: dict, path: Path) -> None:
    vc = from_dict(VQVAEConfig, vq_config)
    if vc.latent_channels != cfg.unet.latent_channels or vc.downsample_factor != cfg.unet.cond_downsample:
        raise ConfigError(
            f"{path}: this VQVAE makes {vc.latent_channels}-channel latents at 1/{vc.downsample_factor} "
            f"resolution, but unet.latent_channels = {cfg.unet.latent_channels} and unet.cond_downsample = "
            f"{cfg.unet.cond_downsample}: train the VQVAE of this profile first"
        )

"""Stage 2: train the conditional latent UNet on the frozen VQVAE's latents.

    from mmldm.config import load_config
    from mmldm.train.ldm import train_ldm
    result = train_ldm(load_config("laptop"))      # or: python -m mmldm train-ldm --config laptop

Before the loop the training slices are encoded once by the frozen VQVAE into ``latents.h5``
(:mod:`mmldm.train.latents`; rebuilt when the VQVAE or the store changes), and with
``latent_norm: channel`` their per-channel mean and std are measured.

One optimiser step (``grad_accum`` micro-batches, ``batch_size`` images in all), for each latent
z0 (normalised), condition c (edges + one-hot mask) and view v of a micro-batch::

    c      <- drop_conditions(c, p_drop_edge, p_drop_mask)     classifier-free guidance training
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
:func:`load_ldm` rebuilds everything needed to sample from an LDM checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from mmldm.config import Config, from_dict
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.store import check_same_size, store_size
from mmldm.diffusion.guidance import drop_conditions, guided_model_fn
from mmldm.diffusion.objectives import diffusion_loss
from mmldm.diffusion.sampling_loop import make_sampler, sample
from mmldm.diffusion.schedule import NoiseSchedule
from mmldm.errors import ConfigError
from mmldm.models.unet import UNet
from mmldm.models.vqvae import VQVAE, VQVAEConfig
from mmldm.train import distributed
from mmldm.checkpoint import LAST, CheckpointError, load_checkpoint, weights_hash
from mmldm.train.ema import EMA
from mmldm.train.latents import LatentDataset, denormalize, encode_dataset, ensure_cache, latent_stats
from mmldm.train.log import condition_rgb, save_grid
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


class LDMTrainer(Trainer):
    """The frozen VQVAE, the cached latents, the UNet with its EMA and optimiser, one training step."""

    stage = "ldm"
    sections = ("data", "vqvae", "unet", "diffusion", "train_ldm", "ema")

    def resume_blockers(self, ckpt: dict) -> list[str]:
        ref = ckpt["extra"]["vqvae"]
        other_vqvae = [f"VQVAE weights {ref['hash']} -> {self.vq_ref['hash']}"] if ref["hash"] != self.vq_ref["hash"] else []
        return other_vqvae + super().resume_blockers(ckpt)
    columns = ["step", "loss", "grad_norm", "lr", "ema_decay", "images_per_s"]
    curve = ["loss"]

    def __init__(self, cfg: Config, store_path=None, vqvae_ckpt=None, out_dir=None, figures_dir=None,
                 device: str | None = None, resume: bool | str = False, progress: bool = True):
        d = distributed.setup(device)
        super().__init__(cfg, cfg.train_ldm, d,
                         Path(out_dir) if out_dir is not None else cfg.run_dir / self.stage,
                         Path(figures_dir) if figures_dir is not None else cfg.figures_dir)
        tc = self.tc
        store_path = Path(store_path) if store_path is not None else cfg.store_path
        vqvae_ckpt = Path(vqvae_ckpt) if vqvae_ckpt is not None else cfg.run_dir / "vqvae" / LAST

        # 1. The frozen VQVAE, and the training latents (cached by rank 0, then read by every rank).
        self.vqvae, self.vq_ref = load_vqvae(vqvae_ckpt, d.device)
        _check_compatible(cfg, self.vq_ref["config"], vqvae_ckpt)
        check_same_size({f"store {store_path}": store_size(store_path), f"VQVAE {vqvae_ckpt}": self.vq_ref["size"],
                         "the config's data.size": cfg.data.size},
                        "train the LDM on the store and at the size the VQVAE was trained on")
        slices = CardiacSliceDataset(store_path, split="train", in_memory=tc.in_memory)
        self.cache_path = self.out_dir / "latents.h5" if tc.cache_latents else None
        batch = tc.micro_batch(d.world_size)
        if tc.cache_latents:
            if d.is_main:
                _, rebuilt = ensure_cache(self.cache_path, self.vqvae, self.vq_ref["hash"], slices, batch, d.device,
                                          progress)
                if rebuilt and progress:
                    print(f"ldm: encoded {len(slices)} training slices into {self.cache_path}", flush=True)
            distributed.barrier()
            latents, _ = ensure_cache(self.cache_path, self.vqvae, self.vq_ref["hash"], slices, batch, d.device,
                                      False)
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
        self.batches = batch_stream(LatentDataset(slices, latents, self.stats), tc, d, start_step=self.step)

    def train_step(self) -> dict:
        tc, d, g, schedule = self.tc, self.d, self.cfg.guidance, self.schedule
        noise_gen = self.generators["noise"]
        logged: dict = {"loss": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(tc.grad_accum):
            batch = next(self.batches)
            z0 = to_device(batch["latent"], tc, d.device)
            # The step's randomness, drawn on the CPU from this rank's generator (same numbers on any device).
            cond = drop_conditions(batch["cond"], g.p_drop_edge, g.p_drop_mask, generator=noise_gen)
            t = torch.randint(0, len(schedule), (z0.shape[0],), generator=noise_gen)
            noise = torch.randn(z0.shape, generator=noise_gen, dtype=z0.dtype)
            cond, t, noise = to_device(cond, tc, d.device), t.to(d.device), to_device(noise, tc, d.device)
            x_t = schedule.add_noise(z0, noise, t)
            with no_sync(self.model_t, micro == tc.grad_accum - 1):
                with autocast(tc, d.device):
                    out = self.model_t(x_t, t, cond=cond, view=batch["view"].to(d.device))
                loss = diffusion_loss(schedule, out, z0, noise, t, self.cfg.diffusion.prediction_type,
                                      self.cfg.diffusion.min_snr_gamma)
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
            raise CheckpointError(self.out_dir / LAST, f"was trained on the VQVAE with weights {ref['hash']} "
                                  f"({ref['path']}), but {self.vqvae_ckpt} has {self.vq_ref['hash']}: resume "
                                  "with that VQVAE, or start afresh")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizers"]["unet"])
        self.scheduler.load_state_dict(ckpt["schedulers"]["unet"])
        self.stats = ckpt["extra"]["latent_stats"]  # equal to the measured ones for the same VQVAE and store

    def draw_samples(self, path: Path) -> None:
        cond = torch.stack([item["cond"] for item in self.shown])
        view = torch.stack([item["view"] for item in self.shown])
        images = sample_images(self.cfg, self.model, self.vqvae, self.stats, cond, view, ema=self.ema,
                               device=self.d.device)
        save_grid({"condition": [condition_rgb(c) for c in cond], "sample": list(images),
                   "real": [item["image"] for item in self.shown]}, path)


def load_vqvae(path: str | Path, device: torch.device | str = "cpu") -> tuple[VQVAE, dict]:
    """The frozen VQVAE of a ``vqvae`` checkpoint (eval mode, no gradients) and its reference
    ``{"path", "hash", "config", "size"}`` (``size``: the image side it was trained at)."""
    ckpt = load_checkpoint(path, stage="vqvae")
    config = ckpt["config"]["vqvae"]
    vqvae = VQVAE(from_dict(VQVAEConfig, config, where=f"{path}: config.vqvae"))
    vqvae.load_state_dict(ckpt["model"])
    vqvae.eval().requires_grad_(False).to(device)
    return vqvae, {"path": str(Path(path).resolve()), "hash": weights_hash(vqvae.state_dict()), "config": config,
                   "size": int(ckpt["config"]["data"]["size"])}


def _check_compatible(cfg: Config, vq_config: dict, path: Path) -> None:
    vc = from_dict(VQVAEConfig, vq_config)
    if vc.latent_channels != cfg.unet.latent_channels or vc.downsample_factor != cfg.unet.cond_downsample:
        raise ConfigError(
            f"{path}: this VQVAE makes {vc.latent_channels}-channel latents at 1/{vc.downsample_factor} "
            f"resolution, but unet.latent_channels = {cfg.unet.latent_channels} and unet.cond_downsample = "
            f"{cfg.unet.cond_downsample}: train the VQVAE of this profile first"
        )


# ---------------------------------------------------------------------------------------------
# Sampling from a trained (or training) LDM
# ---------------------------------------------------------------------------------------------


def resolve_clipping(sampler_cfg, stats: dict):
    """``clip_to_latents`` made concrete: ``clip_x0`` = the range the normalised training latents
    spanned (kept in the checkpoint). x0_hat may not leave it: a measured fix for small models
    whose samples otherwise blow out to all-white or all-black images."""
    if sampler_cfg.clip_to_latents and sampler_cfg.clip_x0 is None:
        return dataclasses.replace(sampler_cfg, clip_x0=(float(stats["min"]), float(stats["max"])))
    return sampler_cfg


@torch.no_grad()
def sample_images(cfg: Config, unet: UNet, vqvae: VQVAE, stats: dict, cond: torch.Tensor, view: torch.Tensor,
                  ema: EMA | None = None, sampler_cfg=None, seed: int = 0,
                  device: torch.device | str = "cpu", callback=None) -> torch.Tensor:
    """Images (B, 1, H, W) in [-1, 1] for conditions ``cond`` (B, 5, H, W) and views (B,).

    Samples with the EMA weights when ``ema`` is given, with ``sampler_cfg`` (default: the
    profile's sampler as DDIM with at most 25 steps, what the progress grids use) and the
    profile's guidance; then un-normalises the latent and decodes it with the VQVAE. The
    training weights come back afterwards, and no global random state is touched.
    ``callback(i, t, x_t, x0_hat)`` goes on to :func:`~mmldm.diffusion.sampling_loop.sample`: the
    (normalised) latents of every step, for the interactive notebook's trajectory.
    """
    if sampler_cfg is None:
        sampler_cfg = dataclasses.replace(cfg.sampler, name="ddim", eta=0.0,
                                          num_inference_steps=min(cfg.sampler.num_inference_steps, SAMPLE_STEPS))
    sampler_cfg = resolve_clipping(sampler_cfg, stats)
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    sampler = make_sampler(sampler_cfg, schedule, cfg.diffusion.prediction_type)
    factor = vqvae.config.downsample_factor
    b, _, h, w = cond.shape
    shape = (b, cfg.unet.latent_channels, h // factor, w // factor)
    cond, view = cond.to(device), view.to(device)
    was_training = unet.training
    unet.eval()
    try:
        with ema.swapped_in(unet) if ema is not None else contextlib.nullcontext():
            g = cfg.guidance
            model_fn = guided_model_fn(unet, cond, view, g.scale_mask, g.scale_edge, g.mode)
            z = sample(model_fn, sampler, shape, torch.Generator().manual_seed(seed), callback=callback,
                       device=device)
    finally:
        unet.train(was_training)
    return vqvae.decode_latent(denormalize(z, stats)).clamp(-1, 1).cpu()


def load_ldm(path: str | Path, use_ema: bool = True, vqvae_ckpt: str | Path | None = None,
             device: torch.device | str = "cpu") -> dict:
    """Everything needed to sample from an LDM checkpoint.

    Returns ``{"config": Config, "unet": UNet (EMA weights if kept and ``use_ema``, eval mode),
    "vqvae": VQVAE, "latent_stats": dict, "step": int}``. The VQVAE is the one the checkpoint
    names (or ``vqvae_ckpt``); a VQVAE whose weights differ from the one trained on is an error.
    """
    ckpt = load_checkpoint(path, stage="ldm")
    cfg = from_dict(Config, ckpt["config"], where=f"{path}: config")
    ref = ckpt["extra"]["vqvae"]
    vqvae, vq_ref = load_vqvae(vqvae_ckpt or ref["path"], device)
    if vq_ref["hash"] != ref["hash"]:
        raise CheckpointError(path, f"was trained on VQVAE weights {ref['hash']}, but {vq_ref['path']} holds "
                                    f"{vq_ref['hash']}")
    check_same_size({f"LDM {path}": cfg.data.size, f"VQVAE {vq_ref['path']}": vq_ref["size"]},
                    "this LDM was not trained on this VQVAE's images")
    unet = UNet(cfg.unet)
    unet.load_state_dict(ckpt["model"])
    if use_ema and ckpt["ema"] is not None:
        ema = EMA(unet)
        ema.load_state_dict(ckpt["ema"])
        ema.copy_to(unet)
    unet.eval().requires_grad_(False).to(device)
    return {"config": cfg, "unet": unet, "vqvae": vqvae, "latent_stats": ckpt["extra"]["latent_stats"],
            "step": int(ckpt["step"])}

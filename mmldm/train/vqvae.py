"""Stage 1: train the VQVAE (autoencoder + PatchGAN discriminator) on the store's training slices.

    from mmldm.config import load_config
    from mmldm.train.vqvae import train_vqvae
    result = train_vqvae(load_config("laptop"))           # or: python -m mmldm train-vqvae --config laptop

One optimiser step (``grad_accum`` micro-batches, ``batch_size`` images in all)::

    generator:      recon, info = vqvae(x)
                    L_G = recon + codebook + commitment [+ perceptual] [+ adversarial once step >= adversarial_start]
                    backward, clip, Adam step          (the discriminator only scores: frozen for this pass)
    discriminator:  L_D = LSGAN(D(x), D(recon.detach()))            only once step >= adversarial_start
                    backward, clip, Adam step          (at the generator's learning rate of the step)

Two optimisers, as in the seed. The quantiser's EMA codebook and dead-code restarts update
inside the forward pass and stay in sync across processes (see ``mmldm.models.quantizer``).
Logged per row of ``log.csv``: the loss terms, the discriminator's loss and its real/fake
errors, codebook usage (fraction of codes a batch uses) and perplexity, codes restarted per
step, gradient norm, lr and images/s.

The run folder (default ``<runs>/vqvae``) gets ``last.pt``/``prev.pt`` (see
:mod:`mmldm.checkpoint`), ``log.csv`` and ``samples/step_*.png`` (fixed validation slices
over their reconstructions); the loss curve goes to ``<paths.figures>/vqvae_loss_<profile>.png``
(``runs/<run>/figures`` by default).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmldm.config import Config
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.store import check_same_size, store_size
from mmldm.models.vqvae import (
    VQVAE,
    adversarial_active,
    build_discriminator,
    build_perceptual_loss,
    vqvae_discriminator_loss,
    vqvae_generator_loss,
)
from mmldm.train import distributed
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
    to_device,
    torch_settings,
    wrap,
)
from mmldm.train.optim import build_optimizer, build_scheduler
from mmldm.viz.plots import save_grid

LOSSES = ["total", "recon", "codebook", "commitment", "perceptual", "frequency", "adversarial"]


def train_vqvae(
    cfg: Config,
    store_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool | str = False,
    progress: bool = True,
    figures_dir: str | Path | None = None,
    device: str | None = None,
) -> dict:
    """Train the VQVAE of ``cfg`` for ``cfg.train_vqvae.steps`` optimiser steps; returns a summary.

    ``store_path`` defaults to ``cfg.store_path``, ``out_dir`` to ``cfg.run_dir / "vqvae"``,
    ``figures_dir`` to ``cfg.figures_dir`` (``paths.figures``). With ``resume`` the run continues
    from ``out_dir/last.pt`` (or ``prev.pt``) when there is one, bit-exactly (see
    :mod:`mmldm.train.loop`); without it, training starts from scratch, and a folder that already
    holds a checkpoint is refused (:class:`~mmldm.train.loop.RunExistsError`); ``resume="replace"``
    moves the old run to ``out_dir/replaced/`` first, ``resume="auto"`` continues the same model
    or replaces another. Rank 0 holds ``out_dir``'s lock (:mod:`mmldm.lock`) while it trains.
    Under ``torchrun`` every process calls this; rank 0 writes the files.

    Returns ``{"step", "checkpoint", "log", "loss_curve", "samples", "weights_hash", "seconds",
    "images_per_s", "last"}`` (``last``: the last logged row).
    """
    out_dir = Path(out_dir) if out_dir is not None else cfg.run_dir / VQVAETrainer.stage
    with run_folder(out_dir, VQVAETrainer.stage, resume), torch_settings(cfg.train_vqvae):
        trainer = VQVAETrainer(cfg, store_path, out_dir, figures_dir, device, resume, progress)
        return trainer.fit(progress)


class VQVAETrainer(Trainer):
    """The VQVAE and its discriminator, their optimisers, and one training step."""

    stage = "vqvae"
    sections = ("data", "vqvae", "train_vqvae")
    columns = [
        "step",
        *LOSSES,
        "d_total",
        "d_real",
        "d_fake",
        "usage",
        "perplexity",
        "restarted",
        "grad_norm",
        "lr",
        "images_per_s",
    ]
    curve = [*LOSSES, "d_total"]

    def __init__(
        self,
        cfg: Config,
        store_path=None,
        out_dir=None,
        figures_dir=None,
        device: str | None = None,
        resume: bool | str = False,
        progress: bool = True,
    ):
        d = distributed.setup(device)
        super().__init__(
            cfg,
            cfg.train_vqvae,
            d,
            Path(out_dir) if out_dir is not None else cfg.run_dir / self.stage,
            Path(figures_dir) if figures_dir is not None else cfg.figures_dir,
        )
        tc, vc = self.tc, cfg.vqvae
        store_path = Path(store_path) if store_path is not None else cfg.store_path
        check_same_size(
            {f"store {store_path}": store_size(store_path), "the config's data.size": cfg.data.size},
            "preprocess the store at data.size, or set data.size to the store's size",
        )

        # Data: the training slices; a few fixed validation slices to show reconstructions of.
        self.train_set = CardiacSliceDataset(store_path, split="train", in_memory=tc.in_memory)
        self.shown = torch.stack([item["image"] for item in fixed_items(store_path, n=8)])

        # Models and optimisers, from the same seed on every rank (identical initial weights).
        seed_everything(tc.seed)
        self.model, self.disc = place(VQVAE(vc), tc, d), place(build_discriminator(vc), tc, d)
        self.perceptual = build_perceptual_loss(vc)
        self.opt_g = build_optimizer(self.model.parameters(), tc)
        self.opt_d = build_optimizer(self.disc.parameters(), tc)
        for group in self.opt_d.param_groups:  # a slower discriminator (vqvae.disc_lr_scale)
            group["lr"] *= vc.disc_lr_scale
        self.sched_g = build_scheduler(self.opt_g, tc)

        # Resume (or seed this rank), then wrap for training (compile, DDP).
        self.start(resume, progress)
        self.model_t, self.disc_t = wrap(self.model, tc, d), wrap(self.disc, tc, d)
        if self.perceptual is not None:
            self.perceptual.to(d.device)
        self.model.train(), self.disc.train()
        self.batches = batch_stream(self.train_set, tc, d, start_step=self.step)

    def train_step(self) -> dict:
        tc, vc, d, step = self.tc, self.cfg.vqvae, self.d, self.step
        adversarial = adversarial_active(vc, step)
        logged: dict = {}

        def add(key, value):
            logged[key] = logged.get(key, 0.0) + value / tc.grad_accum

        # 1. Generator (autoencoder); the discriminator only scores, its weights frozen.
        self.disc.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        pairs = []
        for micro in range(tc.grad_accum):
            x = to_device(next(self.batches)["image"], tc, d.device)
            with no_sync(self.model_t, micro == tc.grad_accum - 1):
                with autocast(tc, d.device):
                    recon, info = self.model_t(x)
                    terms = vqvae_generator_loss(
                        vc,
                        x,
                        recon,
                        info,
                        step,
                        self.disc if adversarial else None,
                        self.perceptual,
                        last_layer=self.model.decoder.conv_out.weight,
                    )
                (terms["total"] / tc.grad_accum).backward()
            pairs.append((x, recon.detach()))
            for k, v in terms.items():
                add(k, v.detach().float())
            add("usage", info["usage"].float())
            add("perplexity", info["perplexity"].float())
            add("restarted", info.get("restarted", 0))
        logged["lr"] = self.opt_g.param_groups[0]["lr"]  # the rate this step uses
        logged["grad_norm"] = optimizer_step(self.opt_g, self.sched_g, self.model.parameters(), tc).float()
        self.disc.requires_grad_(True)

        # 2. Discriminator, once the GAN terms are on, at the generator's learning rate.
        if adversarial:
            self.opt_d.zero_grad(set_to_none=True)
            for group in self.opt_d.param_groups:
                group["lr"] = logged["lr"]
            for micro, (x, recon) in enumerate(pairs):
                with no_sync(self.disc_t, micro == tc.grad_accum - 1):
                    with autocast(tc, d.device):
                        dterms = vqvae_discriminator_loss(vc, x, recon, step, self.disc_t)
                    (dterms["total"] / tc.grad_accum).backward()
                for k, v in dterms.items():
                    add(f"d_{k}", v.detach().float())
            optimizer_step(self.opt_d, None, self.disc.parameters(), tc)
        return logged

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": None,
            "optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
            "schedulers": {"generator": self.sched_g.state_dict()},
            "extra": {"discriminator": self.disc.state_dict()},
        }

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.disc.load_state_dict(ckpt["extra"]["discriminator"])
        self.opt_g.load_state_dict(ckpt["optimizers"]["generator"])
        self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])
        self.sched_g.load_state_dict(ckpt["schedulers"]["generator"])

    @torch.no_grad()
    def draw_samples(self, path: Path) -> None:
        self.model.eval()
        x = self.shown.to(self.d.device)
        recon = self.model.decode(self.model.encode_to_latent(x)).clamp(-1, 1)
        self.model.train()
        save_grid({"real": list(x.cpu()), "reconstruction": list(recon.float().cpu())}, path)

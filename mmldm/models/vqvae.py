"""The VQ-VAE that compresses a 256x256 slice to a 32x32x3 quantised latent, and its losses.

The ``paper`` model is the seed's autoencoder for 1-channel images::

    x (B,1,256,256) -> conv_in 64
      DownBlock 64->128 (2 ResBlocks) /2 -> DownBlock 128->256 /2 -> DownBlock 256->256 /2
      MidBlock 256->256 (3 ResBlocks, 2 attention layers) at 32x32
      GroupNorm -> SiLU -> conv 3x3 -> 3 ch -> 1x1 "pre-quant" conv        = z_e (B,3,32,32)
    VectorQuantizer: each of the 32*32 vectors -> nearest of 16,384 codes   = z_q (B,3,32,32)
      1x1 "post-quant" conv -> conv 3x3 -> 256, MidBlock 256->256
      UpBlock x2 256->256 -> x2 256->128 -> x2 128->64 -> GroupNorm -> SiLU -> conv -> (B,1,256,256)

Small profiles only change the lists: ``down_channels=[32, 64, 64]`` with two ``down_sample``
entries turns a 64x64 image into a 16x16 latent.

Training objective (the seed's, weights in :class:`VQVAEConfig`)::

    L_G = ||x - x_hat||^2  +  1.0 * codebook  +  0.2 * commitment
          [+ perceptual(x, x_hat)]  [+ 0.5 * LSGAN_G(D(x_hat))  once step >= adversarial_start]
    L_D = 0.5 * LSGAN_D(D(x), D(x_hat.detach()))                once step >= adversarial_start

The trainer calls :func:`vqvae_generator_loss` and :func:`vqvae_discriminator_loss`; each returns
a dict of named terms plus ``"total"``.

What the latent diffusion model sees: :meth:`VQVAE.encode_to_latent` (the quantised latent, exact
codebook vectors) and, after sampling, :meth:`VQVAE.decode_latent`, which can snap the sampled
latent back onto the codebook first (``requantize``; the seed decodes the raw sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.models.blocks import DownBlock, MidBlock, UpBlock, check_levels, group_norm
from mmldm.models.discriminator import GAN_LOSSES, PatchDiscriminator
from mmldm.models.frequency_loss import focal_frequency_loss
from mmldm.models.perceptual import PerceptualLoss
from mmldm.models.quantizer import VectorQuantizer


@dataclass
class VQVAEConfig:
    """Architecture, quantiser and loss weights of the VQ-VAE. Defaults are the ``paper`` profile."""

    image_channels: int = 1
    down_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    mid_channels: list[int] = field(default_factory=lambda: [256, 256])
    down_sample: list[bool] = field(default_factory=lambda: [True, True, True])  # per DownBlock
    attn_down: list[bool] = field(default_factory=lambda: [False, False, False])  # per Down/UpBlock
    num_down_layers: int = 2
    num_mid_layers: int = 2
    num_up_layers: int = 2
    num_heads: int = 4
    norm_groups: int = 32
    latent_channels: int = 3
    codebook_size: int = 16384
    # Quantiser improvements (off in the paper).
    ema: bool = False  # EMA codebook updates instead of the codebook loss
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    restart_after: int = 0  # re-initialise codes unused for this many training forwards (0: never)
    requantize: bool = False  # decode_latent snaps a sampled latent onto the codebook first
    # Losses.
    recon_loss: Literal["l2", "l1"] = "l2"
    codebook_loss_weight: float = 1.0
    commitment_loss_weight: float = 0.2  # beta
    perceptual_weights: str | None = None  # "random", or a local TorchScript / VGG16 state dict; None: no term
    perceptual_loss_weight: float = 1.0
    disc_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    # Optimiser steps before the GAN terms switch on. The seed's disc_start is 15,000 *batches of
    # 4* (60,000 images); at our 36 images per optimiser step that is ~1,700 steps (~7 epochs of
    # M&Ms-2), well inside the paper run's 5,000 steps.
    adversarial_start: int = 1700
    adversarial_loss_weight: float = 0.5
    # VQGAN's adaptive weight (Esser et al. 2021, eq. 7): the GAN term is scaled by
    # ||grad_L recon|| / ||grad_L GAN|| at the decoder's last layer L, so neither term drowns the
    # other whatever the loss scales; off in the seed.
    adversarial_adaptive: bool = False
    adversarial_loss: Literal["lsgan", "hinge"] = "lsgan"  # the seed's least squares, or hinge
    disc_spectral_norm: bool = False  # spectral norm in the discriminator instead of BatchNorm
    disc_lr_scale: float = 1.0  # the discriminator's lr over the autoencoder's (1 in the seed)
    # A weight-free spectral term (models/frequency_loss.py) and per-pixel noise in the decoder
    # (StyleGAN-style, learned per-channel scale starting at 0): for grain; 0 / off in the seed.
    frequency_loss_weight: float = 0.0
    decoder_noise: bool = False

    def __post_init__(self):
        check_levels(
            self.down_channels, self.mid_channels, self.down_sample, self.attn_down, self.norm_groups, self.num_heads
        )
        if self.codebook_size < 2:
            raise ValueError(
                f"codebook_size must be at least 2 (a one-code book encodes nothing), got {self.codebook_size}"
            )
        if self.latent_channels < 1 or self.image_channels < 1:
            raise ValueError(f"latent_channels and image_channels must be at least 1, got {self.latent_channels}")
        if min(self.num_down_layers, self.num_mid_layers, self.num_up_layers) < 1:
            raise ValueError("num_down_layers, num_mid_layers and num_up_layers must each be at least 1")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie between 0 and 1, got {self.ema_decay}")
        if not self.disc_lr_scale > 0:
            raise ValueError(f"disc_lr_scale must be positive, got {self.disc_lr_scale}")
        if self.frequency_loss_weight < 0:
            raise ValueError(f"frequency_loss_weight must not be negative, got {self.frequency_loss_weight}")
        if self.adversarial_start < 0 or self.restart_after < 0:
            raise ValueError("adversarial_start and restart_after must not be negative")
        if self.mid_channels[-1] != self.down_channels[-1]:
            raise ValueError(
                f"mid_channels {self.mid_channels} must end at down_channels[-1] = "
                f"{self.down_channels[-1]} (the decoder starts from that width)"
            )

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size (8 in the paper)."""
        return 2 ** sum(self.down_sample)


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Image (B, C, H, W) -> pre-quantisation latent z_e (B, latent_channels, H/f, W/f)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mid = cfg.down_channels, cfg.mid_channels
        self.conv_in = nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)
        self.downs = nn.ModuleList(
            DownBlock(
                ch[i],
                ch[i + 1],
                num_layers=cfg.num_down_layers,
                downsample=cfg.down_sample[i],
                attention=cfg.attn_down[i],
                num_heads=cfg.num_heads,
                groups=cfg.norm_groups,
            )
            for i in range(len(ch) - 1)
        )
        self.mids = nn.ModuleList(
            MidBlock(mid[i], mid[i + 1], num_layers=cfg.num_mid_layers, num_heads=cfg.num_heads, groups=cfg.norm_groups)
            for i in range(len(mid) - 1)
        )
        self.norm_out = group_norm(ch[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)
        self.pre_quant = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in [*self.downs, *self.mids]:
            h = block(h)
        return self.pre_quant(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Quantised latent (B, latent_channels, h, w) -> image (B, C, h*f, w*f); mirrors the encoder."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mid = cfg.down_channels, cfg.mid_channels
        self.post_quant = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.conv_in = nn.Conv2d(cfg.latent_channels, mid[-1], 3, padding=1)
        self.mids = nn.ModuleList(
            MidBlock(mid[i], mid[i - 1], num_layers=cfg.num_mid_layers, num_heads=cfg.num_heads, groups=cfg.norm_groups)
            for i in reversed(range(1, len(mid)))
        )
        self.ups = nn.ModuleList(
            UpBlock(
                ch[i],
                ch[i - 1],
                num_layers=cfg.num_up_layers,
                upsample=cfg.down_sample[i - 1],
                attention=cfg.attn_down[i - 1],
                num_heads=cfg.num_heads,
                groups=cfg.norm_groups,
            )
            for i in reversed(range(1, len(ch)))
        )
        # With cfg.decoder_noise, fresh Gaussian noise after each up block, scaled per channel.
        self.noise = nn.ModuleList(NoiseInjection(ch[i - 1]) for i in reversed(range(1, len(ch))))
        if not cfg.decoder_noise:
            self.noise = None
        self.norm_out = group_norm(ch[0], cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch[0], cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant(z))
        for block in self.mids:
            h = block(h)
        for i, block in enumerate(self.ups):
            h = block(h)
            if self.noise is not None:
                h = self.noise[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


class NoiseInjection(nn.Module):
    """h + s_c * n, with n ~ N(0, 1) one value per pixel (shared by the channels) drawn anew at
    every call, and s_c a learned scale per channel, 0 at the start (StyleGAN, Karras et al. 2019):
    the decoder can put back grain that the latent does not carry, and learns how much."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = torch.randn(h.shape[0], 1, *h.shape[2:], device=h.device, dtype=h.dtype)
        return h + self.weight.view(1, -1, 1, 1).to(h.dtype) * n


# ---------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------


class VQVAE(nn.Module):
    """Encoder -> VectorQuantizer -> Decoder."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(
            cfg.codebook_size,
            cfg.latent_channels,
            ema=cfg.ema,
            decay=cfg.ema_decay,
            eps=cfg.ema_eps,
            restart_after=cfg.restart_after,
        )
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> z_e, the continuous latent before quantisation."""
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z_e -> (z_q with straight-through gradients, info); updates the codebook if training
        with EMA / restarts. ``info``: indices, codebook_loss, commitment_loss, usage, perplexity."""
        return self.quantizer(z)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent -> reconstructed image."""
        return self.decoder(z_q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """One autoencoding pass for training: ``(reconstruction, quantiser info)``."""
        z_q, info = self.quantize(self.encode(x))
        return self.decode(z_q), info

    @torch.no_grad()
    def encode_to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """What the LDM trains on: the quantised latent (exact codebook vectors, no side effects)."""
        return self.quantizer.quantize_exact(self.encode(x))[0]

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, requantize: bool | None = None) -> torch.Tensor:
        """A (sampled) latent -> image. With ``requantize`` (default: the config's), the latent
        is first snapped onto its nearest codebook vectors, as the decoder was trained on those."""
        if self.config.requantize if requantize is None else requantize:
            z = self.quantizer.quantize_exact(z)[0]
        return self.decode(z)


# ---------------------------------------------------------------------------------------------
# Losses (used by the trainer)
# ---------------------------------------------------------------------------------------------


def build_discriminator(cfg: VQVAEConfig) -> PatchDiscriminator:
    return PatchDiscriminator(cfg.image_channels, cfg.disc_channels, spectral_norm=cfg.disc_spectral_norm)


def build_perceptual_loss(cfg: VQVAEConfig) -> PerceptualLoss | None:
    """The perceptual loss from ``cfg.perceptual_weights``, or None when that is unset."""
    return None if cfg.perceptual_weights is None else PerceptualLoss(cfg.perceptual_weights)


def adversarial_active(cfg: VQVAEConfig, step: int) -> bool:
    """Whether the GAN terms are on at optimiser step ``step`` (0-based, = steps completed)."""
    return step >= cfg.adversarial_start


def vqvae_generator_loss(
    cfg: VQVAEConfig,
    x: torch.Tensor,
    recon: torch.Tensor,
    info: dict,
    step: int,
    discriminator: nn.Module | None = None,
    perceptual: nn.Module | None = None,
    last_layer: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The autoencoder's loss terms (already weighted) and their sum ``"total"``.

    Keys: ``recon``, ``codebook``, ``commitment``, plus ``perceptual`` when ``perceptual`` is
    given, ``frequency`` when ``cfg.frequency_loss_weight`` > 0, and ``adversarial`` when a
    discriminator is given and the step has reached ``adversarial_start``. With
    ``cfg.adversarial_adaptive``, ``last_layer`` (the decoder's output weight) sets the adaptive
    GAN weight, logged as ``adaptive_weight``.
    """
    rec = F.mse_loss(recon, x) if cfg.recon_loss == "l2" else F.l1_loss(recon, x)
    terms = {
        "recon": rec,
        "codebook": cfg.codebook_loss_weight * info["codebook_loss"],
        "commitment": cfg.commitment_loss_weight * info["commitment_loss"],
    }
    if perceptual is not None:
        terms["perceptual"] = cfg.perceptual_loss_weight * perceptual(recon, x)
    if cfg.frequency_loss_weight > 0:
        terms["frequency"] = cfg.frequency_loss_weight * focal_frequency_loss(recon, x)
    if discriminator is not None and adversarial_active(cfg, step):
        gan = GAN_LOSSES[cfg.adversarial_loss][0](discriminator(recon))
        weight = cfg.adversarial_loss_weight
        if cfg.adversarial_adaptive:
            weight = weight * adaptive_weight(rec + terms.get("perceptual", 0.0), gan, last_layer)
        terms["adversarial"] = weight * gan
    terms["total"] = sum(terms.values())
    return terms


def adaptive_weight(rec: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor | None) -> torch.Tensor:
    """VQGAN's lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4), clamped to [0, 1e4], detached.

    ``L`` is the decoder's last convolution weight (where both losses meet first on the way
    back). Without it (or outside autograd, e.g. under ``torch.no_grad``) the weight is 1.
    """
    if last_layer is None or not rec.requires_grad or not gan.requires_grad:
        return torch.ones((), device=gan.device)
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def vqvae_discriminator_loss(
    cfg: VQVAEConfig, x: torch.Tensor, recon: torch.Tensor, step: int, discriminator: nn.Module
) -> dict[str, torch.Tensor]:
    """The discriminator's loss (``"total"``, weighted as in the seed) and its raw real/fake
    parts; an empty dict before ``adversarial_start`` (nothing to train yet)."""
    if not adversarial_active(cfg, step):
        return {}
    real, fake = discriminator(x), discriminator(recon.detach())
    loss = GAN_LOSSES[cfg.adversarial_loss][1](real, fake)
    if cfg.adversarial_loss == "hinge":  # the two margins' violations
        parts = F.relu(1 - real).mean(), F.relu(1 + fake).mean()
    else:
        parts = (real - 1).pow(2).mean(), fake.pow(2).mean()
    return {"real": parts[0].detach(), "fake": parts[1].detach(), "total": cfg.adversarial_loss_weight * loss}

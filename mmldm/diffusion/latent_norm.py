"""Per-channel latent normalisation: what the UNet sees is (z - mean) / std of the VQVAE latent.

The quantised latents of a small VQVAE are not centred or unit-scaled (codebook vectors drift
wherever the encoder put them), while the diffusion forward process assumes data of about unit
variance: with latents of std 3 the noise at t = T no longer drowns the signal, and with std 0.3
most of the schedule is spent on pure noise. Standardising each channel with the training
latents' mean and std, and un-standardising samples before decoding, is the fix of Rombach et al.
2022 (their ``scale_factor``, one number for all channels), applied per channel
(``latent_norm: channel``; ``none`` keeps the raw latents). The stats travel in the LDM checkpoint::

    stats = latent_stats(training_latents)       {"mode", "mean": [C], "std": [C], "min", "max"}
    z_unet = normalize(z, stats)                  (z - mean) / std        what the UNet trains on
    z = denormalize(z_unet, stats)                z_unet * std + mean     before the VQVAE decodes
"""

from __future__ import annotations

import torch


def latent_stats(latents: torch.Tensor, mode: str = "channel") -> dict:
    """Per-channel mean and std of (N, C, h, w) latents (``mode="none"``: 0 and 1), and the
    range the *normalised* latents span (``min``/``max``: what ``sampler.clip_x0`` can clamp to)."""
    c = latents.shape[1]
    if mode == "channel":
        mean = latents.double().mean(dim=(0, 2, 3))
        std = latents.double().std(dim=(0, 2, 3)).clamp_min(1e-6)
    elif mode == "none":
        mean, std = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    else:
        raise ValueError(f"latent_norm must be 'none' or 'channel', got {mode!r}")
    normed = (latents.double() - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
    return {
        "mode": mode,
        "mean": mean.float().tolist(),
        "std": std.float().tolist(),
        "min": float(normed.min()),
        "max": float(normed.max()),
    }


def normalize(z: torch.Tensor, stats: dict) -> torch.Tensor:
    """VQVAE latent -> what the UNet trains on: (z - mean) / std per channel."""
    mean = torch.tensor(stats["mean"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    std = torch.tensor(stats["std"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    return (z - mean) / std


def denormalize(z: torch.Tensor, stats: dict) -> torch.Tensor:
    """A sampled latent -> the VQVAE's latent space: z * std + mean per channel."""
    mean = torch.tensor(stats["mean"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    std = torch.tensor(stats["std"], dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    return z * std + mean

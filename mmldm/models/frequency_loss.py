"""Focal frequency loss (Jiang et al., ICCV 2021): the reconstruction error measured in 2-D Fourier space.

A pixel loss (L1, L2) is dominated by the low frequencies that carry most of an image's energy, so
an autoencoder trained on it learns the coarse shapes first and the fine grain last, or never: its
reconstructions come out smooth. The focal frequency loss compares the spectra instead, and
weights each frequency by how wrong it still is, so the hard (usually high) frequencies are not
drowned by the easy ones::

    F, G   = FFT2(x_hat), FFT2(x)                       (orthonormal, per image and channel)
    d(u,v) = |F(u,v) - G(u,v)|^2                        (the squared complex error)
    w(u,v) = |F(u,v) - G(u,v)|^alpha / max_uv(...)      (the focus, in [0, 1], detached)
    L      = mean_uv w(u,v) * d(u,v)

It has no weights of its own (nothing to download, nothing learned), so it cannot be tuned
towards any judge network. ``vqvae.frequency_loss_weight`` adds it to the autoencoder's loss.
"""

from __future__ import annotations

import torch


def focal_frequency_loss(recon: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The loss above for (B, C, H, W) images; 0 when ``recon`` equals ``x``."""
    if recon.shape != x.shape:
        raise ValueError(f"focal_frequency_loss: shapes differ, {tuple(recon.shape)} and {tuple(x.shape)}")
    diff = torch.fft.fft2(recon.float(), norm="ortho") - torch.fft.fft2(x.float(), norm="ortho")
    d = diff.real.pow(2) + diff.imag.pow(2)
    w = d.detach().sqrt().pow(alpha)
    w = w / w.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (w * d).mean()

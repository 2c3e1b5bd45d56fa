"""PatchGAN discriminator and the least-squares GAN losses used to sharpen VQVAE reconstructions.

A PatchGAN (Isola et al., pix2pix, 2017) does not output one real/fake score per image but a grid
of scores, one per overlapping patch (about 70x70 pixels for three stride-2 layers), so it judges
local texture, which is exactly what an L2 reconstruction loss blurs. The layout is the seed's:

    conv4x4 s2 (bias) -> LeakyReLU(0.2)
    [conv4x4 s2 (no bias) -> BatchNorm -> LeakyReLU(0.2)] x (len(channels) - 1)
    conv4x4 s1 -> 1 channel of scores

A 256x256 slice gives a 31x31 grid.

Least-squares GAN (Mao et al., 2017) replaces the log-loss by squared distances to the targets
1 (real) and 0 (fake), which gives non-vanishing gradients to samples that are already classified
correctly but lie far from the decision boundary::

    L_D = 1/2 [ mean (D(x) - 1)^2 + mean D(G(z))^2 ]        L_G = mean (D(G(z)) - 1)^2

The hinge loss (the other choice, ``vqvae.adversarial_loss: hinge``), usually with spectral norm::

    L_D = 1/2 [ mean relu(1 - D(x)) + mean relu(1 + D(G(z))) ]   L_G = - mean D(G(z))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Maps (B, in_channels, H, W) images to (B, 1, H', W') patch scores (unbounded). With
    ``spectral_norm`` every convolution is spectrally normalised and the BatchNorms are dropped."""

    def __init__(
        self, in_channels: int = 1, channels: list[int] | tuple[int, ...] = (64, 128, 256), spectral_norm: bool = False
    ):
        super().__init__()
        dims = [in_channels, *channels, 1]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            first, last = i == 0, i == len(dims) - 2
            conv = nn.Conv2d(dims[i], dims[i + 1], 4, stride=1 if last else 2, padding=1, bias=first or spectral_norm)
            # Spectral norm (Miyato et al. 2018) bounds each layer's Lipschitz constant instead of
            # BatchNorm, which couples the real and fake halves of a batch.
            layers.append(nn.utils.parametrizations.spectral_norm(conv) if spectral_norm else conv)
            if not first and not last and not spectral_norm:
                layers.append(nn.BatchNorm2d(dims[i + 1]))
            if not last:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator wants its reconstructions scored as real: mean (D(fake) - 1)^2."""
    return (fake_scores - 1).pow(2).mean()


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator wants 1 on real and 0 on fake: 1/2 [mean (D(real)-1)^2 + mean D(fake)^2]."""
    return 0.5 * ((real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean())


def hinge_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge GAN (Lim & Ye 2017; SAGAN, BigGAN, VQGAN): the generator raises its scores, -mean D(fake)."""
    return -fake_scores.mean()


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 [mean relu(1 - D(real)) + mean relu(1 + D(fake))]: no gradient once a patch is scored
    beyond the margin, so the discriminator stops pushing on what it already tells apart."""
    return 0.5 * (F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean())


GAN_LOSSES = {
    "lsgan": (lsgan_generator_loss, lsgan_discriminator_loss),
    "hinge": (hinge_generator_loss, hinge_discriminator_loss),
}

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
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Maps (B, in_channels, H, W) images to (B, 1, H', W') patch scores (unbounded)."""

    def __init__(self, in_channels: int = 1, channels: list[int] | tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        dims = [in_channels, *channels, 1]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            first, last = i == 0, i == len(dims) - 2
            layers.append(nn.Conv2d(dims[i], dims[i + 1], 4, stride=1 if last else 2, padding=1, bias=first))
            if not first and not last:
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

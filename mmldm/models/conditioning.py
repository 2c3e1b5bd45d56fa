"""How the image-resolution condition reaches the latent-resolution UNet: three ways.

The condition is a (B, 5, H, W) float map at the *image* resolution (256x256 in the paper):
channel 0 the Canny edge map in {0, 1}, channels 1-4 the one-hot labels background / LV /
myocardium / RV (see ``mmldm.data.schema.COND_CHANNELS``). The UNet works on the VQVAE latent,
``f`` times smaller (f = 8 in the paper: 32x32). A condition dropped for classifier-free guidance
is all zeros in its channels, so every encoder below sees "no condition" as zeros, in training
and in sampling alike.

1. :class:`NearestConcat` (``concat_nearest``, the seed's way): nearest-neighbour downsample to
   the latent size, a 1x1 conv (no bias, so a dropped condition stays exactly zero), concatenate
   to the noisy latent. Cheap, but nearest sampling keeps one pixel in f*f: a 1-pixel-wide
   Canny edge mostly disappears.
2. :class:`HintEncoder` (``hint_encoder``, ControlNet's "hint block"): a small learned CNN of
   3x3 convs + SiLU, halving the resolution log2(f) times, so the network decides what to keep
   of the edges and labels before concatenation.
3. :class:`ConditionPyramid` (``spade``): no encoder at the input; the condition is resized by
   area averaging to each UNet resolution and modulates every ResBlock's normalisation (see
   :mod:`mmldm.models.spade`). This module only holds the resizing, cached per resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_condition(cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a condition map to ``size`` = (h, w) by area averaging (identity if already so).

    Averaging keeps what nearest sampling loses: an edge pixel inside an 8x8 cell makes that
    cell 1/64 instead of 0 or 1, and the one-hot channels become class fractions summing to 1.
    """
    size = tuple(int(s) for s in size)
    if tuple(cond.shape[-2:]) == size:
        return cond
    return F.interpolate(cond, size=size, mode="area")


class NearestConcat(nn.Module):
    """The seed's mask conditioning: nearest downsample to the latent size, then a 1x1 conv.

    The output (B, out_channels, h, w) is meant to be concatenated to the noisy latent.
    """

    def __init__(self, cond_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(cond_channels, out_channels, 1, bias=False)

    def forward(self, cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.proj(F.interpolate(cond, size=tuple(size), mode="nearest"))


class HintEncoder(nn.Module):
    """ControlNet's hint block: conv+SiLU stacks, stride 2 between stages, image -> latent size.

    ``channels`` has one entry per resolution: ``channels[0]`` at the image resolution, then one
    more per halving, so ``len(channels) == log2(downsample) + 1``. The paper's f = 8 with
    ``[16, 32, 96, 256]`` is ControlNet's own block. Each stage is ``conv3x3(stride 2 except the
    first) -> SiLU -> conv3x3 -> SiLU``; a final 3x3 conv maps to ``out_channels``.

    (ControlNet zero-initialises that final conv because it *adds* the hint to a pretrained
    network; we concatenate to a network trained from scratch, so a default init is right and
    lets gradients reach every layer from the first step.)
    """

    @staticmethod
    def check(channels: Sequence[int], downsample: int) -> None:
        """Raise ValueError unless ``channels`` has one entry per resolution for ``downsample``."""
        steps = int(round(math.log2(downsample))) if downsample > 0 else -1
        if steps < 0 or 2**steps != downsample:
            raise ValueError(f"hint encoder: downsample factor must be a power of 2, got {downsample}")
        if len(channels) != steps + 1:
            raise ValueError(
                f"hint encoder: {len(channels)} hint channels {list(channels)} for a downsample factor of "
                f"{downsample}; need log2({downsample}) + 1 = {steps + 1} entries (one per resolution)"
            )

    def __init__(self, cond_channels: int, channels: Sequence[int], out_channels: int, downsample: int):
        super().__init__()
        self.check(channels, downsample)
        self.downsample = downsample
        layers: list[nn.Module] = []
        prev = cond_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            prev = c
        layers.append(nn.Conv2d(prev, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        expected = (size[0] * self.downsample, size[1] * self.downsample)
        if tuple(cond.shape[-2:]) != expected:
            raise ValueError(
                f"hint encoder: condition is {tuple(cond.shape[-2:])} but the latent {tuple(size)} "
                f"needs {expected} (downsample factor {self.downsample})"
            )
        return self.net(cond)


class ConditionPyramid:
    """The condition at every resolution the UNet asks for, each computed once per forward."""

    def __init__(self, cond: torch.Tensor):
        self.cond = cond
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def at(self, size: Sequence[int]) -> torch.Tensor:
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            self._cache[key] = resize_condition(self.cond, key)
        return self._cache[key]

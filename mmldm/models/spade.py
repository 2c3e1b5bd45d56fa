"""SPADE: spatially-adaptive normalisation (Park et al., "Semantic Image Synthesis with
Spatially-Adaptive Normalization", CVPR 2019).

A normal GroupNorm learns one scale and one shift per channel. SPADE instead *predicts* a scale
``gamma`` and a shift ``beta`` for every channel **and every pixel** from the condition map
(here: Canny edges + one-hot labels), so that the layout of the heart is injected into every
layer of the network instead of only at its input::

    a     = ReLU(conv3x3(cond))                 # shared embedding of the condition
    gamma, beta = conv3x3(a).chunk(2)            # per-pixel modulation
    out   = GroupNorm_noaffine(x) * (1 + gamma) + beta

The condition is resized to the feature map's resolution by area averaging (so a thin edge
becomes a fraction in (0, 1] rather than vanishing, as it would with nearest-neighbour
sampling). A condition dropped for classifier-free guidance is all zeros; SPADE then applies a
learned, spatially constant scale and shift (from the conv biases), i.e. it behaves like a plain
GroupNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.models.conditioning import resize_condition


class SPADE(nn.Module):
    """GroupNorm without affine parameters, modulated per pixel by the condition map."""

    def __init__(self, channels: int, cond_channels: int, groups: int = 32, hidden: int = 128):
        super().__init__()
        if channels % groups:
            raise ValueError(f"SPADE: {channels} channels cannot be split into {groups} groups")
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.shared = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = resize_condition(cond, x.shape[-2:]).to(x.dtype)
        gamma, beta = self.gamma_beta(F.relu(self.shared(cond))).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta

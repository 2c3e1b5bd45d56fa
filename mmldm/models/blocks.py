"""The building blocks shared by the VQVAE and the diffusion UNet.

Read top to bottom:

1. :func:`param_count` / :func:`param_table`: how big is a module.
2. :func:`timestep_embedding`: the sinusoidal embedding of the diffusion step ``t``.
3. :func:`group_norm`: GroupNorm with a clear error when the channels do not divide.
4. :class:`ResBlock`: GroupNorm -> SiLU -> conv, (+ time embedding), GroupNorm -> SiLU ->
   dropout -> conv, plus a 1x1-conv shortcut. Either norm can be SPADE (the condition modulates
   it) instead of a plain GroupNorm.
5. :class:`SelfAttention`: multi-head self-attention over the pixels of a feature map, computed
   by ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on
   GPU, a fused kernel on CPU).
6. :class:`Downsample` / :class:`Upsample`: stride-2 conv (kernel 4) and transposed conv.
7. :class:`DownBlock`, :class:`MidBlock`, :class:`UpBlock`: the three kinds of stage that both
   the VQVAE and the UNet are stacks of.

The layout follows the seed code (explainingai-code/StableDiffusion-PyTorch), so the ``paper``
models have the same parameter counts as the seed's: the shortcut of every ResBlock is a learned
1x1 conv (even when the channel count does not change), attention is GroupNorm + multi-head
attention with biased input/output projections (the parameter layout of
``nn.MultiheadAttention``), and a block's attention follows each of its ResBlocks.

Everything works on ``torch.channels_last`` tensors: no op here forces a layout, and attention
flattens the pixels with a view, which is free for channels-last inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.models.spade import SPADE

# ---------------------------------------------------------------------------------------------
# 1. Parameter counts
# ---------------------------------------------------------------------------------------------


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in ``module`` (buffers such as an EMA codebook are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def param_table(module: nn.Module) -> dict[str, int]:
    """Parameter count of each direct child of ``module``, plus ``"total"``: where the size is."""
    table = {name: param_count(child) for name, child in module.named_children()}
    table = {k: v for k, v in table.items() if v > 0}
    table["total"] = param_count(module)
    return table


# ---------------------------------------------------------------------------------------------
# 2. Time embedding
# ---------------------------------------------------------------------------------------------


def check_levels(
    down_channels,
    mid_channels,
    down_sample,
    attn_down,
    norm_groups: int,
    num_heads: int,
    more_channels: tuple[int, ...] = (),
) -> None:
    """Validate the level lists shared by the VQVAE and UNet configs (ValueError with the reason).

    One ``down_sample`` and ``attn_down`` entry per DownBlock (``len(down_channels) - 1``), a
    mid block of >= 2 entries starting at the last down width, every width divisible into
    ``norm_groups`` groups, and every attended width into ``num_heads`` heads.
    """
    if num_heads < 1 or norm_groups < 1:
        raise ValueError(f"num_heads and norm_groups must be at least 1, got {num_heads} and {norm_groups}")
    small = [c for c in [*down_channels, *mid_channels, *more_channels] if c < 1]
    if small:
        raise ValueError(f"every channel count must be at least 1, got {small[0]}")
    n = len(down_channels)
    if n < 2:
        raise ValueError(f"down_channels needs at least 2 entries, got {down_channels}")
    for name, values in (("down_sample", down_sample), ("attn_down", attn_down)):
        if len(values) != n - 1:
            raise ValueError(f"{name} needs {n - 1} entries (one per DownBlock), got {values}")
    if len(mid_channels) < 2 or mid_channels[0] != down_channels[-1]:
        raise ValueError(f"mid_channels {mid_channels} must have >= 2 entries and start at down_channels[-1]")
    for c in [*down_channels, *mid_channels, *more_channels]:
        if c % norm_groups:
            raise ValueError(f"{c} channels cannot be split into norm_groups={norm_groups} groups")
    attended = [c for c, a in zip(down_channels[1:], attn_down) if a] + list(mid_channels[1:])
    for c in attended:
        if c % num_heads:
            raise ValueError(f"{c} channels cannot be split into num_heads={num_heads} heads")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps, as in the Transformer and in DDPM.

    ``t`` has shape (B,) and may be integer steps or continuous (float) steps. Frequency ``i`` is
    ``max_period ** (-i / (dim/2))``; the result is ``[sin(t * f_i) ..., cos(t * f_i) ...]`` of
    shape (B, dim). (Same formula as the seed's ``get_time_embedding``.)
    """
    if dim % 2:
        raise ValueError(f"time embedding dimension must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


# ---------------------------------------------------------------------------------------------
# 3. Normalisation
# ---------------------------------------------------------------------------------------------


def group_norm(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm(groups, channels) that says which numbers do not fit when they do not divide."""
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels cannot be split into {groups} groups")
    return nn.GroupNorm(groups, channels, affine=affine)


# ---------------------------------------------------------------------------------------------
# 4. Residual block
# ---------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """``x + f(x)`` with ``f`` = two (norm, SiLU, 3x3 conv) layers; the shortcut is a 1x1 conv.

    - ``time_dim``: when given, a SiLU + Linear projection of the time embedding is added to the
      feature map after the first conv (one bias per channel: "which step is it").
    - ``dropout``: applied just before the second conv (as in DDPM's ResBlock).
    - ``spade_channels``: when given, both norms are :class:`~mmldm.models.spade.SPADE`: a
      GroupNorm without affine parameters whose per-pixel scale and shift are predicted from the
      condition map passed to :meth:`forward`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        groups: int = 32,
        time_dim: int | None = None,
        dropout: float = 0.0,
        spade_channels: int | None = None,
        spade_hidden: int = 128,
    ):
        super().__init__()

        def norm(c: int) -> nn.Module:
            if spade_channels is None:
                return group_norm(c, groups)
            return SPADE(c, spade_channels, groups=groups, hidden=spade_hidden)

        self.spade = spade_channels is not None
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels)) if time_dim else None
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _norm(self, norm: nn.Module, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.spade:
            if cond is None:
                raise ValueError("this ResBlock uses SPADE and needs the condition map (got None)")
            return norm(h, cond)
        return norm(h)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, cond)))
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this ResBlock was built with a time embedding and needs temb")
            h = h + self.time_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self._norm(self.norm2, h, cond))))
        return h + self.shortcut(x)


# ---------------------------------------------------------------------------------------------
# 5. Self-attention
# ---------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H*W pixels, added back to the input.

    Each pixel is a token of ``channels`` features. One Linear makes queries, keys and values
    for all heads; ``scaled_dot_product_attention`` computes ``softmax(q k^T / sqrt(d)) v`` per
    head; a second Linear mixes the heads. The cost is quadratic in H*W, which is why the UNet
    only attends at the latent resolution (32x32 and below).
    """

    def __init__(self, channels: int, num_heads: int, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, C, H, W) -> (B, H*W, C): a free view when x is channels-last.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        # (B, H*W, C) -> (B, C, H, W) viewed channels-last; adding x keeps x's layout.
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# 6. Resolution changes
# ---------------------------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve H and W with a learned 4x4 conv of stride 2 (the seed's choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W with a learned 4x4 transposed conv of stride 2 (the seed's choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# ---------------------------------------------------------------------------------------------
# 7. Stages
# ---------------------------------------------------------------------------------------------


def _resblock_kwargs(groups, time_dim, dropout, spade_channels, spade_hidden) -> dict:
    return dict(
        groups=groups, time_dim=time_dim, dropout=dropout, spade_channels=spade_channels, spade_hidden=spade_hidden
    )


class DownBlock(nn.Module):
    """``num_layers`` x (ResBlock [+ attention]), then an optional 2x downsampling.

    The first ResBlock changes ``in_channels`` to ``out_channels``. ``cond`` (SPADE only) must
    already be at this block's input resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        downsample: bool,
        attention: bool,
        num_heads: int,
        groups: int = 32,
        time_dim: int | None = None,
        dropout: float = 0.0,
        spade_channels: int | None = None,
        spade_hidden: int = 128,
    ):
        super().__init__()
        kw = _resblock_kwargs(groups, time_dim, dropout, spade_channels, spade_hidden)
        self.resnets = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, **kw) for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_heads, groups) for _ in range(num_layers if attention else 0)
        )
        self.down = Downsample(out_channels) if downsample else nn.Identity()

    def forward(self, x, temb=None, cond=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, cond)
            if self.attentions:
                x = self.attentions[i](x)
        return self.down(x)


class MidBlock(nn.Module):
    """ResBlock, then ``num_layers`` x (attention, ResBlock): the bottleneck, always attending.

    With ``num_layers=2`` that is 3 ResBlocks and 2 attention layers (the seed's MidBlock).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        num_heads: int,
        groups: int = 32,
        time_dim: int | None = None,
        dropout: float = 0.0,
        spade_channels: int | None = None,
        spade_hidden: int = 128,
    ):
        super().__init__()
        kw = _resblock_kwargs(groups, time_dim, dropout, spade_channels, spade_hidden)
        self.resnets = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, **kw) for i in range(num_layers + 1)
        )
        self.attentions = nn.ModuleList(SelfAttention(out_channels, num_heads, groups) for _ in range(num_layers))

    def forward(self, x, temb=None, cond=None):
        x = self.resnets[0](x, temb, cond)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x), temb, cond)
        return x


class UpBlock(nn.Module):
    """Optional 2x upsampling, concatenation of a skip connection, ``num_layers`` x (ResBlock
    [+ attention]).

    ``in_channels`` are the channels of ``x``; ``skip_channels`` those of the UNet skip tensor
    concatenated after upsampling (0 in the VQVAE decoder, which has no skips). ``cond`` (SPADE
    only) must be at the block's output resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        upsample: bool,
        attention: bool,
        num_heads: int,
        skip_channels: int = 0,
        groups: int = 32,
        time_dim: int | None = None,
        dropout: float = 0.0,
        spade_channels: int | None = None,
        spade_hidden: int = 128,
    ):
        super().__init__()
        kw = _resblock_kwargs(groups, time_dim, dropout, spade_channels, spade_hidden)
        self.up = Upsample(in_channels) if upsample else nn.Identity()
        first = in_channels + skip_channels
        self.resnets = nn.ModuleList(
            ResBlock(first if i == 0 else out_channels, out_channels, **kw) for i in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_heads, groups) for _ in range(num_layers if attention else 0)
        )

    def forward(self, x, skip=None, temb=None, cond=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, cond)
            if self.attentions:
                x = self.attentions[i](x)
        return x

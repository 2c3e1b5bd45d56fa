"""The conditional UNet that denoises VQVAE latents: eps_theta(z_t, t, condition, view).

Shape of the ``paper`` model (the seed's ``Unet`` with the study's numbers)::

    z_t (B,3,32,32) --[concat condition (B,3,32,32)]--> conv_in -> 256 ch, 32x32
    DownBlock 256->384 (2 ResBlocks + attention) -> 16x16      skips: 256@32, 384@16, 512@8
    DownBlock 384->512                           ->  8x8
    DownBlock 512->768                           ->  4x4
    MidBlock  768->512 (3 ResBlocks, 2 attention layers) at 4x4
    UpBlock   512 (+512 skip) -> 384, 8x8;  384 (+384) -> 256, 16x16;  256 (+256) -> 128, 32x32
    GroupNorm -> SiLU -> conv_out -> eps (B,3,32,32)

Every ResBlock receives the time embedding (sinusoidal -> Linear-SiLU-Linear, 512-d), plus a
learned view embedding (SA/LA) when ``view_embedding`` is on. The 5-channel condition (Canny
edges + one-hot labels, at the image resolution) enters in one of three ways
(``UNetConfig.conditioning``, see :mod:`mmldm.models.conditioning`): concatenated after nearest
downsampling (the seed), concatenated after a learned hint encoder (ControlNet), or through SPADE
normalisation in every ResBlock. ``"none"`` builds an unconditional model.

The contract the diffusion code relies on::

    eps = unet(x, t, cond=None, view=None)     # eps.shape == x.shape

``t``: (B,) integer or float steps (a scalar is broadcast). ``cond``: (B, 5, H, W) with
H = h * cond_downsample; a condition dropped for classifier-free guidance is all zeros in its
channels, and ``cond=None`` means both are dropped (exactly the same as passing zeros); ``cond`` may also be a
:class:`PreparedCondition` from ``unet.prepare_condition(cond, x)``, reused across sampling steps.
``view``: (B,) long, 0 = SA, 1 = LA, or None (no view information: nothing is added). A model
built without a view embedding ignores ``view``, and one built with ``conditioning="none"``
ignores ``cond``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.data.schema import COND_CHANNELS, VIEWS
from mmldm.models.blocks import DownBlock, MidBlock, UpBlock, check_levels, group_norm, timestep_embedding
from mmldm.models.conditioning import ConditionPyramid, HintEncoder, NearestConcat

Conditioning = Literal["concat_nearest", "hint_encoder", "spade", "none"]


@dataclass
class PreparedCondition:
    """A condition after :meth:`UNet.prepare_condition`: what the UNet makes of it before step 1.

    ``features`` (B, cond_out_channels, h, w) to concatenate to the latents (``concat_nearest``,
    ``hint_encoder``), or ``pyramid`` (SPADE: the condition resized once per resolution), or
    neither (``conditioning="none"``). ``batch`` and ``size`` (h, w) say which latents it fits.
    """

    batch: int
    size: tuple[int, int]
    features: torch.Tensor | None = None
    pyramid: ConditionPyramid | None = None


@dataclass
class UNetConfig:
    """Architecture of the denoising UNet. Defaults are the ``paper`` profile."""

    latent_channels: int = 3  # channels of the VQVAE latent (input and output of the UNet)
    down_channels: list[int] = field(default_factory=lambda: [256, 384, 512, 768])
    mid_channels: list[int] = field(default_factory=lambda: [768, 512])
    down_sample: list[bool] = field(default_factory=lambda: [True, True, True])  # per DownBlock
    attn_down: list[bool] = field(default_factory=lambda: [True, True, True])  # per Down/UpBlock
    num_down_layers: int = 2  # ResBlocks per DownBlock
    num_mid_layers: int = 2  # (attention, ResBlock) pairs after the MidBlock's first ResBlock
    num_up_layers: int = 2  # ResBlocks per UpBlock
    num_heads: int = 8
    norm_groups: int = 32
    time_emb_dim: int = 512
    conv_out_channels: int = 128  # channels of the last UpBlock, before conv_out
    dropout: float = 0.1
    conditioning: Conditioning = "concat_nearest"
    cond_channels: int = len(COND_CHANNELS)  # 5: edge + 4 one-hot labels
    cond_out_channels: int = 3  # channels the condition adds to the latent (concat modes)
    cond_downsample: int = 8  # image size / latent size (the VQVAE's downsample factor)
    hint_channels: list[int] = field(default_factory=lambda: [16, 32, 96, 256])  # hint_encoder only
    spade_hidden: int = 128  # width of each SPADE's shared conv (spade only)
    view_embedding: bool = False  # add a learned SA/LA embedding to the time embedding

    def __post_init__(self):
        check_levels(
            self.down_channels,
            self.mid_channels,
            self.down_sample,
            self.attn_down,
            self.norm_groups,
            self.num_heads,
            more_channels=(self.conv_out_channels,),
        )
        if min(self.num_down_layers, self.num_mid_layers, self.num_up_layers) < 1:
            raise ValueError("num_down_layers, num_mid_layers and num_up_layers must each be at least 1")
        if self.latent_channels < 1 or self.cond_downsample < 1 or self.time_emb_dim < 2:
            raise ValueError("latent_channels and cond_downsample must be at least 1, time_emb_dim at least 2")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.time_emb_dim % 2:
            raise ValueError(f"time_emb_dim must be even, got {self.time_emb_dim}")
        if self.conditioning == "hint_encoder":
            HintEncoder.check(self.hint_channels, self.cond_downsample)

    @property
    def num_downsamples(self) -> int:
        return sum(self.down_sample)


class UNet(nn.Module):
    """Noise-prediction UNet on the latent, conditioned by edges + labels (and the view)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.down_channels
        spade = cfg.cond_channels if cfg.conditioning == "spade" else None
        common = dict(
            num_heads=cfg.num_heads,
            groups=cfg.norm_groups,
            time_dim=cfg.time_emb_dim,
            dropout=cfg.dropout,
            spade_channels=spade,
            spade_hidden=cfg.spade_hidden,
        )

        # Time (and view) embedding: sinusoid -> MLP, shared by every ResBlock.
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_emb_dim, cfg.time_emb_dim), nn.SiLU(), nn.Linear(cfg.time_emb_dim, cfg.time_emb_dim)
        )
        self.view_emb = nn.Embedding(len(VIEWS), cfg.time_emb_dim) if cfg.view_embedding else None

        # Condition at the input (concat modes only).
        extra = 0
        self.cond_encoder: nn.Module | None = None
        if cfg.conditioning == "concat_nearest":
            self.cond_encoder = NearestConcat(cfg.cond_channels, cfg.cond_out_channels)
            extra = cfg.cond_out_channels
        elif cfg.conditioning == "hint_encoder":
            self.cond_encoder = HintEncoder(
                cfg.cond_channels, cfg.hint_channels, cfg.cond_out_channels, cfg.cond_downsample
            )
            extra = cfg.cond_out_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels + extra, ch[0], 3, padding=1)

        # Encoder: DownBlock i maps ch[i] -> ch[i+1] and then (maybe) halves the resolution.
        self.downs = nn.ModuleList(
            DownBlock(
                ch[i],
                ch[i + 1],
                num_layers=cfg.num_down_layers,
                downsample=cfg.down_sample[i],
                attention=cfg.attn_down[i],
                **common,
            )
            for i in range(len(ch) - 1)
        )
        # Bottleneck.
        mid = cfg.mid_channels
        self.mids = nn.ModuleList(
            MidBlock(mid[i], mid[i + 1], num_layers=cfg.num_mid_layers, **common) for i in range(len(mid) - 1)
        )
        # Decoder: UpBlock i mirrors DownBlock i; its skip is DownBlock i's *input* (ch[i] channels).
        self.ups = nn.ModuleList()
        x_channels = mid[-1]
        for i in reversed(range(len(ch) - 1)):
            out = ch[i - 1] if i > 0 else cfg.conv_out_channels
            self.ups.append(
                UpBlock(
                    x_channels,
                    out,
                    skip_channels=ch[i],
                    num_layers=cfg.num_up_layers,
                    upsample=cfg.down_sample[i],
                    attention=cfg.attn_down[i],
                    **common,
                )
            )
            x_channels = out
        self.norm_out = group_norm(cfg.conv_out_channels, cfg.norm_groups)
        self.conv_out = nn.Conv2d(cfg.conv_out_channels, cfg.latent_channels, 3, padding=1)

    def prepare_condition(self, cond: torch.Tensor | None, x: torch.Tensor) -> PreparedCondition:
        """The part of the forward pass that depends on the condition alone, for latents like ``x``.

        A sampler calls the UNet tens of times with the same condition; the hint encoder runs
        at the image resolution and costs about as much as the rest of a small UNet, so
        ``LatentDiffusion`` prepares it once (``guided_model_fn``) and passes the result as ``cond``.
        ``cond=None`` means every condition dropped (all zeros)."""
        cfg = self.config
        b, _, h, w = x.shape
        if cfg.conditioning == "none":
            return PreparedCondition(b, (h, w))
        if cond is None:
            f = cfg.cond_downsample
            cond = x.new_zeros(b, cfg.cond_channels, h * f, w * f)
        cond = cond.to(x.dtype)
        if self.cond_encoder is not None:
            return PreparedCondition(b, (h, w), features=self.cond_encoder(cond, (h, w)))
        return PreparedCondition(b, (h, w), pyramid=ConditionPyramid(cond))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | PreparedCondition | None = None,
        view: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        b, _, h, w = x.shape
        stride = 2**cfg.num_downsamples
        if h % stride or w % stride:
            raise ValueError(f"UNet: latent size {h}x{w} is not divisible by 2**{cfg.num_downsamples} = {stride}")

        # 1. Time (+ view) embedding, shape (B, time_emb_dim).
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        temb = self.time_mlp(timestep_embedding(t, cfg.time_emb_dim).to(x.dtype))
        if self.view_emb is not None and view is not None:
            temb = temb + self.view_emb(view.long())

        # 2. The condition, prepared here unless the caller prepared it once for many steps.
        if not isinstance(cond, PreparedCondition):
            cond = self.prepare_condition(cond, x)
        elif cond.batch != b or cond.size != (h, w):
            raise ValueError(
                f"UNet: condition prepared for batch {cond.batch} at {cond.size}, latents are {b} at {(h, w)}"
            )
        if cond.features is not None:
            x = torch.cat([x, cond.features.to(x.dtype)], dim=1)
        pyramid = cond.pyramid

        def cond_at(ref: torch.Tensor) -> torch.Tensor | None:
            return pyramid.at(ref.shape[-2:]) if pyramid is not None else None

        # 3. Down, mid, up. SPADE's condition is taken at each block's working resolution.
        out = self.conv_in(x)
        skips = []
        for down in self.downs:
            skips.append(out)
            out = down(out, temb, cond_at(out))
        for mid in self.mids:
            out = mid(out, temb, cond_at(out))
        for up in self.ups:
            skip = skips.pop()
            out = up(out, skip, temb, cond_at(skip))
        return self.conv_out(F.silu(self.norm_out(out)))

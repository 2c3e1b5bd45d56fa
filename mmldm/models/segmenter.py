"""A small segmentation UNet: image -> logits of the 4 canonical classes (0 BG, 1 LV, 2 MYO, 3 RV).

It is not part of the generator. It is the *judge* of anatomy compliance (evaluate/anatomy.py):
trained on the real training split only, it segments every generated image, and its Dice against
the mask the image was generated from says whether the image shows the anatomy it was asked for.
Its encoder also gives an in-domain feature space for a Fréchet distance (evaluate/fid.py) and for
the memorisation check (evaluate/memorisation.py).

Shape of the network, with ``channels = (c0, c1, ..., c_{L-1})`` and an H x W input::

    stem        conv 3x3, 1 -> c0                                           H x W
    encoder     level i: num_layers ResBlocks (-> c_i), kept as skip_i;     H/2^i
                then a stride-2 conv down to the next level (not after the last)
    bottleneck  the last level's output, c_{L-1} channels at H / 2^(L-1)
    decoder     level i = L-2 ... 0: upsample, concatenate skip_i,
                num_layers ResBlocks (-> c_i)
    head        GroupNorm, SiLU, conv 1x1, c0 -> 4 logits                  H x W

The stages are the DownBlock/UpBlock of models/blocks.py without attention or time embedding.
``features(x)`` is the global average of the bottleneck, ``mean_{h,w} bottleneck[:, :, h, w]``,
a (N, c_{L-1}) vector per image.

The training settings of this network live in the same dataclass (one ``segmenter`` section in a
profile); train/segmenter.py reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.data.schema import NUM_CLASSES
from mmldm.models.blocks import DownBlock, Downsample, UpBlock, group_norm
from mmldm.precision import PRECISIONS


@dataclass
class SegmenterConfig:
    """The anatomy judge: its size and how it is trained (train/segmenter.py); paper defaults."""

    channels: tuple[int, ...] = (32, 64, 128, 256)  # width per level; len(channels) - 1 downsamplings
    num_layers: int = 2  # ResBlocks per level, in the encoder and in the decoder
    norm_groups: int = 8  # GroupNorm groups (must divide every width)
    dropout: float = 0.0  # inside each ResBlock, before its second conv
    epochs: int = 30  # passes over the real training split
    batch_size: int = 16
    lr: float = 1.0e-3  # Adam
    ce_weight: float = 1.0  # loss = ce_weight * cross-entropy + dice_weight * (1 - soft Dice)
    dice_weight: float = 1.0
    augment: bool = False  # the dataset's dihedral + intensity-jitter augmentation (dataset.py)
    in_memory: bool = True  # read the training split into memory once
    num_workers: int = 0  # DataLoader worker processes
    cpu_threads: int | None = None  # torch threads while training on the CPU (None: torch's default)
    precision: str = "fp32"  # training in fp32, bf16 or auto (mmldm/precision.py: bf16 where native)
    seed: int = 0  # initialisation and data order

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"segmenter.channels must be positive widths, got {list(self.channels)}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"segmenter.norm_groups ({self.norm_groups}) must divide every width; {bad} do not")
        if self.num_layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("segmenter.num_layers, epochs and batch_size must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"segmenter.cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"segmenter.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor of the encoder, 2^(levels - 1): image sizes must divide by it."""
        return 2 ** (len(self.channels) - 1)


class Segmenter(nn.Module):
    """UNet segmenter: ``logits = model(image)``, image (N, 1, H, W) in [-1, 1] -> (N, 4, H, W)."""

    def __init__(self, cfg: SegmenterConfig | None = None, in_channels: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cfg = cfg = cfg or SegmenterConfig()
        ch, n, g = cfg.channels, cfg.num_layers, cfg.norm_groups
        stage = dict(num_layers=n, attention=False, num_heads=1, groups=g, dropout=cfg.dropout)
        self.stem = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.encoder = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], downsample=False, **stage) for i in range(len(ch))
        )
        self.downs = nn.ModuleList(Downsample(ch[i]) for i in range(len(ch) - 1))
        self.decoder = nn.ModuleList(
            UpBlock(ch[i + 1], ch[i], upsample=True, skip_channels=ch[i], **stage) for i in reversed(range(len(ch) - 1))
        )
        self.head = nn.Sequential(group_norm(ch[0], g), nn.SiLU(), nn.Conv2d(ch[0], num_classes, 1))
        self.num_features = ch[-1]  # size of features(x); torchmetrics reads this name

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.stem.in_channels:
            raise ValueError(f"segmenter expects images (N, {self.stem.in_channels}, H, W), got {tuple(x.shape)}")
        f = self.cfg.downsampling
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"segmenter: image size {tuple(x.shape[-2:])} must be divisible by {f} "
                f"(2^(len(channels) - 1) for channels {list(self.cfg.channels)})"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image -> (bottleneck (N, c_{L-1}, H/2^(L-1), W/2^(L-1)), skips at levels 0 .. L-2)."""
        self._check(x)
        h, skips = self.stem(x), []
        for i, block in enumerate(self.encoder):
            h = block(h)
            if i < len(self.downs):
                skips.append(h)
                h = self.downs[i](h)
        return h, skips

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled bottleneck, (N, c_{L-1}): the in-domain feature vector."""
        return self.encode(x)[0].mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, skips = self.encode(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            h = block(h, skip)
        return self.head(h)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Label map (N, H, W) int64: the arg-max class of every pixel."""
        return self(x).argmax(dim=1)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_c D_c`` with the soft, batch-wise Dice of class c (all 4 classes)::

        p = softmax(logits),  g = one-hot(labels)
        D_c = (2 * sum(p_c * g_c) + eps) / (sum(p_c) + sum(g_c) + eps)

    sums running over the batch and the pixels, so a class absent from one image does not make
    that image's term 0/0 (``eps`` also keeps a class absent from the whole batch finite: D_c -> 1
    as p_c -> 0).
    """
    p = logits.float().softmax(dim=1)
    g = F.one_hot(labels.long(), p.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    dice = (2 * (p * g).sum(dims) + eps) / (p.sum(dims) + g.sum(dims) + eps)
    return 1 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """``ce_weight * CE(logits, labels) + dice_weight * soft_dice_loss(logits, labels)``.

    Cross-entropy gives every pixel a gradient from the start; the Dice term weighs each class
    equally whatever its area, so the thin myocardium is not drowned by the background.
    """
    return ce_weight * F.cross_entropy(logits.float(), labels.long()) + dice_weight * soft_dice_loss(logits, labels)


CHECKPOINT_NAME = "segmenter.pt"  # the file train_segmenter writes into its folder


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """Rebuild the segmenter saved by :func:`mmldm.train.segmenter.train_segmenter`, in eval mode, on ``device``.

    A file that is not such a checkpoint (another kind of mmldm checkpoint, a truncated file,
    weights of another shape) is a :class:`~mmldm.checkpoint.CheckpointError` naming it.
    """
    from mmldm.checkpoint import CheckpointError
    from mmldm.config import from_dict
    from mmldm.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such segmenter checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and EOF errors all mean "not a whole checkpoint"
        raise CheckpointError(path, f"cannot be read as a segmenter checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") == "mmldm-checkpoint" or not {"model", "config"} <= set(ckpt):
        kind = (
            f"an mmldm {ckpt.get('stage')!r} checkpoint"
            if isinstance(ckpt, dict) and "stage" in ckpt
            else "another kind of file"
        )
        raise CheckpointError(
            path,
            f"is {kind}, not a segmenter (evaluate trains one into <run>/segmenter/"
            f"{CHECKPOINT_NAME}; leave --segmenter out to train one)",
        )
    try:
        model = Segmenter(from_dict(SegmenterConfig, ckpt["config"], where=f"{path}: config"))
        model.load_state_dict(ckpt["model"])
    except (ConfigError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            path, f"does not hold a segmenter this code can rebuild ({str(e).splitlines()[0][:200]})"
        ) from None
    return model.to(device).eval()

"""An optional perceptual loss from a *local* feature network (never downloaded).

The seed trains its VQVAE with LPIPS (Zhang et al., 2018), which downloads ImageNet VGG16 weights
at run time. mmldm never downloads anything, so the perceptual term is off unless
``VQVAEConfig.perceptual_weights`` names a file on disk, or the word ``random``.

0. ``random``: **no file at all**. A small VGG-like network whose convolutions keep their seeded
   random (Kaiming) initialisation, frozen (:class:`RandomFeatures`). Random convolutional
   features already separate textures and edges (Ulyanov et al., "Deep Image Prior", 2018; Liu
   et al., "Generic Perceptual Loss", 2021, who found randomly-weighted deep features a useful
   perceptual loss), so this is the download-free perceptual-style loss. It is cheap: four levels
   of 3x3 convolutions, 16-64 wide, on the grey image.

Three kinds of file are accepted:

1. A **TorchScript** module (``torch.jit.save``; deprecated by recent PyTorch but still loaded).
   It receives the images as they are, (B, 1, H, W) in [-1, 1], and returns one feature map or
   a list/tuple of them.
2. A **torch.export** program saved with ``torch.export.save`` to a file ending in ``.pt2``
   (TorchScript's successor), with the same input and output. Export it with dynamic batch and
   spatial dimensions, and in eval mode: an exported program cannot switch mode later.
3. A **VGG16 state dict** (``torch.save(vgg16.state_dict())``, e.g. torchvision's
   ``vgg16-397923af.pth`` copied by hand). Only the ``features.*`` convolutions are used; the
   grey image is repeated to 3 channels and shifted/scaled as LPIPS does, and features are taken
   after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (LPIPS's layers).

The distance is LPIPS without its learned per-channel weights: every feature map is unit-normalised
along channels, and the loss is the mean squared difference, summed over layers::

    loss = sum_l mean_{b,c,h,w} ( f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)| )^2

The feature network is frozen and stays in eval mode whatever ``.train()`` is called with.

Trust. A TorchScript or ``.pt2`` file is a program: loading it runs the code inside, so point
``perceptual_weights`` only at a file you made or trust (there is no published hash to pin for a
user's own network). A VGG16 state dict is loaded with ``torch.load(weights_only=True)``, which
runs no code: prefer it for a file of unknown origin.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.errors import ConfigError

# VGG16's convolutional part: numbers are conv widths, "M" a 2x2 max-pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG16_TAPS = (3, 8, 15, 22, 29)  # indices (in torchvision's `features`) of relu1_2 ... relu5_3


class VGG16Features(nn.Module):
    """VGG16's conv layers, laid out as torchvision's ``vgg16().features`` so its keys load."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, v, 3, padding=1), nn.ReLU(inplace=False)]
                prev = v
        self.features = nn.Sequential(*layers)
        # LPIPS's ScalingLayer: inputs in [-1, 1] -> ImageNet statistics.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG16_TAPS:
                taps.append(h)
            if i == _VGG16_TAPS[-1]:
                break
        return taps


class RandomFeatures(nn.Module):
    """A frozen, seeded, randomly initialised VGG-like feature network (``perceptual_weights: random``).

    Levels of two 3x3 conv + ReLU, 2x2 average pooling between levels; the features after each
    level are the taps. The same seed gives the same network on every machine (CPU RNG).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), seed: int = 1234):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.levels = nn.ModuleList()
        prev = 1
        for c in channels:
            convs = [nn.Conv2d(prev, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)]
            for conv in convs:  # Kaiming-normal weights from our own generator: reproducible
                fan_in = conv.in_channels * 9
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    conv.bias.zero_()
            self.levels.append(nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU()))
            prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        h = x
        for i, level in enumerate(self.levels):
            if i:
                h = F.avg_pool2d(h, 2)
            h = level(h)
            taps.append(h)
        return taps


def load_feature_network(path: str | Path) -> nn.Module:
    """The feature network ``path`` names: ``"random"`` or a file (see module doc)."""
    if str(path) == "random":
        return RandomFeatures()
    path = Path(path)
    hint = "set perceptual_weights to a TorchScript feature network or a VGG16 state dict, or to null"
    if not path.is_file():
        raise ConfigError(f"perceptual_weights: {path} does not exist (weights are never downloaded; {hint})")
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise ConfigError(f"perceptual_weights: {path} is not a torch.export program ({e}); {hint}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, zipfile.BadZipFile):
        pass  # not TorchScript: try a state dict
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"perceptual_weights: {path} is neither TorchScript nor a state dict ({e}); {hint}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"perceptual_weights: {path} holds a {type(state).__name__}, not a state dict; {hint}")
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    net = VGG16Features()
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"perceptual_weights: {path} is a state dict but not VGG16's ({e}); {hint}") from None
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing:
        raise ConfigError(
            f"perceptual_weights: {path} is a state dict but not VGG16's (missing {', '.join(missing[:4])}...); {hint}"
        )
    return net


class PerceptualLoss(nn.Module):
    """Distance between the frozen features of two image batches (a scalar)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.net = load_feature_network(path)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # The features stay in eval mode (frozen BatchNorm statistics, no dropout) whatever mode
        # the trainer sets; an exported (.pt2) program keeps the mode it was exported in.
        self.training = mode
        try:
            self.net.eval()
        except NotImplementedError:
            pass
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(x), self.net(y)
        if isinstance(fx, torch.Tensor):
            fx, fy = [fx], [fy]
        loss = x.new_zeros(())
        for a, b in zip(fx, fy):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            loss = loss + F.mse_loss(a, b)
        return loss

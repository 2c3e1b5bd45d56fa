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

    from mmldm.train.ldm import load_vqvae
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
from mmldm.evaluate.metrics import PAIRED_METRICS, metric_table, paired_metrics, summarise
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
def reconstruction_report(vqvae: VQVAE, store_path: str | Path, split: str = "val", batch_size: int = 64,
                          device: torch.device | str = "cpu", n_examples: int = 8) -> dict:
    """Reconstruct every slice of ``split`` in the store; per-image metrics and codebook usage.

    The model is moved to ``device`` and run in eval mode (its training mode comes back after).
    Returns::

        {"split": str, "n_images": int,
         "metrics":  {"ssim": (N,), "psnr": (N,), "nmse": (N,)}   float64, one value per slice,
         "table":    DataFrame, one row per slice: the store's metadata + the three metrics,
         "counts":   (K,) int64, how often each code index was chosen over all latent positions,
         "codebook": codebook_usage(counts),
         "latent_shape": (C, h, w),
         "examples": {"index": [n_examples positions in the split, spread evenly],
                      "real": (n, 1, H, W), "reconstruction": (n, 1, H, W)}   CPU float32 tensors}
    """
    device = torch.device(device)
    ds = CardiacSliceDataset(store_path, split=split, expand=False)
    n = len(ds)
    shown = sorted(set(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int).tolist()))
    counts = torch.zeros(vqvae.config.codebook_size, dtype=torch.long)
    values: dict[str, list] = {name: [] for name in PAIRED_METRICS}
    real_shown, recon_shown = [], []
    latent_shape = None
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
            keep = [i - start for i in shown if i in rows]
            real_shown.append(x[keep])
            recon_shown.append(recon[keep])
    finally:
        vqvae.train(was_training)
        ds.close()
    metrics = {name: np.concatenate(v) for name, v in values.items()}
    counts_np = counts.numpy()
    return {
        "split": split,
        "n_images": n,
        "metrics": metrics,
        "table": metric_table(metrics, ds.meta),
        "counts": counts_np,
        "codebook": codebook_usage(counts_np),
        "latent_shape": latent_shape,
        "examples": {"index": shown, "real": torch.cat(real_shown), "reconstruction": torch.cat(recon_shown)},
    }


def recon_summary(report: dict, **extra) -> dict:
    """The JSON-able part of a report: mean, std (ddof 1) and n of each metric, the codebook
    usage, the split and image count, plus any ``extra`` keys (e.g. profile, step, checkpoint)."""
    table = summarise(report["table"], PAIRED_METRICS)
    metrics = {row.metric: {"mean": float(row.mean), "std": float(row.std) if math.isfinite(row.std) else None,
                            "n": int(row.n)} for row in table.itertuples()}
    return {**extra, "split": report["split"], "n_images": report["n_images"], "metrics": metrics,
            "codebook": report["codebook"], "latent_shape": list(report["latent_shape"] or [])}


def save_recon_metrics(report: dict, path: str | Path, **extra) -> Path:
    """Write :func:`recon_summary` as JSON to ``path``: a temporary file, then renamed into place."""
    return atomic.write_text(path, json.dumps(recon_summary(report, **extra), indent=2, default=str) + "\n")

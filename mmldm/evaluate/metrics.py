"""Paired fidelity: how close is each generated slice to the real slice whose conditions made it.

Every held-out real slice ``x`` gives its own edges and mask to the generator, which returns
``x_hat``; the pair is compared pixel by pixel. Both are stored in [-1, 1] and are first mapped
to [0, 1] (``u = (v + 1) / 2``, clamped), the range every number below is computed on:

- **SSIM** (Wang et al. 2004), torchmetrics' implementation: an 11 x 11 Gaussian window
  (sigma 1.5), ``data_range = 1``, ``C1 = (0.01)^2``, ``C2 = (0.03)^2``, averaged over the image::

      SSIM = mean_windows [ (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) ]

- **PSNR** = ``10 log10(1 / MSE)`` with ``MSE = mean((x_hat - x)^2)`` (``data_range = 1``),
  per image; identical images give +inf.
- **NMSE** = ``sum((x_hat - x)^2) / sum(x^2)`` per image, on the [0, 1] intensities; the report
  averages it over images. 0 is a perfect copy; an all-black ``x_hat`` scores exactly 1. (A real
  slice that is all zeros would divide by zero; normalised MRI slices never are.)

All functions return *per-image* values, so a report can give mean +- std and group them by view,
phase or pathology: :func:`metric_table` joins them with the slices' metadata and
:func:`summarise` turns such a table into mean +- std per group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

PAIRED_METRICS = ("ssim", "psnr", "nmse")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: ``(v + 1) / 2``, clamped, as float32."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def _check_pair(generated: torch.Tensor, real: torch.Tensor) -> None:
    if generated.shape != real.shape or generated.ndim != 4:
        raise ValueError(
            f"expected two (N, C, H, W) batches of the same shape, got {tuple(generated.shape)} and {tuple(real.shape)}"
        )


def nmse(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-image ``sum((x_hat - x)^2) / sum(x^2)``; both inputs already in [0, 1]; returns (N,)."""
    _check_pair(generated, real)
    dims = tuple(range(1, real.ndim))
    g, r = generated.double(), real.double()
    return ((g - r) ** 2).sum(dims) / (r**2).sum(dims)


@torch.inference_mode()
def paired_metrics(generated: torch.Tensor, real: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """SSIM, PSNR and NMSE of each pair; ``generated`` and ``real`` are (N, C, H, W) in [-1, 1].

    Returns ``{"ssim": (N,), "psnr": (N,), "nmse": (N,)}`` as float64 numpy arrays. Computed in
    batches of ``batch_size`` so thousands of 256 x 256 slices fit in memory.
    """
    _check_pair(generated, real)
    out: dict[str, list] = {name: [] for name in PAIRED_METRICS}
    for i in range(0, len(real), batch_size):
        g, r = to_unit_range(generated[i : i + batch_size]), to_unit_range(real[i : i + batch_size])
        out["ssim"].append(structural_similarity_index_measure(g, r, data_range=1.0, reduction="none"))
        out["psnr"].append(peak_signal_noise_ratio(g, r, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        out["nmse"].append(nmse(g, r))
    return {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}


def metric_table(values: Mapping[str, np.ndarray], meta: Mapping[str, Iterable] | None = None) -> pd.DataFrame:
    """One row per image: the metadata columns (e.g. ``CardiacSliceDataset.meta``: subject, view,
    phase, pathology, ...) beside the metric columns (``paired_metrics``, Dice, ...)."""
    columns = {k: np.asarray(v) for k, v in (meta or {}).items() if np.ndim(v) == 1}
    table = pd.DataFrame({k: np.char.decode(v, "utf-8") if v.dtype.kind == "S" else v for k, v in columns.items()})
    metrics = pd.DataFrame({k: np.asarray(v) for k, v in values.items()})
    if len(table) and len(table) != len(metrics):
        raise ValueError(f"metric_table: {len(metrics)} metric rows but {len(table)} metadata rows")
    return pd.concat([table, metrics], axis=1) if len(table) else metrics


def summarise(
    table: pd.DataFrame, metrics: Iterable[str] | None = None, by: str | Iterable[str] | None = None, digits: int = 3
) -> pd.DataFrame:
    """Mean +- std of each metric, overall or per group; one row per (group, metric).

    Columns: the ``by`` columns, ``metric``, ``n`` (images with a value: NaN, e.g. a Dice left
    out by the empty-mask rule, is skipped), ``mean``, ``std`` (sample standard deviation,
    ``ddof = 1``; NaN when n < 2) and ``text``, e.g. ``"0.612 ± 0.081"``.

        summarise(table, ["ssim", "nmse"], by="view")
    """
    metrics = list(metrics) if metrics is not None else [c for c in table.columns if c in PAIRED_METRICS]
    by = [by] if isinstance(by, str) else list(by or [])
    long = table.melt(id_vars=by, value_vars=metrics, var_name="metric").dropna(subset=["value"])
    long["metric"] = pd.Categorical(long["metric"], categories=metrics)  # keep the order asked for
    grouped = long.groupby(by + ["metric"], observed=True, sort=True)["value"]
    out = grouped.agg(n="count", mean="mean", std="std").reset_index()
    out["metric"] = out["metric"].astype(str)
    out["text"] = [
        f"{m:.{digits}f} ± {s:.{digits}f}" if np.isfinite(s) else f"{m:.{digits}f}"
        for m, s in zip(out["mean"], out["std"])
    ]
    return out

"""Matplotlib figures shared by the notebooks and the report.

Every function returns a ``Figure`` and draws nothing it was not given; ``save_figure`` writes
it atomically (temporary name, then rename) so an interrupted run never leaves half a PNG in
a figures folder. Label colours follow the canonical order: LV red, myocardium green, RV blue.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from mmldm import atomic  # noqa: E402
from mmldm.data.schema import LABELS, Slice  # noqa: E402

LABEL_COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.3), 3: (0.25, 0.45, 1.0)}
LABEL_CMAP = ListedColormap([(0, 0, 0, 0)] + [(*LABEL_COLOURS[k], 1.0) for k in (1, 2, 3)])


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)  # the temporary name keeps the suffix: savefig picks the format from it
    return atomic.write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"), suffix=path.suffix)


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Percentile window, so raw scanner intensities and [-1, 1] images both display well."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def show_image(
    ax,
    image: np.ndarray,
    label: np.ndarray | None = None,
    alpha: float = 0.35,
    title: str | None = None,
    window: tuple[float, float] | None = None,
) -> None:
    """Grey image, optionally with the label map as a translucent colour overlay."""
    lo, hi = window or _display_range(image)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if label is not None:
        ax.imshow(np.ma.masked_equal(label, 0), cmap=LABEL_CMAP, vmin=0, vmax=3, alpha=alpha, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def slice_title(s: Slice) -> str:
    path = s.meta.get("pathology")
    return f"{s.source} {s.subject} {s.view} {s.phase} z{s.slice_index}" + (f"\n{path}" if path else "")


def overlay_grid(slices: list[Slice], cols: int = 6, overlay: bool = True, size: float = 2.0):
    """A grid of slices with (or without) their label overlay."""
    rows = max(1, int(np.ceil(len(slices) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, s in zip(axes.ravel(), slices):
        show_image(ax, s.image, s.label if overlay else None, title=slice_title(s))
    fig.tight_layout()
    return fig


def image_grid(rows: dict[str, list], size: float = 1.6, overlay: bool = False):
    """One row of pictures per name, the same layout for every kind of item:

    * a tensor (1, H, W) or (H, W), or a grey numpy array: an image in [-1, 1];
    * an RGB array (H, W, 3) in [0, 1], e.g. :func:`condition_rgb`;
    * a :class:`~mmldm.data.schema.Slice`: its image in a percentile window, titled
      ``name: view phase z``, with its label map on top when ``overlay``.

    The row's name heads its first picture. Returns the Figure."""
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * size, len(rows) * size * 1.15), squeeze=False)
    for r, (name, items) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(items):
                continue
            item = items[c]
            if isinstance(item, Slice):
                show_image(
                    ax,
                    item.image,
                    item.label if overlay else None,
                    title=f"{name}: {item.view} {item.phase} z{item.slice_index}",
                )
                continue
            if hasattr(item, "detach"):  # a torch tensor
                item = item.detach().float().cpu().numpy()
            item = np.asarray(item)
            if item.ndim == 3 and item.shape[0] == 1:
                item = item[0]
            if item.ndim == 2:
                ax.imshow(item, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            else:
                ax.imshow(item, interpolation="nearest")
            if c == 0:
                ax.set_title(name, fontsize=8, loc="left")
    fig.tight_layout(pad=0.3)
    return fig


def save_grid(rows: dict[str, list], path: str | Path) -> Path:
    """:func:`image_grid` written to ``path`` (atomically) and closed."""
    fig = image_grid(rows)
    try:
        return save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)


def condition_rgb(cond) -> np.ndarray:
    """A (5, H, W) condition (:mod:`mmldm.data.condition`) as an RGB picture (H, W, 3): label
    colours (LV red, myocardium green, RV blue), Canny edges in white on top. A dropped mask
    (all-zero one-hot) shows black; a dropped edge map shows no white."""
    cond = np.asarray(cond.detach().float().cpu() if hasattr(cond, "detach") else cond, np.float32)
    label = cond[1:].argmax(0)
    has_mask = cond[1:].sum(0) > 0
    rgb = LABEL_CMAP(label)[..., :3] * has_mask[..., None]
    rgb[cond[0] > 0.5] = 1.0
    return rgb


def label_legend(ax) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=LABEL_COLOURS[k], label=LABELS[k]) for k in (1, 2, 3)],
        loc="lower right",
        fontsize=7,
        framealpha=0.6,
    )


def condition_panels(image: np.ndarray, edge: np.ndarray, label: np.ndarray, size: float = 2.2):
    """Image | Canny edges | the four one-hot channels: what the diffusion model is given."""
    onehot = [(label == k).astype(np.float32) for k in range(len(LABELS))]
    panels = [("image", image, "gray"), ("Canny edges", edge, "gray")]
    panels += [(f"one-hot: {LABELS[k]}", onehot[k], "magma") for k in range(len(LABELS))]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * size, size * 1.1))
    for ax, (title, arr, cmap) in zip(axes, panels):
        ax.imshow(arr, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def edge_comparison(image: np.ndarray, variants: dict[str, np.ndarray], size: float = 2.6):
    """The image, then one edge map per variant (e.g. Canny with and without noise reduction)."""
    fig, axes = plt.subplots(1, 1 + len(variants), figsize=((1 + len(variants)) * size, size * 1.1))
    show_image(axes[0], image, title="image")
    for ax, (name, edge) in zip(axes[1:], variants.items()):
        ax.imshow(edge, cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}\n{int(edge.sum())} edge pixels", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def intensity_histograms(volumes, by: str = "source", bins: int = 80, size: tuple = (10, 3.2)):
    """Raw intensity histograms per volume, coloured by a metadata key (e.g. vendor).

    Left: raw scanner values (their ranges differ by vendor and dataset, which is why
    preprocessing normalises per volume); right: each volume divided by its 99th percentile.
    """
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=size)
    groups = sorted({str(v.case.meta.get(by, getattr(v.case, by, "?"))) for v in volumes})
    palette = dict(zip(groups, sns.color_palette("tab10", len(groups))))
    for v in volumes:
        key = str(v.case.meta.get(by, getattr(v.case, by, "?")))
        x = v.image.ravel()
        p99 = np.percentile(x, 99) or 1.0
        for ax, data in ((axes[0], x), (axes[1], x / p99)):
            hist, edges = np.histogram(data, bins=bins, range=(0, np.percentile(data, 99.9)), density=True)
            ax.plot(0.5 * (edges[1:] + edges[:-1]), hist, color=palette[key], alpha=0.6, lw=1)
    axes[0].set(xlabel="raw intensity", ylabel="density", title="raw")
    axes[1].set(xlabel="intensity / 99th percentile", title="per-volume scaled")
    from matplotlib.lines import Line2D

    axes[1].legend([Line2D([], [], color=palette[g]) for g in groups], groups, title=by, fontsize=7)
    fig.tight_layout()
    return fig


def label_areas(table, by: str = "phase", size: tuple = (10, 3.2)):
    """Box plots of LV, myocardium and RV area (mm²) per labelled slice, split by ``by``."""
    import seaborn as sns

    cols = [f"{LABELS[k]}_mm2" for k in (1, 2, 3)]
    long = table[table["labelled"]].melt(id_vars=[by], value_vars=cols, var_name="structure", value_name="area_mm2")
    long["structure"] = long["structure"].str.removesuffix("_mm2")
    fig, ax = plt.subplots(figsize=size)
    sns.boxplot(data=long, x="structure", y="area_mm2", hue=by, ax=ax, fliersize=1)
    ax.set(ylabel="area per slice (mm²)", xlabel="")
    fig.tight_layout()
    return fig


def codebook_histogram(counts, size: tuple = (10, 3.0)):
    """How often each VQ-VAE code was chosen (``counts``, one entry per code index).

    Left: counts per code index (which codes are used at all); right: the codes sorted from most
    to least used, as a fraction of all latent positions on a log scale (a steep drop means a
    few codes do most of the work). The title gives the codes used and the perplexity.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum() or 1.0
    p = counts[counts > 0] / total
    perplexity = float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0
    fig, (ax, ax_rank) = plt.subplots(1, 2, figsize=size, gridspec_kw={"width_ratios": [3, 2]})
    ax.stairs(counts, np.arange(len(counts) + 1), fill=True, color="tab:blue")
    ax.set(
        xlabel="code index",
        ylabel="latent positions",
        xlim=(0, len(counts)),
        title=f"{int((counts > 0).sum())} of {len(counts)} codes used ({(counts > 0).mean():.1%}), "
        f"perplexity {perplexity:.1f}",
    )
    ranked = np.sort(counts)[::-1] / total
    ax_rank.plot(np.arange(1, len(ranked) + 1), np.where(ranked > 0, ranked, np.nan), color="tab:blue", lw=1.2)
    ax_rank.set(
        xlabel="code rank (most used first)",
        ylabel="fraction of positions",
        yscale="log",
        xscale="log" if len(ranked) > 100 else "linear",
        title="usage by rank",
    )
    ax_rank.grid(alpha=0.3)
    fig.tight_layout()
    return fig

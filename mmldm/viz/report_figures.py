"""The evaluation figures: what notebook 05 shows and ``report/figures`` keeps.

    generation_grid(cond, {"generated": g}, real)  condition -> generated -> real, a column per slice
                                                   (or one row per variant for the same slices)
    trajectory_strip(ldm, trajectory)              the sampler's x_t and x0 estimate at a few steps
                                                   (LatentDiffusion.trajectory), noisy (left) to clean (right)
    variant_bars(metrics)                          SSIM / NMSE / Dice / s per image of each variant
    group_boxplots(table)                          per-image SSIM / NMSE / Dice by view, phase, pathology
    memorisation_histogram(ratios)                 d_train / d_heldout of every generated image
    compute_plot(rows)                             SSIM, NMSE, Dice against training time
    radial_spectra(spectrum)                       power against spatial frequency: generated, real,
                                                   VQ-VAE reconstructions (metrics.json's realism.spectrum)
    shuffled_real_vs_generated(real, generated)    generated and real slices shuffled in one grid, with
                                                   the key (which cells are generated) printed below

Each function returns a ``Figure`` and saves nothing; callers
save with :func:`mmldm.viz.plots.save_figure` (atomic) under the names in :data:`FIGURES`, the
names the report (``mmldm/report.py``) looks for. Images are (N, 1, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import FuncFormatter

from mmldm.data.schema import LABELS
from mmldm.formatting import finite_float, mean_std_entry
from mmldm.viz.plots import LABEL_COLOURS, condition_rgb, plt, show_image

# File names (in the figures folder) of the figures notebook 05 writes, by role.
FIGURES = {
    "grid": "05_generated_vs_real.png",
    "examples": "05_variant_examples.png",
    "trajectory": "05_trajectory.png",
    "variants": "05_variants.png",
    "groups": "05_groups.png",
    "memorisation": "05_memorisation.png",
    "compute": "05_quality_vs_compute.png",
    "spectrum": "05_spectrum.png",
    "shuffled": "05_shuffled_real_vs_generated.png",
}

UNIT = (-1.0, 1.0)  # display window of images in [-1, 1]


def _image(x) -> np.ndarray:
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    return x.reshape(x.shape[-2], x.shape[-1])


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def generation_grid(
    cond: torch.Tensor,
    generated: Mapping[str, torch.Tensor],
    real: torch.Tensor,
    label: torch.Tensor | None = None,
    n: int = 6,
    overlay: bool = True,
    segmentation: torch.Tensor | None = None,
    size: float = 1.7,
):
    """Columns: ``n`` slices spread over the set. Rows: the condition (label colours, Canny edges
    in white), each generated set, the first generated set with the condition mask over it (does
    the anatomy land where it was asked?), with the segmenter's labels of it (what the anatomy
    Dice scores) when ``segmentation`` is given, and the real slice the condition came from."""
    total = len(real)
    if total == 0:
        raise ValueError("generation_grid: no images")
    for name, g in generated.items():
        if len(g) != total:
            raise ValueError(f"generation_grid: {name!r} has {len(g)} images, the real set {total}")
    idx = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))
    if label is None:
        label = cond[:, 1:].argmax(1)
    rows: list[tuple[str, list]] = [("condition: mask + edges", [condition_rgb(cond[i]) for i in idx])]
    for name, g in generated.items():
        rows.append((name, [(_image(g[i]), None) for i in idx]))
    if overlay and generated:
        first_name, first = next(iter(generated.items()))
        rows.append((f"{first_name} + mask", [(_image(first[i]), label[i].cpu().numpy()) for i in idx]))
        if segmentation is not None:
            rows.append(("segmenter's labels of it", [(_image(first[i]), segmentation[i].cpu().numpy()) for i in idx]))
    rows.append(("real", [(_image(real[i]), None) for i in idx]))

    fig, axes = plt.subplots(len(rows), len(idx), figsize=(len(idx) * size, len(rows) * size * 1.08), squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c, item in enumerate(items):
            ax = axes[r, c]
            if r == 0:
                ax.imshow(item, interpolation="nearest")
                ax.set_axis_off()
            else:
                show_image(ax, item[0], item[1], alpha=0.3, window=UNIT)
            if c == 0:
                ax.set_title(name, fontsize=8, loc="left")
    from matplotlib.patches import Patch

    axes[0, -1].legend(
        handles=[Patch(color=LABEL_COLOURS[k], label=LABELS[k]) for k in (1, 2, 3)]
        + [Patch(facecolor="white", edgecolor="grey", label="Canny edges")],
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(pad=0.3)
    return fig


def trajectory_strip(
    ldm,
    trajectory,
    cond: torch.Tensor | None = None,
    real: torch.Tensor | None = None,
    index: int = 0,
    size: float = 1.6,
):
    """One slice's denoising, noisy (left) to clean (right), from a
    :class:`~mmldm.inference.Trajectory` of ``ldm`` (:meth:`~mmldm.inference.LatentDiffusion.trajectory`):
    top row the decoded sample x_t entering each kept step, bottom row the model's estimate of the
    clean image there; the condition, the final image and the real slice frame them."""
    x_t = ldm.decode(torch.stack([z[index] for z in trajectory.x_t]))
    x0_hat = ldm.decode(torch.stack([z[index] for z in trajectory.x0_hat]))
    steps, ts = trajectory.steps, trajectory.timesteps
    lead = cond is not None
    cols = lead + len(steps) + 1 + (real is not None)
    fig, axes = plt.subplots(2, cols, figsize=(cols * size, 2 * size * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if lead:
        axes[0, 0].imshow(condition_rgb(cond[index]), interpolation="nearest")
        axes[0, 0].set_title("condition", fontsize=8)
        axes[1, 0].text(
            0.95,
            0.5,
            "top: sample x_t\nentering the step\n\nbottom: the model's\nestimate of x0",
            ha="right",
            va="center",
            fontsize=8,
            transform=axes[1, 0].transAxes,
        )
    for j, (i, t) in enumerate(zip(steps, ts)):
        show_image(axes[0, lead + j], _image(x_t[j]), window=UNIT, title=f"step {i}, t = {t}")
        show_image(axes[1, lead + j], _image(x0_hat[j]), window=UNIT, title=f"x0 estimate, t = {t}")
    show_image(axes[0, lead + len(steps)], _image(trajectory.images[index]), window=UNIT, title="final image")
    if real is not None:
        show_image(axes[0, cols - 1], _image(real[index]), window=UNIT, title="real slice")
    sampler = trajectory.sampler
    fig.suptitle(
        f"denoising with {sampler.name} {sampler.num_inference_steps} steps, guidance {trajectory.guidance.mode} "
        "(latents decoded by the VQ-VAE)",
        fontsize=9,
    )
    fig.tight_layout(pad=0.4, rect=(0, 0, 1, 0.94))
    return fig


# ---------------------------------------------------------------------------------------------
# Metric plots
# ---------------------------------------------------------------------------------------------

# (key in a variant's entry, panel title) for the per-variant bars.
VARIANT_PANELS = (
    ("ssim", "SSIM ↑"),
    ("nmse", "NMSE ↓"),
    ("dice", "anatomy Dice, fg ↑"),
    ("s_per_image", "s / image ↓"),
)


def _mean_std(entry) -> tuple[float, float]:
    """(mean, std) of a variant's entry for a bar, NaN where missing; a Dice block's is its mean_fg."""
    if isinstance(entry, Mapping) and "mean_fg" in entry:
        return _num(entry["mean_fg"]), math.nan
    return mean_std_entry(entry, math.nan)


def _num(x) -> float:
    """A value to plot: NaN (drawn as nothing) where missing or not finite."""
    return finite_float(x, math.nan)


def variant_bars(metrics: Mapping, size: tuple = (13, 3.2)):
    """One panel per metric, one bar per sampler/condition variant (± std over images where the
    JSON has it); the main variant is darker. Dashed red lines: the seed's published SSIM / NMSE
    and the segmenter's Dice on real held-out images (the ceiling)."""
    import seaborn as sns

    variants = metrics.get("variants") or {}
    if not variants:
        raise ValueError("variant_bars: metrics has no variants")
    main = metrics.get("main")
    names = list(variants)
    published = metrics.get("published") or {}
    ceiling = ((metrics.get("ceiling") or {}).get("dice") or {}).get("mean_fg")
    refs = {
        "ssim": (published.get("ssim"), "seed, published"),
        "nmse": (published.get("nmse"), "seed, published"),
        "dice": (ceiling, "real images (ceiling)"),
    }
    fig, axes = plt.subplots(1, len(VARIANT_PANELS), figsize=size)
    palette = sns.color_palette("crest", 2)
    for ax, (key, title) in zip(axes, VARIANT_PANELS):
        stats = [_mean_std(variants[n].get(key)) for n in names]
        df = pd.DataFrame({"variant": names, "value": [s[0] for s in stats]})
        sns.barplot(
            data=df,
            x="value",
            y="variant",
            hue="variant",
            ax=ax,
            legend=False,
            palette={n: palette[1] if n == main else palette[0] for n in names},
        )
        err = np.array([s[1] for s in stats])
        if np.isfinite(err).any():
            err = np.nan_to_num(err)
            lower = np.minimum(err, np.clip(df["value"].to_numpy(), 0, None))  # no bar below 0
            ax.errorbar(
                df["value"], np.arange(len(names)), xerr=[lower, err], fmt="none", ecolor="k", elinewidth=0.8, capsize=2
            )
        ref, ref_label = refs.get(key, (None, ""))
        if np.isfinite(_num(ref)):
            ax.axvline(_num(ref), color="tab:red", ls="--", lw=1, label=ref_label)
            ax.legend(fontsize=7, loc="lower right", framealpha=0.8)
        ax.set(title=title, xlabel="", ylabel="")
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(f"samplers and conditions (darker: the main variant, {main}; bars ± std over images)", fontsize=9)
    fig.tight_layout()
    return fig


GROUP_METRICS = (("ssim", "SSIM"), ("nmse", "NMSE"), ("dice_fg", "Dice (fg)"))


def group_boxplots(table: pd.DataFrame, by: Sequence[str] = ("view", "phase", "pathology"), size: float = 3.0):
    """Per-image metrics (rows: SSIM, NMSE, Dice where present) split by each metadata column of
    ``by`` that the table has (columns); each box is one group, its points the images."""
    import seaborn as sns

    metrics = [(k, t) for k, t in GROUP_METRICS if k in table.columns and table[k].notna().any()]
    groups = [g for g in by if g in table.columns and table[g].notna().any()]
    if not metrics or not groups:
        raise ValueError(
            f"group_boxplots: the table needs one of {[k for k, _ in GROUP_METRICS]} and one of "
            f"{list(by)} as columns; it has {list(table.columns)}"
        )
    fig, axes = plt.subplots(
        len(metrics), len(groups), figsize=(len(groups) * size + 1, len(metrics) * size * 0.8), squeeze=False
    )
    for r, (key, title) in enumerate(metrics):
        for c, group in enumerate(groups):
            ax = axes[r, c]
            data = table[[group, key]].dropna().astype({group: str})
            order = sorted(data[group].unique())
            sns.boxplot(
                data=data, x=group, y=key, order=order, ax=ax, color="lightsteelblue", fliersize=0, linewidth=0.8
            )
            sns.stripplot(data=data, x=group, y=key, order=order, ax=ax, color="k", size=2, alpha=0.5, jitter=0.2)
            counts = data[group].value_counts()
            ax.set_xticks(range(len(order)), [f"{g}\n(n={counts[g]})" for g in order], fontsize=7)
            ax.set(xlabel=group if r == len(metrics) - 1 else "", ylabel=title if c == 0 else "")
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def memorisation_histogram(ratios, baseline=None, bins: int = 30, size: tuple = (6.5, 3.2), space: str = "pixels"):
    """Histogram of d_train / d_heldout per generated image (see evaluate/memorisation.py): near 1
    generalises, near 0 copies a training image. ``baseline``: the same ratios of real held-out
    slices, drawn as an outline. Infinite and NaN ratios are counted, not drawn."""
    r = np.asarray([np.nan if v is None else v for v in ratios], dtype=np.float64)
    finite = r[np.isfinite(r)]
    base = None if baseline is None else np.asarray([np.nan if v is None else v for v in baseline], dtype=np.float64)
    base = None if base is None else base[np.isfinite(base)]
    fig, ax = plt.subplots(figsize=size)
    if finite.size:
        both = finite if base is None or not base.size else np.concatenate([finite, base])
        hi = max(1.5, float(np.percentile(both, 99.5)) * 1.05)
        ax.hist(np.clip(finite, 0, hi), bins=bins, range=(0, hi), color="tab:blue", alpha=0.7, label="generated images")
        if base is not None and base.size:
            ax.hist(
                np.clip(base, 0, hi),
                bins=bins,
                range=(0, hi),
                histtype="step",
                color="tab:orange",
                lw=1.5,
                label=f"real held-out slices (baseline), median {np.median(base):.2f}",
            )
        ax.axvline(float(np.median(finite)), color="k", lw=1.2, label=f"median of generated {np.median(finite):.2f}")
    ax.axvline(1.0, color="tab:green", ls="--", lw=1, label="1: as near the training set as held-out data")
    dropped = r.size - finite.size
    ax.set(
        xlabel=f"d(nearest training) / d(nearest held-out), {space}",
        ylabel="images",
        title=f"memorisation: {finite.size} images" + (f" ({dropped} not finite, not drawn)" if dropped else ""),
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


COMPUTE_PANELS = (
    ("ssim", "SSIM (higher better)"),
    ("nmse", "NMSE (lower better)"),
    ("dice_fg", "anatomy Dice, fg (higher better)"),
)


# Quality against compute, the whole recipe (benchmarks/compute_sweep.py rows, with cpu_minutes):
# (key, title, second key drawn dashed with its label, reference key or value drawn dotted, its label)
SWEEP_PANELS = (
    ("c2st", "C2ST accuracy (0.5: cannot tell; lower better)", None, None, "c2st_floor", "real vs real (floor)"),
    ("fid_ratio", "FID / real-vs-real (1: as real; lower better)", "seg_fid_ratio", "segmenter features",
     1.0, "1: as real"),
    ("dice_fg", "mask-only Dice, fg (higher better)", None, None, "real_dice_fg", "real images (ceiling)"),
)  # fmt: skip


def sweep_plot(rows: Sequence[Mapping], size: tuple = (11, 3.4)):
    """Quality against compute for the whole recipe (VQ-VAE + LDM at ¼×, 1×, 4× its budget, rows
    of ``benchmarks/compute_sweep.py``): the C2ST accuracy with its real-vs-real floor, the FID
    ratio in Inception (solid) and segmenter-feature space (dashed), and the mask-only Dice with
    its real-image ceiling, each against training CPU minutes (log scale), each point labelled
    with its budget multiple."""
    df = pd.DataFrame(list(rows))
    need = {"cpu_minutes", "c2st", "fid_ratio", "dice_fg"}
    if df.empty or not need <= set(df.columns):
        raise ValueError(f"sweep_plot: rows need {sorted(need)}; got columns {list(df.columns)}")
    df = df.sort_values("cpu_minutes")
    if "recipe" not in df.columns:
        df["recipe"] = "default"
    df["recipe"] = df["recipe"].fillna("default")
    groups = list(df.groupby("recipe", sort=False))
    markers = "osD^v"
    fig, axes = plt.subplots(1, len(SWEEP_PANELS), figsize=size)
    for ax, (key, title, second, second_label, ref, ref_label) in zip(axes, SWEEP_PANELS):
        for g, (recipe, part) in enumerate(groups):
            x, m = part["cpu_minutes"].astype(float), markers[g % len(markers)]
            name = "" if len(groups) == 1 else f"{recipe}: "
            ax.plot(x, part[key].astype(float), f"{m}-", color="tab:red", alpha=1 - 0.3 * g,
                    label=(f"{name}Inception" if second else name.rstrip(": ")) or None)  # fmt: skip
            if second and second in part.columns:
                ax.plot(x, part[second].astype(float), f"{m}--", color="tab:purple", alpha=1 - 0.3 * g,
                        label=f"{name}{second_label}")  # fmt: skip
            for xi, yi, scale in zip(x, part[key].astype(float), part.get("scale", [None] * len(part))):
                if scale is not None and np.isfinite(yi):
                    ax.annotate(f"{float(scale):g}×", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        x = df["cpu_minutes"].astype(float)
        if isinstance(ref, str) and ref in df.columns:
            ax.plot(x, df[ref].astype(float), ":", color="k", label=ref_label)
        elif isinstance(ref, float):
            ax.axhline(ref, ls=":", color="k", label=ref_label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlabel="training CPU minutes (VQ-VAE + LDM)", title=title)
        ax.title.set_fontsize(8)
        ax.margins(x=0.15, y=0.15)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cpu = str(df["cpu"].iloc[0]) if "cpu" in df.columns else "CPU not recorded"
    fig.suptitle(f"the whole recipe at several budgets ({cpu}; labels: multiple of the default)", fontsize=9)
    fig.tight_layout()
    return fig


def compute_plot(rows: Sequence[Mapping], size: tuple = (11, 3.2)):
    """Quality against compute: SSIM, NMSE and Dice of models trained for more steps
    (rows with ``steps``, ``train_s`` and the metrics). Rows whose ``variant`` names differ only
    in the step multiplier (``benchmarks/convergence.py``'s ``ours``, ``ours*2``, ``ours*4``) are
    one recipe and share a line. Rows of the whole-recipe sweep (``cpu_minutes``) go to
    :func:`sweep_plot`."""
    if rows and all("cpu_minutes" in r for r in rows):
        return sweep_plot(rows)
    df = pd.DataFrame(list(rows))
    need = {"steps", "train_s"}
    if df.empty or not need <= set(df.columns):
        raise ValueError(f"compute_plot: rows need {sorted(need)} and metrics; got columns {list(df.columns)}")
    # x: optimiser steps (the compute a run was given); the measured wall time labels each point,
    # since on a shared machine wall time also measures what else was running.
    df = df.sort_values("steps")
    df["minutes"] = df["train_s"].astype(float) / 60
    if "variant" in df.columns:
        df["recipe"] = [re.sub(r"\*[\d.]+", "", str(v)) for v in df["variant"]]
    lines = df.groupby("recipe") if "recipe" in df.columns else [("", df)]
    fig, axes = plt.subplots(1, len(COMPUTE_PANELS), figsize=size)
    for ax, (key, title) in zip(axes, COMPUTE_PANELS):
        if key not in df.columns:
            ax.set_axis_off()
            ax.set_title(f"{title}: not measured", fontsize=8)
            continue
        for name, part in lines:
            ax.plot(part["steps"].astype(float), part[key].astype(float), "o-", label=name or None)
            for _, row in part.iterrows():
                label = f"{row['minutes']:.0f} min" if np.isfinite(row["minutes"]) else ""
                ax.annotate(
                    label, (float(row["steps"]), float(row[key])), fontsize=7, textcoords="offset points", xytext=(3, 3)
                )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="LDM optimiser steps", title=title)
        ax.margins(x=0.15, y=0.15)
        ax.grid(alpha=0.3)
        if "recipe" in df.columns:
            ax.legend(fontsize=7)
    fig.suptitle("quality against compute (labels: measured training wall time)", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Realism: texture and a look-alike test
# ---------------------------------------------------------------------------------------------

# (key in realism.spectrum's "spectra", legend label, style)
SPECTRUM_CURVES = (
    ("heldout", "real held-out", dict(color="k", lw=1.8)),
    ("train", "real training", dict(color="0.5", lw=1.2, ls="--")),
    ("generated", "generated", dict(color="tab:red", lw=1.5)),
    ("reconstruction", "VQ-VAE reconstruction of held-out", dict(color="tab:blue", lw=1.3, ls="-.")),
)


def radial_spectra(spectrum: Mapping, size: tuple = (11, 3.6)):
    """Radially averaged power spectra (see evaluate/spectrum.py) of the sets in ``spectrum``
    (metrics.json's ``realism.spectrum``: ``frequency``, ``spectra`` {name: mean power}, ``cutoff``,
    ``hf_fraction``, ``n``, ``reference``). Left: log power against cycles/pixel, each legend entry
    with its share of power above the cutoff (dotted line). Right: each spectrum over the
    reference's (real held-out), where 1 is "as much power at this frequency as real": a curve
    falling below 1 to the right is a set smoother than real images. The DC ring (0, no power
    after mean subtraction) is not drawn."""
    freqs = np.asarray(spectrum.get("frequency") or [], dtype=np.float64)
    spectra = {
        k: np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
        for k, vals in (spectrum.get("spectra") or {}).items()
    }
    if freqs.size < 2 or not spectra:
        raise ValueError("radial_spectra: the spectrum block needs 'frequency' and 'spectra'")
    reference = spectrum.get("reference", "heldout")
    fractions, counts, cutoff = spectrum.get("hf_fraction") or {}, spectrum.get("n") or {}, spectrum.get("cutoff")
    curves = [c for c in SPECTRUM_CURVES if c[0] in spectra] + [
        (k, k, {}) for k in spectra if k not in {c[0] for c in SPECTRUM_CURVES}
    ]
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=size)
    f = freqs[1:]
    ref = spectra.get(reference)
    for key, label, style in curves:
        power = spectra[key][1:]
        share = _num(fractions.get(key))
        text = f"{label} (n={counts.get(key, '?')})" + (
            f", {100 * share:.1f} % above cutoff" if np.isfinite(share) else ""
        )
        ax.semilogy(f, np.where(power > 0, power, np.nan), label=text, **style)
        if ref is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                ax_ratio.plot(f, power / ref[1:], label=label, **style)
    for a in (ax, ax_ratio):
        if np.isfinite(_num(cutoff)):
            a.axvline(_num(cutoff), color="tab:green", ls=":", lw=1)
        a.set_xlabel("spatial frequency (cycles/pixel)")
        a.grid(alpha=0.3, which="both")
        a.set_xlim(0, float(freqs[-1]))
    ax.set(ylabel="mean power (log scale)", title="radially averaged power spectrum")
    ax.legend(fontsize=7)
    ax_ratio.axhline(1.0, color="k", lw=0.8)
    ax_ratio.set_yscale("log")
    ref_label = next((label for key, label, _ in curves if key == reference), reference)
    ax_ratio.set(ylabel=f"power / {ref_label}", title=f"each over the {ref_label} slices' (1: as in real)")
    fig.tight_layout()
    return fig


def shuffled_real_vs_generated(
    real: torch.Tensor,
    generated: torch.Tensor,
    n: int = 16,
    seed: int = 0,
    cols: int = 8,
    size: float = 1.3,
    show_key: bool = True,
):
    """A look-alike test: ``n`` generated and ``n`` real slices (fewer when fewer are given) in one
    shuffled grid of ``cols`` columns (4 x 8 for n = 16), cells numbered 1, 2, ... row by row, and
    the key, the numbers of the generated cells, printed below the grid when ``show_key`` (the
    report sets it False and prints the key on its last page, so a reader can try it blind). When the two sets are
    paired (each generated image made from a real slice's conditions) and large enough, the real
    slices shown are *other* slices than the generated ones' sources, so no pair sits side by side.

    Returns ``(figure, key)``, ``key`` the sorted list of generated cell numbers. Seeded by ``seed``.
    """
    k = min(n, len(real), len(generated))
    if k < 1:
        raise ValueError("shuffled_real_vs_generated: no images")
    rng = np.random.default_rng(seed)
    picks = rng.permutation(max(len(real), len(generated)))
    gen_idx = [int(i) for i in picks if i < len(generated)][:k]
    sources = set(gen_idx)
    others = [int(i) for i in picks if i < len(real) and i not in sources]
    real_idx = (others + [i for i in gen_idx if i < len(real)])[:k]  # other slices first, the sources if needed
    images = [generated[i] for i in gen_idx] + [real[i] for i in real_idx]
    is_generated = [True] * len(gen_idx) + [False] * len(real_idx)
    order = rng.permutation(len(images))
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.2 + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    key = []
    for cell, j in enumerate(order, start=1):
        show_image(axes.ravel()[cell - 1], _image(images[j]), window=UNIT, title=str(cell))
        if is_generated[j]:
            key.append(cell)
    fig.suptitle(
        f"{len(gen_idx)} generated and {len(real_idx)} real held-out slices, shuffled: which are which?", fontsize=9
    )
    if show_key:
        fig.tight_layout(rect=(0, 0.05, 1, 0.95))
        fig.text(0.5, 0.01, "key, generated cells: " + ", ".join(map(str, key)), ha="center", va="bottom", fontsize=8)
    else:
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig, key

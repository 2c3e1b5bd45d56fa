"""The report: ``report.md`` and a copy of ``metrics.json``, built only from measured inputs.

    from mmldm.report import write_report
    write_report(cfg, "runs/phantom_laptop/evaluation/metrics.json")   # -> report/report.md

Inputs: the ``metrics.json`` that :func:`mmldm.evaluate.run.evaluate` writes (schema in that
module), the run's :class:`~mmldm.config.Config` (architecture and training settings), and,
when present, ``ablation.json`` (the training-recipe ablation of ``benchmarks/convergence.py``:
rows of variant, SSIM, NMSE, Dice, train_s ...) and ``compute.json`` (quality against training
time). With the evaluation's ``samples.pt`` and per-image CSV it also draws the evaluation
figures (:mod:`mmldm.viz.report_figures`) into the figures folder; figures that other notebooks
left there (data overlays, edge noise reduction, reconstructions, loss curves) are linked when
they exist.

Every number in the report comes from those inputs; the prose around them is fixed. Each results
table says which data, split and profile its numbers come from, and the seed's published figures
(256x256 M&Ms-2) are shown beside ours, never mixed with them.

Where it goes: the folder above the profile's figures folder (``report/`` for the paper and
laptop profiles, the run folder for smoke, so a smoke run never overwrites the committed report).
Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from mmldm import atomic
from mmldm.errors import DataError
from mmldm.formatting import finite_float, fmt, fmt_count, fmt_ms, fmt_pct

REQUIRED = ("meta", "published", "variants", "main")
DATASET_NAMES = {"acdc": "ACDC", "mnms2": "M&Ms-2", "mnms": "M&Ms", "phantom": "the synthetic phantom"}
GROUPS = ("view", "phase", "pathology")
PAIRED = (("ssim", "SSIM ↑"), ("psnr", "PSNR (dB) ↑"), ("nmse", "NMSE ↓"))

# Figures other notebooks leave in the figures folder: (file name, caption). "{profile}" is filled in.
DATA_FIGURES = (
    ("01_phantom_vs_real.png", "The phantom beside real MRI (notebook 01)."),
    ("01_overlay_grid.png", "Slices with their label maps (LV red, myocardium green, RV blue; notebook 01)."),
    ("01_intensity_histograms.png", "Raw intensities per volume, before and after per-volume scaling (notebook 01)."),
    ("01_label_areas.png", "Structure areas per slice (notebook 01)."),
    ("02_canny_noise_reduction.png", "Canny edge maps with and without noise reduction (notebook 02)."),
    ("02_condition_channels.png", "The condition the diffusion model is given: edges and one-hot labels (notebook 02)."),
    ("02_dataset_samples.png", "Training items as the Dataset serves them (notebook 02)."),
)
TRAINING_FIGURES = (
    ("vqvae_loss_{profile}.png", "VQ-VAE loss curves and learning rate."),
    ("03_reconstructions.png", "Validation slices, their VQ-VAE reconstructions and the difference (notebook 03)."),
    ("03_codebook_usage.png", "Codebook usage over the validation latents (notebook 03)."),
    ("ldm_loss_{profile}.png", "Latent diffusion loss and learning rate."),
    ("04_samples.png", "Samples for validation conditions after training: mask + edges and mask only (notebook 04)."),
)


# The evaluation figures' file names (mmldm.viz.report_figures.FIGURES, without importing matplotlib).
FIGURE_NAMES = {"spectrum": "05_spectrum.png", "shuffled": "05_shuffled_real_vs_generated.png"}


# ---------------------------------------------------------------------------------------------
# Reading the inputs
# ---------------------------------------------------------------------------------------------


def report_dir(cfg) -> Path:
    """Where a profile's report goes: the folder above its figures folder."""
    return Path(cfg.figures_dir).parent


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None


def read_metrics(path: str | Path) -> dict:
    """``metrics.json``, checked for the sections the report needs."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise DataError(path, "expected a JSON object at the top level")
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise DataError(path, f"missing section(s) {', '.join(missing)} (written by mmldm.evaluate.run.evaluate?)")
    if not isinstance(metrics["variants"], dict) or not metrics["variants"]:
        raise DataError(path, "'variants' must be a non-empty object")
    if metrics["main"] not in metrics["variants"]:
        raise DataError(path, f"'main' names {metrics['main']!r}, which is not one of the variants "
                              f"({', '.join(metrics['variants'])})")
    return metrics


def read_rows(path: str | Path | None) -> tuple[list[dict], dict] | None:
    """An optional table file (``ablation.json``, ``compute.json``): None when ``path`` is None or
    absent. Accepts ``{name: row}`` (``benchmarks/convergence.py``'s format), a list of rows, or
    ``{"meta": {...}, "rows": [...]}``. Returns ``(rows, meta)``; each row gets ``variant``."""
    if path is None or not Path(path).exists():
        return None
    data = read_json(path)
    meta: dict = {}
    if isinstance(data, dict) and "rows" in data:
        meta, data = data.get("meta") or {}, data["rows"]
    if isinstance(data, dict):
        rows = [{"variant": k, **v} for k, v in data.items() if isinstance(v, dict) and k != "meta"]
        meta = meta or (data.get("meta") if isinstance(data.get("meta"), dict) else {})
    elif isinstance(data, list):
        if not all(isinstance(r, dict) for r in data):
            raise DataError(path, "every row must be a JSON object")
        rows = [dict(r) for r in data]
    else:
        raise DataError(path, "expected an object of rows or a list of rows")
    return rows, meta


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


_NUMERIC = re.compile(r"^(n/a|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( ± [\d,.e+-]+)?( %)?( of [\d,]+)?|)$")


def table(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A Markdown table; columns whose cells are all numbers (or n/a) are right-aligned."""
    header = list(header)
    rows = [[str(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(_NUMERIC.match(r[j]) for r in rows if j < len(r)) for j in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _shown_path(path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    from mmldm.config import REPO_ROOT

    p = Path(str(path))
    try:
        return p.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class _Ctx:
    """What every section needs: the inputs and where the figures are relative to the report."""

    def __init__(self, metrics, cfg, figures_dir, out_dir, ablation, compute, inputs):
        self.m, self.cfg = metrics, cfg
        self.meta = metrics.get("meta") or {}
        self.figures_dir = Path(figures_dir) if figures_dir is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.ablation, self.compute, self.inputs = ablation, compute, inputs
        self.profile = self.meta.get("profile") or getattr(cfg, "profile", None) or "?"
        self.main = metrics["main"]
        self.variant = metrics["variants"][self.main]

    @property
    def sources(self) -> list[str]:
        """The held-out slices' datasets (``meta.source``, e.g. ``acdc`` or ``acdc+mnms2``)."""
        src = str(self.meta.get("source") or "")
        if not src and self.cfg is not None and self.cfg.paths.is_phantom:
            return ["phantom"]
        return [s for s in src.split("+") if s]

    @property
    def phantom(self) -> bool:
        return "phantom" in self.sources

    @property
    def data_name(self) -> str:
        return " + ".join(DATASET_NAMES.get(s, s) for s in self.sources) or "unknown data"

    def data_line(self) -> str:
        m = self.meta
        trained = m.get("ldm_profile")
        trained = f" (LDM trained at profile `{trained}`)" if trained and trained != self.profile else ""
        return (f"*Ours: {self.data_name}, split `{m.get('split', '?')}`, n = {m.get('n', '?')} slices, "
                f"profile `{self.profile}`{trained}, seed {m.get('seed', '?')}.*")

    def figure(self, name: str, caption: str) -> str:
        """Markdown for a figure in the figures folder, or "" when it is not there."""
        if self.figures_dir is None:
            return ""
        name = name.format(profile=self.profile)
        path = self.figures_dir / name
        if not path.exists():
            return ""
        rel = Path(os.path.relpath(path, self.out_dir)) if self.out_dir is not None else path
        return f"![{caption}]({rel.as_posix()})\n*{caption}*\n"


def _header(c: _Ctx) -> str:
    m = c.meta
    return "\n".join([
        "# mmldm evaluation report",
        "",
        f"Profile `{c.profile}`; data: {c.data_name} (store `{_shown_path(m.get('store', '?'))}`); "
        f"created {m.get('created', '?')} in {fmt(m.get('seconds'), 0)} s on {m.get('device', '?')} "
        f"(torch {m.get('torch', '?')}). Built by `mmldm/report.py`: every number below is read from "
        "the input files listed at the end; none is typed in.",
    ])


def _summary(c: _Ctx) -> str:
    v, pub = c.variant, c.m.get("published") or {}
    dice, ceiling = v.get("dice") or {}, ((c.m.get("ceiling") or {}).get("dice") or {})
    mem = ((c.m.get("memorisation") or {}).get("summary") or {})
    lines = ["## Summary", ""]
    if c.phantom:
        lines += ["> **These numbers come from the synthetic phantom, not from real MRI.** They show that the "
                  "pipeline runs end to end; they say nothing about how well the method works on patients.", ""]
    if c.profile == "smoke":
        lines += ["> **Smoke profile:** tiny networks trained for seconds; the images are noise by design and "
                  "the numbers only check the plumbing.", ""]
    lines += [
        f"- Main configuration `{c.main}`, on {c.meta.get('n', '?')} held-out slices "
        f"(`{c.meta.get('split', '?')}` split of {c.data_name}): SSIM {fmt_ms(v.get('ssim'))}, "
        f"PSNR {fmt_ms(v.get('psnr'), 2)} dB, NMSE {fmt_ms(v.get('nmse'))}; "
        f"{fmt(v.get('s_per_image'), 3)} s per image.",
        f"- The seed's published figures ({pub.get('source', 'source not given')}): FID {fmt(pub.get('fid'), 2)}, "
        f"SSIM {fmt(pub.get('ssim'))}, NMSE {fmt(pub.get('nmse'))}, measured on the seed's own data and "
        "resolution: side by side with ours, not like for like.",
        f"- Anatomy: a segmenter trained on real training slices finds the requested structures in the "
        f"generated images with mean foreground Dice {fmt(dice.get('mean_fg'))}; on the real held-out "
        f"images (the ceiling) {fmt(ceiling.get('mean_fg'))}.",
        _realism_summary(c),
        f"- Memorisation: median ratio of nearest-training to nearest-held-out distance {fmt(mem.get('median'))} "
        f"(≈ 1: no sign of copying; → 0: copies).",
    ]
    return "\n".join(lines)


def _intended_use() -> str:
    return "\n".join([
        "## Intended use",
        "",
        "Research and teaching only. The generated images are **not for clinical decisions**, diagnosis, "
        "or training clinical staff, and no number here says they are. Synthetic images can carry the "
        "biases of their training data (scanners, centres, pathologies) and can look plausible while being "
        "anatomically wrong; anatomy compliance below is measured by a segmenter that itself errs.",
    ])


def _data(c: _Ctx) -> str:
    m, cfg = c.meta, c.cfg
    lines = ["## Data", "",
             f"This report's numbers come from {c.data_name}: store `{_shown_path(m.get('store', '?'))}`, "
             f"split `{m.get('split', '?')}` ({m.get('n', '?')} of its {m.get('n_split', '?')} slices), "
             f"profile `{c.profile}`."]
    if cfg is not None:
        d = cfg.data
        lines += [f"Slices: {d.size}×{d.size} pixels over a {fmt(d.fov_mm, 0)} mm field of view, intensities "
                  f"normalised per volume to the {d.percentiles[0]}–{d.percentiles[1]} percentile range; views "
                  f"{', '.join(d.views)}, phases {', '.join(d.phases)}; {d.val} subjects held out "
                  f"(split seed {d.split_seed}); Canny edges (σ {d.canny_sigma}, thresholds {d.canny_low:g}/"
                  f"{d.canny_high:g}, {'after' if d.canny_blur else 'without'} noise reduction)."]
    if c.phantom:
        sub = f" ({cfg.paths.phantom_subjects} subjects)" if cfg is not None else ""
        lines += ["", f"**The phantom{sub}.** A synthetic stand-in that mmldm draws in the exact M&Ms-2 file "
                  "layout so the pipeline runs on a fresh machine with no data: ellipse-like ventricles and "
                  "myocardium with MR-like contrast, torso and noise, short- and long-axis views, ED and ES. "
                  "It is **not anatomy**: no real shape variation, no pathology, no scanner physics. Models "
                  "trained on it learn the phantom, and metrics on it test the code, not the method."]
    lines += ["", "**Datasets, licences and mandatory citations.** Real data are never included or downloaded; "
              "users bring their own copy and must cite it:", "",
              "- **ACDC** (Automated Cardiac Diagnosis Challenge): O. Bernard et al., \"Deep Learning Techniques "
              "for Automatic MRI Cardiac Multi-Structures Segmentation and Diagnosis: Is the Problem Solved?\", "
              "*IEEE Transactions on Medical Imaging* 37(11), 2018. Licence CC BY-NC-SA 4.0 (non-commercial, "
              "share alike, attribution); the citation is mandatory.",
              "- **M&Ms-2**: C. Martín-Isla et al., \"Deep Learning Segmentation of the Right Ventricle in "
              "Cardiac MRI: The M&Ms Challenge\", *IEEE Journal of Biomedical and Health Informatics*, 2023. "
              "Non-commercial research use with attribution.",
              "- **M&Ms**: V. M. Campello et al., \"Multi-Centre, Multi-Vendor and Multi-Disease Cardiac "
              "Segmentation: The M&Ms Challenge\", *IEEE TMI* 40(12), 2021."]
    return "\n".join(lines)


def param_counts(cfg) -> dict[str, int] | None:
    """Parameters of the profile's VQ-VAE, UNet and segmenter, counted on the meta device (no memory)."""
    try:
        import torch

        from mmldm.models.blocks import param_count
        from mmldm.models.segmenter import Segmenter
        from mmldm.models.unet import UNet
        from mmldm.models.vqvae import VQVAE

        with torch.device("meta"):
            return {"vqvae": param_count(VQVAE(cfg.vqvae)), "unet": param_count(UNet(cfg.unet)),
                    "segmenter": param_count(Segmenter(cfg.segmenter))}
    except Exception:  # noqa: BLE001 - a count is a nicety; the report does not depend on it
        return None


def _architecture(c: _Ctx) -> str:
    cfg = c.cfg
    if cfg is None:
        return "## Architecture\n\nNo configuration was given to the report builder."
    v, u, s = cfg.vqvae, cfg.unet, cfg.segmenter
    f = v.downsample_factor
    lat = f"{v.latent_channels}×{cfg.data.size // f}×{cfg.data.size // f}"
    counts = param_counts(cfg) or {}

    def mp(key):
        return fmt_count(counts.get(key))

    rows = [
        ("VQ-VAE", "parameters", mp("vqvae")),
        ("", "encoder channels / mid", f"{v.down_channels} / {v.mid_channels}, {v.num_down_layers} layer(s) per block"),
        ("", "latent", f"{lat} (downsampling ×{f}); codebook {v.codebook_size:,} codes"
                       f"{', EMA updates' if v.ema else ''}{f', dead-code restarts after {v.restart_after} steps' if v.restart_after else ''}"),
        ("UNet", "parameters", mp("unet")),
        ("", "channels down / mid", f"{u.down_channels} / {u.mid_channels}, {u.num_down_layers} layer(s) per block, "
                                   f"attention {u.attn_down}, {u.num_heads} heads, dropout {u.dropout}"),
        ("", "condition", f"{u.conditioning} (edges + 4 one-hot channels); view embedding "
                          f"{'on' if u.view_embedding else 'off'}"),
        ("Diffusion", "schedule", f"{cfg.diffusion.beta_schedule}, T = {cfg.diffusion.num_train_timesteps}, "
                                  f"predicts {cfg.diffusion.prediction_type}"),
        ("", "guidance", f"condition dropout edges {cfg.guidance.p_drop_edge}, mask {cfg.guidance.p_drop_mask}; "
                         f"scales mask {cfg.guidance.scale_mask}, edges {cfg.guidance.scale_edge}"),
        ("Segmenter (judge)", "parameters", mp("segmenter")),
        ("", "channels", f"{list(s.channels)}, {s.num_layers} layer(s) per level"),
    ]
    return "## Architecture\n\nFrom the run's configuration (profile `" + str(cfg.profile) + "`).\n\n" + table(
        ["part", "setting", "value"], rows)


def _training(c: _Ctx) -> str:
    cfg = c.cfg
    lines = ["## Training configuration", ""]
    if cfg is None:
        lines.append("No configuration was given to the report builder.")
    else:
        keys = (("steps", "steps"), ("batch_size", "batch"), ("lr", "learning rate"), ("optimizer", "optimiser"),
                ("lr_schedule", "schedule"), ("warmup_steps", "warm-up steps"), ("grad_clip", "gradient clip"),
                ("ema", "EMA of weights"), ("latent_norm", "latent normalisation"), ("amp", "bf16 autocast"))
        t_v, t_l, seg = cfg.train_vqvae, cfg.train_ldm, cfg.segmenter
        rows = [(title, getattr(t_v, k), getattr(t_l, k)) for k, title in keys]
        rows[-3] = (rows[-3][0], "n/a", rows[-3][2])  # EMA and latent norm are LDM-only settings
        rows[-2] = (rows[-2][0], "n/a", rows[-2][2])
        lines += [table(["", "VQ-VAE", "latent diffusion"], rows), "",
                  f"Segmenter: {seg.epochs} epochs, batch {seg.batch_size}, Adam lr {seg.lr}, trained on the "
                  "real training split only. LDM step of the checkpoint evaluated: "
                  f"{c.meta.get('ldm_step', '?')}."]
    rec = c.m.get("reconstruction")
    if isinstance(rec, Mapping) and rec.get("metrics"):
        rm, cb = rec["metrics"], rec.get("codebook") or {}
        lines += ["", f"**VQ-VAE reconstruction** ({rec.get('n_images', '?')} `{rec.get('split', '?')}` slices, "
                  f"step {rec.get('step', '?')}): the ceiling on image quality, since every generated image "
                  "is a VQ-VAE decoding.", "",
                  table(["SSIM ↑", "PSNR (dB) ↑", "NMSE ↓", "codes used", "perplexity"],
                        [(fmt_ms(rm.get("ssim")), fmt_ms(rm.get("psnr"), 2), fmt_ms(rm.get("nmse")),
                          f"{cb.get('used', 'n/a')} of {cb.get('codebook_size', 'n/a')}",
                          fmt(cb.get("perplexity"), 1))])]
    figs = [c.figure(n, cap) for n, cap in TRAINING_FIGURES]
    lines += [""] + [f for f in figs if f]
    return "\n".join(lines)


def _paired(c: _Ctx) -> str:
    pub, v = c.m.get("published") or {}, c.variant
    inc = _fid_spaces(c.m).get("inception") or {}
    rows = [("seed (published)", pub.get("source", "n/a"), fmt(pub.get("fid"), 2), fmt(pub.get("ssim")), "n/a",
             fmt(pub.get("nmse"))),
            (f"ours, `{c.main}`", f"{c.data_name}, profile {c.profile}", fmt(inc.get("fid"), 2),
             fmt_ms(v.get("ssim")), fmt_ms(v.get("psnr"), 2), fmt_ms(v.get("nmse")))]
    return "\n".join([
        "### Paired fidelity: ours beside the seed's published figures", "",
        "Each held-out slice's own mask and edges go in; the generated image is compared with that real "
        "slice (SSIM, PSNR and NMSE on intensities in [0, 1]; mean ± std over slices). FID is the "
        f"Inception-feature FID of the whole generated set ({inc.get('n', 'n/a')} images; see Realism).", "",
        table(["", "data", "FID ↓", "SSIM ↑", "PSNR (dB) ↑", "NMSE ↓"], rows), "", c.data_line()])


def _groups(c: _Ctx) -> str:
    groups = c.m.get("groups") or {}
    lines = ["### By group", "", f"The main configuration `{c.main}`, split by the slices' metadata.", ""]
    shown = False
    for g in GROUPS:
        part = groups.get(g) or {}
        if not part:
            continue
        shown = True
        cols = [*PAIRED] + ([("dice_fg", "Dice fg ↑")] if any("dice_fg" in e for e in part.values()) else [])
        rows = [(name, e.get("n", "?"), *(fmt_ms(e.get(k), 2 if k == "psnr" else 3) for k, _ in cols))
                for name, e in part.items()]
        lines += [f"**{g}**", "", table([g, "n", *(t for _, t in cols)], rows), ""]
    if not shown:
        lines.append("No group breakdown in metrics.json.")
    lines.append(c.figure("05_groups.png", "Per-image SSIM, NMSE and Dice by view, phase and pathology."))
    lines.append(c.data_line())
    return "\n".join(lines)


FID_SPACES = (("inception", "Inception (ImageNet features)"), ("segmenter", "in-domain (segmenter features)"))
NEAR_BASELINE = 0.1  # a FID ratio within 10 % of 1 counts as "as real as real" at this n


def _fid_spaces(metrics: Mapping) -> dict:
    """The FID blocks by feature space: ``realism`` (this evaluation) or, in a metrics.json written
    before it existed, the small-n ``distribution`` block."""
    return (metrics.get("realism") or {}) or (metrics.get("distribution") or {})


def limiting_stage(generated_ratio, autoencoder_ratio, near: float = NEAR_BASELINE) -> tuple[str | None, str]:
    """Which stage limits realism, from two FID ratios over the same real-vs-real baseline:
    ``generated_ratio`` = FID(generated, held-out) / FID(real train, held-out) and
    ``autoencoder_ratio`` = FID(VQ-VAE reconstructions of real train, held-out) / the same baseline.

    The generated images' excess over the baseline is ``g - 1``; the reconstructions already show
    ``a - 1`` of it, and no generator decoding through this VQ-VAE can be expected to do better.
    Returns ``(stage, sentence)``: ``"neither"`` when ``g <= 1 + near``; ``"autoencoder"`` when
    ``(a - 1) / (g - 1) >= 1/2`` (the reconstructions already account for half the gap or more);
    else ``"diffusion"``; ``(None, reason)`` when a ratio is missing."""
    g, a = finite_float(generated_ratio), finite_float(autoencoder_ratio)
    if g is None or a is None:
        return None, "Which stage limits realism cannot be said: a FID ratio is missing."
    if g <= 1 + near:
        return "neither", (f"The generated images are within {near:.0%} of the real-vs-real baseline (FID ratio "
                           f"{fmt(g, 2)}): at this n neither stage measurably limits realism.")
    share = max(0.0, a - 1) / (g - 1)
    if share >= 0.5:
        return "autoencoder", (f"**The autoencoder limits realism**: the VQ-VAE's reconstructions of real slices "
                               f"already score a FID ratio of {fmt(a, 2)} against the generated images' {fmt(g, 2)}, "
                               f"{share:.0%} of the gap to real; a better diffusion model cannot close it without "
                               "a better VQ-VAE.")
    return "diffusion", (f"**The diffusion model limits realism**: the VQ-VAE's reconstructions score a FID ratio of "
                         f"{fmt(a, 2)}, the generated images {fmt(g, 2)}; only {share:.0%} of the gap to real is "
                         "the autoencoder's, the rest opens in the latent diffusion model.")


def _verdict(realism: Mapping) -> tuple[str | None, str, str]:
    """``limiting_stage`` on the Inception ratios when available, else the in-domain ones; also
    names the feature space used."""
    for key, name in (("inception", "Inception"), ("segmenter", "in-domain")):
        d = realism.get(key) or {}
        g, a = d.get("ratio"), (d.get("autoencoder") or {}).get("ratio")
        if finite_float(g) is not None and finite_float(a) is not None:
            return (*limiting_stage(g, a), name)
    return (*limiting_stage(None, None), "")


def _texture_word(ratio) -> str:
    r = finite_float(ratio)
    return "" if r is None else " (smoother than real)" if r < 0.9 else " (noisier than real)" if r > 1.1 else \
        " (like real)"


def _realism_summary(c: _Ctx) -> str:
    realism = c.m.get("realism")
    if not realism:
        spaces = _fid_spaces(c.m)
        inc, seg = spaces.get("inception") or {}, spaces.get("segmenter") or {}
        return (f"- Distribution: FID on Inception features {fmt(inc.get('fid'), 2)}"
                + (f" ({inc.get('reason')})" if not inc.get("available", inc.get("fid") is not None)
                   and inc.get("reason") else "")
                + f"; in-domain FID on segmenter features {fmt(seg.get('fid'), 2)} "
                f"(real-vs-real baseline {fmt(seg.get('real_vs_real_fid'), 2)}).")
    inc, seg = realism.get("inception") or {}, realism.get("segmenter") or {}
    hf = ((realism.get("spectrum") or {}).get("hf_ratio") or {}).get("generated")
    inc_text = (f"Inception FID {fmt(inc.get('fid'), 2)}, {fmt(inc.get('ratio'), 2)}× the real-vs-real baseline "
                f"{fmt(inc.get('real_vs_real_fid'), 2)}" if inc.get("available") else
                f"Inception FID unavailable ({inc.get('reason') or 'no reason given'})")
    _, sentence, space = _verdict(realism)
    return (f"- Realism ({realism.get('n_generated', '?')} generated images against "
            f"{realism.get('n_heldout', '?')} real held-out slices): {inc_text}; in-domain FID "
            f"{fmt(seg.get('fid'), 2)}, {fmt(seg.get('ratio'), 2)}× its baseline; high-frequency power "
            f"{fmt(hf, 2)}× the real slices'{_texture_word(hf)}. " + sentence
            + (f" (From the {space} FID ratios.)" if space else ""))


def _legacy_distribution(c: _Ctx) -> str:
    """The small-n FID table of a metrics.json written before the realism block existed."""
    dist = c.m.get("distribution") or {}
    rows = []
    for key, default in FID_SPACES:
        d = dist.get(key)
        if not d:
            continue
        rows.append((d.get("label", default), fmt(d.get("fid"), 2), _kid(d), fmt(d.get("real_vs_real_fid"), 2),
                     _kid(d, "real_vs_real_"), d.get("n", "n/a"),
                     "" if d.get("available", True) else (d.get("reason") or "not available")))
    lines = ["### Distribution: FID and KID", "",
             "FID/KID compare the set of generated images with the set of real held-out images in a feature "
             "space, each beside a *real-vs-real* baseline: the same measure between as many real training "
             "slices and the real held-out slices.", ""]
    lines += [table(["features", "FID ↓", "KID ↓", "real vs real FID", "real vs real KID", "n", "note"], rows)
              if rows else "No distribution metrics in metrics.json.", "", c.data_line()]
    return "\n".join(lines)


def _kid(d: Mapping, prefix: str = "") -> str:
    m = finite_float(d.get(f"{prefix}kid_mean"))
    return "n/a" if m is None else f"{fmt(m, 4)} ± {fmt(d.get(f'{prefix}kid_std'), 4, small=False)}"


def _realism(c: _Ctx) -> str:
    realism = c.m.get("realism")
    if not realism:
        return _legacy_distribution(c)
    n_gen, n_held, n_train = (realism.get(k, "?") for k in ("n_generated", "n_heldout", "n_train"))
    seeds = realism.get("seeds") or []
    fid_rows = []
    for key, default in FID_SPACES:
        d = realism.get(key)
        if not d:
            continue
        note = "" if d.get("available", True) else (d.get("reason") or "not available")
        ae = d.get("autoencoder") or {}
        fid_rows.append((f"generated (`{realism.get('variant', c.main)}`)", d.get("label", default), d.get("n", "n/a"),
                         fmt(d.get("fid"), 2), _kid(d), fmt(d.get("real_vs_real_fid"), 2),
                         fmt(d.get("ratio"), 2), note))
        if ae:
            fid_rows.append(("VQ-VAE reconstructions of the training slices (ceiling)", d.get("label", default),
                             ae.get("n", "n/a"), fmt(ae.get("fid"), 2), _kid(ae), fmt(d.get("real_vs_real_fid"), 2),
                             fmt(ae.get("ratio"), 2), note))
    spec = realism.get("spectrum") or {}
    frac, ratio, counts = spec.get("hf_fraction") or {}, spec.get("hf_ratio") or {}, spec.get("n") or {}
    names = (("heldout", "real held-out slices (reference)"), ("train", "real training slices"),
             ("generated", f"generated (`{realism.get('variant', c.main)}`)"),
             ("reconstruction", "VQ-VAE reconstructions of the held-out slices"))
    spec_rows = [(title, counts.get(k, "n/a"), fmt_pct(frac.get(k)), "1.000" if k == spec.get("reference") else
                  fmt(ratio.get(k))) for k, title in names if k in frac]
    ae, inc, seg = realism.get("autoencoder") or {}, realism.get("inception") or {}, realism.get("segmenter") or {}
    ae_row = (ae.get("n", "n/a"), fmt_ms(ae.get("ssim")), fmt_ms(ae.get("psnr"), 2),
              fmt((inc.get("autoencoder") or {}).get("fid"), 2), fmt((inc.get("autoencoder") or {}).get("ratio"), 2),
              fmt((seg.get("autoencoder") or {}).get("ratio"), 2), fmt(ratio.get("reconstruction")))
    _, sentence, space = _verdict(realism)
    cutoff = spec.get("cutoff", "?")
    return "\n".join([
        f"### Realism: FID, KID and texture at n = {n_gen}", "",
        f"The main configuration made {n_gen} images from {realism.get('n_masks', '?')} held-out masks, "
        f"{len(seeds)} different seed(s) each, compared as a set with {n_held} real held-out slices. FID is "
        f"biased upwards on small sets, so every FID has its **real-vs-real baseline at the same n**: the FID "
        f"between {n_train} real *training* slices and the same held-out slices. The **ratio** FID / baseline "
        "is the number to read: 1 means the set is as close to the held-out slices as other real slices are "
        "(the generated images share the held-out masks' anatomy, so in the in-domain space, which mostly sees "
        "anatomy, it can fall below 1). Inception features come from natural images (the standard; comparable "
        "with published FIDs only at the same n and resolution); the segmenter's come from cardiac MRI "
        "(in-domain, comparable only within this project).", "",
        table(["set against the real held-out slices", "features", "n", "FID ↓", "KID ↓", "real vs real FID",
               "FID ratio ↓", "note"], fid_rows), "",
        f"**Texture.** The share of each set's image power above {cutoff} cycles/pixel (structure finer than "
        f"{fmt(1 / cutoff, 0) if finite_float(cutoff) else '?'} pixels: edges, texture, noise), and that share over the "
        "real held-out slices': below 1 a set is smoother than real, above 1 noisier.", "",
        table(["set", "n", f"power above {cutoff} cycles/pixel", "over real held-out"], spec_rows)
        if spec_rows else "No spectrum in metrics.json.", "",
        "**The autoencoder's ceiling.** Every generated image is a VQ-VAE decoding, so the generator can look "
        "no more real than the VQ-VAE's reconstructions: their paired SSIM / PSNR on the held-out slices, the "
        "FID of the reconstructed training slices over the same baseline, and their high-frequency ratio.", "",
        table(["n", "recon SSIM ↑", "recon PSNR (dB) ↑", "recon FID (Inception) ↓", "FID ratio (Inception)",
               "FID ratio (in-domain)", "high-frequency ratio"], [ae_row]), "",
        sentence + (f" (From the {space} FID ratios.)" if space else ""), "",
        c.figure(FIGURE_NAMES["spectrum"], "Radially averaged power spectra: generated, real held-out, real "
                                           "training and VQ-VAE reconstructions (left), and each over the real "
                                           "held-out slices' (right)."),
        f"*Realism: {c.data_name}, split `{c.meta.get('split', '?')}`, {n_gen} generated / {n_held} held-out / "
        f"{n_train} training slices, profile `{c.profile}`, seeds {', '.join(map(str, seeds)) or '?'} "
        "(one pass over the masks each).*"])


def _anatomy(c: _Ctx) -> str:
    ceiling = ((c.m.get("ceiling") or {}).get("dice") or {})
    rows = [("real held-out images (ceiling)", *(fmt(ceiling.get(k)) for k in ("LV", "MYO", "RV", "mean_fg")))]
    for name, v in c.m["variants"].items():
        d = v.get("dice") or {}
        rows.append((f"`{name}`" + (" (main)" if name == c.main else ""),
                     *(fmt(d.get(k)) for k in ("LV", "MYO", "RV", "mean_fg"))))
    return "\n".join([
        "### Anatomy compliance: Dice against the conditioning mask", "",
        "A segmenter trained on real training slices segments each generated image; Dice of its output "
        "against the mask the image was generated from, per structure (a structure absent from both maps "
        "is left out, not scored 1). Its Dice on the real held-out images is the ceiling: the judge errs "
        "on real images too.", "",
        table(["", "LV ↑", "MYO ↑", "RV ↑", "mean fg ↑"], rows), "", c.data_line()])


def _variants(c: _Ctx) -> str:
    rows = []
    for name, v in c.m["variants"].items():
        s, g = v.get("sampler") or {}, v.get("guidance") or {}
        rows.append((f"`{name}`" + (" (main)" if name == c.main else ""), v.get("n", "?"), s.get("name", "?"),
                     s.get("num_inference_steps", "?"), g.get("mode", "?"),
                     f"{g.get('scale_mask', '?')} / {g.get('scale_edge', '?')}", fmt_ms(v.get("ssim")),
                     fmt_ms(v.get("psnr"), 2), fmt_ms(v.get("nmse")), fmt((v.get("dice") or {}).get("mean_fg")),
                     fmt_pct(v.get("saturated")), fmt(v.get("s_per_image"), 3)))
    subsets = []
    for name, v in c.m["variants"].items():
        same = v.get("main_on_same_slices")
        if same:
            subsets.append(
                f"`{name}` is slow, so it ran on {v.get('n', '?')} of the slices; on those same slices `{c.main}` "
                f"scored SSIM {fmt_ms(same.get('ssim'))}, NMSE {fmt_ms(same.get('nmse'))}, Dice fg "
                f"{fmt((same.get('dice') or {}).get('mean_fg'))}.\n")
    return "\n".join([
        "### Samplers and conditions", "",
        "The same trained model sampled several ways: DDIM, DPM-Solver++ and the seed's ancestral DDPM; "
        "guided by mask and edges, by the mask alone (what a user can draw), by the edges alone, and "
        "unguided. *Saturated* counts blown-out or blank images; wall time per image is measured on "
        f"{c.meta.get('device', '?')}.", "",
        table(["variant", "n", "sampler", "steps", "condition", "scales mask / edge", "SSIM ↑", "PSNR ↑", "NMSE ↓",
               "Dice fg ↑", "saturated", "s / image"], rows), "", *subsets,
        c.figure("05_variants.png", "Per-variant SSIM, NMSE, Dice and time per image (dashed: the seed's "
                                    "published value, or the Dice ceiling)."),
        c.data_line()])


ROW_COLUMNS = (("ssim", "SSIM ↑", 3), ("psnr", "PSNR ↑", 2), ("nmse", "NMSE ↓", 3), ("dice_LV", "Dice LV", 3),
               ("dice_MYO", "Dice MYO", 3), ("dice_RV", "Dice RV", 3), ("dice_fg", "Dice fg ↑", 3),
               ("saturated", "saturated", None), ("s_per_image", "s / image", 3), ("train_s", "training (s)", 0))


def _rows_table(rows: list[dict], first: tuple[str, str] = ("variant", "variant")) -> str:
    cols = [col for col in ROW_COLUMNS if any(col[0] in r for r in rows)]
    text = [k for k in ("sampler", "steps", "n") if k != first[0] and any(k in r for r in rows)]
    head = [first[1], *text]
    body = []
    for r in rows:
        line = [f"`{r.get(first[0], '?')}`" if first[0] == "variant" else str(r.get(first[0], "?"))]
        line += [str(r.get(k, "n/a")) for k in text]
        line += [fmt_pct(r.get(k)) if d is None else fmt(r.get(k), d) for k, _, d in cols]
        body.append(line)
    return table(head + [t for _, t, _ in cols], body)


def _source_note(meta: Mapping, path: str | None, rows: list[dict] = ()) -> str:
    """Where a table's rows came from: the file, and the data its meta (or every row) names."""
    bits = [f"{k} `{meta[k]}`" for k in ("source", "data", "profile", "split", "n", "steps", "command") if k in meta]
    where = f"From `{_shown_path(path)}`" if path else "From the given rows"
    if not any(k in meta for k in ("source", "data")):
        named = sorted({str(r[k]) for r in rows for k in ("source", "data") if k in r})
        bits.append(f"data `{' + '.join(named)}`" if named else "the file does not record which data")
    return f"*{', '.join([where] + bits)}.*"


def _recipe(c: _Ctx) -> str:
    lines = ["### Training recipe: the seed's against ours at the same budget", ""]
    if c.ablation is None:
        return "\n".join(lines + ["Not measured for this report (no `ablation.json` given)."])
    rows, meta = c.ablation
    ceil = next((r.get("real_dice_fg") for r in rows if finite_float(r.get("real_dice_fg")) is not None), None)
    lines += ["Each row is a latent diffusion model trained with the same VQ-VAE, data, seeds and number of "
              "steps, differing only in its recipe (`benchmarks/convergence.py` lists each variant's "
              "overrides), then evaluated on the same held-out slices.", "",
              _rows_table(rows), ""]
    if ceil is not None:
        lines.append(f"The same segmenter's Dice on the real held-out images (the ceiling): {fmt(ceil)}.")
    lines.append(_source_note(meta, c.inputs.get("ablation"), rows))
    return "\n".join(lines)


def _compute(c: _Ctx) -> str:
    lines = ["### Quality against compute", ""]
    if c.compute is None:
        return "\n".join(lines + ["Not measured for this report (no `compute.json` given)."])
    rows, meta = c.compute
    rows = sorted(rows, key=lambda r: (finite_float(r.get("steps")) or 0, finite_float(r.get("train_s")) or 0))
    lines += ["The same recipe trained for more optimiser steps; each model evaluated on the same held-out "
              "slices. Training times are wall times on the machine that ran them; on a shared machine they "
              "include waiting for other jobs, so compare steps first.", "", _rows_table(rows, ("steps", "steps") if not any("variant" in r for r in rows)
                                         else ("variant", "variant")), "",
              c.figure("05_quality_vs_compute.png", "SSIM, NMSE and anatomy Dice against optimiser steps, each point labelled with its training wall time."),
              _source_note(meta, c.inputs.get("compute"), rows)]
    return "\n".join(lines)


def _memorisation(c: _Ctx) -> str:
    mem = c.m.get("memorisation") or {}
    s = mem.get("summary") or {}
    lines = ["### Memorisation", ""]
    if not s:
        return "\n".join(lines + ["Not measured (no memorisation section in metrics.json)."])
    rows = [(f"generated images, {mem.get('space', '?')}", s)]
    if (mem.get("baseline") or {}).get("summary"):
        rows.append((f"real held-out slices (baseline), {mem.get('space', '?')}", mem["baseline"]["summary"]))
    if (mem.get("segmenter_features") or {}).get("summary"):
        rows.append(("generated images, segmenter features", mem["segmenter_features"]["summary"]))
    ref = mem.get("heldout_reference") or "nearest held-out image"
    n_train = mem.get("n_train_reference")
    lines += [f"For each generated image: the distance to its nearest training image"
              + (f" (of {n_train})" if n_train is not None else "")
              + f" divided by the distance to its {ref}. Near 1 the model makes images as far from what it saw "
              "as from fresh ones; near 0 it copies training images. The baseline row asks the same of the "
              "real held-out slices: what a model that does not copy gives.", "",
              table(["", "n", "median", "5th percentile", "minimum", "below 0.5", "below 0.1"],
                    [(name, r.get("n", "n/a"), fmt(r.get("median")), fmt(r.get("p05")), fmt(r.get("min")),
                      fmt_pct(r.get("below_0.5")), fmt_pct(r.get("below_0.1"))) for name, r in rows]), "",
              c.figure("05_memorisation.png", "Histogram of the nearest-training / nearest-held-out distance ratio."),
              c.data_line()]
    return "\n".join(lines)


def _figures(c: _Ctx) -> str:
    lines = ["## Figures", ""]
    evaluation = [c.figure("05_generated_vs_real.png", f"Condition → generated (`{c.main}`) → real, on held-out "
                                                       "slices; then the mask laid over the generated image and the segmenter's reading of it."),
                  c.figure("05_variant_examples.png", "The same held-out slices generated by every sampler and "
                                                      "condition variant."),
                  c.figure("05_trajectory.png", "The denoising trajectory of one slice: the sample entering each "
                                                "kept step and the model's estimate of the clean image there."),
                  c.figure(FIGURE_NAMES["shuffled"], "Generated and real held-out slices, shuffled: which are which? "
                                                     "The key below the grid lists the generated cells.")]
    data = [c.figure(n, cap) for n, cap in DATA_FIGURES]
    if not any(evaluation + data):
        return "\n".join(lines + ["No figures found in the figures folder."])
    lines += ["**Generation**", ""] + [f for f in evaluation if f]
    if any(data):
        lines += ["**Data and preprocessing**", ""] + [f for f in data if f]
    return "\n".join(lines)


def _challenges(c: _Ctx) -> str:
    vs = c.m["variants"]
    both, mask = vs.get("ddim50_both") or c.variant, vs.get("ddim50_mask_only")
    ddpm, dpm = vs.get("ddpm1000_both"), vs.get("dpm20_both")
    view = bool(c.cfg.unet.view_embedding) if c.cfg is not None else None
    by_view = (c.m.get("groups") or {}).get("view") or {}
    items = ["## Challenges and what we did about each", ""]
    items.append("- **Short- and long-axis views mixed in one model (the seed).** The UNet gets a learned view "
                 f"embedding ({'on' if view else 'off' if view is not None else 'setting unknown'} in this run). "
                 + ("By view: " + "; ".join(f"{k} SSIM {fmt_ms(e.get('ssim'))} (n = {e.get('n', '?')})"
                                           for k, e in by_view.items()) + "." if len(by_view) > 1 else
                    f"This held-out set holds {' and '.join(by_view) or 'no'} view(s) only, so it does not test "
                    "the mixed-view case."))
    if mask is not None:
        items.append("- **Edge maps are too detailed for a user to draw (the seed needed them).** Two-condition "
                     "classifier-free guidance lets the same model generate from the mask alone: mask only SSIM "
                     f"{fmt_ms(mask.get('ssim'))}, Dice {fmt((mask.get('dice') or {}).get('mean_fg'))}, against "
                     f"mask + edges SSIM {fmt_ms(both.get('ssim'))}, Dice {fmt((both.get('dice') or {}).get('mean_fg'))}. "
                     "Without edges the model invents the texture around the given anatomy, so paired SSIM "
                     "against the original slice is not the measure of success here; Dice is.")
    else:
        items.append("- **Edge maps are too detailed for a user to draw.** Mask-only generation was not measured "
                     "in this run.")
    if ddpm is not None and dpm is not None:
        def steps(v):
            return (v.get("sampler") or {}).get("num_inference_steps", "?")

        items.append(f"- **Slow sampling (the seed runs the whole ancestral DDPM chain).** DDPM ({steps(ddpm)} steps) "
                     f"{fmt(ddpm.get('s_per_image'), 3)} s per image, DDIM ({steps(both)}) "
                     f"{fmt(both.get('s_per_image'), 3)} s, DPM-Solver++ ({steps(dpm)}) "
                     f"{fmt(dpm.get('s_per_image'), 3)} s, at SSIM {fmt_ms(ddpm.get('ssim'))}, "
                     f"{fmt_ms(both.get('ssim'))} and {fmt_ms(dpm.get('ssim'))}"
                     + (" (DDPM on a subset of the slices, see the sampler table)." if ddpm.get("main_on_same_slices")
                        else "."))
    items.append("- **Little training (the seed's own stated weakness).** "
                 + ("Quality against training time is measured above (quality against compute)."
                    if c.compute is not None else "Quality against training time was not measured for this report."))
    items.append("- **Small models converge slowly on a CPU (ours).** "
                 + ("The recipe table above compares the seed's recipe with ours at the same budget."
                    if c.ablation is not None else "No recipe ablation was given for this report."))
    return "\n".join(items)


def _spaces(mem: Mapping) -> str:
    spaces = [mem.get("space", "pixels")] if mem else []
    if mem.get("segmenter_features"):
        spaces.append("segmenter features")
    return " and ".join(spaces) or "no space (not measured)"


def _limitations(c: _Ctx) -> str:
    lines = ["## Limitations", ""]
    if c.phantom:
        lines.append("- The data is the synthetic phantom: nothing here transfers to real MRI.")
    lines += [
        "- The seed's published figures were measured on its own data, resolution and images; ours on the "
        "data named under each table. The columns sit side by side for reference, not as a like-for-like test.",
        _sample_size_limitation(c),
        "- Anatomy Dice depends on a segmenter that errs on real images too (its ceiling); a generator could "
        "in principle please this judge without being right.",
        f"- Memorisation is checked in {_spaces(c.m.get('memorisation') or {})} only, against the training "
        "split of this store: a copy of an image outside it would go unnoticed.",
        "- Research and teaching only; not validated for any clinical use.",
    ]
    return "\n".join(lines)


def _sample_size_limitation(c: _Ctx) -> str:
    realism = c.m.get("realism") or {}
    fid = (f" FID / KID on {realism.get('n_generated', '?')} generated images ({len(realism.get('seeds') or [])} "
           f"seed(s) per mask) against {realism.get('n_heldout', '?')} real held-out slices: FID is biased at small "
           "n, which is why each is read over its real-vs-real baseline at the same n." if realism else
           " FID in particular is biased at small n (see the real-vs-real column).")
    return (f"- Paired metrics on n = {c.meta.get('n', '?')} held-out slices and one sampling seed;{fid} Standard "
            "deviations are over slices, not over training runs.")


def _inputs(c: _Ctx) -> str:
    m = c.meta
    rows = [(k, f"`{_shown_path(v)}`") for k, v in c.inputs.items() if v]
    rows += [("LDM checkpoint", f"`{_shown_path(m.get('ldm_checkpoint', '?'))}` (step {m.get('ldm_step', '?')})"),
             ("VQ-VAE checkpoint", f"`{_shown_path(m.get('vqvae_checkpoint', '?'))}`"),
             ("segmenter checkpoint", f"`{_shown_path(m.get('segmenter_checkpoint', '?'))}`"),
             ("store", f"`{_shown_path(m.get('store', '?'))}`")]
    return "## Inputs\n\n" + table(["input", "file"], rows)


SECTIONS = {  # name -> builder, in the report's order
    "header": _header, "summary": _summary, "intended_use": lambda c: _intended_use(), "data": _data,
    "architecture": _architecture, "training": _training, "results": lambda c: "## Results", "paired": _paired,
    "groups": _groups, "realism": _realism, "anatomy": _anatomy, "variants": _variants,
    "recipe": _recipe, "compute": _compute, "memorisation": _memorisation, "figures": _figures,
    "challenges": _challenges, "limitations": _limitations, "inputs": _inputs,
}


def report_sections(metrics: dict, cfg=None, figures_dir: str | Path | None = None, out_dir: str | Path | None = None,
                    ablation: tuple[list[dict], dict] | None = None, compute: tuple[list[dict], dict] | None = None,
                    inputs: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each section of the report as Markdown, by name (:data:`SECTIONS`), so that a notebook can
    show one beside its figure. ``ablation``/``compute`` are what :func:`read_rows` returns;
    ``figures_dir`` is searched for figures, linked relative to ``out_dir``; ``inputs`` names the
    files the numbers came from."""
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks section(s) {', '.join(missing)}")
    if metrics["main"] not in (metrics["variants"] or {}):
        raise ValueError(f"metrics' main variant {metrics['main']!r} is not among its variants")
    c = _Ctx(metrics, cfg, figures_dir, out_dir, ablation, compute, dict(inputs or {}))
    return {name: build(c).strip() for name, build in SECTIONS.items()}


def build_report(metrics: dict, cfg=None, figures_dir: str | Path | None = None, out_dir: str | Path | None = None,
                 ablation: tuple[list[dict], dict] | None = None, compute: tuple[list[dict], dict] | None = None,
                 inputs: Mapping[str, str] | None = None) -> str:
    """The Markdown text of the whole report: :func:`report_sections` joined in order."""
    parts = report_sections(metrics, cfg, figures_dir, out_dir, ablation, compute, inputs).values()
    text = "\n\n".join(p for p in parts if p) + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def load_samples(path: str | Path) -> dict:
    """The evaluation's saved tensors (``samples.pt`` or ``.npz``): generated, real, label, cond."""
    import numpy as np
    import torch

    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                data = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)  # tensors, lists, strings: no code
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataError(path, f"cannot read the saved samples ({type(e).__name__}: {e})") from None
    need = [k for k in ("generated", "real", "cond") if k not in data]
    if need:
        raise DataError(path, f"missing {', '.join(need)} (has {', '.join(data)})")
    return data


def draw_figures(metrics: dict, figures_dir: str | Path, samples: dict | None = None, table=None,
                 compute_rows: list[dict] | None = None, memorisation_ratios=None) -> dict[str, Path]:
    """Draw and save the evaluation figures the inputs allow; returns ``{role: path}``."""
    from mmldm.viz import report_figures as rf
    from mmldm.viz.plots import plt, save_figure

    figures_dir = Path(figures_dir)
    out: dict[str, Path] = {}

    def save(role, fig):
        try:
            out[role] = save_figure(fig, figures_dir / rf.FIGURES[role])
        finally:
            plt.close(fig)

    if samples is not None:
        save("grid", rf.generation_grid(samples["cond"], {f"generated ({metrics['main']})": samples["generated"]},
                                        samples["real"], samples.get("label"),
                                        segmentation=samples.get("segmentation")))
        ex = samples.get("examples")
        if isinstance(ex, dict) and isinstance(ex.get("generated"), dict) and len(ex["generated"]) > 1:
            save("examples", rf.generation_grid(ex["cond"], ex["generated"], ex["real"], overlay=False,
                                                n=len(ex["real"])))
        save("shuffled", rf.shuffled_real_vs_generated(samples["real"], samples["generated"])[0])
    spectrum = (metrics.get("realism") or {}).get("spectrum")
    if spectrum:
        save("spectrum", rf.radial_spectra(spectrum))
    save("variants", rf.variant_bars(metrics))
    if table is not None and len(table):
        try:
            save("groups", rf.group_boxplots(table))
        except ValueError:
            pass  # no metric or group column: nothing to draw
    ratios = memorisation_ratios if memorisation_ratios is not None else (metrics.get("memorisation") or {}).get("ratios")
    if ratios is not None and len(ratios):
        mem = metrics.get("memorisation") or {}
        save("memorisation", rf.memorisation_histogram(ratios, (mem.get("baseline") or {}).get("ratios"),
                                                       space=mem.get("space", "pixels")))
    if compute_rows:
        save("compute", rf.compute_plot(compute_rows))
    return out


def write_report(cfg, metrics_path: str | Path, out_dir: str | Path | None = None,
                 figures_dir: str | Path | None = None, ablation_path: str | Path | None = None,
                 compute_path: str | Path | None = None, samples_path: str | Path | None = None,
                 table_path: str | Path | None = None, draw: bool = True) -> dict[str, Path]:
    """Write ``report.md`` and a copy of ``metrics.json`` into ``out_dir`` (default
    :func:`report_dir`), drawing the evaluation figures into ``figures_dir`` (default the
    profile's) first when ``draw``. ``ablation_path``/``compute_path`` default to
    ``ablation.json``/``compute.json`` in ``out_dir``, used when they exist. Returns the paths
    written: ``{"report", "metrics", <figure roles>}``."""
    import pandas as pd

    metrics_path = Path(metrics_path)
    metrics = read_metrics(metrics_path)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(cfg)
    figures_dir = Path(figures_dir) if figures_dir is not None else Path(cfg.figures_dir)
    ablation_path = Path(ablation_path) if ablation_path is not None else out_dir / "ablation.json"
    compute_path = Path(compute_path) if compute_path is not None else out_dir / "compute.json"
    ablation, compute = read_rows(ablation_path), read_rows(compute_path)

    written: dict[str, Path] = {}
    if draw:
        samples = load_samples(samples_path) if samples_path is not None else None
        per_image = None
        if table_path is not None:
            try:
                per_image = pd.read_csv(table_path)
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
                raise DataError(table_path, f"cannot read the per-image table ({e})") from None
            if "variant" in per_image.columns:
                per_image = per_image[per_image["variant"] == metrics["main"]]
        written.update(draw_figures(metrics, figures_dir, samples, per_image, compute[0] if compute else None))

    inputs = {"metrics": str(metrics_path), "ablation": str(ablation_path) if ablation else None,
              "compute": str(compute_path) if compute else None,
              "samples": str(samples_path) if samples_path else None,
              "per-image table": str(table_path) if table_path else None}
    text = build_report(metrics, cfg, figures_dir, out_dir, ablation, compute, inputs)
    metrics_copy = out_dir / "metrics.json"
    if metrics_copy.resolve() != metrics_path.resolve():
        atomic.copy_file(metrics_path, metrics_copy)
    written["metrics"] = metrics_copy
    written["report"] = atomic.write_text(out_dir / "report.md", text)
    return written

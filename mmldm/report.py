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

The text lives in ``report_template.md`` beside this file; this module only fills it in.
The template is a row of named blocks, each starting at a line ``<!-- name -->``:

- a block without a dot in its name (``summary``, ``realism``) is a **section**, and the
  sections appear in the report in the template's order. Each has a builder in :data:`SECTIONS`
  (sections of fixed text, such as ``intended_use``, need none) that reads the inputs and
  returns the section as Markdown, or "" to leave it out;
- a dotted block (``summary.phantom``, ``recipe.missing``) is a piece a builder uses when the
  inputs call for it: a warning, the sentence that stands where an input is missing, a second
  version of a section (``realism.distribution``, for a metrics.json older than the realism block);
- a block ending in ``.figure`` / ``.figures`` lists figures as ``file name: caption`` lines.

:func:`fill` fills a block's ``${name}`` placeholders (:class:`string.Template`) with tables,
numbers formatted by :mod:`mmldm.formatting`, and the few sentences that are computed rather than
fixed (which stage limits realism, in :func:`limiting_stage`; a word on texture). A line that is
only a placeholder filled with "" disappears, so a piece that does not apply leaves no gap.

Where it goes: the folder above the profile's figures folder (``report/`` for the paper and
laptop profiles, the run folder for smoke, so a smoke run never overwrites the committed report).
Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from mmldm import atomic
from mmldm.errors import DataError
from mmldm.formatting import finite_float, fmt, fmt_band, fmt_count, fmt_ms, fmt_pct

REQUIRED = ("meta", "published", "variants", "main")
DATASET_NAMES = {"acdc": "ACDC", "mnms2": "M&Ms-2", "mnms": "M&Ms", "phantom": "the synthetic phantom"}
GROUPS = ("view", "phase", "pathology")
PAIRED = (("ssim", "SSIM ↑"), ("psnr", "PSNR (dB) ↑"), ("nmse", "NMSE ↓"))
TEMPLATE = "report_template.md"  # beside this module, packaged with it


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
        raise DataError(
            path,
            f"'main' names {metrics['main']!r}, which is not one of the variants ({', '.join(metrics['variants'])})",
        )
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


UTILITY_ARMS = ("real", "real+synth", "synth")


def read_utility(path: str | Path | None) -> dict | None:
    """``utility.json`` of benchmarks/utility.py: None when ``path`` is None or absent; checked for
    its ``regimes`` and ``summary`` ({regime: {arm: {class: {"mean", "std", "n"}}}})."""
    if path is None or not Path(path).exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise DataError(path, "expected an object with a 'summary' (written by benchmarks/utility.py?)")
    for regime, arms in data["summary"].items():
        for arm, classes in (arms or {}).items():
            if arm not in UTILITY_ARMS or not all(
                isinstance(classes.get(c), dict) and "mean" in classes[c] for c in ("LV", "MYO", "RV", "fg")
            ):
                raise DataError(path, f"summary[{regime!r}][{arm!r}] is not an arm with LV, MYO, RV, fg means")
    data.setdefault("regimes", {})
    return data


# ---------------------------------------------------------------------------------------------
# The template
# ---------------------------------------------------------------------------------------------

_MARKER = re.compile(r"^<!-- ([a-z][a-z0-9_.]*) -->\n", re.M)
_ALONE = re.compile(r"\$\{(\w+)\}")


@functools.lru_cache(maxsize=1)
def template_blocks() -> dict[str, str]:
    """The template's blocks by name, in the template's order (its opening comment left out)."""
    text = resources.files("mmldm").joinpath(TEMPLATE).read_text(encoding="utf-8")
    parts = _MARKER.split(text)
    names = parts[1::2]
    if len(set(names)) != len(names):
        raise ValueError(f"{TEMPLATE}: block(s) named twice: {sorted({n for n in names if names.count(n) > 1})}")
    return {name: body.strip("\n") for name, body in zip(names, parts[2::2])}


def section_names() -> list[str]:
    """The report's sections, in order: the template's blocks without a dot in their name."""
    return [name for name in template_blocks() if "." not in name]


def fill(name: str, **values) -> str:
    """Template block ``name`` with its ``${placeholders}`` filled from ``values`` (a missing one
    is a KeyError). A line that is only a placeholder whose value is empty is dropped, and runs of
    blank lines become one."""
    lines = template_blocks()[name].split("\n")
    kept = [
        line
        for line in lines
        if not ((m := _ALONE.fullmatch(line.strip())) and m[1] in values and not str(values[m[1]]).strip())
    ]
    text = string.Template("\n".join(kept)).substitute(values)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def figure_list(name: str, **values) -> list[tuple[str, str]]:
    """A ``.figure(s)`` block as ``[(file name, caption)]``, its placeholders filled."""
    out = []
    for line in template_blocks()[name].split("\n"):
        if line.strip():
            file, caption = line.split(": ", 1)
            out.append((string.Template(file).substitute(values), string.Template(caption).substitute(values)))
    return out


# ---------------------------------------------------------------------------------------------
# Markdown pieces
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
# Sections, in the report's order
# ---------------------------------------------------------------------------------------------


class _Ctx:
    """What every section needs: the inputs and where the figures are relative to the report."""

    def __init__(self, metrics, cfg, figures_dir, out_dir, ablation, compute, inputs, utility=None):
        self.m, self.cfg, self.utility = metrics, cfg, utility
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
        """The line under each results table: which data, split, n, profile and seed."""
        m = self.meta
        trained = m.get("ldm_profile")
        trained = f" (LDM trained at profile `{trained}`)" if trained and trained != self.profile else ""
        return fill(
            "shared.data_line",
            data_name=self.data_name,
            split=m.get("split", "?"),
            n=m.get("n", "?"),
            profile=self.profile,
            ldm_profile=trained,
            seed=m.get("seed", "?"),
        )

    def figure(self, name: str, caption: str, folder: Path | None = None) -> str:
        """Markdown for a figure in ``folder`` (default: the figures folder), or "" when it is not there."""
        folder = folder if folder is not None else self.figures_dir
        if folder is None:
            return ""
        path = folder / name
        if not path.exists():
            return ""
        rel = Path(os.path.relpath(path, self.out_dir)) if self.out_dir is not None else path
        return fill("shared.image", caption=caption, path=rel.as_posix())

    def figures(self, block: str, folder: Path | None = None, **values) -> str:
        """The figures a template ``.figure(s)`` block lists that exist (in ``folder``, default the
        figures folder), one paragraph each."""
        listed = figure_list(block, profile=self.profile, **values)
        shown = (self.figure(name, caption, folder) for name, caption in listed)
        return "\n\n".join(f for f in shown if f)


def _header(c: _Ctx) -> str:
    m = c.meta
    return fill(
        "header",
        profile=c.profile,
        data_name=c.data_name,
        store=_shown_path(m.get("store", "?")),
        created=m.get("created", "?"),
        seconds=fmt(m.get("seconds"), 0),
        device=m.get("device", "?"),
        precision=m.get("precision", "fp32"),  # older metrics.json: sampled in fp32
        torch=m.get("torch", "?"),
    )


def main_condition(name: str) -> str:
    """What the main row conditions on, in words: the path a user with a label map takes, or the
    reconstruction benchmark that needs the real slice's edges."""
    from mmldm.evaluate.settings import VARIANTS

    v = VARIANTS.get(name)
    if v is None:
        return "a variant this mmldm does not know"
    if v.mode == "mask_only" or v.edges == "none":
        return "the mask alone, as a user with a label map samples"
    if v.edges == "mask":
        return "the mask and edges drawn from it, as a user with a label map can"
    return "the mask and the real slice's Canny edges: a reconstruction benchmark, not what a user has"


def _summary(c: _Ctx) -> str:
    v, pub = c.variant, c.m.get("published") or {}
    dice, ceiling = v.get("dice") or {}, ((c.m.get("ceiling") or {}).get("dice") or {})
    mem = (c.m.get("memorisation") or {}).get("summary") or {}
    warnings = []
    if c.phantom:
        warnings.append(fill("summary.phantom"))
    if c.profile == "smoke":
        warnings.append(fill("summary.smoke"))
    return fill(
        "summary",
        warnings="\n\n".join(warnings),
        main=c.main,
        main_condition=main_condition(c.main),
        n=c.meta.get("n", "?"),
        split=c.meta.get("split", "?"),
        data_name=c.data_name,
        ssim=fmt_ms(v.get("ssim")),
        psnr=fmt_ms(v.get("psnr"), 2),
        nmse=fmt_ms(v.get("nmse")),
        s_per_image=fmt(v.get("s_per_image"), 3),
        published_source=pub.get("source", "source not given"),
        published_fid=fmt(pub.get("fid"), 2),
        published_ssim=fmt(pub.get("ssim")),
        published_nmse=fmt(pub.get("nmse")),
        dice=fmt(dice.get("mean_fg")),
        ceiling=fmt(ceiling.get("mean_fg")),
        realism=_realism_summary(c),
        memorisation=fmt(mem.get("median")),
    )


def _realism_summary(c: _Ctx) -> str:
    realism = c.m.get("realism")
    if not realism:
        spaces = _fid_spaces(c.m)
        inc, seg = spaces.get("inception") or {}, spaces.get("segmenter") or {}
        unavailable = not inc.get("available", inc.get("fid") is not None) and inc.get("reason")
        return fill(
            "summary.distribution",
            inception_fid=fmt(inc.get("fid"), 2),
            inception_note=f" ({inc.get('reason')})" if unavailable else "",
            segmenter_fid=fmt(seg.get("fid"), 2),
            segmenter_baseline=fmt(seg.get("real_vs_real_fid"), 2),
        )
    inc, seg = realism.get("inception") or {}, realism.get("segmenter") or {}
    hf = ((realism.get("spectrum") or {}).get("hf_ratio") or {}).get("generated")
    tests = realism.get("c2st") or {}
    gen, floor = tests.get("generated") or {}, tests.get("real_vs_real") or {}
    c2st = (
        fill(
            "summary.realism.c2st",
            accuracy=fmt(gen.get("accuracy"), 2),
            auc=fmt(gen.get("auc"), 2),
            floor=fmt(floor.get("accuracy"), 2) if floor.get("available") else "n/a",
        )
        if gen.get("available")
        else fill("summary.realism.no_c2st", reason=gen.get("reason") or "not in metrics.json")
    )
    inception = (
        fill(
            "summary.realism.inception",
            fid=fmt(inc.get("fid"), 2),
            ratio=fmt(inc.get("ratio"), 2),
            baseline=fmt(inc.get("real_vs_real_fid"), 2),
        )
        if inc.get("available")
        else fill("summary.realism.no_inception", reason=inc.get("reason") or "no reason given")
    )
    return fill(
        "summary.realism",
        n_generated=realism.get("n_generated", "?"),
        n_heldout=realism.get("n_heldout", "?"),
        c2st=c2st,
        inception=inception,
        segmenter_fid=fmt(seg.get("fid"), 2),
        segmenter_ratio=fmt(seg.get("ratio"), 2),
        hf_ratio=fmt(hf, 2),
        texture=_texture_word(hf),
        verdict=_verdict_text(realism),
    )


def _data(c: _Ctx) -> str:
    m, cfg = c.meta, c.cfg
    slices = phantom = ""
    if cfg is not None:
        d = cfg.data
        slices = fill(
            "data.slices",
            size=d.size,
            fov_mm=fmt(d.fov_mm, 0),
            p_low=d.percentiles[0],
            p_high=d.percentiles[1],
            views=", ".join(d.views),
            phases=", ".join(d.phases),
            n_val=d.val,
            split_seed=d.split_seed,
            canny_sigma=d.canny_sigma,
            canny_low=f"{d.canny_low:g}",
            canny_high=f"{d.canny_high:g}",
            canny_blur="after" if d.canny_blur else "without",
        )
    if c.phantom:
        phantom = fill("data.phantom", subjects=f" ({cfg.paths.phantom_subjects} subjects)" if cfg is not None else "")
    return fill(
        "data",
        data_name=c.data_name,
        store=_shown_path(m.get("store", "?")),
        split=m.get("split", "?"),
        n=m.get("n", "?"),
        n_split=m.get("n_split", "?"),
        profile=c.profile,
        slices=slices,
        phantom=phantom,
    )


def param_counts(cfg) -> dict[str, int] | None:
    """Parameters of the profile's VQ-VAE, UNet and segmenter, counted on the meta device (no memory)."""
    try:
        import torch

        from mmldm.models.blocks import param_count
        from mmldm.models.segmenter import Segmenter
        from mmldm.models.unet import UNet
        from mmldm.models.vqvae import VQVAE

        with torch.device("meta"):
            return {
                "vqvae": param_count(VQVAE(cfg.vqvae)),
                "unet": param_count(UNet(cfg.unet)),
                "segmenter": param_count(Segmenter(cfg.segmenter)),
            }
    except Exception:  # noqa: BLE001 - a count is a nicety; the report does not depend on it
        return None


def _architecture(c: _Ctx) -> str:
    cfg = c.cfg
    if cfg is None:
        return fill("architecture", architecture=fill("shared.no_config"))
    v, u, s = cfg.vqvae, cfg.unet, cfg.segmenter
    f = v.downsample_factor
    lat = f"{v.latent_channels}×{cfg.data.size // f}×{cfg.data.size // f}"
    counts = param_counts(cfg) or {}
    rows = [
        ("VQ-VAE", "parameters", fmt_count(counts.get("vqvae"))),
        ("", "encoder channels / mid", f"{v.down_channels} / {v.mid_channels}, {v.num_down_layers} layer(s) per block"),
        (
            "",
            "latent",
            f"{lat} (downsampling ×{f}); codebook {v.codebook_size:,} codes"
            f"{', EMA updates' if v.ema else ''}"
            f"{f', dead-code restarts after {v.restart_after} steps' if v.restart_after else ''}",
        ),
        ("UNet", "parameters", fmt_count(counts.get("unet"))),
        (
            "",
            "channels down / mid",
            f"{u.down_channels} / {u.mid_channels}, {u.num_down_layers} layer(s) per block, "
            f"attention {u.attn_down}, {u.num_heads} heads, dropout {u.dropout}",
        ),
        (
            "",
            "condition",
            f"{u.conditioning} (edges + 4 one-hot channels); view embedding {'on' if u.view_embedding else 'off'}",
        ),
        (
            "Diffusion",
            "schedule",
            f"{cfg.diffusion.beta_schedule}, T = {cfg.diffusion.num_train_timesteps}, "
            f"predicts {cfg.diffusion.prediction_type}",
        ),
        (
            "",
            "guidance",
            f"condition dropout edges {cfg.guidance.p_drop_edge}, mask {cfg.guidance.p_drop_mask}; "
            f"scales mask {cfg.guidance.scale_mask}, edges {cfg.guidance.scale_edge}",
        ),
        ("Segmenter (judge)", "parameters", fmt_count(counts.get("segmenter"))),
        ("", "channels", f"{list(s.channels)}, {s.num_layers} layer(s) per level"),
    ]
    return fill(
        "architecture",
        architecture=fill("architecture.config", profile=cfg.profile, table=table(["part", "setting", "value"], rows)),
    )


def _training(c: _Ctx) -> str:
    cfg = c.cfg
    if cfg is None:
        settings = fill("shared.no_config")
    else:
        keys = (
            ("steps", "steps"),
            ("batch_size", "batch"),
            ("lr", "learning rate"),
            ("optimizer", "optimiser"),
            ("lr_schedule", "schedule"),
            ("warmup_steps", "warm-up steps"),
            ("grad_clip", "gradient clip"),
            ("ema", "EMA of weights"),
            ("latent_norm", "latent normalisation"),
            ("amp", "bf16 autocast (where native: CUDA, AMX CPUs)"),
        )
        t_v, t_l, seg = cfg.train_vqvae, cfg.train_ldm, cfg.segmenter
        rows = [(title, getattr(t_v, k), getattr(t_l, k)) for k, title in keys]
        rows[-3] = (rows[-3][0], "n/a", rows[-3][2])  # EMA and latent norm are LDM-only settings
        rows[-2] = (rows[-2][0], "n/a", rows[-2][2])
        settings = fill(
            "training.settings",
            table=table(["", "VQ-VAE", "latent diffusion"], rows),
            epochs=seg.epochs,
            batch_size=seg.batch_size,
            lr=seg.lr,
            ldm_step=c.meta.get("ldm_step", "?"),
        )
    rec, reconstruction = c.m.get("reconstruction"), ""
    if isinstance(rec, Mapping) and rec.get("metrics"):
        rm, cb = rec["metrics"], rec.get("codebook") or {}
        reconstruction = fill(
            "training.reconstruction",
            n_images=rec.get("n_images", "?"),
            split=rec.get("split", "?"),
            step=rec.get("step", "?"),
            table=table(
                ["SSIM ↑", "PSNR (dB) ↑", "NMSE ↓", "codes used", "perplexity"],
                [
                    (
                        fmt_ms(rm.get("ssim")),
                        fmt_ms(rm.get("psnr"), 2),
                        fmt_ms(rm.get("nmse")),
                        f"{cb.get('used', 'n/a')} of {cb.get('codebook_size', 'n/a')}",
                        fmt(cb.get("perplexity"), 1),
                    )
                ],
            ),
        )
    return fill("training", settings=settings, reconstruction=reconstruction, figures=c.figures("training.figures"))


def _paired(c: _Ctx) -> str:
    pub, v = c.m.get("published") or {}, c.variant
    inc = _fid_spaces(c.m).get("inception") or {}
    rows = [
        (
            "seed (published)",
            pub.get("source", "n/a"),
            fmt(pub.get("fid"), 2),
            fmt(pub.get("ssim")),
            "n/a",
            fmt(pub.get("nmse")),
        ),
        (
            f"ours, `{c.main}`",
            f"{c.data_name}, profile {c.profile}",
            fmt(inc.get("fid"), 2),
            fmt_ms(v.get("ssim")),
            fmt_ms(v.get("psnr"), 2),
            fmt_ms(v.get("nmse")),
        ),
    ]
    return fill(
        "paired",
        n_fid=inc.get("n", "n/a"),
        data_line=c.data_line(),
        table=table(["", "data", "FID ↓", "SSIM ↑", "PSNR (dB) ↑", "NMSE ↓"], rows),
    )


def _groups(c: _Ctx) -> str:
    groups = c.m.get("groups") or {}
    tables = []
    for g in GROUPS:
        part = groups.get(g) or {}
        if not part:
            continue
        cols = [*PAIRED] + ([("dice_fg", "Dice fg ↑")] if any("dice_fg" in e for e in part.values()) else [])
        rows = [
            (name, e.get("n", "?"), *(fmt_ms(e.get(k), 2 if k == "psnr" else 3) for k, _ in cols))
            for name, e in part.items()
        ]
        tables.append(fill("groups.group", group=g, table=table([g, "n", *(t for _, t in cols)], rows)))
    return fill(
        "groups",
        main=c.main,
        tables="\n\n".join(tables) or fill("groups.none"),
        figure=c.figures("groups.figure"),
        data_line=c.data_line(),
    )


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
    else ``"diffusion"``; ``(None, reason)`` when a ratio is missing. The sentences are computed
    from the numbers, so they live here rather than in the template."""
    g, a = finite_float(generated_ratio), finite_float(autoencoder_ratio)
    if g is None or a is None:
        return None, "Which stage limits realism cannot be said: a FID ratio is missing."
    if g <= 1 + near:
        return "neither", (
            f"The generated images are within {near:.0%} of the real-vs-real baseline (FID ratio "
            f"{fmt(g, 2)}): at this n neither stage measurably limits realism."
        )
    share = max(0.0, a - 1) / (g - 1)
    if share >= 0.5:
        return "autoencoder", (
            f"**The autoencoder limits realism**: the VQ-VAE's reconstructions of real slices "
            f"already score a FID ratio of {fmt(a, 2)} against the generated images' {fmt(g, 2)}, "
            f"{share:.0%} of the gap to real; a better diffusion model cannot close it without "
            "a better VQ-VAE."
        )
    return "diffusion", (
        f"**The diffusion model limits realism**: the VQ-VAE's reconstructions score a FID ratio of "
        f"{fmt(a, 2)}, the generated images {fmt(g, 2)}; only {share:.0%} of the gap to real is "
        "the autoencoder's, the rest opens in the latent diffusion model."
    )


def _verdict(realism: Mapping) -> tuple[str | None, str, str]:
    """``limiting_stage`` on the Inception ratios when available, else the in-domain ones; also
    names the feature space used."""
    for key, name in (("inception", "Inception"), ("segmenter", "in-domain")):
        d = realism.get(key) or {}
        g, a = d.get("ratio"), (d.get("autoencoder") or {}).get("ratio")
        if finite_float(g) is not None and finite_float(a) is not None:
            return (*limiting_stage(g, a), name)
    return (*limiting_stage(None, None), "")


def _verdict_text(realism: Mapping) -> str:
    """The verdict sentence, with the feature space it was read in."""
    _, sentence, space = _verdict(realism)
    return sentence + (f" (From the {space} FID ratios.)" if space else "")


def _texture_word(ratio) -> str:
    r = finite_float(ratio)
    return (
        ""
        if r is None
        else " (smoother than real)"
        if r < 0.9
        else " (noisier than real)"
        if r > 1.1
        else " (like real)"
    )


def _pm(mean, std) -> str:
    """``mean ± std`` (``mean`` alone without a std), 3 decimals."""
    return fmt(mean) if finite_float(std) is None else f"{fmt(mean)} ± {fmt(std)}"


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
        fid_rows.append(
            (
                f"generated (`{realism.get('variant', c.main)}`)",
                d.get("label", default),
                d.get("n", "n/a"),
                fmt(d.get("fid"), 2),
                _kid(d),
                fmt(d.get("real_vs_real_fid"), 2),
                fmt(d.get("ratio"), 2),
                note,
            )
        )
        if ae:
            fid_rows.append(
                (
                    "VQ-VAE reconstructions of the training slices (ceiling)",
                    d.get("label", default),
                    ae.get("n", "n/a"),
                    fmt(ae.get("fid"), 2),
                    _kid(ae),
                    fmt(d.get("real_vs_real_fid"), 2),
                    fmt(ae.get("ratio"), 2),
                    note,
                )
            )
    spec = realism.get("spectrum") or {}
    frac, ratio, counts = spec.get("hf_fraction") or {}, spec.get("hf_ratio") or {}, spec.get("n") or {}
    names = (
        ("heldout", "real held-out slices (reference)"),
        ("train", "real training slices"),
        ("generated", f"generated (`{realism.get('variant', c.main)}`)"),
        ("reconstruction", "VQ-VAE reconstructions of the held-out slices"),
    )
    bands, band_ratio = spec.get("bands") or [], spec.get("band_ratio") or {}
    spec_rows = [
        (
            title,
            counts.get(k, "n/a"),
            fmt_pct(frac.get(k)),
            "1.000" if k == spec.get("reference") else fmt(ratio.get(k)),
            *(
                ["1.00"] * len(bands)
                if k == spec.get("reference")
                else [fmt(r, 2) for r in band_ratio.get(k) or [None] * len(bands)]
            ),
        )
        for k, title in names
        if k in frac
    ]
    ae, inc, seg = realism.get("autoencoder") or {}, realism.get("inception") or {}, realism.get("segmenter") or {}
    ae_row = (
        ae.get("n", "n/a"),
        fmt_ms(ae.get("ssim")),
        fmt_ms(ae.get("psnr"), 2),
        fmt((inc.get("autoencoder") or {}).get("fid"), 2),
        fmt((inc.get("autoencoder") or {}).get("ratio"), 2),
        fmt((seg.get("autoencoder") or {}).get("ratio"), 2),
        fmt(ratio.get("reconstruction")),
    )
    cutoff = spec.get("cutoff", "?")
    c2st_rows = [
        (
            title,
            d.get("n_b", "n/a") if d.get("available") else "n/a",
            _pm(d.get("accuracy"), d.get("accuracy_std")) if d.get("available") else "n/a",
            _pm(d.get("auc"), d.get("auc_std")) if d.get("available") else "n/a",
            d.get("folds", "n/a") if d.get("available") else "n/a",
            "" if d.get("available") else (d.get("reason") or "not run"),
        )
        for key, title in (
            ("generated", f"generated (`{realism.get('variant', c.main)}`)"),
            ("real_vs_real", "real training slices (the floor)"),
            ("autoencoder", "VQ-VAE reconstructions of the training slices (ceiling)"),
        )
        if (d := (realism.get("c2st") or {}).get(key)) is not None
    ]
    return fill(
        "realism",
        c2st_table=table(
            ["set against the real held-out slices", "n", "accuracy ↓ (0.5 best)", "AUC ↓", "folds", "note"],
            c2st_rows,
        )
        if c2st_rows
        else "No classifier two-sample test in metrics.json (written before it existed: re-run evaluate).",
        n_generated=n_gen,
        n_masks=realism.get("n_masks", "?"),
        n_seeds=len(seeds),
        n_heldout=n_held,
        n_train=n_train,
        cutoff=cutoff,
        period=fmt(1 / cutoff, 0) if finite_float(cutoff) else "?",
        fid_table=table(
            [
                "set against the real held-out slices",
                "features",
                "n",
                "FID ↓",
                "KID ↓",
                "real vs real FID",
                "FID ratio ↓",
                "note",
            ],
            fid_rows,
        ),
        spectrum_table=table(
            [
                "set",
                "n",
                f"power above {cutoff} cycles/pixel",
                "over real held-out",
                *(f"band {fmt_band(*b)}" for b in bands),
            ],
            spec_rows,
        )
        if spec_rows
        else fill("realism.no_spectrum"),
        autoencoder_table=table(
            [
                "n",
                "recon SSIM ↑",
                "recon PSNR (dB) ↑",
                "recon FID (Inception) ↓",
                "FID ratio (Inception)",
                "FID ratio (in-domain)",
                "high-frequency ratio",
            ],
            [ae_row],
        ),
        verdict=_verdict_text(realism),
        figure=c.figures("realism.figure"),
        data_name=c.data_name,
        split=c.meta.get("split", "?"),
        profile=c.profile,
        seeds=", ".join(map(str, seeds)) or "?",
    )


def _legacy_distribution(c: _Ctx) -> str:
    """The small-n FID table of a metrics.json written before the realism block existed."""
    dist = c.m.get("distribution") or {}
    rows = []
    for key, default in FID_SPACES:
        d = dist.get(key)
        if not d:
            continue
        rows.append(
            (
                d.get("label", default),
                fmt(d.get("fid"), 2),
                _kid(d),
                fmt(d.get("real_vs_real_fid"), 2),
                _kid(d, "real_vs_real_"),
                d.get("n", "n/a"),
                "" if d.get("available", True) else (d.get("reason") or "not available"),
            )
        )
    return fill(
        "realism.distribution",
        data_line=c.data_line(),
        table=table(["features", "FID ↓", "KID ↓", "real vs real FID", "real vs real KID", "n", "note"], rows)
        if rows
        else fill("realism.distribution.none"),
    )


def _anatomy(c: _Ctx) -> str:
    ceiling = (c.m.get("ceiling") or {}).get("dice") or {}
    rows = [("real held-out images (ceiling)", *(fmt(ceiling.get(k)) for k in ("LV", "MYO", "RV", "mean_fg")))]
    for name, v in c.m["variants"].items():
        d = v.get("dice") or {}
        rows.append(
            (
                f"`{name}`" + (" (main)" if name == c.main else ""),
                *(fmt(d.get(k)) for k in ("LV", "MYO", "RV", "mean_fg")),
            )
        )
    return fill("anatomy", table=table(["", "LV ↑", "MYO ↑", "RV ↑", "mean fg ↑"], rows), data_line=c.data_line())


def _variants(c: _Ctx) -> str:
    rows = []
    for name, v in c.m["variants"].items():
        s, g = v.get("sampler") or {}, v.get("guidance") or {}
        rows.append(
            (
                f"`{name}`" + (" (main)" if name == c.main else ""),
                v.get("n", "?"),
                s.get("name", "?"),
                s.get("num_inference_steps", "?"),
                g.get("mode", "?"),
                f"{g.get('scale_mask', '?')} / {g.get('scale_edge', '?')}",
                fmt_ms(v.get("ssim")),
                fmt_ms(v.get("psnr"), 2),
                fmt_ms(v.get("nmse")),
                fmt((v.get("dice") or {}).get("mean_fg")),
                fmt_pct(v.get("saturated")),
                fmt(v.get("s_per_image"), 3),
            )
        )
    subsets = [
        fill(
            "variants.subset",
            variant=name,
            n=v.get("n", "?"),
            main=c.main,
            ssim=fmt_ms(same.get("ssim")),
            nmse=fmt_ms(same.get("nmse")),
            dice=fmt((same.get("dice") or {}).get("mean_fg")),
        )
        for name, v in c.m["variants"].items()
        if (same := v.get("main_on_same_slices"))
    ]
    return fill(
        "variants",
        device=c.meta.get("device", "?"),
        subsets="\n\n".join(subsets),
        table=table(
            [
                "variant",
                "n",
                "sampler",
                "steps",
                "condition",
                "scales mask / edge",
                "SSIM ↑",
                "PSNR ↑",
                "NMSE ↓",
                "Dice fg ↑",
                "saturated",
                "s / image",
            ],
            rows,
        ),
        figure=c.figures("variants.figure"),
        data_line=c.data_line(),
    )


ROW_COLUMNS = (
    ("ssim", "SSIM ↑", 3),
    ("psnr", "PSNR ↑", 2),
    ("nmse", "NMSE ↓", 3),
    ("dice_LV", "Dice LV", 3),
    ("dice_MYO", "Dice MYO", 3),
    ("dice_RV", "Dice RV", 3),
    ("dice_fg", "Dice fg ↑", 3),
    ("saturated", "saturated", None),
    ("s_per_image", "s / image", 3),
    ("train_s", "training (s)", 0),
)


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
    if c.ablation is None:
        return fill("recipe", recipe=fill("recipe.missing"))
    rows, meta = c.ablation
    ceil = next((r.get("real_dice_fg") for r in rows if finite_float(r.get("real_dice_fg")) is not None), None)
    return fill(
        "recipe",
        recipe=fill(
            "recipe.measured",
            table=_rows_table(rows),
            source=_source_note(meta, c.inputs.get("ablation"), rows),
            ceiling=fill("recipe.ceiling", dice=fmt(ceil)) if ceil is not None else "",
        ),
    )


def _sweep_table(rows: list[dict]) -> str:
    head = ["budget", "VQ-VAE steps", "LDM steps", "CPU min", "C2ST acc (AUC)", "C2ST floor",
            "FID ratio, Inception", "FID ratio, segmenter", "mask-only Dice fg", "ceiling"]  # fmt: skip
    body = [
        [
            f"{fmt(r.get('scale'), 2)}× (`{r.get('variant', '?')}`)",
            str(r.get("vqvae_steps", "?")),
            str(r.get("steps", "?")),
            fmt(r.get("cpu_minutes"), 0),
            f"{fmt(r.get('c2st'))} ({fmt(r.get('c2st_auc'))})",
            fmt(r.get("c2st_floor")),
            fmt(r.get("fid_ratio"), 2),
            fmt(r.get("seg_fid_ratio"), 2),
            fmt(r.get("dice_fg")),
            fmt(r.get("real_dice_fg")),
        ]
        for r in rows
    ]
    return table(head, body)


def _sweep_verdict(rows: list[dict]) -> str:
    """One computed sentence: what the largest budget bought over the smallest, along the default
    recipe (rows of other recipes, ``recipe`` set, are compared in the table only)."""
    rows = [r for r in rows if r.get("recipe", "default") == "default"] or rows
    lo, hi = rows[0], rows[-1]
    if len(rows) < 2:
        return fill("compute.sweep.one")
    moved = [
        f"{name} {fmt(lo.get(k), d)} → {fmt(hi.get(k), d)}"
        for k, name, d in (("c2st", "C2ST accuracy", 3), ("fid_ratio", "Inception FID ratio", 2),
                           ("seg_fid_ratio", "segmenter-feature FID ratio", 2), ("dice_fg", "mask-only Dice", 3))
    ]  # fmt: skip
    minutes = [finite_float(r.get("cpu_minutes")) for r in (lo, hi)]
    factor = minutes[1] / minutes[0] if all(minutes) else None
    return fill(
        "compute.sweep.verdict",
        lo=fmt(lo.get("scale"), 2),
        hi=fmt(hi.get("scale"), 2),
        factor=fmt(factor, 1),
        moved="; ".join(moved),
    )


def _compute(c: _Ctx) -> str:
    if c.compute is None:
        return fill("compute", compute=fill("compute.missing"))
    rows, meta = c.compute
    if rows and all("cpu_minutes" in r for r in rows):  # the whole recipe at several budgets
        rows = sorted(rows, key=lambda r: finite_float(r.get("cpu_minutes")) or 0)
        return fill(
            "compute",
            compute=fill(
                "compute.sweep",
                scales=", ".join(f"{fmt(x, 2)}×" for x in sorted({finite_float(r.get("scale")) or 0 for r in rows})),
                cpu=str(meta.get("cpu") or rows[0].get("cpu") or "a CPU it does not name"),
                table=_sweep_table(rows),
                figure=c.figures("compute.figure"),
                verdict=_sweep_verdict(rows),
                source=_source_note(meta, c.inputs.get("compute"), rows),
            ),
        )
    rows = sorted(rows, key=lambda r: (finite_float(r.get("steps")) or 0, finite_float(r.get("train_s")) or 0))
    first = ("variant", "variant") if any("variant" in r for r in rows) else ("steps", "steps")
    return fill(
        "compute",
        compute=fill(
            "compute.measured",
            table=_rows_table(rows, first),
            figure=c.figures("compute.figure"),
            source=_source_note(meta, c.inputs.get("compute"), rows),
        ),
    )


def _memorisation(c: _Ctx) -> str:
    mem = c.m.get("memorisation") or {}
    s = mem.get("summary") or {}
    if not s:
        return fill("memorisation", memorisation=fill("memorisation.missing"))
    rows = [(f"generated images, {mem.get('space', '?')}", s)]
    if (mem.get("baseline") or {}).get("summary"):
        rows.append((f"real held-out slices (baseline), {mem.get('space', '?')}", mem["baseline"]["summary"]))
    if (mem.get("segmenter_features") or {}).get("summary"):
        rows.append(("generated images, segmenter features", mem["segmenter_features"]["summary"]))
    n_train = mem.get("n_train_reference")
    return fill(
        "memorisation",
        memorisation=fill(
            "memorisation.measured",
            of_n_train=f" (of {n_train})" if n_train is not None else "",
            reference=mem.get("heldout_reference") or "nearest held-out image",
            table=table(
                ["", "n", "median", "5th percentile", "minimum", "below 0.5", "below 0.1"],
                [
                    (
                        name,
                        r.get("n", "n/a"),
                        fmt(r.get("median")),
                        fmt(r.get("p05")),
                        fmt(r.get("min")),
                        fmt_pct(r.get("below_0.5")),
                        fmt_pct(r.get("below_0.1")),
                    )
                    for name, r in rows
                ],
            ),
            figure=c.figures("memorisation.figure"),
            data_line=c.data_line(),
        ),
    )


def _utility_cell(s: Mapping | None) -> str:
    if not s:
        return "n/a"
    sd = s.get("std")
    return f"{fmt(s.get('mean'))} ± {fmt(sd)}" if sd is not None else fmt(s.get("mean"))


def _seeds_cell(fg: Mapping) -> str:
    n, bad = fg.get("n", "?"), fg.get("failed") or 0
    return f"{n} ({bad} failed)" if bad else f"{n}"


def _utility_verdict(summary: Mapping) -> str:
    """One line per regime: real+synth minus real, synth as a share of real (mean foreground
    Dice), and the seeds whose training failed, with the medians beside the means."""
    lines = []
    for regime, arms in summary.items():
        fg = {a: ((arms.get(a) or {}).get("fg") or {}) for a in UTILITY_ARMS}
        real, mixed, synth = fg["real"], fg["real+synth"], fg["synth"]
        if finite_float(real.get("mean")) is None:
            continue
        parts = []
        if finite_float(mixed.get("mean")) is not None:
            delta = mixed["mean"] - real["mean"]
            spread = max(finite_float(mixed.get("std"), 0.0), finite_float(real.get("std"), 0.0))
            word = "within the seeds' spread of" if abs(delta) <= spread else ("above" if delta > 0 else "below")
            parts.append(
                f"real+synth {delta:+.3f} mean foreground Dice against real only ({word} it; sd up to {spread:.3f})"
            )
        if finite_float(synth.get("mean")) is not None and real["mean"] > 0:
            parts.append(f"synthetic only reaches {synth['mean'] / real['mean']:.0%} of real only")
        bad = [f"{a} {s['failed']}" for a, s in fg.items() if s.get("failed")]
        if bad:
            medians = ", ".join(f"{a} {fmt(s.get('median'))}" for a, s in fg.items() if s)
            parts.append(
                f"failed seeds (the segmenter predicts background everywhere; counted in the means): "
                f"{', '.join(bad)}; the medians are {medians}"
            )
        label = "all training subjects" if regime == "all" else f"{regime} training subjects"
        lines.append(f"- {label}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def utility_weights(utility: Mapping, path: str | Path | None) -> str | None:
    """The hash of the LDM weights the utility benchmark sampled with: its ``settings.ldm_weights``,
    else (files written before it recorded them) the one weights hash in the ``synthesis.json``
    files of its synthetic sets; None when neither says."""
    recorded = (utility.get("settings") or {}).get("ldm_weights")
    if recorded or path is None:
        return recorded
    found = set()
    for manifest in sorted(Path(path).parent.glob("synthetic/*/synthesis.json")):
        found.add((read_json(manifest).get("identity") or {}).get("checkpoint_weights"))
    return found.pop() if len(found) == 1 and None not in found else None


def _utility_provenance(c: _Ctx) -> str:
    used, evaluated = utility_weights(c.utility, c.inputs.get("utility")), c.meta.get("ldm_weights")
    if used is None or evaluated is None:
        return fill("utility.provenance.unknown")
    block = "utility.provenance.same" if used == evaluated else "utility.provenance.other"
    return fill(block, used=used, evaluated=evaluated)


def _utility(c: _Ctx) -> str:
    u = c.utility
    if not u:
        return fill("utility", utility=fill("utility.missing"))
    summary, regimes = u["summary"], u.get("regimes") or {}
    settings = u.get("settings") or {}
    rows = []
    for regime, arms in summary.items():
        r = regimes.get(regime) or {}
        for arm in UTILITY_ARMS:
            s = arms.get(arm)
            if s is None:
                continue
            real_n, synth_n = r.get("real_slices"), r.get("synthetic_slices")
            slices = {"real": f"{real_n}", "real+synth": f"{real_n} + {synth_n}", "synth": f"{synth_n}"}[arm]
            rows.append(
                (
                    f"all ({len(r.get('subjects') or [])})" if regime == "all" and r else regime,
                    arm,
                    slices if r else "?",
                    r.get("augment_masks", "?") if arm != "real" else "",
                    r.get("steps", "?"),
                    *(_utility_cell(s.get(k)) for k in ("LV", "MYO", "RV", "fg")),
                    _seeds_cell(s.get("fg") or {}),
                )
            )
    source = c.inputs.get("utility")
    figure = c.figures("utility.figure", folder=Path(source).parent) if source else ""
    return fill(
        "utility",
        utility=fill(
            "utility.measured",
            n_heldout=settings.get("held_out_slices", "?"),
            n_seeds=len(settings.get("seeds") or []) or "?",
            table=table(
                [
                    "training subjects",
                    "arm",
                    "training slices",
                    "warped copies per mask",
                    "steps",
                    "LV",
                    "MYO",
                    "RV",
                    "mean fg",
                    "seeds",
                ],
                rows,
            ),
            verdict=_utility_verdict(summary),
            provenance=_utility_provenance(c),
            figure=figure,
            command="python benchmarks/utility.py",
            source=_shown_path(c.inputs.get("utility") or "utility.json"),
        ),
    )


def _figures(c: _Ctx) -> str:
    generation = c.figures("figures.generation.figures", main=c.main)
    data = c.figures("figures.data.figures")
    if not (generation or data):
        return fill("figures", figures=fill("figures.none"))
    return fill(
        "figures",
        figures=fill(
            "figures.found", generation=generation, data=fill("figures.found.data", figures=data) if data else ""
        ),
    )


def _challenges(c: _Ctx) -> str:
    vs = c.m["variants"]
    # The mask alone against mask + real edges, with one sampler: DPM-Solver's pair where evaluated
    sampler = "dpm20" if "dpm20_mask_only" in vs else "ddim50"
    both, mask = vs.get(f"{sampler}_both") or c.variant, vs.get(f"{sampler}_mask_only")
    ddpm, dpm = vs.get("ddpm1000_both"), vs.get("dpm20_both")
    view = bool(c.cfg.unet.view_embedding) if c.cfg is not None else None
    by_view = (c.m.get("groups") or {}).get("view") or {}
    if len(by_view) > 1:
        views = fill(
            "challenges.by_view",
            views="; ".join(f"{k} SSIM {fmt_ms(e.get('ssim'))} (n = {e.get('n', '?')})" for k, e in by_view.items()),
        )
    else:
        views = fill("challenges.one_view", views=" and ".join(by_view) or "no")
    if mask is not None:
        mask_only = fill(
            "challenges.mask_only",
            mask_ssim=fmt_ms(mask.get("ssim")),
            mask_dice=fmt((mask.get("dice") or {}).get("mean_fg")),
            both_ssim=fmt_ms(both.get("ssim")),
            both_dice=fmt((both.get("dice") or {}).get("mean_fg")),
        )
    else:
        mask_only = fill("challenges.mask_only.missing")
    sampling = ""
    if ddpm is not None and dpm is not None:

        def steps(v):
            return (v.get("sampler") or {}).get("num_inference_steps", "?")

        sampling = fill(
            "challenges.sampling",
            ddpm_steps=steps(ddpm),
            ddim_steps=steps(both),
            dpm_steps=steps(dpm),
            ddpm_s=fmt(ddpm.get("s_per_image"), 3),
            ddim_s=fmt(both.get("s_per_image"), 3),
            dpm_s=fmt(dpm.get("s_per_image"), 3),
            ddpm_ssim=fmt_ms(ddpm.get("ssim")),
            ddim_ssim=fmt_ms(both.get("ssim")),
            dpm_ssim=fmt_ms(dpm.get("ssim")),
            ddpm_subset=" (DDPM on a subset of the slices, see the sampler table)."
            if ddpm.get("main_on_same_slices")
            else ".",
        )
    return fill(
        "challenges",
        view_embedding="on" if view else "off" if view is not None else "setting unknown",
        by_view=views,
        mask_only=mask_only,
        sampling=sampling,
        compute=fill("challenges.compute" if c.compute is not None else "challenges.compute.missing"),
        recipe=fill("challenges.recipe" if c.ablation is not None else "challenges.recipe.missing"),
    )


def _spaces(mem: Mapping) -> str:
    spaces = [mem.get("space", "pixels")] if mem else []
    if mem.get("segmenter_features"):
        spaces.append("segmenter features")
    return " and ".join(spaces) or "no space (not measured)"


def _limitations(c: _Ctx) -> str:
    realism = c.m.get("realism") or {}
    fid = (
        fill(
            "limitations.realism",
            n_generated=realism.get("n_generated", "?"),
            n_seeds=len(realism.get("seeds") or []),
            n_heldout=realism.get("n_heldout", "?"),
        )
        if realism
        else fill("limitations.distribution")
    )
    return fill(
        "limitations",
        phantom=fill("limitations.phantom") if c.phantom else "",
        n=c.meta.get("n", "?"),
        fid_sample_size=fid,
        memorisation_spaces=_spaces(c.m.get("memorisation") or {}),
    )


SHUFFLED_KEY = "05_shuffled_key.json"  # beside the figure: the generated cells' numbers


def _key(c: _Ctx) -> str:
    """The last page: which cells of the shuffled figure are generated, away from the figure so a
    reader can try it blind first."""
    path = c.figures_dir / SHUFFLED_KEY if c.figures_dir is not None else None
    if path is None or not path.exists():
        return ""
    try:
        cells = [int(k) for k in json.loads(path.read_text())["generated_cells"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"not a key of the shuffled figure ({type(e).__name__}: {e})") from None
    from mmldm.viz.report_figures import FIGURES

    return fill("key", cells=", ".join(map(str, cells)), n=len(cells), figure=FIGURES["shuffled"])


def _inputs(c: _Ctx) -> str:
    m = c.meta
    rows = [(k, f"`{_shown_path(v)}`") for k, v in c.inputs.items() if v]
    rows += [
        ("LDM checkpoint", f"`{_shown_path(m.get('ldm_checkpoint', '?'))}` (step {m.get('ldm_step', '?')})"),
        ("VQ-VAE checkpoint", f"`{_shown_path(m.get('vqvae_checkpoint', '?'))}`"),
        ("segmenter checkpoint", f"`{_shown_path(m.get('segmenter_checkpoint', '?'))}`"),
        ("store", f"`{_shown_path(m.get('store', '?'))}`"),
    ]
    return fill("inputs", table=table(["input", "file"], rows))


# The builder of each section that reads the inputs; the template gives the order, and fills the
# sections without a builder (intended use, the "Results" heading) with its fixed text alone.
SECTIONS: dict[str, Callable[[_Ctx], str]] = {
    "header": _header,
    "summary": _summary,
    "data": _data,
    "architecture": _architecture,
    "training": _training,
    "paired": _paired,
    "groups": _groups,
    "realism": _realism,
    "anatomy": _anatomy,
    "variants": _variants,
    "recipe": _recipe,
    "compute": _compute,
    "memorisation": _memorisation,
    "utility": _utility,
    "figures": _figures,
    "challenges": _challenges,
    "limitations": _limitations,
    "inputs": _inputs,
    "key": _key,
}


def report_sections(
    metrics: dict,
    cfg=None,
    figures_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    ablation: tuple[list[dict], dict] | None = None,
    compute: tuple[list[dict], dict] | None = None,
    inputs: Mapping[str, str] | None = None,
    utility: dict | None = None,
) -> dict[str, str]:
    """Each section of the report as Markdown, by name (:func:`section_names`, in order), so that a
    notebook can show one beside its figure. ``ablation``/``compute`` are what :func:`read_rows`
    returns; ``figures_dir`` is searched for figures, linked relative to ``out_dir``; ``inputs``
    names the files the numbers came from."""
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks section(s) {', '.join(missing)}")
    if metrics["main"] not in (metrics["variants"] or {}):
        raise ValueError(f"metrics' main variant {metrics['main']!r} is not among its variants")
    c = _Ctx(metrics, cfg, figures_dir, out_dir, ablation, compute, dict(inputs or {}), utility)
    unknown = set(SECTIONS) - set(section_names())
    if unknown:
        raise ValueError(f"{TEMPLATE} has no section(s) {', '.join(sorted(unknown))} for their builders")
    return {name: (SECTIONS[name](c) if name in SECTIONS else fill(name)).strip() for name in section_names()}


def build_report(
    metrics: dict,
    cfg=None,
    figures_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    ablation: tuple[list[dict], dict] | None = None,
    compute: tuple[list[dict], dict] | None = None,
    inputs: Mapping[str, str] | None = None,
    utility: dict | None = None,
) -> str:
    """The Markdown text of the whole report: :func:`report_sections` joined in order."""
    parts = report_sections(metrics, cfg, figures_dir, out_dir, ablation, compute, inputs, utility).values()
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


def draw_figures(
    metrics: dict,
    figures_dir: str | Path,
    samples: dict | None = None,
    table=None,
    compute_rows: list[dict] | None = None,
    memorisation_ratios=None,
) -> dict[str, Path]:
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
        save(
            "grid",
            rf.generation_grid(
                samples["cond"],
                {f"generated ({metrics['main']})": samples["generated"]},
                samples["real"],
                samples.get("label"),
                segmentation=samples.get("segmentation"),
            ),
        )
        ex = samples.get("examples")
        if isinstance(ex, dict) and isinstance(ex.get("generated"), dict) and len(ex["generated"]) > 1:
            save(
                "examples",
                rf.generation_grid(ex["cond"], ex["generated"], ex["real"], overlay=False, n=len(ex["real"])),
            )
        fig, key = rf.shuffled_real_vs_generated(samples["real"], samples["generated"], show_key=False)
        save("shuffled", fig)
        out["shuffled_key"] = atomic.write_text(figures_dir / SHUFFLED_KEY, json.dumps({"generated_cells": key}) + "\n")
    spectrum = (metrics.get("realism") or {}).get("spectrum")
    if spectrum:
        save("spectrum", rf.radial_spectra(spectrum))
    save("variants", rf.variant_bars(metrics))
    if table is not None and len(table):
        try:
            save("groups", rf.group_boxplots(table))
        except ValueError:
            pass  # no metric or group column: nothing to draw
    ratios = (
        memorisation_ratios if memorisation_ratios is not None else (metrics.get("memorisation") or {}).get("ratios")
    )
    if ratios is not None and len(ratios):
        mem = metrics.get("memorisation") or {}
        save(
            "memorisation",
            rf.memorisation_histogram(
                ratios, (mem.get("baseline") or {}).get("ratios"), space=mem.get("space", "pixels")
            ),
        )
    if compute_rows:
        save("compute", rf.compute_plot(compute_rows))
    return out


def write_report(
    cfg,
    metrics_path: str | Path,
    out_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    ablation_path: str | Path | None = None,
    compute_path: str | Path | None = None,
    samples_path: str | Path | None = None,
    table_path: str | Path | None = None,
    draw: bool = True,
    utility_path: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``report.md`` and a copy of ``metrics.json`` into ``out_dir`` (default
    :func:`report_dir`), drawing the evaluation figures into ``figures_dir`` (default the
    profile's) first when ``draw``. ``ablation_path``/``compute_path`` default to
    ``ablation.json``/``compute.json`` in ``out_dir``, and ``utility_path`` to
    ``utility/utility.json`` there (benchmarks/utility.py), used when they exist. Returns the paths
    written: ``{"report", "metrics", <figure roles>}``."""
    import pandas as pd

    metrics_path = Path(metrics_path)
    metrics = read_metrics(metrics_path)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(cfg)
    figures_dir = Path(figures_dir) if figures_dir is not None else Path(cfg.figures_dir)
    ablation_path = Path(ablation_path) if ablation_path is not None else out_dir / "ablation.json"
    compute_path = Path(compute_path) if compute_path is not None else out_dir / "compute.json"
    ablation, compute = read_rows(ablation_path), read_rows(compute_path)
    utility_path = Path(utility_path) if utility_path is not None else out_dir / "utility" / "utility.json"
    utility = read_utility(utility_path)

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

    inputs = {
        "metrics": str(metrics_path),
        "ablation": str(ablation_path) if ablation else None,
        "compute": str(compute_path) if compute else None,
        "samples": str(samples_path) if samples_path else None,
        "per-image table": str(table_path) if table_path else None,
        "utility": str(utility_path) if utility else None,
    }
    text = build_report(metrics, cfg, figures_dir, out_dir, ablation, compute, inputs, utility)
    metrics_copy = out_dir / "metrics.json"
    if metrics_copy.resolve() != metrics_path.resolve():
        atomic.copy_file(metrics_path, metrics_copy)
    written["metrics"] = metrics_copy
    written["report"] = atomic.write_text(out_dir / "report.md", text)
    return written

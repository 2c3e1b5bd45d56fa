"""The report builder: every section from a synthetic metrics.json, numbers from the inputs only."""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch

from mmldm import report
from mmldm.config import REPO_ROOT, load_config
from mmldm.errors import DataError
from mmldm.report import (
    build_report,
    figure_list,
    fill,
    limiting_stage,
    read_metrics,
    read_rows,
    read_utility,
    report_dir,
    report_sections,
    section_names,
    template_blocks,
    write_report,
)
from mmldm.viz import report_figures as rf

VARIANTS = {  # name: (sampler, steps, guidance mode)
    "ddim50_both": ("ddim", 50, "both"),
    "dpm20_both": ("dpm_solver", 20, "both"),
    "ddpm1000_both": ("ddpm", 1000, "both"),
    "ddim50_mask_only": ("ddim", 50, "mask_only"),
    "ddim50_edges_only": ("ddim", 50, "edges_only"),
    "ddim50_no_guidance": ("ddim", 50, "none"),
}


def synthetic_metrics(n: int = 12) -> dict:
    """A metrics.json with distinctive numbers (each one appears nowhere else)."""
    variants = {}
    for j, (name, (sampler, steps, mode)) in enumerate(VARIANTS.items()):
        variants[name] = {
            "sampler": {"name": sampler, "num_inference_steps": steps},
            "n": n,
            "guidance": {"mode": mode, "scale_mask": 2.0, "scale_edge": 2.0},
            "s_per_image": 0.1111 * (j + 1),
            "ssim": {"mean": 0.3011 + j / 100, "std": 0.0517},
            "psnr": {"mean": 14.37 + j, "std": 1.23},
            "nmse": {"mean": 0.4219 + j / 100, "std": 0.0611},
            "saturated": 0.0,
            "dice": {"LV": 0.7712, "MYO": 0.6213, "RV": 0.6317, "mean_fg": 0.6741 - j / 100},
        }
    groups = {
        "view": {
            "SA": {
                "n": 10,
                "ssim": {"mean": 0.5123, "std": 0.01},
                "psnr": {"mean": 15.0, "std": 1.0},
                "nmse": {"mean": 0.4, "std": 0.1},
            },
            "LA": {
                "n": 2,
                "ssim": {"mean": 0.4456, "std": 0.02},
                "psnr": {"mean": 13.0, "std": 1.0},
                "nmse": {"mean": 0.5, "std": 0.1},
            },
        },
        "phase": {
            "ED": {
                "n": 6,
                "ssim": {"mean": 0.3789, "std": 0.01},
                "psnr": {"mean": 15.0, "std": 1.0},
                "nmse": {"mean": 0.4, "std": 0.1},
            }
        },
        "pathology": {},
    }
    ratios = list(np.linspace(0.7, 1.2, n))
    variants["ddpm1000_both"]["n"] = 4  # the slow sampler runs on a subset, with the main one beside it
    variants["ddpm1000_both"]["main_on_same_slices"] = {
        "n": 4,
        "ssim": {"mean": 0.2468, "std": 0.01},
        "nmse": {"mean": 0.5, "std": 0.1},
        "dice": {"mean_fg": 0.6},
    }
    groups["view"]["SA"]["dice_fg"] = {"mean": 0.6543, "std": 0.05}
    return {
        "meta": {
            "profile": "smoke",
            "ldm_profile": "smoke",
            "source": "phantom",
            "n_split": 36,
            "store": "data/processed/phantom_smoke.h5",
            "split": "val",
            "n": n,
            "seed": 0,
            "ldm_checkpoint": "runs/x/ldm/last.pt",
            "ldm_step": 4321,
            "ldm_weights": "0123456789abcdef",
            "vqvae_checkpoint": "runs/x/vqvae/last.pt",
            "segmenter_checkpoint": "runs/x/segmenter/segmenter.pt",
            "created": "2025-01-01T00:00:00",
            "seconds": 12.5,
            "torch": "2.x",
            "device": "cpu",
        },
        "published": {"fid": 116.09, "ssim": 0.44, "nmse": 1.14, "source": "the seed study, M&Ms-2 256x256"},
        "reconstruction": {
            "split": "val",
            "n_images": 12,
            "step": 700,
            "metrics": {
                "ssim": {"mean": 0.7123, "std": 0.05, "n": 12},
                "psnr": {"mean": 24.61, "std": 1.0, "n": 12},
                "nmse": {"mean": 0.0383, "std": 0.01, "n": 12},
            },
            "codebook": {"used": 345, "codebook_size": 1024, "perplexity": 210.7},
        },
        "ceiling": {"dice": {"LV": 0.8304, "MYO": 0.7516, "RV": 0.7634, "mean_fg": 0.7826}},
        "variants": variants,
        "main": "ddim50_both",
        "groups": groups,
        "realism": realism_block(),
        "memorisation": {
            "ratios": ratios,
            "space": "pixels",
            "n_train_reference": 345,
            "heldout_reference": "nearest held-out slice of another subject",
            "summary": {"n": n, "median": 0.9531, "p05": 0.7277, "min": 0.7001, "below_0.1": 0.0, "below_0.5": 0.0},
            "baseline": {
                "ratios": [0.8, 0.9, None],
                "what": "real held-out slices",
                "summary": {"n": 2, "median": 0.8517, "p05": 0.8, "min": 0.8, "below_0.1": 0.0, "below_0.5": 0.0},
            },
        },
    }


def realism_block() -> dict:
    """metrics.json's realism block: 24 images (12 masks x 2 seeds) against 36 held-out slices."""
    freqs = [0.0, 0.125, 0.25, 0.375, 0.5]
    return {
        "variant": "ddim50_both",
        "n_generated": 24,
        "n_masks": 12,
        "seeds": [0, 12],
        "reused_main": True,
        "n_heldout": 36,
        "n_train": 24,
        "inception": {
            "label": "standard (Inception-v3 pool3)",
            "available": True,
            "reason": "",
            "fid": 87.65,
            "kid_mean": 0.0456,
            "kid_std": 0.0078,
            "real_vs_real_fid": 43.21,
            "ratio": 2.0285,
            "n": 24,
            "n_heldout": 36,
            "n_real_vs_real": 24,
            "autoencoder": {"fid": 61.23, "kid_mean": 0.0321, "kid_std": 0.0045, "ratio": 1.417, "n": 24},
        },
        "segmenter": {
            "label": "in-domain (segmenter features)",
            "available": True,
            "reason": "",
            "fid": 3.4567,
            "kid_mean": 0.0123,
            "kid_std": 0.0021,
            "real_vs_real_fid": 1.2345,
            "ratio": 2.8001,
            "n": 24,
            "n_heldout": 36,
            "n_real_vs_real": 24,
            "autoencoder": {"fid": 1.9753, "kid_mean": 0.0067, "kid_std": 0.0011, "ratio": 1.6001, "n": 24},
        },
        "spectrum": {
            "frequency": freqs,
            "cutoff": 0.25,
            "window": "hann",
            "reference": "heldout",
            "spectra": {
                "generated": [0.0, 1.0, 0.1, 0.01, 0.001],
                "heldout": [0.0, 1.1, 0.2, 0.05, 0.01],
                "train": [0.0, 1.05, 0.19, 0.045, 0.011],
                "reconstruction": [0.0, 1.1, 0.15, 0.02, None],
            },
            "hf_fraction": {"generated": 0.0812, "heldout": 0.1234, "train": 0.1199, "reconstruction": 0.0934},
            "hf_ratio": {"generated": 0.658, "train": 0.9716, "reconstruction": 0.7569},
            "bands": [[0.0, 0.0625], [0.0625, 0.125], [0.125, 0.25], [0.25, None]],
            "band_ratio": {
                "generated": [1.031, 1.413, 1.552, 0.427],
                "train": [0.98, 1.01, 0.99, 1.02],
                "reconstruction": [0.97, 0.88, 0.71, 0.36],
            },
            "n": {"generated": 24, "heldout": 36, "train": 24, "reconstruction": 36},
        },
        "autoencoder": {
            "what": "...",
            "n": 36,
            "n_train": 24,
            "ssim": {"mean": 0.8123, "std": 0.031, "n": 36},
            "psnr": {"mean": 27.89, "std": 1.1, "n": 36},
            "nmse": {"mean": 0.0211, "std": 0.01, "n": 36},
        },
    }


def samples(n: int = 12, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(n, size, size, dtype=torch.long)
    label[:, 4:12, 4:12] = 2
    label[:, 6:10, 6:10] = 1
    onehot = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()
    edge = (torch.rand(n, 1, size, size, generator=g) > 0.9).float()
    out = {
        "generated": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
        "real": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
        "label": label.to(torch.uint8),
        "cond": torch.cat([edge, onehot], 1).to(torch.uint8),
        "segmentation": label.flip(-1).to(torch.uint8),
    }
    out["examples"] = {
        "real": out["real"][:3],
        "cond": out["cond"][:3],
        "generated": {name: out["generated"][:3] * (j + 1) / 6 for j, name in enumerate(VARIANTS)},
    }
    return out


def per_image(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "subject": [f"s{i // 4}" for i in range(n)],
            "view": ["SA"] * (n - 2) + ["LA"] * 2,
            "phase": ["ED", "ES"] * (n // 2),
            "pathology": ["NOR"] * n,
            "ssim": rng.uniform(0.2, 0.5, n),
            "psnr": rng.uniform(12, 16, n),
            "nmse": rng.uniform(0.3, 0.6, n),
            "dice_fg": rng.uniform(0.5, 0.8, n),
        }
    )


@pytest.fixture
def inputs(tmp_path):
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(synthetic_metrics()))
    torch.save(samples(), tmp_path / "eval" / "samples.pt")
    per_image().to_csv(tmp_path / "eval" / "per_image.csv", index=False)
    return tmp_path


SECTIONS = [
    "# mmldm evaluation report",
    "## Summary",
    "## Intended use",
    "## Data",
    "## Architecture",
    "## Training configuration",
    "## Results",
    "### Paired fidelity",
    "### By group",
    "### Realism",
    "### Anatomy compliance",
    "### Samplers and conditions",
    "### Training recipe",
    "### Quality against compute",
    "### Memorisation",
    "### Downstream utility",
    "## Figures",
    "## Challenges",
    "## Limitations",
    "## Inputs",
]


def test_every_section_and_table_from_synthetic_metrics(inputs):
    cfg = load_config("smoke")
    out, figs = inputs / "report", inputs / "report" / "figures"
    written = write_report(
        cfg,
        inputs / "eval" / "metrics.json",
        out_dir=out,
        figures_dir=figs,
        samples_path=inputs / "eval" / "samples.pt",
        table_path=inputs / "eval" / "per_image.csv",
    )
    text = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    # Numbers from the JSON, formatted: published beside ours, groups, distribution, Dice, memorisation.
    for number in (
        "116.09",
        "0.440",
        "1.140",
        "0.301 ± 0.052",
        "0.422 ± 0.061",
        "14.37",
        "0.512",
        "0.446",
        "0.379",
        "3.46",
        "0.0123 ± 0.0021",
        "1.23",
        "0.830",
        "0.783",
        "0.674",
        "0.953",
        "0.728",
        "0.712",
        "24.61",
        "345 of 1024",
        "4321",
        "0.111",
        "0.667",
        "0.654 ± 0.050",
        "0.247 ± 0.010",
        "0.852",
        "(of 345)",
    ):
        assert number in text, number
    # Realism: FID beside its baseline and ratio, the autoencoder's ceiling, texture, all at their n.
    for number in (
        "87.65",
        "0.0456 ± 0.0078",
        "43.21",
        "2.03",
        "61.23",
        "1.42",
        "2.80",
        "1.60",
        "1.98",
        "8.1 %",
        "12.3 %",
        "0.658",
        "0.972",
        "0.757",
        "0.812 ± 0.031",
        "27.89 ± 1.10",
        "n = 24",
        "12 held-out masks",
        "24 generated / 36 held-out / 24 training",
    ):
        assert number in text, number
    realism = text[text.index("### Realism") : text.index("### Anatomy")]
    assert "**The diffusion model limits realism**" in realism and "41%" in realism  # (1.417-1)/(2.0285-1)
    assert "From the Inception FID ratios" in realism
    assert "Realism (24 generated images against 36 real held-out slices)" in text  # the summary
    assert "smoother than real" in text  # high-frequency ratio 0.658
    # The band columns: each set's power per octave over the held-out slices', with the reference at 1.
    assert "| band 0–0.0625 | band 0.0625–0.125 | band 0.125–0.25 | band > 0.25 |" in realism
    assert "| 1.03 | 1.41 | 1.55 | 0.43 |" in realism and "| 1.00 | 1.00 | 1.00 | 1.00 |" in realism
    assert "synthetic phantom" in text and "not for clinical decisions" in text
    assert "Bernard et al." in text and "Martín-Isla et al." in text and "CC BY-NC-SA 4.0" in text
    for name in VARIANTS:
        assert f"`{name}`" in text
    # Architecture from the config, with parameter counts.
    assert str(cfg.vqvae.codebook_size) in text and str(cfg.unet.down_channels) in text
    assert len(re.findall(r"\| parameters \| [\d.]+ [kM] \|", text)) == 3  # VQ-VAE, UNet, segmenter
    # Optional inputs missing: said so, no crash.
    assert "no `ablation.json` given" in text and "no `compute.json` given" in text
    # Figures drawn and linked relative to the report; the metrics copied beside it.
    for role in ("grid", "examples", "variants", "groups", "memorisation", "spectrum", "shuffled"):
        assert written[role].exists() and f"figures/{rf.FIGURES[role]}" in text, role
    assert json.loads((out / "metrics.json").read_text()) == synthetic_metrics()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # atomic writes leave no temporaries


def test_sections_come_in_the_template_order_without_gaps():
    text = build_report(synthetic_metrics(), load_config("smoke"))
    where = [re.search("^" + re.escape(heading), text, re.M).start() for heading in SECTIONS]
    assert where == sorted(where)  # the headings, in the template's order
    assert "\n\n\n" not in text
    sections = report_sections(synthetic_metrics(), load_config("smoke"))
    assert list(sections) == section_names()
    assert sections["intended_use"].startswith("## Intended use\n\nResearch and teaching only.")  # no builder
    for name, body in sections.items():
        assert body or name == "key", name  # the key's page only when the shuffled figure was drawn
        assert "\n\n\n" not in body and "${" not in body, name  # every placeholder filled


def test_the_template_holds_the_prose_and_the_code_uses_every_block():
    blocks = template_blocks()
    sections = section_names()
    assert sections[:3] == ["header", "summary", "intended_use"] and sections[-2:] == ["inputs", "key"]
    assert set(report.SECTIONS) <= set(sections)  # a builder without a section would be silently dropped
    source = resources.files("mmldm").joinpath("report.py").read_text(encoding="utf-8")
    for name in blocks:
        if "." in name:
            assert name.split(".")[0] in sections + ["shared"], name  # a piece belongs to a section
            assert f'"{name}"' in source, name  # no piece the code never uses
    # One home for the prose: no sentence of the template is typed into the code as well.
    for name, body in blocks.items():
        for chunk in re.split(r"\$\{\w+\}|\n", body):
            if len(chunk.strip()) >= 40:
                assert chunk.strip() not in source, (name, chunk)
    # The evaluation figures the template links are the ones mmldm.viz.report_figures saves.
    listed = [
        f for b in blocks if b.endswith((".figure", ".figures")) for f, _ in figure_list(b, profile="x", main="m")
    ]
    assert {f for f in listed if f.startswith("05_")} <= set(rf.FIGURES.values())
    assert len(listed) == len(set(listed)) and "vqvae_loss_x.png" in listed


def test_fill_drops_a_piece_that_does_not_apply():
    values = dict(n=7, fid_sample_size="FID here.", memorisation_spaces="pixels")
    without = fill("limitations", phantom="", **values)
    assert without.startswith("## Limitations\n\n- The seed's published figures") and "\n\n\n" not in without
    assert "n = 7 held-out slices and one sampling seed; FID here. Standard" in without
    with_phantom = fill("limitations", phantom=fill("limitations.phantom"), **values)
    assert with_phantom.startswith("## Limitations\n\n- The data is the synthetic phantom")
    assert with_phantom.count("\n- ") == without.count("\n- ") + 1  # one item more, still one list
    with pytest.raises(KeyError, match="memorisation_spaces"):
        fill("limitations", phantom="", n=7, fid_sample_size="")
    assert fill("shared.image", caption="A cat.", path="figures/cat.png") == "![A cat.](figures/cat.png)\n*A cat.*"
    m = synthetic_metrics()
    del m["variants"]["ddpm1000_both"]  # no slow-sampling item: the list closes up, no blank line inside
    challenges = report_sections(m)["challenges"]
    assert "Slow sampling" not in challenges and challenges.count("\n\n") == 1 and challenges.count("\n- ") == 4


def test_numbers_follow_the_json(inputs):
    m = synthetic_metrics()
    base = build_report(m)
    m["variants"]["ddim50_both"]["ssim"]["mean"] = 0.8642
    m["published"]["fid"] = 99.87
    changed = build_report(m)
    assert "0.864" in changed and "0.864" not in base
    assert "99.87" in changed and "116.09" not in changed
    assert "on cpu, sampling in fp32" in base  # a metrics.json without "precision" sampled in fp32
    m["meta"]["precision"] = "bf16"
    assert "on cpu, sampling in bf16" in build_report(m)


def test_optional_ablation_and_compute_tables(inputs):
    out = inputs / "report"
    out.mkdir()
    # benchmarks/convergence.py's format: {variant spec: row}, NaN where not measured.
    (out / "ablation.json").write_text(
        json.dumps(
            {
                "seed@ddpm1000": {
                    "variant": "seed@ddpm1000",
                    "sampler": "ddpm1000",
                    "steps": 1000,
                    "ssim": 0.1198,
                    "nmse": 1.6557,
                    "dice_fg": 0.3954,
                    "train_s": 860.7,
                    "real_dice_fg": 0.7815,
                    "source": "acdc",
                },
                "ours_x0_lr1e-3": {
                    "ssim": 0.3981,
                    "nmse": 0.4193,
                    "dice_fg": 0.6777,
                    "train_s": float("nan"),
                    "source": "acdc",
                },
            }
        )
    )
    (out / "compute.json").write_text(
        json.dumps(
            {
                "ours": {
                    "variant": "ours",
                    "steps": 1000,
                    "train_s": 600.0,
                    "ssim": 0.3913,
                    "nmse": 0.43,
                    "dice_fg": 0.66,
                },
                "ours*2": {
                    "variant": "ours*2",
                    "steps": 2000,
                    "train_s": 1200.0,
                    "ssim": 0.4127,
                    "nmse": 0.41,
                    "dice_fg": 0.69,
                },
                "ours*4": {
                    "variant": "ours*4",
                    "steps": 4000,
                    "train_s": 2400.0,
                    "ssim": 0.4391,
                    "nmse": 0.39,
                    "dice_fg": 0.71,
                },
            }
        )
    )
    written = write_report(
        load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, figures_dir=out / "figures"
    )
    text = written["report"].read_text()
    for number in ("0.120", "1.656", "0.395", "0.398", "0.678", "861", "0.391", "0.413", "0.439", "4000"):
        assert number in text, number
    assert "`seed@ddpm1000` | ddpm1000 | 1000 |" in text and "`ours_x0_lr1e-3` | n/a | n/a |" in text
    assert "data `acdc`" in text and "`ours*4`" in text
    assert "no `ablation.json`" not in text and "no `compute.json`" not in text
    assert written["compute"].exists() and f"figures/{rf.FIGURES['compute']}" in text
    fig = rf.compute_plot(read_rows(out / "compute.json")[0])
    assert len(fig.axes[0].lines) == 1  # ours, ours*2, ours*4: one recipe, one line
    rf.plt.close(fig)


def sweep_row(scale, minutes, c2st, fid, dice, **extra):
    """A row as benchmarks/compute_sweep.py's point_from writes it."""
    return {"variant": f"laptop_x{scale:g}", "scale": scale, "vqvae_steps": int(1000 * scale),
            "steps": int(1000 * scale), "cpu_minutes": minutes, "c2st": c2st, "c2st_auc": c2st + 0.05,
            "c2st_floor": 0.46, "fid_ratio": fid, "seg_fid_ratio": fid * 2, "dice_fg": dice,
            "real_dice_fg": 0.796, "cpu": "AMD EPYC, no bf16 (fp32)", **extra}  # fmt: skip


def test_compute_section_for_the_whole_recipe_sweep(inputs):
    """Rows with CPU minutes (the whole recipe at several budgets) get their own table, a computed
    sentence of what the largest budget bought, and the three-panel figure against CPU minutes."""
    out = inputs / "report"
    out.mkdir()
    rows = [sweep_row(1.0, 104.0, 0.893, 2.88, 0.796), sweep_row(0.25, 26.0, 0.951, 3.70, 0.741)]
    (out / "compute.json").write_text(json.dumps({"meta": {"cpu": "AMD EPYC, no bf16 (fp32)"},
                                                  **{r["variant"]: r for r in rows}}))  # fmt: skip
    written = write_report(
        load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, figures_dir=out / "figures"
    )
    text = written["report"].read_text()
    section = text[text.index("### Quality against compute") :]
    section = section[: section.index("\n## ") if "\n## " in section else None]
    assert "at 0.25×, 1.00× its default budget" in section and "AMD EPYC, no bf16 (fp32)" in section
    assert section.index("0.25× (`laptop_x0.25`)") < section.index("1.00× (`laptop_x1`)")  # sorted by minutes
    assert (
        "| 0.25× (`laptop_x0.25`) | 250 | 250 | 26 | 0.951 (1.001) | 0.460 | 3.70 | 7.40 | 0.741 | 0.796 |" in section
    )
    assert "From 0.25× to 1.00× the budget (4.0× the CPU minutes): C2ST accuracy 0.951 → 0.893" in section
    assert "Inception FID ratio 3.70 → 2.88" in section and "mask-only Dice 0.741 → 0.796" in section
    assert written["compute"].exists() and f"figures/{rf.FIGURES['compute']}" in section
    fig = rf.compute_plot(rows)
    c2st_ax, fid_ax, dice_ax = fig.axes
    assert "C2ST" in c2st_ax.get_title() and "CPU minutes" in c2st_ax.get_xlabel()
    assert list(c2st_ax.lines[0].get_xdata()) == [26.0, 104.0]  # sorted by CPU minutes
    assert list(c2st_ax.lines[1].get_ydata()) == [0.46, 0.46]  # the floor beside it
    assert list(fid_ax.lines[1].get_ydata()) == [7.40, 5.76]  # segmenter-feature ratio, dashed
    assert list(dice_ax.lines[1].get_ydata()) == [0.796, 0.796]  # the ceiling
    rf.plt.close(fig)
    with pytest.raises(ValueError, match="sweep_plot: rows need"):
        rf.sweep_plot([{"cpu_minutes": 1.0}])


def test_compute_sweep_reads_training_time_from_the_logs(tmp_path):
    """benchmarks/compute_sweep.py charges optimiser time from log.csv (steps since the last row x
    batch / images per second) and scales every step count of both schedules, nothing else."""
    sweep = load_benchmark("compute_sweep")
    log = tmp_path / "log.csv"
    log.write_text("step,loss,images_per_s\n25,1.0,10.0\n50,0.9,5.0\n60,0.8,\n")
    assert sweep.train_seconds(log, batch=4) == pytest.approx(25 * 4 / 10 + 25 * 4 / 5)  # the empty rate: skipped
    cfg = load_config("laptop")
    sets = dict(s.split("=") for s in sweep.scaled_overrides(cfg, 0.25))
    assert sets["train_vqvae.steps"] == str(round(cfg.train_vqvae.steps / 4))
    assert sets["train_ldm.warmup_steps"] == str(round(cfg.train_ldm.warmup_steps / 4))
    assert sets["vqvae.adversarial_start"] == str(round(cfg.vqvae.adversarial_start / 4))
    assert {k.split(".")[1] for k in sets} == {"steps", "warmup_steps", "sample_every", "ckpt_every",
                                               "adversarial_start"}  # fmt: skip


def test_report_keeps_the_key_of_the_shuffled_figure_for_its_last_page(inputs):
    """The look-alike figure is drawn without its key; the key is the report's last section, after
    a page break, read from the JSON written beside the figure, so a reader can try it blind."""
    out = inputs / "report"
    written = write_report(
        load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, figures_dir=out / "figures",
        samples_path=inputs / "eval" / "samples.pt",
    )  # fmt: skip
    text = written["report"].read_text()
    key = json.loads(written["shuffled_key"].read_text())["generated_cells"]
    samples = torch.load(inputs / "eval" / "samples.pt", weights_only=True)
    fig, expected = rf.shuffled_real_vs_generated(samples["real"], samples["generated"], show_key=False)
    assert key == expected and not [t for t in fig.texts if "key" in t.get_text()]  # no key under the grid
    rf.plt.close(fig)
    last = text[text.rindex('<div style="page-break-before: always"></div>') :]
    assert last.startswith("<div") and "## Key to the shuffled figure" in last
    assert ", ".join(map(str, key)) in last and text.index("## Inputs") < text.index(last)
    assert "the key is on the last page" in text
    (out / "figures" / "05_shuffled_key.json").write_text("{not json")
    with pytest.raises(DataError, match="05_shuffled_key.json: not a key of the shuffled figure"):
        build_report(synthetic_metrics(), load_config("smoke"), figures_dir=out / "figures")


def load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_utility_section_reads_what_the_benchmark_writes(inputs):
    """benchmarks/utility.py's files (written by its own write_outputs) become the report's table,
    its per-regime verdict and its figure; without them the section says how to measure."""
    utility = load_benchmark("utility")
    out = inputs / "report"
    fg = {"real": [0.50, 0.54, 0.52], "real+synth": [0.60, 0.62, 0.61], "synth": [0.40, 0.42, 0.44]}
    rows = [
        {"regime": "5", "arm": arm, "seed": seed, "train_slices": 90, "steps": 100,
         "dice": {"LV": v + 0.1, "MYO": v - 0.1, "RV": v, "fg": v}}
        for arm, values in fg.items() for seed, v in enumerate(values)
    ]  # fmt: skip
    rows += [  # 20 subjects: seed 0 of the real arm collapsed to background
        {"regime": "20", "arm": arm, "seed": seed, "train_slices": 360, "steps": 100,
         "dice": {c: (0.0 if (arm, seed) == ("real", 0) else 0.7) for c in ("LV", "MYO", "RV", "fg")}}
        for arm in ("real", "real+synth") for seed in range(3)
    ]  # fmt: skip
    regimes = {"5": {"subjects": list("abcde"), "real_slices": 90, "synthetic_slices": 360, "steps": 100}}
    settings = {"held_out_slices": 550, "seeds": [0, 1, 2]}
    result = utility.write_outputs(out / "utility", settings, regimes, rows)
    assert result["summary"]["5"]["real"]["fg"]["mean"] == pytest.approx(0.52)
    assert result["summary"]["5"]["real"]["fg"]["std"] == pytest.approx(0.02)
    written = write_report(load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, draw=False)
    text = written["report"].read_text()
    assert "| 5 | real+synth | 90 + 360 | ? | 100 | 0.710 ± 0.010 | 0.510 ± 0.010 | 0.610 ± 0.010 |" in text
    assert "real+synth +0.090 mean foreground Dice against real only (above it" in text
    assert "synthetic only reaches 81% of real only" in text
    assert "](utility/utility.png)" in text and "550 held-out real slices" in text
    assert (
        "| 20 | real | ? |  | ? | 0.467 ± 0.404 | 0.467 ± 0.404 | 0.467 ± 0.404 | 0.467 ± 0.404 | 3 (1 failed) |"
        in text
    )
    assert "failed seeds (the segmenter predicts background everywhere; counted in the means): real 1" in text
    assert "the medians are real 0.700, real+synth 0.700" in text
    # Which LDM it measured: not recorded here, so the report says so; then from its synthetic
    # sets' synthesis.json (files of an older benchmark); then recorded, and another model's.
    assert "Which LDM weights this was measured with is not recorded" in text
    manifest = out / "utility" / "synthetic" / "5_subjects" / "synthesis.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"identity": {"checkpoint_weights": "0123456789abcdef"}}))
    text = write_report(load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, draw=False)["report"]
    assert "Measured with the LDM evaluated above (UNet weights `0123456789abcdef`)" in text.read_text()
    utility.write_outputs(out / "utility", {**settings, "ldm_weights": "fedcba9876543210"}, regimes, rows)
    text = write_report(load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, draw=False)["report"]
    assert "**Measured with an earlier LDM** (UNet weights `fedcba9876543210`) than the one evaluated above" in (
        text.read_text()
    )
    (out / "utility" / "utility.json").unlink()
    text = write_report(load_config("smoke"), inputs / "eval" / "metrics.json", out_dir=out, draw=False)["report"]
    assert "Not measured for this report: `python benchmarks/utility.py" in text.read_text()
    (out / "utility" / "utility.json").write_text(json.dumps({"summary": {"5": {"mixed": {}}}}))
    with pytest.raises(DataError, match=r"utility\.json.*not an arm"):
        read_utility(out / "utility" / "utility.json")


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"metrics\.json.*not valid JSON"):
        read_metrics(bad)
    m = synthetic_metrics()
    del m["variants"]
    bad.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"metrics\.json.*variants"):
        read_metrics(bad)
    m = synthetic_metrics()
    m["main"] = "nope"
    bad.write_text(json.dumps(m))
    with pytest.raises(DataError, match="nope"):
        read_metrics(bad)
    with pytest.raises(DataError, match="no such file"):
        read_metrics(tmp_path / "missing.json")
    assert read_rows(tmp_path / "absent.json") is None
    (tmp_path / "ablation.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="ablation.json"):
        read_rows(tmp_path / "ablation.json")


def test_realism_verdict_follows_the_numbers():
    m = synthetic_metrics()
    m["realism"]["inception"]["autoencoder"]["ratio"] = 1.9  # reconstructions already far from real
    text = build_report(m)
    assert "**The autoencoder limits realism**" in text and "1.90" in text and "88%" in text
    m["realism"]["inception"]["ratio"] = 1.05  # generated within 10 % of the baseline
    assert "neither stage measurably limits realism" in build_report(m)
    m["realism"]["inception"].update(available=False, reason="no Inception file here", fid=None, ratio=None)
    text = build_report(m)  # falls back to the in-domain ratios: 2.80 over 1.60 -> (0.60 / 1.80) = 33 %
    assert "no Inception file here" in text and "From the in-domain FID ratios" in text and "33%" in text
    assert "**The diffusion model limits realism**" in text
    assert limiting_stage(None, 1.2)[0] is None and limiting_stage(3.0, 0.8)[0] == "diffusion"
    assert limiting_stage(3.0, 2.0)[0] == "autoencoder" and limiting_stage(1.1, 5.0)[0] == "neither"


def test_a_metrics_file_from_before_the_realism_block_still_reports():
    m = synthetic_metrics()
    del m["realism"]
    m["distribution"] = {
        "inception": {
            "fid": None,
            "kid_mean": None,
            "kid_std": None,
            "real_vs_real_fid": None,
            "n": 12,
            "available": False,
            "reason": "no Inception weights file found",
        },
        "segmenter": {
            "fid": 3.9876,
            "kid_mean": 0.0123,
            "kid_std": 0.0021,
            "real_vs_real_fid": 1.2345,
            "n": 12,
            "label": "in-domain (segmenter features)",
        },
    }
    text = build_report(m)
    assert "### Distribution: FID and KID" in text and "3.99" in text and "no Inception weights file found" in text
    assert "in-domain FID on segmenter features 3.99" in text and "### Realism" not in text


def test_missing_sections_still_build():
    m = synthetic_metrics()
    for key in ("reconstruction", "ceiling", "groups", "realism", "memorisation"):
        m.pop(key)
    text = build_report(m)  # no config, no figures
    assert "## Results" in text and "No configuration was given" in text
    assert "No distribution metrics" in text and "Not measured (no memorisation" in text
    assert "n/a" in text


def test_smoke_report_goes_into_the_run_folder_not_the_committed_report():
    # Every profile's report goes into its run folder; only ./run_all.sh --publish fills report/.
    for profile in ("smoke", "quick", "laptop", "paper"):
        cfg = load_config(profile)
        assert report_dir(cfg) == cfg.run_dir and report_dir(cfg).name != "report"


def test_figures_draw(tmp_path):
    m, s = synthetic_metrics(), samples()
    for fig in (
        rf.generation_grid(s["cond"], {"generated": s["generated"]}, s["real"], s["label"]),
        rf.variant_bars(m),
        rf.group_boxplots(per_image()),
        rf.memorisation_histogram(m["memorisation"]["ratios"]),
        rf.compute_plot(
            [
                {"steps": 10, "train_s": 5.0, "ssim": 0.1, "nmse": 0.9, "dice_fg": 0.2},
                {"steps": 20, "train_s": 9.0, "ssim": 0.2, "nmse": 0.8, "dice_fg": 0.3},
            ]
        ),
    ):
        assert fig.axes
        rf.plt.close(fig)
    fig = rf.radial_spectra(m["realism"]["spectrum"])
    left, right = fig.axes
    assert len(left.lines) == 4 + 1 and len(right.lines) == 4 + 2  # 4 sets, the cutoff (and 1 on the right)
    assert any("12.3 % above cutoff" in t.get_text() for t in left.get_legend().get_texts())
    rf.plt.close(fig)
    g = torch.Generator().manual_seed(1)
    real, generated = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    fig, key = rf.shuffled_real_vs_generated(real, generated, n=16, seed=0)
    cells = [ax for ax in fig.axes if ax.images]
    assert len(cells) == 32 and len(fig.axes) == 32  # a 4 x 8 grid, every cell an image
    assert len(key) == 16 and key == sorted(set(key)) and set(key) <= set(range(1, 33))
    assert any(", ".join(map(str, key)) in t.get_text() for t in fig.texts)  # the key is printed below
    shown = {tuple(ax.images[0].get_array().data.ravel()[:3].round(5)) for ax in cells}
    generated_first = {tuple(x.ravel()[:3].numpy().round(5)) for x in generated}
    assert sum(c in generated_first for c in shown) == 16  # exactly 16 cells hold generated images
    for cell in key:
        first = tuple(fig.axes[cell - 1].images[0].get_array().data.ravel()[:3].round(5))
        assert first in generated_first, cell
    assert rf.shuffled_real_vs_generated(real, generated, seed=0)[1] == key  # seeded
    rf.plt.close(fig)
    fig, key = rf.shuffled_real_vs_generated(real[:3], generated[:3])  # fewer than asked: 3 + 3 cells
    assert len([ax for ax in fig.axes if ax.images]) == 6 and len(key) == 3
    rf.plt.close(fig)
    with pytest.raises(ValueError, match="no images"):
        rf.shuffled_real_vs_generated(real[:0], generated)
    with pytest.raises(ValueError, match="group_boxplots"):
        rf.group_boxplots(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="no images"):
        rf.generation_grid(s["cond"][:0], {}, s["real"][:0])


def test_trajectory_ends_at_the_sampled_image():
    # An untrained smoke-size model is enough: the trajectory must be sample()'s own run.
    from mmldm.inference import LatentDiffusion
    from mmldm.models.unet import UNet
    from mmldm.models.vqvae import VQVAE

    cfg = load_config("smoke")
    torch.manual_seed(0)
    c = cfg.unet.latent_channels
    stats = {"mode": "channel", "mean": [0.1] * c, "std": [0.5] * c, "min": -3.0, "max": 3.0}
    ldm = LatentDiffusion(cfg, UNet(cfg.unet).eval(), VQVAE(cfg.vqvae).eval(), stats)
    s = samples(n=2, size=cfg.data.size)
    cond, view = s["cond"].float(), torch.tensor([0, 1])
    traj = ldm.trajectory(cond, view, seed=3, frames=3)
    assert traj.steps == [0, 2, 4] and len(traj.timesteps) == 3  # 5 DDIM steps at smoke: first, middle, last
    h = cfg.data.size // cfg.vqvae.downsample_factor
    assert len(traj.x_t) == len(traj.x0_hat) == 3 and traj.x_t[0].shape == (2, c, h, h)
    direct = ldm.sample(cond, view, sampler=cfg.sampler, seed=3)
    torch.testing.assert_close(traj.images, direct)
    assert traj.timesteps == sorted(traj.timesteps, reverse=True)  # noisy to clean
    assert len(ldm.trajectory(cond, view, seed=3)) == 5  # every step without frames
    fig = rf.trajectory_strip(ldm, traj, s["cond"], s["real"], index=1)
    assert len(fig.axes) == 2 * (1 + 3 + 1 + 1)
    rf.plt.close(fig)


def test_the_headline_says_what_the_main_row_conditions_on():
    from mmldm.report import main_condition

    m = synthetic_metrics()
    assert "(the mask and the real slice's Canny edges: a reconstruction benchmark" in build_report(m)
    m["main"] = "ddim50_mask_only"
    assert "`ddim50_mask_only` (the mask alone, as a user with a label map samples)" in build_report(m)
    assert main_condition("dpm20_mask_edges").startswith("the mask and edges drawn from it")

"""The whole run, headless: run_all's pipeline executes the notebooks with papermill (smoke)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO


def _run(tmp_path, *extra):
    sets = [f"paths.phantom_dir={tmp_path / 'phantom'}", f"paths.store={tmp_path / 'store.h5'}",
            f"paths.runs={tmp_path / 'runs'}", f"paths.figures={tmp_path / 'figures'}"]
    cmd = [sys.executable, "-m", "mmldm.pipeline", "--profile", "smoke", *extra]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


NOTEBOOKS = ["01_data_exploration", "02_preprocessing", "03_vqvae_training", "04_ldm_training", "05_evaluation"]


@pytest.mark.slow
def test_pipeline_runs_notebooks_and_skips_when_up_to_date(tmp_path):
    committed = REPO / "report" / "report.md"
    committed_before = committed.stat().st_mtime_ns if committed.exists() else None
    first = _run(tmp_path)  # 01-05: data, store, VQ-VAE, LDM, evaluation (2-3 minutes on the smoke profile)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "store.h5").exists()
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    for name in NOTEBOOKS:
        nb = json.loads((runs / "notebooks" / f"{name}.ipynb").read_text())
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), name
        # The committed notebooks stay output-free.
        src = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
        assert not any(c.get("outputs") for c in src["cells"] if c["cell_type"] == "code"), name
    assert (figures / "01_phantom_vs_real.png").exists()
    # The two training stages leave their checkpoints, metrics and figures.
    assert (runs / "vqvae" / "last.pt").exists() and (runs / "ldm" / "last.pt").exists()
    recon = json.loads((runs / "vqvae" / "recon_metrics.json").read_text())
    assert recon["profile"] == "smoke" and set(recon["metrics"]) == {"ssim", "psnr", "nmse"}
    for png in ("03_reconstructions", "03_codebook_usage", "04_samples", "vqvae_loss_smoke", "ldm_loss_smoke"):
        assert (figures / f"{png}.png").exists(), png
    # 05: the evaluation and the report, beside the figures folder (never the committed report/).
    metrics = json.loads((runs / "evaluation" / "metrics.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["meta"]["profile"] == "smoke" and metrics["meta"]["source"] == "phantom"
    report = (tmp_path / "report.md").read_text()
    main = metrics["variants"][metrics["main"]]
    for text in ("## Summary", "## Intended use", "synthetic phantom", "Bernard et al.", "### Anatomy compliance",
                 f"SSIM {main['ssim']['mean']:.3f} ± {main['ssim']['std']:.3f}", "## Limitations"):
        assert text in report, text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/05_generated_vs_real.png" in links and "figures/05_trajectory.png" in links
    assert all((tmp_path / link).exists() for link in links), links
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == committed_before

    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr
    assert all(f"[{name}] up to date" in second.stdout for name in NOTEBOOKS), second.stdout


def test_pipeline_names_the_failing_notebook(tmp_path):
    # A source folder that does not exist fails in the data step with a clear message.
    bad = _run(tmp_path, "--only", "01", "--source", str(tmp_path / "nowhere"))
    assert bad.returncode != 0
    assert "nowhere" in bad.stderr and "not a folder" in bad.stderr


def test_pipeline_stops_at_first_failing_cell(tmp_path):
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    bad = _run(tmp_path, "--source", str(empty))
    assert bad.returncode != 0
    assert "01_data_exploration.ipynb failed in cell" in bad.stderr
    assert "DataError" in bad.stderr and "empty_dataset" in bad.stderr
    assert "02_preprocessing" not in bad.stdout  # stopped at the first failure

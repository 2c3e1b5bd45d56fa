"""The whole run, headless: run_all's pipeline executes the notebooks with papermill (smoke)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO


def _run(tmp_path, *extra):
    sets = [
        f"paths.phantom_dir={tmp_path / 'phantom'}",
        f"paths.store={tmp_path / 'store.h5'}",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.figures={tmp_path / 'figures'}",
    ]
    cmd = [sys.executable, "-m", "mmldm.notebook_runner", "--profile", "smoke"]
    for s in sets:
        cmd += ["--set", s]
    cmd += extra  # after: an --set here wins
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
    for text in (
        "## Summary",
        "## Intended use",
        "synthetic phantom",
        "Bernard et al.",
        "### Anatomy compliance",
        f"SSIM {main['ssim']['mean']:.3f} ± {main['ssim']['std']:.3f}",
        "## Limitations",
    ):
        assert text in report, text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/05_generated_vs_real.png" in links and "figures/05_trajectory.png" in links
    assert all((tmp_path / link).exists() for link in links), links
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == committed_before

    # Progress in the terminal: a line per stage with its number, the trainers' step / total,
    # images/s and ETA, and what the notebooks print (indented).
    for i, name in enumerate(NOTEBOOKS + ["06_interactive"], 1):
        assert f"[{name}] running (stage {i}/6; " in first.stdout, first.stdout
    for stage in ("vqvae", "ldm"):
        assert re.search(rf"^    {stage}: step 12/12 \(100%\).* images/s, ETA ", first.stdout, re.M), first.stdout
    assert re.search(r"^    profile smoke: ", first.stdout, re.M), first.stdout
    # The kernels' own chatter stays in their log files: nothing a user would read as a failure.
    for text in ("ERROR", "Traceback", "without encryption"):
        assert text not in first.stdout + first.stderr, text
    assert (runs / "notebooks" / "03_vqvae_training.kernel.log").exists()

    publish = tmp_path / "published"
    second = _run(tmp_path, "--publish", "--publish-to", str(publish))
    assert second.returncode == 0, second.stderr
    assert all(f"[{name}] up to date" in second.stdout for name in NOTEBOOKS), second.stdout
    # --publish copies the report, its metrics and the figures it shows, with links that resolve.
    published = (publish / "report.md").read_text()
    assert json.loads((publish / "metrics.json").read_text()) == metrics
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", published)
    assert "figures/05_generated_vs_real.png" in links and all((publish / link).exists() for link in links), links
    assert {p.name for p in (publish / "figures").iterdir()} == {link.split("/")[-1] for link in links}
    assert "[publish]" in second.stdout


def test_run_all_defaults_keep_to_the_run_folder():
    # With the default paths a run writes only under runs/<kind>_<profile>/ and data/ (both
    # git-ignored), never into the tracked report/: a fresh-clone ./run_all.sh leaves git status clean.
    from mmldm.config import load_config
    from mmldm.report import report_dir

    ignored = (REPO / ".gitignore").read_text().split()
    assert "runs/" in ignored and any(line.startswith("data/") for line in ignored), ignored
    for profile in ("smoke", "quick", "laptop", "paper"):
        cfg = load_config(profile)
        run = REPO / "runs" / f"phantom_{profile}"
        assert cfg.run_dir == run and cfg.figures_dir == run / "figures" and report_dir(cfg) == run
        assert cfg.store_path.parent == REPO / "data" / "processed"
    checked = subprocess.run(
        [
            "git",
            "check-ignore",
            "runs/phantom_smoke/report.md",
            "data/processed/phantom_smoke.h5",
            "data/raw/phantom6/x",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if checked.returncode != 128:  # 128: not a git checkout (an unpacked archive)
        assert len(checked.stdout.split()) == 3, checked.stdout


def test_run_folder_refuses_another_source_of_the_same_kind(tmp_path, acdc_root):
    # Two ACDC folders would share runs/acdc_smoke: the second is refused, naming --name.
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "source.txt").write_text("/somewhere/else/ACDC/training\n")
    bad = _run(tmp_path, "--only", "01", "--source", str(acdc_root))
    assert bad.returncode == 1 and "--name" in bad.stderr and "/somewhere/else" in bad.stderr, bad.stderr


def test_run_all_name_names_the_run_folder(tmp_path):
    # --name replaces <kind>_<profile> in the run folder (and the store) templates.
    ok = _run(tmp_path, "--only", "none", "--name", "my_run", "--set", f"paths.runs={tmp_path / '{run}'}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "my_run" / "source.txt").read_text().strip() == "phantom"
    assert f"run folder {tmp_path / 'my_run'}" in ok.stdout


def test_publish_needs_a_report(tmp_path):
    bad = _run(tmp_path, "--only", "none", "--publish", "--publish-to", str(tmp_path / "pub"))
    assert bad.returncode == 1 and "report.md does not exist" in bad.stderr, bad.stdout + bad.stderr
    assert not (tmp_path / "pub").exists()


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
    assert "no known dataset layout" in bad.stderr  # the cell's error text itself
    assert "02_preprocessing" not in bad.stdout  # stopped at the first failure


def test_progress_line_and_indented_output():
    import io

    from mmldm.notebook_runner import _Indented
    from mmldm.train.loop import progress_line

    line = progress_line("vqvae", 150, 600, {"loss": 0.01234, "images_per_s": 41.2}, 0, 60.0)
    assert line == "vqvae: step 150/600 (25%) loss 0.0123, 41.2 images/s, ETA 3m00s"
    assert progress_line("ldm", 10, 10, {"images_per_s": 1.0}, 10, 5.0).endswith("ETA ?")
    out = io.StringIO()
    w = _Indented(out)
    w.write("a\nb")
    w.write("c\n")
    w.write("d\n")
    assert out.getvalue() == "    a\n    bc\n    d\n"


def test_bars_become_lines_headless(monkeypatch, capsys):
    from mmldm import progress

    monkeypatch.setenv("MMLDM_PROGRESS", "lines")
    for _ in progress.tqdm(range(3), desc="variants"):
        pass
    out = capsys.readouterr().out
    assert "\r" not in out and out.splitlines()[-1].startswith("variants: 100%") and "3/3" in out, out

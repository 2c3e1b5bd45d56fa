"""The ``paper`` profile end to end on the CPU, so that a GPU user never meets a first-time bug.

``python -m mmldm.notebook_runner --profile paper`` (what ``./run_all.sh --profile paper`` runs) executes
notebooks 01-05 with the paper's architecture unchanged (256x256 slices, VQ-VAE 22.0 M parameters
with a 3x32x32 latent and a 16,384-code codebook, UNet 103.5 M with concat_nearest conditioning,
epsilon target, 1,000 training timesteps, the paper's segmenter) but tiny in work, through
``--set`` overrides only: a 3-subject phantom with its long-axis slices (2 per subject: 4
training, 2 held-out slices), one VQ-VAE step with the GAN on, two LDM steps of batch 2, one
segmenter epoch, the profile's DDPM sampler cut to 2 steps, and an evaluation of the 2 held-out
slices by the DPM-Solver++ 20-step variant (20 UNet passes instead of DDIM's 50: the DDIM sampler
still runs in notebook 04's training grid). Every output goes to a temporary folder; the
committed ``report/`` is checked to be untouched.

Notebook 06 is left out: headless it samples 15 DDIM-25 trajectories and decodes every step of
each, more than a quarter of an hour at 256x256 on two CPU cores (a try had not finished after 15
minutes; its first three cells ran). :func:`test_paper_explorer_callbacks`
runs its callbacks (``mmldm.viz.widgets.Explorer``) once each on the paper model instead.

About 4 minutes on a 2-core CPU with one thread (measured: the pipeline 228 s wall, 222 s CPU; the
module 245 s); twice that on a machine busy with other jobs. Most of it is the 256x256 VQ-VAE's
encodes / decodes (~1.7 s each) and the 103 M-parameter UNet's passes (~0.4 s per image).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

VQVAE_PARAMS = 22_003_932
UNET_PARAMS = 103_526_546
SIZE, LATENT = 256, (3, 32, 32)
NOTEBOOKS = ["01_data_exploration", "02_preprocessing", "03_vqvae_training", "04_ldm_training", "05_evaluation"]
MAIN = "dpm20_both"


def paper_overrides(tmp) -> list[str]:
    """The paper profile, tiny in work; the architecture sections (vqvae except when its GAN
    starts, unet, diffusion, segmenter except epochs and batch) are left as they are."""
    return [
        # Every output in tmp: the phantom, the store, the run folder, the figures and the report.
        f"paths.phantom_dir={tmp / 'phantom'}",
        f"paths.store={tmp / 'store.h5'}",
        f"paths.runs={tmp / 'runs'}",
        f"paths.figures={tmp / 'figures'}",
        "paths.phantom_subjects=3",
        "data.views=[LA]",
        "data.val=1",
        "data.workers=0",
        # One VQ-VAE step, generator and discriminator (the GAN on from step 0).
        "vqvae.adversarial_start=0",
        *(
            f"train_vqvae.{k}"
            for k in (
                "steps=1",
                "batch_size=1",
                "num_workers=0",
                "in_memory=true",
                "cpu_threads=1",
                "log_every=1",
                "sample_every=1",
                "ckpt_every=1",
            )
        ),
        *(
            f"train_ldm.{k}"
            for k in (
                "steps=2",
                "batch_size=2",
                "num_workers=0",
                "in_memory=true",
                "cpu_threads=1",
                "log_every=1",
                "sample_every=2",
                "ckpt_every=2",
            )
        ),
        "segmenter.epochs=1",
        "segmenter.batch_size=2",
        "segmenter.cpu_threads=1",
        "sampler.num_inference_steps=2",  # the profile's DDPM, 2 of its 1,000 steps (notebook 04)
        "evaluation.n=2",
        "evaluation.n_ddpm=1",
        f"evaluation.variants=[{MAIN}]",
        f"evaluation.main={MAIN}",
        "evaluation.realism_n=2",
        "evaluation.realism_seeds=1",
        "evaluation.batch_size=2",
    ]


def pipeline_command(tmp) -> list[str]:
    cmd = [sys.executable, "-m", "mmldm.notebook_runner", "--profile", "paper", "--only", *(n[:2] for n in NOTEBOOKS)]
    for s in paper_overrides(tmp):
        cmd += ["--set", s]
    return cmd


def tracked_report() -> dict[str, str]:
    """Hash of every git-tracked file under report/, and git's status of report/ (untracked
    files included)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "report"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    out = {
        f: hashlib.sha256((REPO / f).read_bytes()).hexdigest() if (REPO / f).exists() else "missing" for f in files if f
    }
    out["<git status>"] = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", "report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    report_before = tracked_report()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(pipeline_command(tmp), cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    seconds, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"paper pipeline 01-05: {seconds:.0f} s wall, {cpu:.0f} s CPU (one thread)\n{proc.stdout}")
    yield {"tmp": tmp, "proc": proc, "seconds": seconds, "report_before": report_before}
    for ckpt in (tmp / "runs").rglob("*.pt"):  # 1.5 GB of checkpoints; notebooks, logs and figures stay
        ckpt.unlink()


@pytest.fixture(scope="module")
def paper_ldm(paper_run):
    """The trained paper LDM, loaded once (UNet, VQ-VAE, config)."""
    from mmldm.inference import LatentDiffusion

    assert paper_run["proc"].returncode == 0, "the pipeline failed: " + paper_run["proc"].stderr[-3000:]
    return LatentDiffusion.from_checkpoint(paper_run["tmp"] / "runs" / "ldm" / "last.pt")


def finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_paper_pipeline_runs_every_stage_at_paper_size(paper_run, paper_ldm):
    from mmldm.config import load_config, to_dict
    from mmldm.inference import load_vqvae
    from mmldm.models import param_count

    proc, tmp = paper_run["proc"], paper_run["tmp"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for name in NOTEBOOKS:
        assert f"[{name}] done" in proc.stdout, name
    runs, figures = tmp / "runs", tmp / "figures"
    paper = to_dict(load_config("paper"))

    # 02: the store holds 256x256 slices, training and held-out.
    with h5py.File(tmp / "store.h5", "r") as f:
        assert f["image"].shape[1:] == (SIZE, SIZE) and f["label"].shape[1:] == (SIZE, SIZE)
        splits = {s.decode() for s in f["meta/split"][:]}
    assert splits == {"train", "val"}

    # 03: the paper VQ-VAE, its checkpoint, reconstructions and metrics.
    vqvae, ref = load_vqvae(runs / "vqvae" / "last.pt")
    assert param_count(vqvae) == VQVAE_PARAMS
    trained_vq = {k: v for k, v in ref["config"].items() if k != "adversarial_start"}
    assert trained_vq == {k: v for k, v in paper["vqvae"].items() if k != "adversarial_start"}
    recon = json.loads((runs / "vqvae" / "recon_metrics.json").read_text())
    assert recon["profile"] == "paper" and recon["latent_shape"] == list(LATENT)
    assert all(finite(recon["metrics"][m]["mean"]) for m in ("ssim", "psnr", "nmse"))
    vq_log = (runs / "vqvae" / "log.csv").read_text().splitlines()
    assert len(vq_log) == 2 and "d_total" in vq_log[0]
    assert vq_log[1].split(",")[vq_log[0].split(",").index("d_total")] != ""  # the discriminator stepped

    # 04: the latent cache (3x32x32 latents of every training slice) and the paper UNet.
    with h5py.File(runs / "ldm" / "latents.h5", "r") as f:
        assert f["latents"].shape[1:] == LATENT and len(f["latents"]) == 4
        assert np.isfinite(f["latents"][:]).all()
    ldm = paper_ldm  # from_checkpoint checks that its VQ-VAE is the one trained above (weights hash)
    assert ldm.step == 2 and param_count(ldm.unet) == UNET_PARAMS
    cfg = ldm.config
    assert to_dict(cfg.unet) == paper["unet"] and to_dict(cfg.diffusion) == paper["diffusion"]
    assert cfg.unet.conditioning == "concat_nearest" and cfg.diffusion.prediction_type == "epsilon"
    assert cfg.diffusion.num_train_timesteps == 1000 and cfg.data.size == SIZE

    # 05: the segmenter, the evaluation and the report, all in tmp.
    assert (runs / "segmenter" / "segmenter.pt").exists()
    metrics = json.loads((runs / "evaluation" / "metrics.json").read_text())
    assert json.loads((tmp / "metrics.json").read_text()) == metrics
    assert metrics["meta"]["profile"] == "paper" and metrics["meta"]["n"] == 2
    assert metrics["main"] == MAIN and list(metrics["variants"]) == [MAIN]
    main = metrics["variants"][MAIN]
    assert main["n"] == 2 and main["sampler"]["name"] == "dpm_solver" and main["sampler"]["num_inference_steps"] == 20
    for m in ("ssim", "psnr", "nmse"):
        assert finite(main[m]["mean"]), m
    assert finite(main["dice"]["mean_fg"]) and finite(metrics["ceiling"]["dice"]["mean_fg"])
    assert finite(metrics["realism"]["segmenter"]["fid"]) and metrics["realism"]["n_generated"] == 2
    assert all(finite(r) for r in metrics["memorisation"]["ratios"])
    report = (tmp / "report.md").read_text()
    for text in ("## Summary", "Profile `paper`", f"{SIZE}×{SIZE}", "103.53 M", "22.00 M", "concat_nearest"):
        assert text in report, text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/05_generated_vs_real.png" in links and all((tmp / link).exists() for link in links), links
    for png in ("03_reconstructions", "04_samples", "05_trajectory", "vqvae_loss_paper", "ldm_loss_paper"):
        assert (figures / f"{png}.png").exists(), png

    # Nothing was written into the committed report/.
    assert tracked_report() == paper_run["report_before"]


def test_paper_explorer_callbacks(paper_run, paper_ldm, one_thread):
    """Notebook 06's callbacks, once each, on the paper model at 256x256."""
    from mmldm.config import load_config
    from mmldm.viz.widgets import Explorer

    cfg = load_config("paper", overrides=paper_overrides(paper_run["tmp"]))
    explorer = Explorer(paper_ldm, cfg.store_path, sampler=cfg.sampler, guidance=cfg.guidance)
    explorer.select(explorer.typical_slice())  # one showing LV, myocardium and RV
    x_t, x0 = explorer.forward_noising(500)
    assert x_t.shape == x0.shape == (SIZE, SIZE) and np.isfinite(x0).all()
    explorer.edit("LV", 2)
    traj = explorer.regenerate(steps=1)
    assert traj.x_t.shape == (2, SIZE, SIZE) and traj.settings["edited"]

"""Two processes on the CPU (gloo) with ``torchrun``: the weights stay identical on every rank.

``torchrun --standalone --nproc_per_node=2 -m mmldm train-vqvae|train-ldm --config smoke`` trains
with DistributedDataParallel; each rank prints the hash of its final weights (buffers included:
the VQ codebook is updated by EMA outside the optimiser, so only the quantiser's all-reduce keeps
it in sync), and rank 0 alone writes the checkpoint, whose weights must hash the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmldm.checkpoint import LAST, load_checkpoint, weights_hash
from mmldm.train.log import read_log
from smoke_models import write_tiny_store

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def torchrun(stage: str, store: Path, out: Path, *extra: str) -> dict[int, str]:
    """Run one stage on 2 CPU processes; returns {rank: weights hash} as each rank printed it."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mmldm",
        f"train-{stage}",
        "--config",
        "smoke",
        "--device",
        "cpu",
        "--store",
        str(store),
        "--out",
        str(out),
        "--figures",
        str(out / "figures"),
        "--quiet",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hashes = {int(r): h for r, h in re.findall(rf"train-{stage}: rank (\d)/2 weights ([0-9a-f]{{16}})", proc.stdout)}
    assert sorted(hashes) == [0, 1], proc.stdout
    return hashes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    store = write_tiny_store(root / "tiny.h5")
    # VQVAE: EMA codebook with dead-code restarts, across the adversarial start.
    vq = torchrun("vqvae", store, root / "vqvae", "--set=vqvae.restart_after=3")
    ldm = torchrun("ldm", store, root / "ldm", f"--vqvae={root / 'vqvae' / LAST}")
    return root, vq, ldm


@pytest.mark.parametrize("stage", ["vqvae", "ldm"])
def test_ranks_end_with_identical_weights_and_rank0_saves_them(runs, stage):
    root, vq, ldm = runs
    hashes = vq if stage == "vqvae" else ldm
    assert hashes[0] == hashes[1]
    ckpt = load_checkpoint(root / stage / LAST, stage=stage)
    assert weights_hash(ckpt["model"]) == hashes[0]
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2  # each rank's random streams, for --resume
    # The ranks draw different noise (their saved generators differ), from the same data order seed.
    if stage == "ldm":
        g0, g1 = (r["generators"]["noise"] for r in ckpt["rng"])
        assert not g0.equal(g1)


def test_one_log_written_by_rank_zero(runs):
    root, _, _ = runs
    log = read_log(root / "vqvae" / "log.csv")
    steps = log["step"].tolist()
    assert steps == sorted(set(steps))  # one row per step: not two processes appending
    assert (root / "vqvae" / "figures" / "vqvae_loss_smoke.png").exists()
    assert not list((root / "vqvae").glob(".*tmp-*"))

"""Kill a training run with SIGKILL part-way, resume it, and get bit-identical weights.

For each stage: an uninterrupted ``smoke`` run and a second run that is SIGKILLed as soon as its
second checkpoint exists (so ``prev.pt`` and ``last.pt`` are both there) are started side by
side as subprocesses of the CLI; then ``--resume`` finishes the killed run. Its final checkpoint
must equal the uninterrupted one's tensor for tensor: model, discriminator or EMA, optimiser
moments. The runs are long enough (40 steps, a checkpoint every 3) that the kill lands mid-run;
the test checks that it did. The VQVAE run crosses ``adversarial_start`` and restarts dead codes
after the kill; the LDM run uses EMA, latent normalisation, condition dropout and UNet dropout,
so every random stream the trainers draw from is exercised.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmldm.checkpoint import LAST, PREVIOUS, load_checkpoint
from mmldm.train.log import read_log
from smoke_models import write_tiny_store

REPO = Path(__file__).resolve().parent.parent
STEPS = 40
COMMON = [f"--set=train_{{stage}}.steps={STEPS}", "--set=train_{stage}.ckpt_every=3", "--set=train_{stage}.log_every=1"]
VQVAE_SET = ["--set=vqvae.restart_after=3"]  # dead-code restarts draw from the global RNG
LDM_SET = ["--set=guidance.p_drop_edge=0.5", "--set=guidance.p_drop_mask=0.5"]

pytestmark = pytest.mark.slow


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def command(stage: str, store: Path, out: Path, figures: Path, extra: list[str]) -> list[str]:
    sets = [s.format(stage=stage) for s in COMMON] + extra
    return [
        sys.executable,
        "-m",
        "mmldm",
        f"train-{stage}",
        "--config",
        "smoke",
        "--store",
        str(store),
        "--out",
        str(out),
        "--figures",
        str(figures),
        "--quiet",
        *sets,
    ]


def flatten(obj, prefix=""):
    """Every tensor (and number) in a nested checkpoint, by path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def assert_same_training_state(a: dict, b: dict, parts: list[str]) -> None:
    for part in parts:
        fa, fb = dict(flatten(a[part])), dict(flatten(b[part]))
        assert fa.keys() == fb.keys(), part
        for key, va in fa.items():
            vb = fb[key]
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), f"{part}{key} differs after resuming"
            else:
                assert va == vb, f"{part}{key}: {va} != {vb}"


def kill_after_second_checkpoint(cmd: list[str], out: Path, timeout: float = 300) -> int:
    """Start ``cmd``, SIGKILL it once ``prev.pt`` appears; returns the step of ``last.pt`` then."""
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not (out / PREVIOUS).exists():
        if proc.poll() is not None:
            output = proc.stdout.read().decode()
            pytest.fail(f"run ended (rc {proc.returncode}) before its second checkpoint:\n{output}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return load_checkpoint(out / LAST)["step"]


def run_interrupted_and_reference(stage: str, store: Path, tmp: Path, extra: list[str]) -> tuple[dict, dict, Path]:
    ref_out, cut_out = tmp / "reference" / stage, tmp / "interrupted" / stage
    reference = subprocess.Popen(
        command(stage, store, ref_out, tmp / "fig_ref", extra),
        env=env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed_at = kill_after_second_checkpoint(command(stage, store, cut_out, tmp / "fig_cut", extra), cut_out)
    assert 3 <= killed_at < STEPS
    resumed = subprocess.run(
        command(stage, store, cut_out, tmp / "fig_cut", extra) + ["--resume"],
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out.decode()
    a, b = load_checkpoint(ref_out / LAST), load_checkpoint(cut_out / LAST)
    assert a["step"] == b["step"] == STEPS
    # The log of the resumed run reads like the uninterrupted one (rows after the kill replaced).
    la, lb = read_log(ref_out / "log.csv"), read_log(cut_out / "log.csv")
    assert la["step"].tolist() == lb["step"].tolist() == list(range(1, STEPS + 1))
    for column in la:
        if column != "images_per_s":
            assert ((la[column] == lb[column]) | (la[column] != la[column])).all(), column  # equal or both NaN
    return a, b, cut_out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("store") / "tiny.h5")


def test_vqvae_resume_is_exact(store, tmp_path):
    a, b, _ = run_interrupted_and_reference("vqvae", store, tmp_path, VQVAE_SET)
    assert_same_training_state(a, b, ["model", "extra", "optimizers", "schedulers"])
    assert (read_log(tmp_path / "reference" / "vqvae" / "log.csv")["restarted"] > 0).any()


def test_ldm_resume_is_exact(store, tmp_path):
    vqvae = subprocess.run(
        command("vqvae", store, tmp_path / "vqvae", tmp_path / "fig", []),
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert vqvae.returncode == 0, vqvae.stdout + vqvae.stderr
    extra = LDM_SET + [f"--vqvae={tmp_path / 'vqvae' / LAST}"]
    a, b, _ = run_interrupted_and_reference("ldm", store, tmp_path, extra)
    assert_same_training_state(a, b, ["model", "ema", "optimizers", "schedulers", "extra"])


def test_truncated_checkpoint_is_named_and_resume_uses_the_previous(store, tmp_path, capsys):
    from mmldm.cli import main

    run = tmp_path / "vqvae"
    args = [
        "train-vqvae",
        "--config",
        "smoke",
        "--store",
        str(store),
        "--out",
        str(run),
        "--figures",
        str(tmp_path),
        "--quiet",
        "--set=train_vqvae.steps=6",
        "--set=train_vqvae.ckpt_every=3",
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
        data = (run / LAST).read_bytes()
        (run / LAST).write_bytes(data[: len(data) // 3])
        # Loading it (here as the LDM's VQVAE) is a one-line error naming both files.
        assert (
            main(
                [
                    "train-ldm",
                    "--config",
                    "smoke",
                    "--store",
                    str(store),
                    "--vqvae",
                    str(run / LAST),
                    "--out",
                    str(tmp_path / "ldm"),
                    "--quiet",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert str(run / LAST) in err and "truncated or corrupt" in err and str(run / PREVIOUS) in err
        assert (run / PREVIOUS).exists() and load_checkpoint(run / PREVIOUS)["step"] == 3
        # --resume warns and continues from prev.pt (step 3) to the end (and names the changed setting).
        with pytest.warns(UserWarning) as caught:
            assert main(args + ["--resume", "--set=train_vqvae.steps=9"]) == 0
        messages = [str(w.message) for w in caught]
        assert any(re.search(r"resuming from .*prev\.pt", m) for m in messages), messages
        assert any("train_vqvae.steps: 6 -> 9" in m for m in messages), messages
    finally:
        torch.set_num_threads(before)
    assert load_checkpoint(run / LAST)["step"] == 9
    assert read_log(run / "log.csv")["step"].tolist()[-1] == 9


def test_a_finished_run_with_a_truncated_last_checkpoint_is_made_whole_again(store, tmp_path):
    # last.pt truncated, prev.pt already at the final step: resuming trains nothing, and used to write
    # nothing either, leaving the run broken for every later stage. Now last.pt is written again.
    from mmldm.cli import main

    run = tmp_path / "vqvae"
    args = ["train-vqvae", "--config", "smoke", "--store", str(store), "--out", str(run), "--figures", str(tmp_path)]
    args += ["--quiet", "--set=train_vqvae.steps=6", "--set=train_vqvae.ckpt_every=3"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
        data = (run / LAST).read_bytes()
        (run / PREVIOUS).write_bytes(data)  # as after a save that rotated the final checkpoint
        assert load_checkpoint(run / PREVIOUS)["step"] == 6
        (run / LAST).write_bytes(data[: len(data) // 3])
        with pytest.warns(UserWarning, match="resuming from .*prev.pt"):
            assert main(args + ["--resume"]) == 0
    finally:
        torch.set_num_threads(before)
    assert load_checkpoint(run / LAST)["step"] == 6

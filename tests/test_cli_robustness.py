"""Nothing lost, no tracebacks: every way a command can be misused, through the CLI as a user
calls it (a subprocess: exit status, the one-line message, and what is left on disk).

Beside tests/test_bad_input.py (broken datasets, at the reader level). The models are the
session's smoke models (conftest.smoke_ldm) or a few training steps; each test takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmldm.checkpoint import LAST
from smoke_models import REPO, cli_command, cli_env, dead_pid, run_cli, write_acdc, write_tiny_store

SMOKE = ["--config", "smoke", "--quiet"]
SHORT = ["--set", "train_vqvae.steps=3", "--set", "train_ldm.steps=3"]  # a run in a few seconds


def one_line_error(result, command: str, *fragments: str) -> str:
    """The command failed with status 2 and one line ``mmldm <command>: error: ...`` holding
    every fragment, and no traceback."""
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"mmldm {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def temporaries(folder: Path) -> list[Path]:
    """Every temporary name of mmldm.atomic's scheme under ``folder``."""
    return sorted(p for p in Path(folder).rglob(".*.tmp-*"))


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_tiny_store(tmp_path_factory.mktemp("store") / "store.h5")


@pytest.fixture(scope="module")
def store8(tmp_path_factory) -> Path:
    """The same rings at 8 x 8 pixels: a store of another image size than the smoke models'."""
    return write_tiny_store(tmp_path_factory.mktemp("store8") / "store8.h5", size=8)


def train_vqvae_cli(store: Path, out: Path, *extra):
    return run_cli(
        "train-vqvae", *SMOKE, *SHORT, "--store", store, "--out", out, "--figures", out.parent / "fig", *extra
    )


# =============================================================================================
# 1. No silent loss
# =============================================================================================


def test_train_without_resume_refuses_a_run_folder_with_a_checkpoint(store, tmp_path):
    run = tmp_path / "vqvae"
    assert train_vqvae_cli(store, run).returncode == 0
    before = {name: (run / name).read_bytes() for name in (LAST, "log.csv")}
    again = train_vqvae_cli(store, run, "--set", "train_vqvae.steps=4")
    one_line_error(again, "train-vqvae", str(run), "--resume", "--replace", "replaced")
    assert {name: (run / name).read_bytes() for name in before} == before  # neither replaced nor appended to
    # --replace starts afresh and keeps the old run in replaced/, --resume continues.
    replaced = train_vqvae_cli(store, run, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert {name: (run / "replaced" / name).read_bytes() for name in before} == before
    assert train_vqvae_cli(store, run, "--resume", "--set", "train_vqvae.steps=4").returncode == 0
    assert (run / "log.csv").read_text().splitlines()[-1].startswith("4,")


def test_train_ldm_without_resume_refuses_before_touching_anything(smoke_ldm, tmp_path):
    run = tmp_path / "ldm"
    shutil.copytree(smoke_ldm["run"] / "ldm", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = run_cli(
        "train-ldm",
        *SMOKE,
        "--store",
        smoke_ldm["store"],
        "--vqvae",
        smoke_ldm["run"] / "vqvae" / LAST,
        "--out",
        run,
        "--figures",
        tmp_path / "fig",
    )
    one_line_error(result, "train-ldm", "already holds a run", "--resume")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # latents.h5 too


@pytest.mark.parametrize("case", ["generate", "evaluate", "train-ldm", "preprocess"])
def test_an_output_that_is_one_of_the_inputs_is_refused(case, smoke_ldm, tmp_path):
    ldm, store = smoke_ldm["ckpt"], smoke_ldm["store"]
    vqvae = smoke_ldm["run"] / "vqvae" / LAST
    if case == "generate":
        labels = tmp_path / "in.nii.gz"
        write_acdc(tmp_path / "acdc", patients=1)
        shutil.copy(tmp_path / "acdc" / "patient001" / "patient001_frame01_gt.nii.gz", labels)
        victim = labels
        args = [
            "generate",
            "--checkpoint",
            ldm,
            "--labels",
            "acdc",
            labels,
            tmp_path / "acdc" / ".." / "in.nii.gz",
            "--quiet",
        ]
        fragments = ["OUTPUT", "input INPUT"]
    elif case == "evaluate":
        victim = store
        args = ["evaluate", *SMOKE, "--checkpoint", ldm, "--store", store, "--out", store]
        fragments = ["--out", "input --store"]
    elif case == "train-ldm":  # the LDM's run folder is the VQVAE's: last.pt would be the VQVAE checkpoint
        victim = vqvae
        args = ["train-ldm", *SMOKE, "--store", store, "--vqvae", vqvae, "--out", vqvae.parent, "--resume"]
        fragments = ["--out", "input --vqvae"]
    else:
        victim = write_acdc(tmp_path / "acdc", patients=2) / "patient001" / "patient001_frame01.nii.gz"
        args = ["preprocess", *SMOKE, "--source", tmp_path / "acdc", "--out", victim, "--set", "data.val=1"]
        fragments = [str(victim), "lies inside the dataset folder"]  # never into the data it reads
    before = victim.read_bytes()
    one_line_error(run_cli(*args), case, *fragments)
    assert victim.read_bytes() == before


def hold_lock(folder: Path):
    """A process that holds ``folder``'s run lock until killed; returns it once the lock is taken."""
    code = (
        "import sys, time\nfrom mmldm.lock import run_lock\n"
        f"with run_lock({str(folder)!r}, 'test holder'):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_on_a_run_folder_is_refused(store, tmp_path):
    run = tmp_path / "vqvae"
    holder = hold_lock(run)
    try:
        result = train_vqvae_cli(store, run)
        one_line_error(result, "train-vqvae", str(run), f"in use by process {holder.pid}", "test holder")
        assert not (run / LAST).exists() and not (run / "log.csv").exists()
        # The pipeline takes its run folder's lock too.
        pipeline = subprocess.run(
            [sys.executable, "-m", "mmldm.notebook_runner", "--profile", "smoke", "--set", f"paths.runs={run}"],
            env=cli_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert pipeline.returncode == 1 and f"in use by process {holder.pid}" in pipeline.stderr
        assert "Traceback" not in pipeline.stderr
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the folder is free again, with a warning.
    result = train_vqvae_cli(store, run)
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock left by process {holder.pid}" in result.stderr
    assert not (run / ".lock").exists()


def test_a_lock_file_left_by_a_dead_process_is_taken_over_with_a_warning(store, tmp_path):
    run = tmp_path / "vqvae"
    run.mkdir()
    pid = dead_pid()
    (run / ".lock").write_text(json.dumps({"pid": pid, "command": "train-vqvae"}))
    result = train_vqvae_cli(store, run)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and warning[0].startswith("mmldm train-vqvae: warning: ")
    assert f"taking over the lock left by process {pid}" in warning[0]
    assert (run / LAST).exists() and not (run / ".lock").exists()


def test_two_trainers_started_together_on_one_folder(store, tmp_path):
    # The measured failure: both ran, deleted each other's temporaries and interleaved log.csv.
    run = tmp_path / "vqvae"
    args = [
        "train-vqvae",
        *SMOKE,
        "--store",
        store,
        "--out",
        run,
        "--figures",
        tmp_path / "fig",
        "--set",
        "train_vqvae.steps=6",
        "--set",
        "train_vqvae.log_every=1",
    ]
    procs = [
        subprocess.Popen(
            cli_command(*args), env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by process" in loser or "already holds a run" in loser  # one way or the other
    steps = [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, 7)]  # one run's rows, in order
    assert temporaries(run) == [] and not (run / ".lock").exists()


def many_patients(root: Path, patients: int) -> Path:
    """An ACDC folder of ``patients`` copies (symlinks) of one 128 x 128 x 10 patient: seconds to preprocess."""
    write_acdc(root, patients=1, size=128, slices=10)
    first = root / "patient001"
    for i in range(2, patients + 1):
        folder = root / f"patient{i:03d}"
        folder.mkdir()
        shutil.copy(first / "Info.cfg", folder / "Info.cfg")
        for f in first.glob("*.nii.gz"):
            os.symlink(f, folder / f.name.replace(first.name, folder.name))
    return root


def wait_for(predicate, proc, timeout: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigterm_during_preprocess_removes_the_temporary_store(tmp_path):
    source = many_patients(tmp_path / "acdc", 150)
    out = tmp_path / "out" / "store.h5"
    proc = subprocess.Popen(
        cli_command(
            "preprocess", *SMOKE, "--source", source, "--out", out, "--set", "data.val=1", "--set", "data.workers=2"
        ),
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: out.parent.exists() and temporaries(out.parent), proc, what="the temporary store")
    assert temporaries(out.parent)[0].name.startswith(".store.h5.tmp-")  # hidden, mmldm.atomic's scheme
    proc.send_signal(signal.SIGTERM)  # as the pool forks its workers: Python swallows the first exception there
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().strip() == "mmldm preprocess: terminated (SIGTERM); temporary files removed"
    assert temporaries(out.parent) == [] and not out.exists()


def test_sigterm_during_training_removes_temporaries_and_the_lock(store, tmp_path):
    run = tmp_path / "vqvae"
    proc = subprocess.Popen(
        cli_command(
            "train-vqvae",
            *SMOKE,
            "--store",
            store,
            "--out",
            run,
            "--figures",
            tmp_path / "fig",
            "--set",
            "train_vqvae.steps=500",
            "--set",
            "train_vqvae.ckpt_every=1",
            "--set",
            "train_vqvae.sample_every=2",
        ),
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (run / "prev.pt").exists(), proc, what="the second checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read()
    assert "mmldm train-vqvae: terminated (SIGTERM)" in err and "Traceback" not in err
    assert temporaries(run) == [] and temporaries(tmp_path / "fig") == [] and not (run / ".lock").exists()
    assert (
        run_cli(
            "train-vqvae",
            *SMOKE,
            "--store",
            store,
            "--out",
            run,
            "--figures",
            tmp_path / "fig",
            "--resume",
            "--set",
            "train_vqvae.steps=3",
        ).returncode
        == 0
    )  # and it resumes from what it saved


def test_temporaries_of_dead_processes_are_swept_and_live_ones_kept(store, tmp_path):
    dead, alive = dead_pid(), os.getpid()
    # preprocess: a store left half-written by a SIGKILLed run
    out = tmp_path / "data" / "store.h5"
    out.parent.mkdir()
    stale, live = out.parent / f".store.h5.tmp-{dead}", out.parent / f".store.h5.tmp-{alive}"
    stale.write_bytes(b"half a store"), live.write_bytes(b"another run's store in progress")
    source = write_acdc(tmp_path / "acdc", patients=3)
    result = run_cli("preprocess", *SMOKE, "--source", source, "--out", out, "--set", "data.val=1")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.exists() and out.exists()
    # a trainer: a checkpoint and a sample grid left by a SIGKILLed run
    run = tmp_path / "vqvae"
    (run / "samples").mkdir(parents=True)
    left = [run / f".{LAST}.tmp-{dead}", run / "samples" / f".step_000003.png.tmp-{dead}.png"]
    for path in left:
        path.write_bytes(b"left by a killed run")
    assert train_vqvae_cli(store, run).returncode == 0
    assert temporaries(run) == [] and (run / LAST).exists()


# =============================================================================================
# 2. Right or refused
# =============================================================================================


def break_patient(p: Path, break_: str) -> Path:
    """Break ACDC patient folder ``p`` as named; returns the file the error must name."""
    if break_ == "no Info.cfg":
        (p / "Info.cfg").unlink()
        return p / "Info.cfg"
    if break_ == "garbage Info.cfg":
        (p / "Info.cfg").write_bytes(b"\x00\xff\xfe not a config \x01\x02")
        return p / "Info.cfg"
    if break_ == "frame that does not exist":
        (p / "Info.cfg").write_text("ED: 1\nES: 9\nGroup: NOR\n")
        return p / f"{p.name}_frame09.nii.gz"
    if break_ == "no _gt":
        (p / f"{p.name}_frame01_gt.nii.gz").unlink()
        return p / f"{p.name}_frame01.nii.gz"
    raise ValueError(break_)


BREAKS = ["no Info.cfg", "garbage Info.cfg", "frame that does not exist", "no _gt"]


@pytest.mark.parametrize("break_", BREAKS)
def test_a_case_that_fails_while_listing_is_a_clear_error_without_skip_bad(break_, tmp_path):
    source = write_acdc(tmp_path / "acdc", patients=4)
    bad = break_patient(source / "patient004", break_)
    out = tmp_path / "store.h5"
    result = run_cli("preprocess", *SMOKE, "--source", source, "--out", out, "--set", "data.val=1")
    one_line_error(result, "preprocess", str(bad), "skip_bad")
    assert not out.exists() and temporaries(tmp_path) == []


def test_skip_bad_skips_cases_that_fail_while_listing_and_names_each(tmp_path):
    source = write_acdc(tmp_path / "acdc", patients=3 + len(BREAKS))  # 3 good ones, then one per break
    bad = [break_patient(source / f"patient{4 + i:03d}", break_) for i, break_ in enumerate(BREAKS)]
    out = tmp_path / "store.h5"
    result = run_cli("preprocess", *SMOKE, "--source", source, "--out", out, "--set", "data.val=1", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert f"files skipped: {len(BREAKS)}" in result.stdout
    listed = result.stdout.split("files skipped:")[1]
    for path in bad:  # every skipped file by name
        assert any(line.strip().startswith(f"{path}: ") for line in listed.splitlines()), (path, listed)
    from mmldm.data.store import open_store, read_skipped

    with open_store(out) as f:
        assert len(read_skipped(f)) == len(BREAKS)


def test_image_sizes_of_store_vqvae_and_ldm_are_checked(smoke_ldm, store8, tmp_path):
    ldm, vqvae = smoke_ldm["ckpt"], smoke_ldm["run"] / "vqvae" / LAST
    result = run_cli("train-vqvae", *SMOKE, "--store", store8, "--out", tmp_path / "vq", "--figures", tmp_path)
    one_line_error(result, "train-vqvae", "image sizes disagree", "8 px", "32 px")
    result = run_cli(
        "train-ldm", *SMOKE, "--store", store8, "--vqvae", vqvae, "--out", tmp_path / "ldm", "--figures", tmp_path
    )
    one_line_error(result, "train-ldm", "image sizes disagree", f"store {store8}: 8 px", "VQVAE")
    result = run_cli(
        "evaluate",
        *SMOKE,
        "--checkpoint",
        ldm,
        "--store",
        store8,
        "--out",
        tmp_path / "ev" / "m.json",
        "--n",
        "2",
        "--variants",
        "ddim50_both",
    )
    one_line_error(result, "evaluate", "image sizes disagree", f"store {store8}: 8 px", f"LDM {ldm}: 32 px")
    # generate: an LDM whose config says another size than the VQVAE it names
    state = torch.load(ldm, map_location="cpu", weights_only=True)
    state["config"]["data"]["size"] = 16
    other = tmp_path / "other_ldm.pt"
    torch.save(state, other)
    labels = write_acdc(tmp_path / "acdc", patients=1) / "patient001" / "patient001_frame01_gt.nii.gz"
    result = run_cli("generate", "--checkpoint", other, "--labels", "acdc", labels, tmp_path / "out.nii.gz", "--quiet")
    one_line_error(result, "generate", "image sizes disagree", "16 px", "32 px")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acdc", "other_ldm.pt"]  # nothing written


def readonly_folder(tmp_path: Path) -> Path:
    """A folder nothing can be created in (chmod 555; as root, which ignores modes, /sys)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    try:
        Path("/sys/mmldm-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder to test with")


def bad_argument_cases(tmp_path: Path, smoke_ldm: dict) -> dict[str, tuple[list, list[str]]]:
    ldm, store = smoke_ldm["ckpt"], smoke_ldm["store"]
    labels = tmp_path / "in_gt.nii.gz"
    shutil.copy(write_acdc(tmp_path / "acdc", patients=1) / "patient001" / "patient001_frame01_gt.nii.gz", labels)
    shutil.rmtree(tmp_path / "acdc")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    gen = ["generate", "--checkpoint", ldm, "--labels", "acdc", labels]
    out = tmp_path / "out.nii.gz"
    ev = ["evaluate", *SMOKE, "--checkpoint", ldm, "--store", store, "--n", "2", "--variants", "ddim50_both"]
    return {
        "scale nan": ([*gen, out, "--scale-mask", "nan"], ["--scale-mask", "finite"]),
        "scale inf": ([*gen, out, "--scale-edge", "inf"], ["--scale-edge", "finite"]),
        "scale -inf": ([*gen, out, "--scale-edge=-inf"], ["--scale-edge", "finite"]),
        "seed negative": ([*gen, out, "--seed=-1"], ["--seed", "0 to"]),
        "seed too big": ([*gen, out, "--seed", str(2**64)], ["--seed", "0 to"]),
        "evaluate seed too big": ([*ev, "--seed", str(2**40)], ["--seed"]),
        "n zero": ([*ev, "--n", "0"], ["--n", "a positive integer"]),
        "n negative": ([*ev, "--n=-3"], ["--n", "a positive integer"]),
        "n-ddpm zero": ([*ev, "--n-ddpm", "0"], ["--n-ddpm", "at least 1"]),
        "steps zero": ([*gen, out, "--steps", "0"], ["--steps", "at least 1"]),
        "size below 8": (["preprocess", *SMOKE, "--source", tmp_path, "--size", "4"], ["--size", "at least 8"]),
        "phantom no subjects": (["phantom", "--subjects", "0", "--out", tmp_path / "ph"], ["--subjects", "at least 1"]),
        "phantom small": (["phantom", "--size", "16", "--out", tmp_path / "ph"], ["--size", "at least 64"]),
        "device unknown": ([*gen, out, "--device", "tpu"], ["--device", "cpu, cuda or cuda:N"]),
        "output under a file": ([*gen, a_file / "out.nii.gz"], ["OUTPUT", "is a file"]),
        "output is a folder": ([*gen, tmp_path], ["OUTPUT", "is a folder"]),
        "output folder under a file": (
            ["train-vqvae", *SMOKE, "--store", store, "--out", a_file / "run"],
            ["--out", "is a file"],
        ),
        "evaluate output under a file": ([*ev, "--out", a_file / "m.json"], ["--out", "is a file"]),
        "segmenter of another kind": (
            [*ev, "--out", tmp_path / "ev" / "m.json", "--segmenter", ldm],
            ["'ldm' checkpoint, not a segmenter"],
        ),
        "set names --set": (
            ["train-vqvae", *SMOKE, "--set", "train_vqvae.steps=many", "--out", tmp_path / "r"],
            ["--set train_vqvae.steps=many", "expected an integer"],
        ),
        "set unknown key": (
            ["train-vqvae", *SMOKE, "--set", "vqvae.codebok_size=8", "--out", tmp_path / "r"],
            ["--set vqvae.codebok_size=8", "unknown key"],
        ),
        # Model sizes are checked where the config is read, never by the first forward pass
        # (ZeroDivisionError, a header-only log.csv).
        "codebook of zero codes": (
            ["train-vqvae", *SMOKE, "--set", "vqvae.codebook_size=0", "--out", tmp_path / "r"],
            ["--set vqvae.codebook_size=0", "at least 2"],
        ),
        "codebook negative": (
            ["train-vqvae", *SMOKE, "--set", "vqvae.codebook_size=-3", "--out", tmp_path / "r"],
            ["codebook_size must be at least 2"],
        ),
        "zero heads": (
            ["train-vqvae", *SMOKE, "--set", "vqvae.num_heads=0", "--out", tmp_path / "r"],
            ["--set vqvae.num_heads=0", "num_heads"],
        ),
        "heads do not divide": (
            ["train-ldm", *SMOKE, "--set", "unet.num_heads=7", "--out", tmp_path / "r"],
            ["--set unet.num_heads=7", "num_heads=7 heads"],
        ),
    }


CASES = [
    "scale nan",
    "scale inf",
    "scale -inf",
    "seed negative",
    "seed too big",
    "evaluate seed too big",
    "n zero",
    "n negative",
    "n-ddpm zero",
    "steps zero",
    "size below 8",
    "phantom no subjects",
    "phantom small",
    "device unknown",
    "output under a file",
    "output is a folder",
    "output folder under a file",
    "evaluate output under a file",
    "segmenter of another kind",
    "set names --set",
    "set unknown key",
    "codebook of zero codes",
    "codebook negative",
    "zero heads",
    "heads do not divide",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_are_one_line_errors_and_write_nothing(case, smoke_ldm, tmp_path):
    cases = bad_argument_cases(tmp_path, smoke_ldm)
    assert sorted(cases) == sorted(CASES)
    args, fragments = cases[case]
    before = files(tmp_path)
    one_line_error(run_cli(*args), args[0], *fragments)
    assert files(tmp_path) == before  # nothing written, no folder made, no temporary left


def test_output_in_a_read_only_folder(smoke_ldm, tmp_path):
    folder = readonly_folder(tmp_path)
    labels = write_acdc(tmp_path / "acdc", patients=1) / "patient001" / "patient001_frame01_gt.nii.gz"
    result = run_cli(
        "generate", "--checkpoint", smoke_ldm["ckpt"], "--labels", "acdc", labels, folder / "sub" / "out.nii.gz"
    )
    one_line_error(result, "generate", "cannot write in", str(folder))
    assert not (folder / "sub").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused(smoke_ldm, tmp_path):
    for device in ("cuda", "cuda:0"):
        result = run_cli(
            "generate",
            "--checkpoint",
            smoke_ldm["ckpt"],
            "--labels",
            "acdc",
            tmp_path / "in.nii.gz",
            tmp_path / "out.nii.gz",
            "--device",
            device,
        )
        one_line_error(result, "generate", "--device", "CUDA is not available")


def test_device_accepts_cuda_n(monkeypatch):
    from mmldm.cli import build_parser
    from mmldm.train.distributed import setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for command in (
        ["generate", "--checkpoint", "x", "--labels", "acdc", "a.nii.gz", "b.nii.gz"],
        ["evaluate"],
        ["train-ldm"],
        ["train-vqvae"],
    ):
        assert build_parser().parse_args([*command, "--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-vqvae", "--device", "cuda:2"])  # only cuda:0 and cuda:1 exist
    monkeypatch.delenv("RANK", raising=False)
    assert setup("cuda:1").device == torch.device("cuda", 1)


def test_resume_after_an_architecture_change_is_refused(store, tmp_path):
    run = tmp_path / "vqvae"
    assert train_vqvae_cli(store, run).returncode == 0
    before = (run / LAST).read_bytes()
    result = train_vqvae_cli(store, run, "--resume", "--set", "vqvae.codebook_size=32")
    one_line_error(
        result, "train-vqvae", str(run / LAST), "another model", "vqvae.codebook_size: 64 -> 32", "--replace"
    )
    assert (run / LAST).read_bytes() == before and temporaries(run) == []


def test_a_key_twice_in_a_yaml_file_is_an_error(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("base: smoke\ntrain_vqvae:\n  steps: 200\n  batch_size: 4\n  steps: 12\n")
    result = run_cli("train-vqvae", "--config", profile, "--out", tmp_path / "run")
    one_line_error(result, "train-vqvae", str(profile), "'steps' appears twice", "lines 3 and 5")
    assert files(tmp_path) == ["mine.yaml"]


# =============================================================================================
# 3. Load only what is safe
# =============================================================================================


def calls(text: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``text`` (parentheses matched)."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end() : i - 1])
    return out


def test_every_torch_load_is_weights_only_and_torchscript_is_pinned_or_documented():
    sources = {p: p.read_text() for p in (REPO / "mmldm").rglob("*.py")}
    found = 0
    for path, text in sources.items():
        for args in calls(text, "torch.load"):
            found += 1
            assert "weights_only=True" in args, f"{path.relative_to(REPO)}: torch.load({args})"
    assert found >= 5
    jit = sorted(str(p.relative_to(REPO)) for p, text in sources.items() if "torch.jit.load(" in text)
    assert jit == ["mmldm/evaluate/fid.py", "mmldm/models/perceptual.py"]
    from mmldm.evaluate import fid

    assert len(fid.INCEPTION_SHA256) == 64  # the Inception file is loaded only when its SHA-256 matches
    readme = (REPO / "README.md").read_text()
    assert "runs code" in readme and "perceptual_weights" in readme  # the perceptual file must be trusted


def test_inception_file_with_another_sha256_is_refused_unread(tmp_path, monkeypatch):
    from mmldm.evaluate import fid

    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"a TorchScript archive from somewhere")
    loaded = []
    monkeypatch.setattr(fid.torch.jit, "load", lambda *a, **k: loaded.append(a))
    model, reason = fid.load_inception(fake)
    assert model is None and loaded == [] and "SHA-256" in reason and fid.INCEPTION_SHA256 in reason


def test_saved_samples_load_without_running_code(tmp_path):
    from mmldm import atomic
    from mmldm.report import load_samples

    samples = {
        "variant": "ddim50_both",
        "generated": torch.zeros(2, 1, 8, 8),
        "real": torch.zeros(2, 1, 8, 8),
        "cond": torch.zeros(2, 5, 8, 8, dtype=torch.uint8),
        "meta": {"subject": ["001", "002"], "slice": [1, 2]},
        "examples": {"indices": torch.arange(2), "generated": {"ddim50_both": torch.zeros(2, 1, 8, 8)}},
    }
    path = atomic.torch_save(samples, tmp_path / "samples.pt")
    assert load_samples(path)["meta"]["subject"] == ["001", "002"]


# =============================================================================================
# 5. An external test set
# =============================================================================================


def test_evaluate_on_an_external_test_set(smoke_ldm, tmp_path):
    # A folder of 2 subjects: with data.val they cannot be split, as a test split they all go in.
    source = write_acdc(tmp_path / "acdc_test", patients=2)
    test_store = tmp_path / "test.h5"
    result = run_cli("preprocess", *SMOKE, "--source", source, "--out", test_store, "--split", "test")
    assert result.returncode == 0, result.stderr
    assert "subjects: test 2" in result.stdout
    from mmldm.data.store import open_store, read_meta

    with open_store(test_store) as f:
        assert set(read_meta(f)["split"]) == {"test"}
    # The model's run folder copied, so the segmenter evaluate trains lands in tmp_path.
    run = tmp_path / "run"
    (run / "ldm").mkdir(parents=True)
    shutil.copy(smoke_ldm["ckpt"], run / "ldm" / LAST)
    out = tmp_path / "evaluation" / "metrics.json"
    args = [
        "evaluate",
        *SMOKE,
        "--checkpoint",
        run / "ldm" / LAST,
        "--store",
        test_store,
        "--split",
        "test",
        "--n",
        "4",
        "--n-ddpm",
        "2",
        "--variants",
        "ddim50_both",
        "--out",
        out,
    ]
    # Without a store to take the training references from, a test store is refused...
    one_line_error(run_cli(*args, "--set", f"paths.store={tmp_path / 'none.h5'}"), "evaluate", "--train-store")
    # ...and with the training store (--train-store, or paths.store) it is evaluated.
    result = run_cli(*args, "--train-store", smoke_ldm["store"])
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["meta"]["split"] == "test" and metrics["meta"]["store"] == str(test_store)
    assert metrics["meta"]["train_store"] == str(smoke_ldm["store"]) and metrics["meta"]["n"] == 4
    assert metrics["variants"]["ddim50_both"]["n"] == 4
    assert not (tmp_path / "evaluation" / ".lock").exists() and temporaries(tmp_path) == []


def test_preprocess_refuses_a_store_that_a_run_was_trained_on(smoke_ldm, tmp_path):
    # A default --out would swap the store under a trained run: refused, naming the run's checkpoints.
    store = smoke_ldm["store"]
    before = store.read_bytes()
    source = write_acdc(tmp_path / "acdc", patients=2)
    sets = [f"--set={o}" for o in smoke_ldm["overrides"]]
    result = run_cli("preprocess", *SMOKE, *sets, "--source", source, "--set", "data.val=1")
    line = one_line_error(result, "preprocess", str(store), "already exists", "--out", "--replace")
    assert str(smoke_ldm["run"] / "vqvae") in line and str(smoke_ldm["run"] / "ldm") in line, line
    assert store.read_bytes() == before
    # Any existing store is kept without --replace; with it, the store is written.
    other = tmp_path / "other.h5"
    assert run_cli("preprocess", *SMOKE, "--source", source, "--out", other, "--set", "data.val=1").returncode == 0
    again = run_cli("preprocess", *SMOKE, "--source", source, "--out", other, "--set", "data.val=1")
    assert "trained on it" not in one_line_error(again, "preprocess", "already exists")
    replaced = run_cli("preprocess", *SMOKE, "--source", source, "--out", other, "--set", "data.val=1", "--replace")
    assert replaced.returncode == 0, replaced.stderr


def test_outputs_through_a_symlink_into_the_input_are_refused(tmp_path):
    # input/patient001 links to a real subject folder elsewhere: --out input/patient001/out would write
    # into that dataset. Refused for synthesize and preprocess alike, before any work; nothing written.
    from mmldm.outputs import OutputError
    from mmldm.synthesize import check_out_placement

    real = write_acdc(tmp_path / "real", patients=2)
    source = tmp_path / "input"
    source.mkdir()
    (source / "patient001").symlink_to(real / "patient001", target_is_directory=True)
    before = files(real)
    with pytest.raises(OutputError, match="lies inside the input folder"):  # as written
        check_out_placement(source / "patient001" / "out", source)
    with pytest.raises(OutputError, match="lies inside the input folder"):
        check_out_placement(source / "sub" / "out", source)
    with pytest.raises(OutputError, match="which the input folder .* links to"):  # where the link points
        check_out_placement(real / "patient001" / "out", source)
    check_out_placement(tmp_path / "elsewhere", source)  # beside it: fine
    result = run_cli("preprocess", *SMOKE, "--source", source, "--out", source / "patient001" / "s.h5")
    one_line_error(result, "preprocess", "lies inside the dataset folder", "choose a place outside it")
    assert files(real) == before


def test_user_warnings_are_one_plain_line_wherever_mmldm_is_imported():
    # In a notebook's kernel (run_all's terminal) as on the command line: no source line, no category.
    code = "import mmldm, warnings\nfrom mmldm.errors import warn\nwarn('a stale lock was taken over')\n"
    code += "warnings.warn('from another library')\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    lines = result.stderr.splitlines()
    assert lines[0] == "warning: a stale lock was taken over", result.stderr
    assert "UserWarning: from another library" in lines[1]  # other warnings keep Python's form


def test_a_training_elsewhere_keeps_its_loss_curve_beside_its_out(store, tmp_path):
    # train-vqvae --out elsewhere (no --figures) used to rewrite the main run's figures/vqvae_loss_<profile>.png.
    from mmldm.config import load_config

    main_curve = load_config("smoke").figures_dir / "vqvae_loss_smoke.png"
    before = main_curve.stat().st_mtime_ns if main_curve.exists() else None
    run = tmp_path / "elsewhere"
    result = run_cli("train-vqvae", *SMOKE, *SHORT, "--store", store, "--out", run)
    assert result.returncode == 0, result.stderr
    assert (run / "vqvae_loss_smoke.png").exists()
    assert (main_curve.stat().st_mtime_ns if main_curve.exists() else None) == before


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `python -m mmldm ... | head -2`: the reader leaves; no BrokenPipeError traceback, status 141 (SIGPIPE).
    proc = subprocess.Popen(
        cli_command("phantom", "--subjects", "1", "--out", tmp_path / "ph"),
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before the command prints anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_evaluate_says_when_the_checkpoint_and_the_profile_differ(smoke_ldm, store8, tmp_path):
    # A smoke checkpoint under --config laptop: one warning line naming both profiles (here followed by
    # the size error the 8-pixel store gives, so the test stops before any evaluation work).
    args = ["evaluate", "--config", "laptop", "--quiet", "--checkpoint", smoke_ldm["ckpt"], "--store", store8]
    result = run_cli(*args, "--out", tmp_path / "m.json", "--n", "2")
    warning = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "profile 'smoke'" in warning[0] and "'laptop'" in warning[0], result.stderr
    one_line_error(result, "evaluate", "image sizes disagree")

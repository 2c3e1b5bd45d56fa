"""Stage freshness from inputs (mmldm/stage_record.py) and the runner that uses it, on tiny notebooks.

The real notebooks take minutes even on the smoke profile; the machinery under test (records,
fingerprints, --only, --force, --retrain, Ctrl-C) is the same for a two-cell notebook, so these
tests patch the runner's stage list with three small ones: ``a`` writes ``a.txt``, ``b`` copies it
into ``b.txt`` (and fails while ``fail_b`` exists), ``c`` writes a zip ``c.pt``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile

import nbformat
import pytest

from conftest import REPO
from mmldm import notebook_runner as nr
from mmldm.errors import MMLDMError
from mmldm.stage_record import fingerprint, read_record, unreadable, why_stale, write_record

CELLS = {
    "a_write.ipynb": "from pathlib import Path\nPath(RUN, 'a.txt').write_text('a ' + resume)\n",
    "b_copy.ipynb": (
        "from pathlib import Path\n"
        "import time\n"
        "Path(RUN, 'b.pid').write_text(str(__import__('os').getpid()))\n"
        "if Path(RUN, 'sleep_b').exists():\n    time.sleep(60)\n"
        "if Path(RUN, 'fail_b').exists():\n    raise ValueError('b was told to fail')\n"
        "runs = int(Path(RUN, 'b.count').read_text()) if Path(RUN, 'b.count').exists() else 0\n"
        "Path(RUN, 'b.count').write_text(str(runs + 1))\n"
        "Path(RUN, 'b.txt').write_text(Path(RUN, 'a.txt').read_text())\n"
    ),
    "c_zip.ipynb": (
        "import zipfile\nfrom pathlib import Path\n"
        "with zipfile.ZipFile(Path(RUN, 'c.pt'), 'w') as z:\n    z.writestr('x', 'y' * 1000)\n"
    ),
}


def _notebooks(folder, run_dir):
    folder.mkdir()
    for name, code in CELLS.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        params = nbformat.v4.new_code_cell(
            f"profile = 'smoke'\noverrides = []\nresume = 'auto'\nRUN = {str(run_dir)!r}"
        )
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, folder / name)


STAGES = [
    nr.Stage("a_write.ipynb", outputs=("{runs}/a.txt",)),
    nr.Stage("b_copy.ipynb", outputs=("{runs}/b.txt",)),
    nr.Stage("c_zip.ipynb", outputs=("{runs}/c.pt",)),
]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs"
    _notebooks(tmp_path / "nb", run_dir)
    monkeypatch.setattr(nr, "STAGES", STAGES)
    monkeypatch.setattr(nr, "NOTEBOOKS", tmp_path / "nb")
    sets = [
        f"paths.phantom_dir={tmp_path / 'phantom'}",
        f"paths.store={tmp_path / 'store.h5'}",
        f"paths.runs={run_dir}",
        f"paths.figures={tmp_path / 'figures'}",
    ]

    def go(capsys, **kw):
        nr.run("smoke", overrides=sets, **kw)
        out = capsys.readouterr().out
        lines: dict[str, str] = {}  # each stage's first line: "running (...; why)" or "up to date"
        for line in out.splitlines():
            if line.startswith("["):
                lines.setdefault(line.split("]")[0][1:], line)
        return lines

    return run_dir, go


def test_fingerprint_reuses_the_hash_only_while_size_and_time_match(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"one")
    first = fingerprint(f)
    assert fingerprint(f, {**first, "sha256": "cached"})["sha256"] == "cached"  # a stat, no read
    f.write_bytes(b"two")
    os.utime(f, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    again = fingerprint(f, {**first, "sha256": "cached"})  # the time moved: hashed afresh
    assert again["sha256"] == fingerprint(f)["sha256"] != first["sha256"]
    assert fingerprint(tmp_path / "missing") is None


def test_a_stage_is_stale_for_each_reason(tmp_path):
    a, out, rec = tmp_path / "in.txt", tmp_path / "out.json", tmp_path / "stamps" / "s.json"
    a.write_text("input")
    out.write_text("{}")
    assert why_stale(rec, "k", [a], [out]) == "no record of a finished run"
    write_record(rec, "k", [a], [out])
    assert why_stale(rec, "k", [a], [out]) is None
    assert why_stale(rec, "other", [a], [out]) == "notebook or settings changed"
    a.write_text("changed input")
    assert why_stale(rec, "k", [a], [out]) == f"input changed: {a}"
    write_record(rec, "k", [a], [out])
    out.write_text("{not json")  # damaged after the stage wrote it
    assert why_stale(rec, "k", [a], [out]).startswith("output changed since the stage wrote it")
    write_record(rec, "k", [a], [out])  # even a recorded broken output is never up to date
    assert why_stale(rec, "k", [a], [out]) == f"output unreadable (JSONDecodeError): {out}"
    out.unlink()
    assert why_stale(rec, "k", [a], [out]) == f"output missing: {out}"


def test_unreadable_knows_a_truncated_checkpoint(tmp_path):
    pt = tmp_path / "last.pt"
    with zipfile.ZipFile(pt, "w") as z:
        z.writestr("data", b"x" * 5000)
    assert unreadable(pt) is None
    pt.write_bytes(pt.read_bytes()[:2000])
    assert unreadable(pt) == "unreadable (BadZipFile)"


def test_unknown_only_stage_is_refused():
    with pytest.raises(MMLDMError, match=r"--only 09: no such stage .*06_interactive"):
        nr.select(["09"])
    assert nr.select(["none"]) == [] and len(nr.select(None)) == len(nr.STAGES)
    assert [s.notebook for s in nr.select(["04"])] == ["04_ldm_training.ipynb"]


def test_runner_reruns_what_an_upstream_change_or_a_failure_touches(tiny, capsys):
    run_dir, go = tiny
    lines = go(capsys)
    assert all("running" in lines[k] for k in ("a_write", "b_copy", "c_zip")), lines
    assert (run_dir / "b.txt").read_text() == "a auto"
    lines = go(capsys)
    assert all("up to date" in lines[k] for k in ("a_write", "b_copy", "c_zip")), lines

    # Another command rewrites a's output: b (downstream) re-runs, even when only b is asked for.
    (run_dir / "a.txt").write_text("rewritten")
    lines = go(capsys, only=["b"])
    assert "input changed" in lines["b_copy"] and "a_write" not in lines, lines
    assert (run_dir / "b.txt").read_text() == "rewritten"

    # A failed stage leaves no record: the next plain run re-runs it.
    (run_dir / "fail_b").write_text("")
    with pytest.raises(MMLDMError, match="b_copy.ipynb failed in cell"):
        go(capsys, force=True, only=["b"])
    capsys.readouterr()
    assert read_record(run_dir / "stamps" / "b_copy.json") is None
    (run_dir / "fail_b").unlink()
    lines = go(capsys)  # a re-runs too: its output was rewritten by "another command" above
    assert "output changed" in lines["a_write"], lines
    assert "no record of a finished run" in lines["b_copy"] and "up to date" in lines["c_zip"], lines

    # A truncated checkpoint is not up to date.
    pt = run_dir / "c.pt"
    pt.write_bytes(pt.read_bytes()[:40])
    lines = go(capsys)
    assert "running" in lines["c_zip"] and "up to date" in lines["b_copy"], lines
    assert unreadable(pt) is None

    # --retrain hands the notebooks resume="replace" (train from scratch); --force keeps "auto".
    go(capsys, force=True, only=["a"])
    assert (run_dir / "a.txt").read_text() == "a auto"
    lines = go(capsys, retrain=True, only=["a"])
    assert "--retrain" in lines["a_write"] and (run_dir / "a.txt").read_text() == "a replace"
    # The kernel's own log (start-up warnings) goes to a file beside the executed notebook.
    assert (run_dir / "notebooks" / "a_write.kernel.log").exists()


DRIVER = """
import sys
from mmldm import notebook_runner as nr
from pathlib import Path
nr.NOTEBOOKS = Path(sys.argv[1])
nr.STAGES = [nr.Stage("a_write.ipynb", outputs=("{runs}/a.txt",)), nr.Stage("b_copy.ipynb", outputs=("{runs}/b.txt",))]
raise SystemExit(nr.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_ctrl_c_is_one_line_and_stops_the_kernel(tmp_path, sig):
    run_dir = tmp_path / "runs"
    _notebooks(tmp_path / "nb", run_dir)
    run_dir.mkdir()
    (run_dir / "sleep_b").write_text("")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), str(tmp_path / "nb"), "--profile", "smoke"]
    for s in (f"paths.phantom_dir={tmp_path / 'ph'}", f"paths.store={tmp_path / 's.h5'}", f"paths.runs={run_dir}"):
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = run_dir / "b.pid"
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), proc.communicate()
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "run_all: interrupted; the stage that was running is not marked done"
    ], err
    kernel = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the kernel {kernel} still runs after Ctrl-C")
    assert read_record(run_dir / "stamps" / "b_copy.json") is None

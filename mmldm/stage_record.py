"""When is a pipeline stage up to date? Its record says what it read, what it wrote, and that it finished.

A build system (make, ninja, Bazel) does not trust a stage because its outputs exist: it remembers
what the stage read and wrote and re-runs it when either changed. ``run_all.sh`` does the same with
one small JSON file per stage, ``runs/<run>/stamps/<stage>.json``::

    {"stamp": "<hash of the notebook and the config>",
     "inputs":  {"<path>": {"size": ..., "mtime_ns": ..., "sha256": ...}, ...},
     "outputs": {"<path>": {...}, ...},
     "finished": "2026-12-08T01:02:03Z"}

A stage is up to date only when all of these hold (:func:`why_stale` names the first that fails):

1. a record exists: it is written only after the stage succeeded, and deleted before the stage
   starts (:func:`forget`), so a failed or interrupted stage is never up to date;
2. its stamp matches (the same notebook and the same settings);
3. every input still has the content it had (a changed store or checkpoint re-runs every stage
   downstream, whichever command changed it);
4. every output is still there with the content the stage wrote, and readable (a truncated
   checkpoint is not a checkpoint, see :func:`unreadable`).

The fingerprint of a file is its size, modification time and SHA-256. As git's index does, the
hash is only recomputed when the size or the time differ from the record, so checking a
several-GB store costs a ``stat`` when nothing changed. A folder's fingerprint (a dataset source)
hashes the list of its files with their sizes and times.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

from mmldm.atomic import write_text

_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | Path, known: dict | None = None) -> dict | None:
    """``{"size", "mtime_ns", "sha256"}`` of a file (None when it does not exist). With ``known``
    (an earlier fingerprint) whose size and time still match, its hash is taken as it is."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    if path.is_dir():
        listing = []
        for p in sorted(path.rglob("*")):
            if p.is_file():
                s = p.stat()
                listing.append(f"{p.relative_to(path)}\t{s.st_size}\t{s.st_mtime_ns}")
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
        return {"size": len(listing), "mtime_ns": 0, "sha256": digest}
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return dict(known)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def same_content(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and a.get("sha256") == b.get("sha256") and a.get("size") == b.get("size")


def unreadable(path: str | Path) -> str | None:
    """Why a file cannot be what its suffix says (None when it reads): a cheap structural check,
    not a full load. ``.pt`` is a zip archive (torch's format) whose directory must open,
    ``.h5`` must open with h5py, ``.json`` must parse."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            with zipfile.ZipFile(path) as z:
                z.namelist()
        elif path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r"):
                pass
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        return f"unreadable ({type(e).__name__})"
    return None


def record_path(stamps: Path, stage: str) -> Path:
    return stamps / f"{stage}.json"


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def why_stale(path: Path, stamp: str, inputs: list[Path], outputs: list[Path]) -> str | None:
    """None when the stage recorded at ``path`` is up to date, else the first reason it is not
    (a short phrase for the run's log: "no record of a finished run", "input changed: <file>")."""
    record = read_record(path)
    if record is None or not record.get("finished"):
        return "no record of a finished run"
    if record.get("stamp") != stamp:
        return "notebook or settings changed"
    seen_in, seen_out = record.get("inputs", {}), record.get("outputs", {})
    for p in inputs:
        if str(p) not in seen_in:
            if p.exists():
                return f"new input: {p}"
            continue
        if not same_content(fingerprint(p, seen_in[str(p)]), seen_in[str(p)]):
            return f"input changed: {p}"
    for p in outputs:
        if not p.exists():
            return f"output missing: {p}"
        if str(p) not in seen_out or not same_content(fingerprint(p, seen_out[str(p)]), seen_out[str(p)]):
            return f"output changed since the stage wrote it: {p}"
        if reason := unreadable(p):
            return f"output {reason}: {p}"
    return None


def forget(path: Path) -> None:
    """Delete a stage's record before it runs: until it finishes again it is not up to date."""
    path.unlink(missing_ok=True)


def write_record(path: Path, stamp: str, inputs: list[Path], outputs: list[Path]) -> dict:
    """Record a stage that just finished: its stamp and the fingerprints of what it read and wrote."""
    record = {
        "stamp": stamp,
        "inputs": {str(p): fingerprint(p) for p in inputs if os.path.exists(p)},
        "outputs": {str(p): fingerprint(p) for p in outputs},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record

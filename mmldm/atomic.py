"""Atomic file writes: the whole new file appears, or the old one stays.

Why: a run that is interrupted (Ctrl-C, an exception, a full disk) must never leave a
half-written file where a finished one is expected, because the next stage would read it as if it
were complete. So every writer here writes to a temporary name in the SAME folder, then renames it
over the final name with ``os.replace``, which is atomic on one file system. If writing fails the
temporary file is deleted and the error goes on; the old file, if any, is untouched.

The temporary name is ``.<name>.tmp-<pid>`` (hidden, so a ``*.png`` or ``*.nii.gz`` glob never sees
it); writers that choose the format from the file name (``fig.savefig``, ``nib.save``) pass
``suffix`` and get ``.<name>.tmp-<pid><suffix>``. This is the one scheme every writer of mmldm uses
(checkpoints, the preprocessed store, figures, NIfTI, JSON). An exception or Ctrl-C deletes the
temporary file, and so does SIGTERM (the command line turns it into the same interrupt, see
``mmldm.errors.Terminated``). Only a killed process (SIGKILL, power loss) can leave one behind:
:func:`sweep_stale` deletes those whose process is gone, and every writer calls it for its own
target before writing, so the next run cleans up after a killed one. A temporary name whose
process still runs is never touched: it may be another writer's file in progress.

    write_text(out / "report.md", text)
    torch_save({"model": model.state_dict()}, out / "segmenter.pt")
    write_atomic(out / "table.csv", lambda tmp: table.to_csv(tmp, index=False))
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_GLOB = ".*.tmp-*"  # every temporary name this module makes matches this pattern
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?P<suffix>.*)$")


def temporary_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary name beside ``path`` that this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OverflowError:
        return False
    return True


def temporary_owner(path: str | Path) -> int | None:
    """The process id in a temporary name made by :func:`temporary_path`, else None."""
    m = _TEMPORARY.match(Path(path).name)
    return int(m["pid"]) if m else None


def sweep_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files in ``folder`` (of target ``name`` only, when given) whose process
    is gone: what a SIGKILLed run left. Returns the files deleted; a missing folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(f".{glob.escape(name)}.tmp-*" if name is not None else STALE_GLOB):
        m = _TEMPORARY.match(tmp.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except FileNotFoundError:  # another run swept it first
            continue
        removed.append(tmp)
    return removed


def write_atomic(path: str | Path, write_fn: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call ``write_fn(tmp)`` to write a temporary file beside ``path``, then rename it to ``path``.

    The parent folder is created; temporaries of ``path`` left by dead processes are deleted first.
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    tmp = temporary_path(path, suffix)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when write_fn or the rename failed
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy ``source``'s contents to ``path`` (file contents only, like ``shutil.copyfile``)."""
    return write_atomic(path, lambda tmp: shutil.copyfile(source, tmp))


def torch_save(obj: Any, path: str | Path) -> Path:
    import torch  # here, so the data stages that never save tensors do not need torch to import this

    return write_atomic(path, lambda tmp: torch.save(obj, tmp))

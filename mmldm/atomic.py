"""Atomic file writes: the whole new file appears, or the old one stays.

Why: a run that is interrupted (Ctrl-C, an exception, a full disk) must never leave a
half-written file where a finished one is expected, because the next stage would read it as if it
were complete. So every writer here writes to a temporary name in the SAME folder, then renames it
over the final name with ``os.replace``, which is atomic on one file system. If writing fails the
temporary file is deleted and the error goes on; the old file, if any, is untouched.

The temporary name is ``.<name>.tmp-<pid>`` (hidden, so a ``*.png`` or ``*.nii.gz`` glob never sees
it); writers that choose the format from the file name (``fig.savefig``, ``nib.save``) pass
``suffix`` and get ``.<name>.tmp-<pid><suffix>``. Only a killed process (SIGKILL, power loss) can
leave one behind; :func:`temporary_path` gives the name to look for.

    write_text(out / "report.md", text)
    torch_save({"model": model.state_dict()}, out / "segmenter.pt")
    write_atomic(out / "table.csv", lambda tmp: table.to_csv(tmp, index=False))
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

STALE_GLOB = ".*.tmp-*"  # every temporary name this module makes matches this pattern


def temporary_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary name beside ``path`` that this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def write_atomic(path: str | Path, write_fn: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call ``write_fn(tmp)`` to write a temporary file beside ``path``, then rename it to ``path``.

    The parent folder is created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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

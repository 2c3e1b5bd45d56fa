"""Checks on where a command will write, made before it does any work.

A command that is going to fail at its last step (the output under a file, in a read-only
folder, or on top of one of its own inputs) should fail at its first, with one line, and leave
nothing behind::

    check_output(out, "--out", inputs={"--store": store, "--checkpoint": ckpt})

Writability is tested by creating (and at once deleting) a hidden temporary file in the nearest
existing folder, not with ``os.access``: root passes ``os.access`` on a read-only mount.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmldm.errors import MMLDMError


class OutputError(MMLDMError):
    """An output path that cannot or must not be written."""


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (symlinks and ``..`` resolved; hard links too, when both exist)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, as written (``..`` folded) or with every
    symlink resolved: ``input/patient001/out`` is inside ``input`` even when ``patient001`` links
    elsewhere."""
    a, b = Path(os.path.abspath(path.expanduser())), Path(os.path.abspath(folder.expanduser()))
    if a == b or b in a.parents:
        return True
    a, b = path.expanduser().resolve(), folder.expanduser().resolve()
    return a == b or b in a.parents


def linked_folders(folder: Path) -> list[Path]:
    """The folders that symlinks under ``folder`` point to (what reading the input reaches)."""
    found = []
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            p = Path(root, d)
            if p.is_symlink():
                found.append(p.resolve())
    return found


def check_outside(out: str | Path, flag: str, folder: str | Path, what: str = "input folder") -> None:
    """Refuse (:class:`OutputError`) an output that lies in ``folder`` or in a folder that a symlink
    under ``folder`` points to: a command never writes into the data it reads."""
    out, folder = Path(out), Path(folder)
    if inside(out, folder):
        raise OutputError(f"{flag} {out}: it lies inside the {what} {folder}; choose a place outside it")
    for linked in linked_folders(folder):
        if inside(out, linked):
            raise OutputError(
                f"{flag} {out}: it lies inside {linked}, which the {what} {folder} links to; choose a place outside it"
            )


def _nearest_existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(path.anchor)


def _probe(folder: Path, flag: str, path: Path) -> None:
    """Create and delete a hidden temporary file in ``folder`` (the name mmldm.atomic sweeps if we die)."""
    from mmldm.atomic import temporary_path

    probe = temporary_path(folder / "mmldm-write-test")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # our own probe from a moment ago: the folder is writable
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    probe.unlink(missing_ok=True)


def check_output(
    path: str | Path,
    flag: str,
    inputs: dict[str, str | Path | None] | None = None,
    folder: bool = False,
    writes: tuple[str, ...] = (),
) -> Path:
    """Refuse (:class:`OutputError`) an output ``path`` that cannot or must not be written.

    ``flag`` names it in the message (``"--out"``, ``"OUTPUT"``). ``folder``: the output is a
    folder the command writes ``writes`` (file names) into; else it is a file. ``inputs``
    (flag -> path, None skipped): none of them may be the output, nor one of the files written
    into an output folder. Nothing is created (the probe file is deleted at once). Returns ``path``.
    """
    path = Path(path)
    targets = [path / name for name in writes] if folder else [path]
    for name, source in (inputs or {}).items():
        if source is None:
            continue
        for target in targets:
            if same_path(target, source):
                raise OutputError(
                    f"{flag} {path}: writing it would overwrite the input {name} {source}; choose another output"
                )
    if path.exists():
        if folder and not path.is_dir():
            raise OutputError(f"{flag} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise OutputError(f"{flag} {path} is a folder; give the name of the file to write")
    existing = _nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    _probe(existing, flag, path)
    return path

"""One writer per run folder: ``<folder>/.lock`` names the process that writes there.

Why: two trainers in one folder delete each other's temporary checkpoints, interleave their rows
in ``log.csv`` and overwrite each other's ``last.pt``; neither notices. So a trainer (and the
pipeline, and ``evaluate``) holds the folder's lock while it writes::

    with run_lock(run_dir, "train-vqvae"):
        ...

The lock is an ``flock`` on ``<folder>/.lock``, a small JSON file with the owner's pid, host,
command and start time (shown in the error a second writer gets). The kernel releases an
``flock`` when its process dies, however it dies, so a lock file left by a SIGKILLed run holds
no lock: the next run takes it over with a warning naming the dead owner. The file is deleted on
a normal exit. A process may take a lock it already holds (the count goes up).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from mmldm.errors import MMLDMError, warn

LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # lock path -> [fd, count, folders created]: locks this process holds


class LockError(MMLDMError):
    """The folder is being written by another live process."""


def _owner(fd: int) -> dict:
    """What the lock file says about its owner (``{}`` when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace").strip()
        data = json.loads(text) if text.startswith("{") else {"pid": int(text)}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    who = f"process {owner['pid']}" if "pid" in owner else "another process"
    if owner.get("host") and owner["host"] != socket.gethostname():
        who += f" on {owner['host']}"
    details = ", ".join(str(owner[k]) for k in ("command",) if owner.get(k))
    if owner.get("started"):
        details += (", " if details else "") + f"since {owner['started']}"
    return f"{who} ({details})" if details else who


def _flock(fd: int) -> str:
    """Try to take an exclusive lock without waiting: "locked", "busy" (another process holds it)
    or "unsupported" (no ``fcntl``, or a file system without flock: then the pid in the file decides)."""
    try:
        import fcntl
    except ImportError:
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy"
    except OSError:
        return "unsupported"
    return "locked"


def acquire(folder: str | Path, command: str = "") -> Path:
    """Take ``folder``'s lock (creating the folder) or raise :class:`LockError`; returns the lock path."""
    from mmldm.atomic import pid_alive

    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if left empty
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_NAME).resolve()
    if path in _held:
        _held[path][1] += 1
        return path
    for _ in range(100):  # retried only when the file changed under us (another run released it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            state = _flock(fd)
            owner = _owner(fd)
            pid = owner.get("pid")
            if state == "busy" or (state == "unsupported" and pid not in (None, os.getpid()) and pid_alive(pid)):
                raise LockError(
                    f"{folder} is in use by {_describe(owner)}: one writer per run folder. Wait for it "
                    "to finish or stop it, or choose another folder"
                )
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and deleted between our open and our lock: try the new file
                os.close(fd)
                continue
            if pid not in (None, os.getpid()):
                warn(f"{path}: taking over the lock left by {_describe(owner)}, which is no longer running (killed?)")
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command or " ".join(sys.argv),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        _held[path] = [fd, 1, created]
        return path
    raise LockError(f"{folder}: could not take the lock {path} (it keeps changing)")


def release(path: Path) -> None:
    """Give back a lock taken by :func:`acquire` (the file is deleted when the count reaches 0,
    and so are the folders ``acquire`` created, if nothing was written into them)."""
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[path]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still locked: a run waiting on this file will see it is gone and retry
    os.close(entry[0])
    for folder in entry[2]:  # deepest first: a run that failed before writing leaves no empty folder
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str = "", enabled: bool = True) -> Iterator[Path | None]:
    """Hold ``folder``'s lock for the ``with`` block (``enabled=False``: do nothing, e.g. ranks > 0)."""
    if not enabled:
        yield None
        return
    path = acquire(folder, command)
    try:
        yield path
    finally:
        release(path)

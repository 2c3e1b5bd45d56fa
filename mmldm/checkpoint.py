"""Checkpoints that survive being killed, and everything needed to resume a run exactly.

A run folder keeps two checkpoints::

    <run>/last.pt     the newest
    <run>/prev.pt     the one before it (the fallback if last.pt is ever unreadable)

Writing is atomic (:func:`save_checkpoint`): the state goes to a temporary file in the same
folder, is flushed and fsync'ed, is read back once to prove it is whole, and only then does
``last.pt`` become ``prev.pt`` and the temporary file become ``last.pt`` (``os.replace``, atomic
on one file system). A SIGKILL at any moment leaves ``last.pt`` whole (old or new) and at worst a
stray ``.last.pt.tmp-<pid>``, which the next save deletes (once that process is gone).

What a checkpoint holds (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    format, version        "mmldm-checkpoint", FORMAT_VERSION
    stage                  "vqvae" or "ldm"
    step                   optimiser steps completed
    config                 the whole profile, as a dict (mmldm.config.to_dict)
    model                  the model's state_dict (VQVAE or UNet; never a DDP/compiled wrapper's)
    ema                    EMA.state_dict() or None
    optimizers, schedulers {name: state_dict}: "generator"/"discriminator" or "unet"
    extra                  stage-specific: the discriminator's weights (vqvae); the latent
                           normalisation stats and the VQVAE it was trained on (ldm)
    rng                    one capture_rng() dict per process (python, numpy, torch, cuda, and
                           the trainer's own generators), so each rank resumes its own streams
    world_size             processes that wrote it

Resuming continues the same random streams, the same data order (a pure function of the seed,
the epoch and the position in it, so it needs no saved state; see :mod:`mmldm.train.loop`) and
the same optimiser state, so a resumed run ends with bit-identical weights to an uninterrupted
one (on the CPU, with ``deterministic: true``). There is no GradScaler to save: mixed precision
is bf16, which needs no loss scaling.
"""

from __future__ import annotations

import hashlib
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from mmldm import atomic
from mmldm.errors import MMLDMError, warn

FORMAT = "mmldm-checkpoint"
FORMAT_VERSION = 1
LAST, PREVIOUS = "last.pt", "prev.pt"


class CheckpointError(MMLDMError):
    """A checkpoint that is missing, truncated, corrupt or of the wrong kind; names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """torch.load with every way a file can be broken turned into a CheckpointError."""
    if path.is_file() and not _intact(path):
        raise CheckpointError(
            path,
            "cannot be read, the file is truncated or corrupt (its zip records are incomplete or fail their checksums)",
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(path, "no such checkpoint") from None
    except Exception as e:  # zip, pickle and EOF errors all mean "not a whole checkpoint"
        raise CheckpointError(
            path,
            f"cannot be read, the file is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(path, "not an mmldm checkpoint (no 'format' marker)")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(path, f"checkpoint version {state.get('version')}, this code reads {FORMAT_VERSION}")
    return state


def _step_if_readable(path: Path) -> int | None:
    """The step of a checkpoint that loads, else None."""
    try:
        return int(_read(path, mmap=True)["step"])
    except CheckpointError:
        return None


def _intact(path: Path) -> bool:
    """Whether every record of the checkpoint's zip archive is there with the right CRC-32.

    torch.save writes a zip archive (a pickle plus one record per tensor), each record with its
    checksum; reading them all back catches a short or damaged file in about the time it takes to
    read it, far faster than unpickling (the ``weights_only`` unpickler is pure Python).
    """
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and any(n.endswith("data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def runs_trained_on(store: str | Path, runs_root: str | Path) -> list[Path]:
    """The checkpoints under ``runs_root`` (``<run>/vqvae/last.pt``, ``<run>/ldm/last.pt``, one
    level or two deep) whose config names ``store`` as its ``paths.store``: what replacing that
    store would leave describing data that is gone. Unreadable checkpoints are passed over."""
    from mmldm.config import Config, from_dict

    store, root = Path(store).resolve(), Path(runs_root)
    found = []
    for path in sorted({*root.glob(f"*/*/{LAST}"), *root.glob(f"*/{LAST}")}):
        try:
            # mmap: only the pickled config is read, not every tensor (nor _read's CRC pass over the file)
            cfg = from_dict(Config, torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"])
        except Exception:  # noqa: BLE001 - a broken or foreign checkpoint depends on nothing
            continue
        if cfg.store_path.resolve() == store:
            found.append(path)
    return found


def load_checkpoint(path: str | Path, stage: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; with ``stage``, check its kind.

    A broken file raises :class:`CheckpointError` naming it and, when the folder's other
    checkpoint (``prev.pt`` beside ``last.pt``) still loads, naming that one as the way out.
    """
    path = Path(path)
    try:
        state = _read(path, map_location)
    except CheckpointError as e:
        other = path.with_name(PREVIOUS if path.name == LAST else LAST)
        if path.exists() and other.exists() and (step := _step_if_readable(other)) is not None:
            e = CheckpointError(
                path,
                f"{e.problem}. The other checkpoint {other} is intact (step {step}): "
                f"pass it instead, or --resume, which falls back to it",
            )
        raise e from None
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(path, f"is a {state.get('stage')!r} checkpoint, expected a {stage!r} one")
    return state


def find_resume(run_dir: str | Path, stage: str | None = None, map_location="cpu") -> tuple[dict, Path] | None:
    """The checkpoint to resume ``run_dir`` from: ``last.pt``, else ``prev.pt``; None if neither exists.

    If ``last.pt`` is unreadable but ``prev.pt`` loads, a warning names both and ``prev.pt`` is used
    (losing the steps since it, never the run); if both are broken the error names ``last.pt``.
    """
    run_dir = Path(run_dir)
    last, prev = run_dir / LAST, run_dir / PREVIOUS
    if not last.exists() and not prev.exists():
        return None
    if last.exists():
        try:
            return load_checkpoint(last, stage, map_location), last
        except CheckpointError as e:
            if not prev.exists() or _step_if_readable(prev) is None:
                raise
            warn(f"{e.path}: {e.problem.split('. The other')[0]}; resuming from {prev} instead")
    return load_checkpoint(prev, stage, map_location), prev


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable (a directory fsync; not available on every OS)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` (normally ``<run>/last.pt``) atomically, keeping the previous one.

    Steps: temporary file beside ``path`` -> flush + fsync -> read it back (every zip record's
    checksum, see :func:`_intact`) ->
    ``path`` (if it loads) becomes ``prev.pt`` -> temporary file becomes ``path`` -> fsync the folder.
    A ``path`` that does not load is overwritten without being rotated, so a good ``prev.pt`` is
    never replaced by a broken file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    tmp = atomic.temporary_path(path)  # not atomic.write_atomic: fsync, read-back and rotation come between
    atomic.sweep_stale(path.parent, path.name)  # left by a killed run (never a live writer's)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if not _intact(tmp):
            raise CheckpointError(tmp, "the checkpoint just written does not read back (disk full?)")
        if path.exists() and _intact(path):
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# ---------------------------------------------------------------------------------------------
# Random state
# ---------------------------------------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every random stream the training step draws from: python, numpy, torch (CPU and CUDA),
    and the trainer's own named ``generators``; plain types and tensors only."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": int(np_state["state"]["pos"]),
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng` captured (the named generators must exist already)."""
    random.setstate(_to_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np_state["state"]["key"].numpy().astype(np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def _to_tuple(x):
    """random.setstate wants tuples; a checkpoint round trip may give lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------
# Identity of weights
# ---------------------------------------------------------------------------------------------


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of a state dict's names, dtypes, shapes and bytes.

    Two models hash equal exactly when their tensors are bit-identical; the latent cache is keyed
    to the VQVAE's hash, and the resume and multi-process tests compare runs by it.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

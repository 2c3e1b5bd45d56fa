"""Finding subject folders below whatever folder a user points at (shared by the readers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def subject_folders_under(root: Path, splits: tuple[str, ...], is_subject: Callable[[Path], bool]) -> list[Path]:
    """Subject folders in ``root``'s split folders (e.g. ``training/``), else in ``root``, or
    ``[root]`` when ``root`` is itself a subject folder; sorted within each split."""
    root = Path(root)
    if is_subject(root):
        return [root]
    bases = [root / split for split in splits if (root / split).is_dir()] or [root]
    folders: list[Path] = []
    for base in bases:
        if base.is_dir():
            folders += sorted(d for d in base.iterdir() if is_subject(d))
    return folders

"""The raw data a profile points at: a real dataset folder, or the phantom (made on first use)."""

from __future__ import annotations

from pathlib import Path

from mmldm.errors import DataError


def ensure_source(cfg, progress: bool = True) -> Path:
    """The raw dataset folder of ``cfg`` (a :class:`mmldm.config.Config`), ready to read.

    For ``paths.source: phantom`` the phantom is written (or completed: generation resumes
    subject by subject) into ``cfg.source_dir``; a real source must already exist.
    """
    folder = cfg.source_dir
    if cfg.paths.is_phantom:
        from mmldm.data.phantom import write_phantom

        write_phantom(folder, subjects=cfg.paths.phantom_subjects, seed=cfg.paths.phantom_seed)
    elif not folder.is_dir():
        raise DataError(folder, "the data source in the config (paths.source) is not a folder")
    return folder

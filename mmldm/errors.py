"""The two kinds of user-facing error.

Every message names the file (or config key) and the problem, so that a user who points mmldm
at a broken dataset or writes a wrong key knows what to fix without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MMLDMError(Exception):
    """Base class: an error whose message is meant for the user."""


class DataError(MMLDMError):
    """A data file (or folder) that cannot be used, with the path and the reason."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class ConfigError(MMLDMError):
    """A config file or key that is wrong (unknown key, wrong type, bad value)."""

"""The two kinds of user-facing error.

Every message names the file (or config key) and the problem, so that a user who points mmldm
at a broken dataset or writes a wrong key knows what to fix without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MMLDMError(Exception):
    """Base class: an error whose message is meant for the user."""


class MMLDMWarning(UserWarning):
    """A warning meant for the user: printed as one plain line (``warning: ...``), no source line."""


def warn(message: str) -> None:
    """Warn the user in one line (:class:`MMLDMWarning`; the CLI prefixes ``mmldm <command>:``)."""
    import warnings

    warnings.warn(message, MMLDMWarning, stacklevel=3)


def install_warning_format() -> None:
    """Print :class:`MMLDMWarning` as ``warning: <message>``; every other warning as Python does.
    Called when mmldm is imported, so a notebook's kernel (and run_all's terminal) shows one line."""
    import warnings

    form = warnings.formatwarning
    if getattr(form, "mmldm", False):
        return

    def one_line(message, category, filename, lineno, line=None):
        if isinstance(category, type) and issubclass(category, MMLDMWarning):
            return f"warning: {message}\n"
        return form(message, category, filename, lineno, line)

    one_line.mmldm = True
    warnings.formatwarning = one_line


class DataError(MMLDMError):
    """A data file (or folder) that cannot be used, with the path and the reason."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def report(problem: DataError, skipped: list | None) -> None:
    """Raise ``problem``, or, when the caller collects problems in ``skipped``, append it there
    (how a reader lists a folder with ``skip_bad``: the bad case is left out, the rest go on)."""
    if skipped is None:
        raise problem
    skipped.append(problem)


class ConfigError(MMLDMError):
    """A config file or key that is wrong (unknown key, wrong type, bad value)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs: every
    ``except BaseException`` / ``finally`` that deletes a temporary file or releases a lock."""


_terminated: list[int] = []  # the signal, once SIGTERM has come


def terminate_as_interrupt() -> None:
    """From now on SIGTERM (``kill``, a job scheduler, ``timeout``) raises :class:`Terminated` in
    the main thread instead of ending the process on the spot (which would leave temporary files).

    Python ignores an exception raised by a signal handler that happens to run inside an at-fork
    callback or a ``__del__`` ("Exception ignored in ..."; measured: SIGTERM while a
    multiprocessing pool forks its workers). So the signal is also remembered, and the long loops
    call :func:`check_terminated` once per item: a swallowed SIGTERM stops the run there instead.
    """
    import signal
    import sys

    def handler(signum, frame):
        _terminated.append(signum)
        raise Terminated(f"signal {signum}")

    default_hook = sys.unraisablehook

    def unraisable(info):  # the swallowed one: not a traceback on stderr, it is raised again later
        if not isinstance(info.exc_value, Terminated):
            default_hook(info)

    sys.unraisablehook = unraisable
    signal.signal(signal.SIGTERM, handler)


def check_terminated() -> None:
    """Raise :class:`Terminated` if SIGTERM came and its first exception was swallowed (see above)."""
    if _terminated:
        raise Terminated(f"signal {_terminated[0]}")


def quiet_broken_pipe() -> int:
    """After a ``BrokenPipeError`` (``mmldm ... | head -2`` closed the pipe): point stdout at
    /dev/null so the interpreter's last flush cannot raise again, and return the shell's status
    for SIGPIPE (128 + 13). The reader left on purpose; there is nothing to report."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141

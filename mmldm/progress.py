"""Progress bars that a headless run can show.

In a notebook ``tqdm.auto`` draws a widget, which a headless run (``./run_all.sh``, papermill)
never shows. ``./run_all.sh`` sets ``MMLDM_PROGRESS=lines``; then :func:`tqdm` prints its bar as a
plain line at most every ``LINE_SECONDS`` (and at the end) to stdout, which the pipeline streams to
the terminal. Otherwise it is ``tqdm.auto.tqdm``.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _text_tqdm

LINE_SECONDS = 10.0


def headless() -> bool:
    """True inside ``./run_all.sh``: bars become printed lines (see the module docstring)."""
    return os.environ.get("MMLDM_PROGRESS") == "lines"


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + bar) into one printed line."""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            sys.stdout.write(text + "\n")

    def flush(self) -> None:
        sys.stdout.flush()


def tqdm(*args, **kwargs):
    if not headless():
        return _auto_tqdm(*args, **kwargs)
    kwargs.update(file=_Lines(), mininterval=LINE_SECONDS, dynamic_ncols=False, ncols=100, ascii=True)
    return _text_tqdm(*args, **kwargs)

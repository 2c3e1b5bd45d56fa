"""Which dataset is this folder? Recognise the layout, list its cases, load any case.

    cases = find_cases("data/raw/acdc")          # layout recognised from the folder
    cases = find_cases(path, format="mnms2")     # or forced
    volume = load_case(cases[0])                 # dispatched on case.source

Recognition tries the readers in order (M&Ms-2, M&Ms, ACDC) and takes the first whose subject
folders it finds; each reader's module docstring shows its layout. The phantom writes the M&Ms-2
layout: ``format="phantom"`` reads it with the M&Ms-2 reader and tags the cases "phantom".
"""

from __future__ import annotations

from pathlib import Path

from mmldm.data.readers import acdc, mnms, mnms2
from mmldm.data.schema import Case, Volume
from mmldm.errors import DataError

READERS = {"mnms2": mnms2, "mnms": mnms, "acdc": acdc}  # recognition order
FORMATS = ("auto", "mnms2", "mnms", "acdc", "phantom")


def detect_format(root: str | Path) -> str:
    """The name of the first reader that finds subject folders in ``root``."""
    root = _check_folder(root)
    for name, reader in READERS.items():
        if reader.looks_like(root):
            return name
    raise DataError(root, f"no known dataset layout found; looked for {_layouts()}")


def find_cases(root: str | Path, format: str = "auto", skipped: list[DataError] | None = None) -> list[Case]:
    """Every (subject, view, phase) case under ``root``, in subject order; never empty.

    A case that cannot be listed (a missing ``_gt`` file, a missing or unreadable ``Info.cfg``, a
    frame it names that does not exist...) raises a DataError naming the file; with a ``skipped``
    list, it is appended there instead and left out (``preprocess --skip-bad``).
    """
    if format not in FORMATS:
        raise DataError(root, f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    root = _check_folder(root)
    if format == "auto":
        format = detect_format(root)
    before = len(skipped) if skipped is not None else 0
    if format == "phantom":
        cases = mnms2.find_cases(root, source="phantom", skipped=skipped)
        layout = mnms2.LAYOUT
    else:
        cases = READERS[format].find_cases(root, skipped=skipped)
        layout = READERS[format].LAYOUT
    if not cases:
        left_out = skipped[before:] if skipped is not None else []
        if left_out:
            raise DataError(root, f"no usable cases: all {len(left_out)} left out, the first because {left_out[0]}")
        raise DataError(root, f"no cases found; looked for {layout}")
    return cases


def load_case(case: Case) -> Volume:
    """Load a case with the reader that made it: image float32, canonical uint8 labels."""
    reader = mnms2 if case.source == "phantom" else READERS.get(case.source)
    if reader is None:
        raise DataError(case.image_path, f"no reader for source {case.source!r}")
    return reader.load_case(case)


def _check_folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(root, "folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder (point at the dataset's folder)")
    return root


def _layouts() -> str:
    return "; ".join(reader.LAYOUT for reader in READERS.values())

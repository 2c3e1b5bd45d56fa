"""M&Ms reader (the first Multi-Centre, Multi-Vendor & Multi-Disease challenge, Campello 2021).

On disk::

    ROOT/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv
                        External code, VendorName, Vendor, Centre, ED, ES, Pathology, Age, ...
    ROOT/Training/Labeled/A0S9V9/A0S9V9_sa.nii.gz      short-axis cine, (H, W, Z, T)
    ROOT/Training/Labeled/A0S9V9/A0S9V9_sa_gt.nii.gz   labels on the ED and ES frames only:
                                                      0 BG, 1 LV, 2 MYO, 3 RV (already canonical)
    ROOT/Training/Unlabeled/...                        no labels: skipped
    ROOT/Validation/CODE/..., ROOT/Testing/CODE/...    same layout

Each subject gives two cases (ED, ES) that point into the same pair of 4-D files; ``Case.frame``
is the 0-based time index. The frames come from the information CSV (any ``.csv`` in the root,
or up to two folders above the subject folders, with a code column and ED and ES columns); for a
subject the CSV lacks, they come from the label file itself: of the frames that carry labels,
the one with the largest LV is ED and the one with the smallest is ES (the heart is fullest at
end-diastole). That fallback reads the label file while listing cases.

The user may point at ROOT, at ``Training/``, ``Training/Labeled/``, ``Validation/``,
``Testing/``, or at one subject folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from mmldm.data.nifti import find_nifti, load_nifti, load_pair
from mmldm.data.readers.folders import subject_folders_under
from mmldm.data.readers.mnms2 import parse_cell  # the two M&Ms CSVs write cells alike
from mmldm.data.schema import Case, Volume
from mmldm.errors import DataError, report

LAYOUT = "M&Ms: [ROOT/{Training/Labeled,Validation,Testing}/]CODE/CODE_sa.nii.gz + CODE_sa_gt.nii.gz (4-D)"
SPLITS = ("Training/Labeled", "Labeled", "Validation", "Testing")

# Normalised CSV column (lower case, letters and digits only) -> meta key. Other columns keep
# their name in snake_case. "Vendor" is a letter (A-D) when "VendorName" is also there.
CODE_COLUMNS = ("externalcode", "subjectcode", "code")
META_KEYS = {"vendorname": "vendor", "center": "centre"}


def is_subject_folder(folder: Path) -> bool:
    """A folder ``CODE`` holding ``CODE_sa.nii.gz``."""
    return folder.is_dir() and find_nifti(folder, f"{folder.name}_sa") is not None


def subject_folders(root: Path) -> list[Path]:
    """Subject folders under the release's split folders, under ``root``, or ``root`` itself."""
    return subject_folders_under(root, SPLITS, is_subject_folder)


def looks_like(root: Path) -> bool:
    return bool(subject_folders(root))


def find_cases(root: str | Path, skipped: list[DataError] | None = None) -> list[Case]:
    """Two cases per subject (ED, ES), each with the time index of its frame.

    A subject without its ``_gt`` file or without two labelled frames raises a DataError, or with
    ``skipped`` is appended there and left out.
    """
    folders = subject_folders(Path(root))
    info = read_information(folders)
    cases = []
    for folder in folders:
        image_path = find_nifti(folder, f"{folder.name}_sa")
        label_path = find_nifti(folder, f"{folder.name}_sa_gt")
        if label_path is None:
            report(DataError(image_path, f"label file {folder.name}_sa_gt.nii.gz is missing"), skipped)
            continue
        meta = dict(info.get(folder.name, {}))
        frames = {phase: meta.pop(phase) for phase in ("ED", "ES") if phase in meta}
        if len(frames) < 2:  # not in the CSV (or no CSV): ask the label file
            try:
                frames = frames_from_labels(label_path)
            except DataError as err:
                report(err, skipped)
                continue
        for phase in ("ED", "ES"):
            frame = frames[phase]
            case = Case(folder.name, "SA", phase, "mnms", image_path, label_path, frame, dict(meta))
            cases.append(case)
    return cases


def load_case(case: Case) -> Volume:
    """Read the 4-D pair, keep ``case.frame``; that frame must carry labels."""
    image, label, spacing = load_pair(case.image_path, case.label_path, frame=case.frame)
    if not label.any():
        raise DataError(
            case.label_path,
            f"{case.phase} frame {case.frame} has no labels (is the information CSV's "
            "frame index 1-based? M&Ms frames are 0-based)",
        )
    return Volume(case, image, label, spacing)


def frames_from_labels(label_path: Path) -> dict[str, int]:
    """ED and ES time indices from a 4-D label file: largest and smallest labelled LV."""
    label, _ = load_nifti(label_path, ndim=4)
    labelled = [t for t in range(label.shape[3]) if label[..., t].any()]
    if len(labelled) < 2:
        raise DataError(
            label_path,
            f"labels on {len(labelled)} frame(s), need the ED and ES frames; "
            "or give them in an information CSV (code, ED, ES columns)",
        )
    lv = [int((label[..., t] == 1).sum()) for t in labelled]
    ed = labelled[int(np.argmax(lv))]
    rest = [t for t in labelled if t != ed]
    es = rest[int(np.argmin([lv[labelled.index(t)] for t in rest]))]
    return {"ED": ed, "ES": es}


def read_information(folders: list[Path]) -> dict[str, dict]:
    """``{code: meta with ED and ES}`` from the first CSV near the subject folders (or {})."""
    if not folders:
        return {}
    base = folders[0].parent
    for place in (base, base.parent, base.parent.parent):
        for path in sorted(place.glob("*.csv")):
            info = _read_csv(path)
            if info is not None:
                return info
    return {}


def _read_csv(path: Path) -> dict[str, dict] | None:
    """The table keyed by code, or None if it lacks a code, an ED or an ES column."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = {_normalise(column): column for column in rows[0] if column}
    code = next((columns[c] for c in CODE_COLUMNS if c in columns), None)
    if code is None or "ed" not in columns or "es" not in columns:
        return None
    renames = {**META_KEYS, **({"vendor": "vendor_code"} if "vendorname" in columns else {})}
    info = {}
    for row in rows:
        meta = {}
        for norm, column in columns.items():
            text = (row.get(column) or "").strip()
            if column == code or not text:
                continue
            if norm in ("ed", "es"):
                if not text.isdigit():
                    raise DataError(path, f"{column} of {row[code]} is {text!r}, not a frame index")
                meta[norm.upper()] = int(text)
            else:
                key = renames.get(norm, re.sub(r"\W+", "_", column.strip().lower()))
                meta[key] = parse_cell(text)
        info[row[code].strip()] = meta
    return info


def _normalise(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())

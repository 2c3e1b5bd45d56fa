"""M&Ms-2 reader (also the layout mmldm's phantom writes).

On disk::

    ROOT/dataset_information.csv            optional: SUBJECT_CODE, DISEASE, VENDOR, SCANNER,
                                            FIELD, and whatever else the release adds (SEX, AGE...)
    ROOT/dataset/001/001_SA_ED.nii.gz       short axis at end-diastole, (H, W, Z)
    ROOT/dataset/001/001_SA_ED_gt.nii.gz    its labels: 0 BG, 1 LV, 2 MYO, 3 RV (already canonical)
    ROOT/dataset/001/001_LA_ES.nii.gz       4-chamber long axis: a single slice, (H, W, 1)
    ROOT/dataset/001/001_LA_CINE.nii.gz     long-axis cine without labels: ignored

The user may point at ROOT, at ROOT/dataset (the folder of subject folders; the CSV is then
looked for beside it), or at one subject folder. Each subject gives up to four cases:
SA/LA x ED/ES, whichever image files are present; an image without its ``_gt`` is an error.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from mmldm.data.nifti import find_nifti, load_pair
from mmldm.data.schema import PHASES, VIEWS, Case, Volume
from mmldm.errors import DataError, report

LAYOUT = "M&Ms-2: [ROOT/dataset/]NNN/NNN_{SA,LA}_{ED,ES}.nii.gz + NNN_..._gt.nii.gz"
CSV_NAME = "dataset_information.csv"

# CSV column -> meta key; columns not listed here keep their own name, lower-cased.
META_KEYS = {"DISEASE": "pathology", "CENTER": "centre"}
CODE_COLUMN = "SUBJECT_CODE"


def is_subject_folder(folder: Path) -> bool:
    """A folder ``NNN`` holding at least one ``NNN_{SA,LA}_{ED,ES}`` image."""
    return folder.is_dir() and any(
        find_nifti(folder, f"{folder.name}_{view}_{phase}") for view in VIEWS for phase in PHASES
    )


def subject_folders(root: Path) -> list[Path]:
    """Subject folders under ``root/dataset``, under ``root``, or ``root`` itself."""
    root = Path(root)
    if is_subject_folder(root):
        return [root]
    for base in (root / "dataset", root):
        if base.is_dir():
            found = sorted(d for d in base.iterdir() if is_subject_folder(d))
            if found:
                return found
    return []


def looks_like(root: Path) -> bool:
    return bool(subject_folders(root))


def find_cases(root: str | Path, source: str = "mnms2", skipped: list[DataError] | None = None) -> list[Case]:
    """All (subject, view, phase) cases under ``root``; ``source`` tags them ("phantom" too).

    An image without its ``_gt`` raises a DataError, or with ``skipped`` is appended there and left out.
    """
    root = Path(root)
    folders = subject_folders(root)
    info = read_information(folders)
    cases = []
    for folder in folders:
        meta = info.get(_code(folder.name), {})
        for view in VIEWS:
            for phase in PHASES:
                stem = f"{folder.name}_{view}_{phase}"
                image_path = find_nifti(folder, stem)
                if image_path is None:
                    continue
                label_path = find_nifti(folder, f"{stem}_gt")
                if label_path is None:
                    report(DataError(image_path, f"label file {stem}_gt.nii.gz is missing"), skipped)
                    continue
                cases.append(Case(folder.name, view, phase, source, image_path, label_path, meta=dict(meta)))
    return cases


def load_case(case: Case) -> Volume:
    """Labels on disk are already canonical (1 LV, 2 MYO, 3 RV): no remapping."""
    image, label, spacing = load_pair(case.image_path, case.label_path)
    return Volume(case, image, label, spacing)


def read_information(folders: list[Path]) -> dict[str, dict]:
    """``{subject code: meta}`` from ``dataset_information.csv`` beside ``dataset/`` (or {})."""
    if not folders:
        return {}
    base = folders[0].parent  # the folder of subject folders: ROOT/dataset in the release
    path = next((p / CSV_NAME for p in (base, base.parent) if (p / CSV_NAME).is_file()), None)
    if path is None:
        return {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if rows and CODE_COLUMN not in rows[0]:
        raise DataError(path, f"has no {CODE_COLUMN} column (columns: {', '.join(rows[0])})")
    info = {}
    for row in rows:
        meta = {
            META_KEYS.get(column, column.strip().lower()): parse_cell(text)
            for column, text in row.items()
            if column and column != CODE_COLUMN and text not in (None, "")
        }
        info[_code(row[CODE_COLUMN])] = meta
    return info


def _code(text: str) -> str:
    """Subject codes compare as numbers when they are numbers: folder ``001`` is CSV ``1``."""
    text = str(text).strip()
    return str(int(text)) if text.isdigit() else text


def parse_cell(text: str):
    """A CSV cell as int, float or stripped string ("nan" and "inf" stay strings)."""
    text = text.strip()
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if math.isfinite(number) else text
    return text

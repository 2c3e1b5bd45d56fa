"""ACDC reader (Automated Cardiac Diagnosis Challenge, Bernard et al. 2018).

On disk::

    ROOT/training/patient001/Info.cfg                     ED: 1  ES: 12  Group: DCM
                                                          Height: 184.0  NbFrame: 30  Weight: 95.0
    ROOT/training/patient001/patient001_frame01.nii.gz    short axis at frame 1, (H, W, Z)
    ROOT/training/patient001/patient001_frame01_gt.nii.gz labels: 0 BG, 1 RV, 2 MYO, 3 LV
    ROOT/training/patient001/patient001_4d.nii.gz         full cine without labels: ignored
    ROOT/testing/patient101/...                           same layout

ACDC numbers the ventricles the other way round from M&Ms, so labels are remapped on load
(1 RV -> 3, 3 LV -> 1). Frame numbers in file names are the 1-based numbers ``Info.cfg`` gives.
The user may point at ROOT, at ``training/`` or ``testing/``, or at one patient folder.
Intensities come as float32, int16 or uint8; they become float32 unscaled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmldm.data.nifti import find_nifti, load_pair
from mmldm.data.readers.folders import subject_folders_under
from mmldm.data.schema import Case, Volume
from mmldm.errors import DataError, report

LAYOUT = "ACDC: [ROOT/{training,testing}/]patientXXX/Info.cfg + patientXXX_frameNN[_gt].nii.gz"
SPLITS = ("training", "testing")

# ACDC disk value -> canonical value: 0 BG -> 0, 1 RV -> 3, 2 MYO -> 2, 3 LV -> 1.
REMAP = np.array([0, 3, 2, 1], dtype=np.uint8)

# Info.cfg key -> (meta key, type); ED and ES become the cases' files instead.
INFO_KEYS = {"Group": ("pathology", str), "Height": ("height", float),
             "Weight": ("weight", float), "NbFrame": ("n_frames", int)}  # fmt: skip


def is_subject_folder(folder: Path) -> bool:
    """A folder holding at least one ``<folder>_frameNN`` image (its ``Info.cfg`` is checked when
    the cases are listed: a patient without one is reported, not silently passed over)."""
    return folder.is_dir() and any(folder.glob(f"{folder.name}_frame*.nii*"))


def subject_folders(root: Path) -> list[Path]:
    """Patient folders under ``root/training`` and ``root/testing``, under ``root``, or root."""
    return subject_folders_under(root, SPLITS, is_subject_folder)


def looks_like(root: Path) -> bool:
    return bool(subject_folders(root))


def find_cases(root: str | Path, skipped: list[DataError] | None = None) -> list[Case]:
    """Two cases per patient (ED and ES, short axis), frames from ``Info.cfg``.

    A problem raises a DataError, or with ``skipped`` is appended there and the patient (a bad
    ``Info.cfg``) or the case (a missing frame or ``_gt``) is left out.
    """
    cases = []
    for folder in subject_folders(Path(root)):
        try:
            info = read_info(folder / "Info.cfg")
        except DataError as err:
            report(err, skipped)
            continue
        meta = {key: info[name] for name, (key, _) in INFO_KEYS.items() if name in info}
        for phase in ("ED", "ES"):
            stem = f"{folder.name}_frame{info[phase]:02d}"
            image_path = find_nifti(folder, stem)
            if image_path is None:
                problem = f"missing: Info.cfg says {phase} is frame {info[phase]}"
                report(DataError(folder / f"{stem}.nii.gz", problem), skipped)
                continue
            label_path = find_nifti(folder, f"{stem}_gt")
            if label_path is None:
                report(DataError(image_path, f"label file {stem}_gt.nii.gz is missing"), skipped)
                continue
            case = Case(folder.name, "SA", phase, "acdc", image_path, label_path, meta=dict(meta))
            cases.append(case)
    return cases


def load_case(case: Case) -> Volume:
    """Read the pair and remap ACDC's 1 RV / 3 LV to the canonical 1 LV / 3 RV."""
    image, label, spacing = load_pair(case.image_path, case.label_path, remap=REMAP)
    return Volume(case, image, label, spacing)


def read_info(path: Path) -> dict:
    """``Info.cfg`` as a dict: ED and ES frame numbers (int) plus the keys in INFO_KEYS, typed."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "is missing (it gives the patient's ED and ES frame numbers)")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise DataError(path, f"cannot read: {err}") from err
    raw = dict(line.split(":", 1) for line in lines if ":" in line)
    raw = {key.strip(): value.strip() for key, value in raw.items()}
    types = {"ED": int, "ES": int, **{name: kind for name, (_, kind) in INFO_KEYS.items()}}
    info = {}
    for name, kind in types.items():
        if name not in raw:
            if name in ("ED", "ES"):
                raise DataError(path, f"has no '{name}:' line (the {name} frame number)")
            continue
        try:
            info[name] = kind(raw[name])
        except ValueError:
            raise DataError(path, f"{name} value {raw[name]!r} is not a {kind.__name__}") from None
        if name in ("ED", "ES") and info[name] < 0:
            raise DataError(path, f"{name} frame {info[name]} is negative")
    return info

"""Synthetic cine MRI subjects written exactly like M&Ms-2: the default data on a fresh machine.

``write_phantom(out, subjects)`` produces::

    out/dataset_information.csv            SUBJECT_CODE, DISEASE, SEX, AGE, CENTRE, SCANNER, VENDOR, FIELD
    out/dataset/001/001_SA_ED.nii.gz       short-axis stack (H, W, Z), float64, end-diastole
    out/dataset/001/001_SA_ED_gt.nii.gz    its labels (uint8): 0 background, 1 LV, 2 myocardium, 3 RV
    out/dataset/001/001_SA_ES.nii.gz       ... and _gt, end-systole
    out/dataset/001/001_LA_ED.nii.gz       4-chamber long-axis slice (H, W, 1), and _gt
    out/dataset/001/001_LA_ES.nii.gz       ... and _gt
    out/phantom.json                       the seed and size the folder was made with

Geometry follows the real M&Ms-2 files: short-axis 380 mm field of view (1.48 mm pixels at
256), 8-12 slices about 10 mm apart from above the base to past the apex; long-axis 440 mm
(1.72 mm pixels), one slice (its header says 1 mm through-plane, as M&Ms-2's does). Voxel
axes point the way the real files' do (short axis: A, R, I; long axis: I, R, P), so readers
that reorient treat the phantom like the real data.

Diseases use four of the seven M&Ms-2 codes (see :mod:`mmldm.data.phantom.heart`): ``NOR``
normal, ``LV`` dilated left ventricle, ``HCM`` hypertrophic cardiomyopathy, and ``TRI``
(tricuspid regurgitation) standing in for the RV-dilating codes ``TRI``, ``FALL`` and ``CIA``.
Vendors are ``SIEMENS``, ``GE`` and ``Philips``, each with its own contrast and units.

Guarantees:

- *Deterministic*: subject ``i`` is drawn from ``SeedSequence([seed, i])`` alone, so the same
  seed gives identical arrays and the first 10 of 360 subjects are the 10 of a 10-subject run.
- *Resumable*: every file is written under a temporary name in its folder, then renamed; a
  subject whose eight files all exist is skipped, so an interrupted run just continues. The
  CSV is rewritten at the end of every call and lists subjects 1..``subjects`` of that call.
- *Safe*: a folder made with another seed or size, or one holding data that is not a phantom
  (no ``phantom.json``), is refused rather than mixed or overwritten.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mmldm import atomic
from mmldm.data.phantom.heart import DISEASE_WEIGHTS, DISEASES, Anatomy, sample_anatomy
from mmldm.data.phantom.long_axis import FourChamberDrawer
from mmldm.data.phantom.mri import Look, Scanner, sample_look
from mmldm.data.phantom.shapes import Grid
from mmldm.data.phantom.short_axis import ShortAxisDrawer
from mmldm.errors import DataError

SA_FIELD_OF_VIEW = 380.0  # mm: 1.484 mm pixels at 256, as in M&Ms-2
LA_FIELD_OF_VIEW = 440.0  # mm: 1.719 mm pixels at 256
LA_THICKNESS = 1.0  # what M&Ms-2 long-axis headers store as the third voxel size
CSV_COLUMNS = ("SUBJECT_CODE", "DISEASE", "SEX", "AGE", "CENTRE", "SCANNER", "VENDOR", "FIELD")
CASES = ("SA_ED", "SA_ES", "LA_ED", "LA_ES")
SETTINGS = "phantom.json"

# (centre, vendor, scanner model, field strength in tesla): plausible M&Ms-2-like sites.
SCANNERS = (
    (1, "SIEMENS", "Avanto", 1.5),
    (1, "SIEMENS", "Skyra", 3.0),
    (2, "SIEMENS", "Symphony", 1.5),
    (2, "GE", "Signa Excite", 1.5),
    (3, "GE", "Signa Explorer", 1.5),
    (3, "Philips", "Achieva", 1.5),
    (3, "Philips", "Achieva", 3.0),
)

# Voxel axis -> world direction (RAS+), matching the real M&Ms-2 headers' axis codes.
_SA_AXES = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float).T  # A, R, I
_LA_AXES = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float).T  # I, R, P


@dataclass(frozen=True)
class SubjectInfo:
    """One row of ``dataset_information.csv``."""

    SUBJECT_CODE: int
    DISEASE: str
    SEX: str
    AGE: int
    CENTRE: int
    SCANNER: str
    VENDOR: str
    FIELD: float


def subject_folder_name(index: int) -> str:
    """``1 -> "001"``: the zero-padded folder and file prefix of a subject."""
    return f"{index:03d}"


def write_phantom(out: Path, subjects: int, seed: int = 0, size: int = 256) -> list[Path]:
    """Write ``subjects`` phantom subjects (codes 1..subjects) under ``out`` in the M&Ms-2
    layout and return their folders. Subjects already complete are left as they are."""
    out = Path(out)
    if subjects < 1 or seed < 0 or size < 64:
        raise ValueError(f"need subjects >= 1, seed >= 0, size >= 64; got {subjects}, {seed}, {size}")
    _claim_folder(out, seed, size)
    folders, rows = [], []
    for index in range(1, subjects + 1):
        folder = out / "dataset" / subject_folder_name(index)
        rows.append(subject_info(seed, index))
        if not all(path.is_file() for path in subject_files(folder, index)):
            _write_subject(folder, index, seed, size)
        folders.append(folder)
    _write_csv(out / "dataset_information.csv", rows)
    return folders


def subject_files(folder: Path, index: int) -> list[Path]:
    """The eight files of a complete subject."""
    code = subject_folder_name(index)
    return [folder / f"{code}_{case}{suffix}.nii.gz" for case in CASES for suffix in ("", "_gt")]


def subject_info(seed: int, index: int) -> SubjectInfo:
    """The metadata of subject ``index`` (cheap: no images are drawn)."""
    rng = np.random.default_rng(_streams(seed, index)[0])
    disease = DISEASES[rng.choice(len(DISEASES), p=DISEASE_WEIGHTS)]
    female = bool(rng.random() < 0.4)
    centre, vendor, scanner, field = SCANNERS[rng.integers(len(SCANNERS))]
    age = int(np.clip(rng.normal(48 if disease == "HCM" else 58, 15), 18, 90))
    return SubjectInfo(index, disease, "F" if female else "M", age, centre, scanner, vendor, field)


def render_subject(seed: int, index: int, size: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray, tuple]]:
    """Draw subject ``index``: ``{"SA_ED": (image, label, spacing), ...}`` for all four cases.
    Images are float64 (H, W, Z) in scanner units, labels uint8 (H, W, Z) in M&Ms order."""
    info = subject_info(seed, index)
    _, anatomy_stream, look_stream, sa_stream, la_stream = _streams(seed, index)
    anatomy = sample_anatomy(np.random.default_rng(anatomy_stream), info.DISEASE, info.SEX == "F")
    look = sample_look(np.random.default_rng(look_stream), info.VENDOR, info.FIELD)
    cases = _short_axis(anatomy, look, size, np.random.default_rng(sa_stream))
    cases.update(_long_axis(anatomy, look, size, np.random.default_rng(la_stream)))
    return cases


def _streams(seed: int, index: int) -> list[np.random.SeedSequence]:
    """Independent random streams of one subject: metadata, anatomy, look, SA, LA."""
    return np.random.SeedSequence([seed, index]).spawn(5)


def _short_axis(anatomy: Anatomy, look: Look, size: int, rng: np.random.Generator) -> dict:
    grid = Grid(size, SA_FIELD_OF_VIEW / size)
    drawer = ShortAxisDrawer(anatomy, grid, rng)
    scanner = Scanner(look, size, rng)
    positions = anatomy.short_axis.positions
    # Fortran order: each slice is contiguous, and it is the order NIfTI stores.
    images = {p: np.empty((size, size, len(positions)), order="F") for p in ("ED", "ES")}
    labels = {p: np.empty((size, size, len(positions)), np.uint8, order="F") for p in ("ED", "ES")}
    for k, d in enumerate(positions):
        textures = scanner.textures(rng)
        static = scanner.paint(np.zeros((size, size), np.float32), drawer.torso_layers(d, rng), textures)
        for phase in ("ED", "ES"):
            layers, label = drawer.heart(d, phase)
            labels[phase][:, :, k] = label
            images[phase][:, :, k] = scanner.acquire(scanner.paint(static.copy(), layers, textures), rng)
    spacing = (grid.pixel, grid.pixel, anatomy.short_axis.gap)
    return {f"SA_{p}": (images[p], labels[p], spacing) for p in ("ED", "ES")}


def _long_axis(anatomy: Anatomy, look: Look, size: int, rng: np.random.Generator) -> dict:
    grid = Grid(size, LA_FIELD_OF_VIEW / size)
    drawer = FourChamberDrawer(anatomy, grid, rng)
    scanner = Scanner(look, size, rng)
    textures = scanner.textures(rng)
    static = scanner.paint(np.zeros((size, size), np.float32), drawer.torso_layers(rng), textures)
    cases = {}
    for phase in ("ED", "ES"):
        layers, label = drawer.heart(phase)
        image = scanner.acquire(scanner.paint(static.copy(), layers, textures), rng)
        cases[f"LA_{phase}"] = (image[:, :, None], label[:, :, None], (grid.pixel, grid.pixel, LA_THICKNESS))
    return cases


def _write_subject(folder: Path, index: int, seed: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic.sweep_stale(folder)  # left by a killed run
    code = subject_folder_name(index)
    for case, (image, label, spacing) in render_subject(seed, index, size).items():
        axes = _SA_AXES if case.startswith("SA") else _LA_AXES
        # Labels last: a case counts as present only once both of its files exist.
        _write_nifti(folder / f"{code}_{case}.nii.gz", image, spacing, axes)
        _write_nifti(folder / f"{code}_{case}_gt.nii.gz", label, spacing, axes)


def _write_nifti(path: Path, array: np.ndarray, spacing: tuple, axes: np.ndarray) -> None:
    """Atomic, byte-reproducible .nii.gz (gzip with no timestamp), centred on the origin."""
    affine = np.eye(4)
    affine[:3, :3] = axes * np.asarray(spacing, float)[None, :]
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(array.shape[:3]) - 1) / 2)
    image = nib.Nifti1Image(array, affine)
    image.header.set_sform(affine, code=2)  # "aligned", as in M&Ms-2
    image.header.set_qform(affine, code=0)
    image.header.set_xyzt_units("mm", "sec")
    data = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    atomic.write_bytes(path, data)


def _write_csv(path: Path, rows: list[SubjectInfo]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    data = text.getvalue().encode()
    if not (path.is_file() and path.read_bytes() == data):  # unchanged: keep the file (and its time)
        atomic.write_bytes(path, data)


def _claim_folder(out: Path, seed: int, size: int) -> None:
    """Refuse a folder that holds another phantom or other data; record our settings."""
    settings = {"seed": seed, "size": size}
    marker = out / SETTINGS
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != settings:
            raise DataError(
                out, f"holds a phantom made with {found}, not {settings}: use another folder or delete this one"
            )
        return
    if (out / "dataset_information.csv").exists() or any((out / "dataset").glob("*")):
        raise DataError(
            out, f"already holds data that is not a phantom (no {SETTINGS}); refusing to write a phantom into it"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(marker, (json.dumps(settings) + "\n").encode())

"""Safe NIfTI loading: every way a file can be broken becomes one DataError naming the file.

Three steps, each its own function, and ``load_pair`` which runs them for one case:

    array, spacing = load_nifti(path, ndim=3)     # whole array read now, spacing in mm
    image = as_image(path, array)                 # float32, finite, not constant
    label = as_label(path, array, remap=LUT)      # uint8, only 0..3, canonical order
    image, label, spacing = load_pair(image_path, label_path, frame=None, remap=LUT)

``load_nifti`` forces the full read (``np.asarray(img.dataobj)``) inside its ``try``: nibabel
opens lazily, so a truncated ``.nii.gz`` would otherwise load "fine" and fail much later, deep
inside preprocessing, with a gzip traceback that names no file.

Conventions:
- Arrays come back in the file's stored voxel order (no reorientation): axis 0 and 1 are the
  in-plane axes, axis 2 the slices, axis 3 (cine files) time.
- Spacing is the header's voxel size along those axes, converted to mm when the header says
  the unit is metres or microns (most files say mm or "unknown", which we read as mm).
- Intensities are never rescaled here: int16, uint8 and float64 all become float32 as they are.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from mmldm.data.schema import NUM_CLASSES
from mmldm.errors import DataError, warn

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# What nibabel, gzip and zlib raise on a damaged file (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)

_UNIT_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (None if neither)."""
    for suffix in NIFTI_SUFFIXES:
        path = Path(folder) / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (``a/b_ED.nii.gz`` -> ``b_ED``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | Path, ndim: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read the whole array and its spacing (mm); ``ndim`` is 3 (H, W, Z) or 4 (H, W, Z, T).

    A 2-D file counts as one slice when 3-D is expected, and trailing axes of size 1 are
    dropped (some writers store a stack as (H, W, Z, 1)); any other dimensionality is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj)  # forces decompression of every byte
        zooms = tuple(float(z) for z in img.header.get_zooms())
        unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "mm"
    except _READ_ERRORS as err:
        raise DataError(path, f"cannot read NIfTI file (corrupt or truncated?): {err}") from err

    while array.ndim > ndim and array.shape[-1] == 1:
        array = array[..., 0]
    if ndim == 3 and array.ndim == 2:
        warn(f"{path}: a 2-D image {array.shape}, read as a volume of one slice")
        array = array[:, :, None]
    if array.ndim != ndim:
        expected = "3-D (H, W, Z) volume" if ndim == 3 else "4-D (H, W, Z, T) cine"
        raise DataError(path, f"is {array.ndim}-D with shape {array.shape}, expected a {expected}")

    spacing = (zooms + (1.0, 1.0, 1.0))[:3]
    spacing = tuple(s * _UNIT_TO_MM.get(unit, 1.0) for s in spacing)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DataError(path, f"voxel spacing {spacing} in the header is not positive")
    return array, spacing


def as_image(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Raw intensities as float32; NaN/inf or a constant image is an error."""
    image = np.asarray(array, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.isfinite(image).sum())
        raise DataError(path, f"image has {bad} NaN/inf intensities")
    if image.size == 0 or image.min() == image.max():
        value = image.flat[0] if image.size else "nothing"
        raise DataError(path, f"image is constant (every voxel is {value}): no anatomy to learn")
    return image


def as_label(path: str | Path, array: np.ndarray, remap: np.ndarray | None = None) -> np.ndarray:
    """Label map as uint8 in canonical order; values must be whole numbers in 0..3.

    ``remap`` is a lookup table from the dataset's own numbering to the canonical one
    (``remap[disk_value] == canonical_value``); None when the file already is canonical.
    """
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise DataError(path, "label map has non-integer values (expected 0, 1, 2, 3)")
    values = np.unique(array)
    bad = [v.item() for v in values if not 0 <= v < NUM_CLASSES]
    if bad:
        shown = ", ".join(str(int(v) if float(v).is_integer() else v) for v in bad[:8])
        raise DataError(path, f"label values outside {{0, 1, 2, 3}}: found {shown}")
    label = array.astype(np.uint8)
    return label if remap is None else np.asarray(remap, dtype=np.uint8)[label]


def load_pair(
    image_path: str | Path,
    label_path: str | Path,
    *,
    frame: int | None = None,
    remap: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One case's image (float32) and canonical label (uint8), both (H, W, Z), and its spacing.

    ``frame`` picks a time index from a 4-D cine pair (M&Ms); None means both files are 3-D.
    """
    ndim = 3 if frame is None else 4
    image, spacing = load_nifti(image_path, ndim)
    label, _ = load_nifti(label_path, ndim)
    if image.shape != label.shape:
        raise DataError(
            label_path,
            f"label shape {label.shape} does not match image shape {image.shape} of {Path(image_path).name}",
        )
    if frame is not None:
        if not 0 <= frame < image.shape[3]:
            raise DataError(image_path, f"frame {frame} is out of range: the cine has {image.shape[3]} frames")
        image, label = image[..., frame], label[..., frame]
    return as_image(image_path, image), as_label(label_path, label, remap), spacing

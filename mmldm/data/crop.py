"""Crop (or pad) a square field of view around the heart, then resize to ``size`` x ``size``.

Datasets differ in pixel spacing (ACDC 1.37-1.76 mm, M&Ms-2 SA 1.48 mm, LA 1.72 mm) and in
field of view (ACDC 224-480 mm). Cropping a fixed number of *pixels* would show the heart at a
different scale in each; so the window is fixed in *millimetres* instead:

    window (rows, cols) = round(fov_mm / spacing_h), round(fov_mm / spacing_w)   # pixels
    output pixel size   = fov_mm / size                                           # mm

With the default ``fov_mm = 256`` and ``size = 256`` every output pixel is 1 mm x 1 mm whatever
the scanner, and the largest ACDC heart (about 140 mm across) fills a bit over half the frame.

Centre. The window is centred on the bounding box of the labelled heart (any label > 0) *in that
slice*. A slice without labels (above the base, below the apex) uses the heart's bounding box over
the whole volume; a volume without any label uses the image centre. Pixel centres sit at integer
coordinates, so a window of ``n`` pixels starting at ``r0`` is centred at ``r0 + (n - 1) / 2``.

Padding. Where the window leaves the image it is padded with ``pad_value`` (``-1`` for a
normalised image, the darkest value; 0 = background for labels). Where bright tissue meets the
padding, the Canny map shows a straight edge along the old image border: it is in the image too,
so image and condition stay consistent (small-FOV ACDC scans show it; M&Ms-2 rarely does).

Resizing. Images use ``INTER_AREA`` when the window shrinks (it averages, so no aliasing) and
``INTER_LINEAR`` when it grows. Labels use ``INTER_NEAREST_EXACT``, OpenCV's pixel-centre-aligned
nearest neighbour: plain ``INTER_NEAREST`` samples at ``floor(x * scale)`` and shifts the labels
by up to half a source pixel against the linearly resized image.
"""

from __future__ import annotations

import cv2
import numpy as np


def heart_center(label: np.ndarray) -> tuple[float, float] | None:
    """Centre (row, col) of the bounding box of ``label > 0`` over its first two axes, or None.

    ``label`` is (H, W) for one slice or (H, W, Z) for a volume (the box then spans all slices).
    """
    mask = label > 0
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0


def window_size(spacing: tuple[float, float], fov_mm: float) -> tuple[int, int]:
    """The window (rows, cols) in source pixels that spans ``fov_mm`` at this in-plane spacing."""
    return max(1, round(fov_mm / float(spacing[0]))), max(1, round(fov_mm / float(spacing[1])))


def window_at(center: tuple[float, float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(r0, c0, rows, cols)``: the source pixels of the ``shape`` window centred on ``center``
    (its first row and column may be negative, or past the image: that part is padding)."""
    n_r, n_c = shape
    return int(round(center[0] - (n_r - 1) / 2.0)), int(round(center[1] - (n_c - 1) / 2.0)), int(n_r), int(n_c)


def crop_pad(array: np.ndarray, center: tuple[float, float], shape: tuple[int, int], pad_value) -> np.ndarray:
    """The ``shape`` window of 2-D ``array`` centred on ``center``; outside the array is ``pad_value``."""
    r0, c0, n_r, n_c = window_at(center, shape)
    out = np.full((n_r, n_c), pad_value, dtype=array.dtype)
    H, W = array.shape
    sr0, sr1 = max(r0, 0), min(r0 + n_r, H)  # source rows that fall inside the window
    sc0, sc1 = max(c0, 0), min(c0 + n_c, W)
    if sr1 > sr0 and sc1 > sc0:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = array[sr0:sr1, sc0:sc1]
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a float image to ``size`` x ``size``: area averaging to shrink, bilinear to grow."""
    shrink = image.shape[0] >= size and image.shape[1] >= size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32, copy=False), (size, size), interpolation=interp)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Resize a label map to ``size`` x ``size`` with pixel-centre-aligned nearest neighbour."""
    return cv2.resize(label.astype(np.uint8, copy=False), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def crop_slice(
    image: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float],
    fov_mm: float,
    size: int,
    center: tuple[float, float] | None = None,
    pad_value: float = -1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``fov_mm`` around ``center`` (default: this slice's heart) and resize to ``size``.

    Returns (image float32 (size, size), label uint8 (size, size)).
    """
    if center is None:
        center = heart_center(label)
    if center is None:
        center = ((image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0)
    shape = window_size(spacing, fov_mm)
    img = crop_pad(image.astype(np.float32, copy=False), center, shape, pad_value)
    lab = crop_pad(label.astype(np.uint8, copy=False), center, shape, 0)
    return resize_image(img, size), resize_label(lab, size)


def crop_volume(
    image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], fov_mm: float, size: int, pad_value: float = -1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Crop every slice of an (H, W, Z) volume; returns image float32 and label uint8, (Z, size, size).

    Each slice is centred on its own heart; slices without labels on the volume's heart.
    """
    Z = image.shape[2]
    images = np.empty((Z, size, size), np.float32)
    labels = np.empty((Z, size, size), np.uint8)
    for z, center in enumerate(slice_centers(label)):
        images[z], labels[z] = crop_slice(image[:, :, z], label[:, :, z], spacing[:2], fov_mm, size, center, pad_value)
    return images, labels


def slice_centers(label: np.ndarray) -> list[tuple[float, float] | None]:
    """The window centre of each slice of an (H, W, Z) label volume: its own heart, else the
    volume's (None when the volume has no label at all: :func:`crop_slice` then takes the middle)."""
    fallback = heart_center(label)
    return [heart_center(label[:, :, z]) or fallback for z in range(label.shape[2])]


def volume_windows(label: np.ndarray, spacing: tuple[float, ...], fov_mm: float) -> np.ndarray:
    """(Z, 4) int: ``(r0, c0, rows, cols)`` of the window :func:`crop_volume` takes from each slice."""
    shape = window_size(spacing[:2], fov_mm)
    middle = ((label.shape[0] - 1) / 2.0, (label.shape[1] - 1) / 2.0)
    return np.array([window_at(c or middle, shape) for c in slice_centers(label)], np.int64).reshape(-1, 4)

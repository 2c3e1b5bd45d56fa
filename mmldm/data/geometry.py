"""Where a pixel of the model's grid lies in the scanner: the affine of a cropped, resized slice.

A NIfTI file maps voxel indices ``(i, j, k)`` to scanner millimetres through its 4 x 4 affine
``A``: ``world = A @ [i, j, k, 1]``. Preprocessing (``crop.py``) takes a window of ``rows x cols``
source pixels starting at ``(r0, c0)`` of slice ``z`` and resizes it to ``size x size`` with
pixel centres aligned (OpenCV's convention), so grid pixel ``(i, j)`` sits at source pixel

    r = r0 - 0.5 + (i + 0.5) * rows / size
    c = c0 - 0.5 + (j + 0.5) * cols / size

The grid slice's affine is therefore ``A @ M`` with

    M = [[rows/size, 0,         0,           r0 - 0.5 + 0.5 * rows/size],
         [0,         cols/size, 0,           c0 - 0.5 + 0.5 * cols/size],
         [0,         0,         slice_mm/dz, z                        ],
         [0,         0,         0,           1                        ]]

(``dz`` the source's slice spacing: the grid's third axis keeps the slice normal and is scaled to
``slice_mm``, 999 mm for 2-D cases as nnU-Net's converters write them). A synthetic slice written
with this affine lies where its source slice lay, with the same direction cosines: an
orientation-normalising reader (MONAI ``Orientationd("RAS")``, nnU-Net's reorienting reader,
``nibabel.as_closest_canonical``) turns real and synthetic slices of one mask the same way.
"""

from __future__ import annotations

import numpy as np

SLICE_MM = 999.0  # nnU-Net's spacing between the "slices" of 2-D data


def grid_affine(source_affine: np.ndarray, window, size: int, z: int, slice_mm: float = SLICE_MM) -> np.ndarray:
    """The 4 x 4 affine of the ``size x size`` grid made from ``window`` = ``(r0, c0, rows, cols)``
    of slice ``z`` of a volume with affine ``source_affine``."""
    a = np.asarray(source_affine, np.float64)
    r0, c0, rows, cols = (float(v) for v in window)
    sr, sc = rows / size, cols / size
    dz = float(np.linalg.norm(a[:3, 2])) or 1.0
    m = np.array(
        [
            [sr, 0.0, 0.0, r0 - 0.5 + 0.5 * sr],
            [0.0, sc, 0.0, c0 - 0.5 + 0.5 * sc],
            [0.0, 0.0, slice_mm / dz, float(z)],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return a @ m


def plain_affine(pixel_mm: float, slice_mm: float = SLICE_MM) -> np.ndarray:
    """``diag(pixel_mm, pixel_mm, slice_mm)``: for a slice whose place in a scanner is unknown
    (a store written before stores kept their slices' affines)."""
    return np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])

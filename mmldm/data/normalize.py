"""Per-volume percentile intensity normalisation to [-1, 1].

MRI intensities have no physical unit: one scanner writes 0-255 floats, another int16 up to a
few thousand, and the same scanner changes its scale from subject to subject. So each *volume*
(one subject, view and phase) is mapped on its own, by two of its percentiles:

    lo, hi = percentile(volume, p_lo), percentile(volume, p_hi)     # e.g. 0.5 and 99.5
    x      = clip((volume - lo) / (hi - lo), 0, 1) * 2 - 1            # in [-1, 1]

Percentiles rather than min/max make the mapping robust to the few hot pixels (flow artefacts,
fat) that would otherwise squash all tissue into a narrow band; the clip sends those outliers to
the ends of the range. The whole volume is used, not one slice, so that the apex and the base of
a short-axis stack keep their relative brightness.

-1 is "darkest tissue" (air outside the body after this mapping), which is also what
:mod:`mmldm.data.crop` pads with.
"""

from __future__ import annotations

import numpy as np


def percentile_range(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (lo, hi) intensities at the two percentiles (in percent, 0-100) of ``volume``."""
    p_lo, p_hi = percentiles
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
    lo, hi = np.percentile(volume, (p_lo, p_hi))
    return float(lo), float(hi)


def normalize(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map ``volume`` (any shape, any real dtype) to float32 in [-1, 1] by its own percentiles.

    Raises ``ValueError`` if the volume holds non-finite values or if the two percentiles are
    equal (a constant image has no contrast to normalise; preprocessing reports it as a bad file).
    """
    volume = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise ValueError("image holds NaN or infinite values")
    lo, hi = percentile_range(volume, percentiles)
    if not hi > lo:
        raise ValueError(
            f"image has no contrast: its {percentiles[0]} and {percentiles[1]} percentiles are both {lo:g}"
        )
    out = (volume - lo) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)

"""Subject-level train/val split.

Slices of one subject are near-duplicates (neighbouring short-axis slices, ED and ES, SA and LA of
the same heart), so the split is drawn over *subjects*: all slices of a subject land in the same
split, and validation scores measure generalisation to new hearts, not to new slices.

    subjects = sorted(unique subject ids)                      # order-free input
    order    = numpy.random.default_rng(seed).permutation(len(subjects))
    val      = subjects[order[:n_val]],  train = the rest

``val`` is a count when >= 1 (``10``: ten subjects, the M&Ms-2 seed split 350/10 of 360) or a
fraction of the subjects when < 1 (``0.1``: round(0.1 * n), at least 1 when there are at least
2 subjects). The result depends only on the *set* of subjects and the seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SPLITS = ("train", "val")


def val_count(n_subjects: int, val: float) -> int:
    """How many of ``n_subjects`` go to validation for a count (>= 1) or fraction (< 1) ``val``."""
    if val < 0:
        raise ValueError(f"val must be a count >= 1 or a fraction in [0, 1), got {val}")
    if val >= 1:
        if val != int(val):
            raise ValueError(f"val >= 1 is a number of subjects and must be whole, got {val}")
        n = int(val)
    else:
        n = int(round(val * n_subjects))
        if val > 0 and n == 0 and n_subjects >= 2:
            n = 1
    if n > 0 and n >= n_subjects:
        raise ValueError(f"cannot hold out {n} validation subjects out of {n_subjects}: nothing left to train on")
    return n


def split_subjects(subjects: Iterable[str], val: float = 10, seed: int = 0) -> dict[str, str]:
    """Assign each unique subject to ``"train"`` or ``"val"``; returns {subject: split}."""
    unique = sorted(set(subjects))
    n_val = val_count(len(unique), val)
    order = np.random.default_rng(seed).permutation(len(unique))
    held_out = {unique[i] for i in order[:n_val]}
    return {s: ("val" if s in held_out else "train") for s in unique}

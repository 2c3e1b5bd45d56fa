"""Tables that describe a dataset before preprocessing (notebook 01).

``case_table`` lists the cases (one row per subject, view and phase, with the reader's
metadata); ``slice_table`` measures every labelled slice of some loaded volumes: label areas in
mm² and intensity percentiles, so plots can compare views, phases, pathologies and vendors.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from mmldm.data.readers import load_case
from mmldm.data.sample import LABELS, Case, Volume


def case_table(cases: list[Case]) -> pd.DataFrame:
    """One row per case: subject, view, phase, source and every metadata key the reader gave."""
    rows = [{"subject": c.subject, "view": c.view, "phase": c.phase, "source": c.source,
             **{k: v for k, v in c.meta.items() if np.isscalar(v) or v is None}} for c in cases]
    return pd.DataFrame(rows)


def pick_subjects(cases: list[Case], n: int, seed: int = 0) -> list[Case]:
    """All cases of ``n`` randomly chosen subjects (seeded), for plots that load volumes."""
    subjects = sorted({c.subject for c in cases})
    chosen = set(random.Random(seed).sample(subjects, min(n, len(subjects))))
    return [c for c in cases if c.subject in chosen]


def load_volumes(cases: list[Case]) -> list[Volume]:
    return [load_case(c) for c in cases]


def slice_table(volumes: list[Volume]) -> pd.DataFrame:
    """One row per slice: label areas (mm²) per class and the image's intensity percentiles."""
    rows = []
    for vol in volumes:
        pixel_mm2 = float(vol.spacing[0] * vol.spacing[1])
        for z in range(vol.image.shape[2]):
            lab = vol.label[:, :, z]
            img = vol.image[:, :, z]
            row = {"subject": vol.case.subject, "view": vol.case.view, "phase": vol.case.phase,
                   "source": vol.case.source, "slice": z, "slices": vol.image.shape[2],
                   "pathology": vol.case.meta.get("pathology"), "vendor": vol.case.meta.get("vendor"),
                   "p1": float(np.percentile(img, 1)), "p99": float(np.percentile(img, 99))}
            for k, name in LABELS.items():
                if k:
                    row[f"{name}_mm2"] = float((lab == k).sum()) * pixel_mm2
            row["labelled"] = bool(lab.any())
            rows.append(row)
    return pd.DataFrame(rows)

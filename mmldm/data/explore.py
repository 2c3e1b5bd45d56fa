"""Tables that describe a dataset before preprocessing (notebook 01).

``case_table`` lists the cases (one row per subject, view and phase, with the reader's
metadata); ``slice_table`` measures every labelled slice of some loaded volumes: label areas in
mm² and intensity percentiles, so plots can compare views, phases, pathologies and vendors.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from mmldm.data.readers import load_case
from mmldm.data.schema import LABELS, Case, Slice, Volume


def case_table(cases: list[Case]) -> pd.DataFrame:
    """One row per case: subject, view, phase, source and every metadata key the reader gave."""
    rows = [
        {
            "subject": c.subject,
            "view": c.view,
            "phase": c.phase,
            "source": c.source,
            **{k: v for k, v in c.meta.items() if np.isscalar(v) or v is None},
        }
        for c in cases
    ]
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
            row = {
                "subject": vol.case.subject,
                "view": vol.case.view,
                "phase": vol.case.phase,
                "source": vol.case.source,
                "slice": z,
                "slices": vol.image.shape[2],
                "pathology": vol.case.meta.get("pathology"),
                "vendor": vol.case.meta.get("vendor"),
                "p1": float(np.percentile(img, 1)),
                "p99": float(np.percentile(img, 99)),
            }
            for k, name in LABELS.items():
                if k:
                    row[f"{name}_mm2"] = float((lab == k).sum()) * pixel_mm2
            row["labelled"] = bool(lab.any())
            rows.append(row)
    return pd.DataFrame(rows)


def _pick_slices(volume: Volume, fractions=(0.2, 0.5, 0.8)) -> list[Slice]:
    """Slices at relative heights of a stack (base, middle, apex for SA); the one slice of LA."""
    n = volume.image.shape[2]
    zs = sorted({min(n - 1, int(round(f * (n - 1)))) for f in fractions}) if n > 1 else [0]
    slices = list(volume.slices())
    return [slices[z] for z in zs]


def comparison_rows(cfg, real_root: Path | None, per_row: int = 6, seed: int = 0) -> dict[str, list[Slice]]:
    """Rows of comparable slices: the profile's data, then real ACDC and M&Ms-2 if found.

    Each row holds SA slices at base / middle / apex (ED and ES) and, where the dataset has it,
    the LA view, so phantom and real data can be set side by side by eye (notebook 01).
    """
    rng = random.Random(seed)
    rows: dict[str, list[Slice]] = {}

    def row(cases: list[Case]) -> list[Slice]:
        subjects = sorted({c.subject for c in cases})
        out: list[Slice] = []
        for subject in rng.sample(subjects, min(len(subjects), 3)):
            mine = [c for c in cases if c.subject == subject]
            for c in sorted(mine, key=lambda c: (c.view != "SA", c.phase)):
                vol = load_case(c)
                picks = _pick_slices(vol) if c.view == "SA" else list(vol.slices())
                out += picks[:2] if c.phase == "ES" else picks
                if len(out) >= per_row:
                    return out[:per_row]
        return out[:per_row]

    from mmldm.data.readers import find_cases

    name = "phantom" if cfg.paths.is_phantom else cfg.paths.source_name
    rows[name] = row(find_cases(cfg.source_dir, cfg.paths.reader_format))
    if real_root is not None:
        for label, sub, fmt in (("ACDC (real)", "acdc/training", "acdc"), ("M&Ms-2 (real)", "mnms2", "mnms2")):
            folder = Path(real_root) / sub
            if folder.is_dir():
                rows[label] = row(find_cases(folder, fmt))
    return rows


def store_layout(path: str | Path) -> pd.DataFrame:
    """One row per HDF5 dataset of a store: shape, dtype, chunking, filter and stored size."""
    import h5py

    rows = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                rows.append(
                    {
                        "dataset": name,
                        "shape": obj.shape,
                        "dtype": str(obj.dtype),
                        "chunks": obj.chunks,
                        "filter": obj.compression or "none",
                        "stored_MB": round(obj.id.get_storage_size() / 1e6, 2),
                    }
                )

        f.visititems(visit)
    return pd.DataFrame(rows)


def read_rate(dataset, samples: int = 500, seed: int = 0) -> float:
    """Random-access samples per second of a torch Dataset (single process)."""
    import time

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(dataset), samples)
    dataset[int(idx[0])]  # open the file outside the timing
    t0 = time.perf_counter()
    for i in idx:
        dataset[int(i)]
    return samples / (time.perf_counter() - t0)

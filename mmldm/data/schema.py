"""The canonical sample every reader produces, whatever the dataset's own conventions.

Labels are always in the M&Ms order: 0 background, 1 LV (blood pool), 2 myocardium, 3 RV.
Readers remap on load (ACDC stores 1 RV, 3 LV), so nothing downstream ever sees another order.

A reader yields :class:`Case` objects (paths + metadata, cheap) and loads each into a
:class:`Volume` (the arrays). Normalisation is per volume, so preprocessing works on volumes and
cuts them into :class:`Slice` objects afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABELS = {0: "background", 1: "LV", 2: "myocardium", 3: "RV"}
NUM_CLASSES = len(LABELS)
VIEWS = ("SA", "LA")
PHASES = ("ED", "ES")
SOURCES = ("mnms2", "mnms", "acdc", "phantom")

# The diffusion model's condition: 5 channels at image resolution, edge map first, then the
# one-hot label map in canonical order. A condition dropped for classifier-free guidance is all
# zeros in its channels (an all-zero one-hot cannot occur in real data: background is 1 there).
COND_CHANNELS = ("edge", "background", "LV", "myocardium", "RV")
EDGE_CHANNEL = 0
MASK_CHANNELS = slice(1, 1 + NUM_CLASSES)


@dataclass
class Case:
    """One image/label pair on disk (one subject, one view, one phase), not yet loaded."""

    subject: str
    view: str  # "SA" or "LA"
    phase: str  # "ED" or "ES"
    source: str  # one of SOURCES
    image_path: Path
    label_path: Path
    frame: int | None = None  # time index inside a 4-D file (M&Ms), else None
    meta: dict = field(default_factory=dict)  # vendor, centre, scanner, field, pathology, ...


@dataclass
class Volume:
    """A loaded case: raw intensities and canonical labels, both (H, W, Z)."""

    case: Case
    image: np.ndarray  # float32 (H, W, Z), raw scanner intensities (not yet normalised)
    label: np.ndarray  # uint8 (H, W, Z), canonical order 0 BG, 1 LV, 2 MYO, 3 RV
    spacing: tuple[float, float, float]  # mm along H, W, Z

    def slices(self) -> Iterator[Slice]:
        for z in range(self.image.shape[2]):
            yield Slice(
                image=self.image[:, :, z],
                label=self.label[:, :, z],
                view=self.case.view,
                phase=self.case.phase,
                subject=self.case.subject,
                slice_index=z,
                source=self.case.source,
                meta={**self.case.meta, "spacing": self.spacing[:2]},
            )


@dataclass
class Slice:
    """One 2-D sample: image (float; in [-1, 1] once preprocessed), canonical label map (uint8)."""

    image: np.ndarray
    label: np.ndarray
    view: str
    phase: str
    subject: str
    slice_index: int
    source: str
    meta: dict = field(default_factory=dict)

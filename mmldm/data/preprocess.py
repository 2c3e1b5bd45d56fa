"""Raw NIfTI folder -> one HDF5 store of training slices.

For every case (subject x view x phase) the reader finds::

    volume  = load_case(case)                          # raw intensities, canonical labels (H, W, Z)
    image   = normalize(volume.image, percentiles)     # per volume, to [-1, 1]      (normalize.py)
    keep    = slices with any label > 0                # unless keep_unlabelled
    image, label = crop_volume(..., fov_mm, size)      # heart-centred, mm-consistent (crop.py)
    edge    = canny_edges(image[z], ...)               # on the final image           (edges.py)

then the subjects present in the store (after filtering and skipping) are split into train/val
(split.py), so ``val`` subjects always end up in the store, and everything is written (store.py).
``split="test"`` (``preprocess --split test``) puts every subject into one split instead: an
external test set, for ``evaluate --split test``. Cases run in a multiprocessing pool (``workers``,
default: every core), in order, so the store is identical whatever the number of workers.

Unlabelled slices are dropped by default: the diffusion model is conditioned on the label map
and the edges, and a slice with an empty label map (above the base, below the apex) would teach
it that "all background" means "any image". ``keep_unlabelled=True`` keeps them (e.g. to train
the VQVAE on more images).

Bad files. A reader raises :class:`~mmldm.errors.DataError` (unreadable file, shape mismatch,
unknown labels...), while listing the cases too (a missing ``_gt`` file, a missing or garbled
``Info.cfg``, a frame it names that does not exist); an image without contrast is one too. By
default preprocessing stops with that message, which names the file. With ``skip_bad`` it
records ``"file: reason"``, leaves the case out, goes on, and the summary and the store's
``skipped`` attribute list every file left out.

Atomicity. The store is written to the hidden temporary name ``.<out>.tmp-<pid>`` beside ``out``
(:mod:`mmldm.atomic`'s scheme) and renamed over ``out`` (``os.replace``, atomic on one file
system) only when complete; any exception, Ctrl-C or SIGTERM included, deletes the temporary
file, and one left by a killed run (SIGKILL) is deleted by the next run. A store at ``out`` is
therefore always whole.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from mmldm import atomic
from mmldm.data.crop import crop_volume, volume_windows
from mmldm.data.edges import canny_edges
from mmldm.data.geometry import grid_affine
from mmldm.data.normalize import normalize
from mmldm.data.readers import find_cases, load_case
from mmldm.data.schema import PHASES, VIEWS, Case
from mmldm.data.split import split_subjects
from mmldm.data.store import StoreWriter
from mmldm.errors import DataError, check_terminated
from mmldm.progress import tqdm

SPLIT_NAMES = ("train", "val", "test")  # "test": every subject of an external test set (split=)


@dataclass
class DataConfig:
    """Preprocessing settings; the defaults are the ``paper`` profile."""

    size: int = 256  # output slices are size x size pixels
    fov_mm: float = 256.0  # side of the square field of view around the heart, in mm (1 mm/px at 256)
    percentiles: tuple[float, float] = (0.5, 99.5)  # per-volume intensity percentiles mapped to -1 and 1
    canny_sigma: float = 1.4  # Gaussian blur before Canny: standard deviation in output pixels
    canny_kernel: int = 5  # Gaussian kernel width (odd)
    canny_low: float = 50.0  # Canny hysteresis thresholds on the uint8 image's gradient
    canny_high: float = 100.0
    canny_blur: bool = True  # False: Canny on the unblurred image (for comparison only)
    val: int | float = 10  # validation subjects: a count (>= 1) or a fraction (< 1)
    split_seed: int = 0  # seed of the subject permutation that picks the validation subjects
    views: tuple[str, ...] = VIEWS  # which views to keep ("SA", "LA")
    phases: tuple[str, ...] = PHASES  # which cardiac phases to keep ("ED", "ES")
    keep_unlabelled: bool = False  # keep slices without any label (no anatomy condition)
    skip_bad: bool = False  # leave out unreadable cases and report them instead of stopping
    workers: int | None = None  # processes for preprocessing; None = every core, 0 or 1 = in-process
    image_dtype: Literal["float16", "float32"] = "float16"  # storage type of the image array
    compression: Literal["none", "lzf", "gzip"] = "gzip"  # filter for label and edge (gzip = level 1)
    image_compression: Literal["none", "lzf", "gzip"] = "none"  # filter for the image (see store.py)

    def __post_init__(self):
        self.percentiles = tuple(self.percentiles)
        self.views, self.phases = tuple(self.views), tuple(self.phases)
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if not self.fov_mm > 0:
            raise ValueError(f"fov_mm must be positive, got {self.fov_mm}")
        if not (len(self.percentiles) == 2 and 0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            raise ValueError(f"percentiles must be (lo, hi) with 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.canny_kernel < 1 or self.canny_kernel % 2 == 0:
            raise ValueError(f"canny_kernel must be odd and >= 1, got {self.canny_kernel}")
        if not 0 <= self.canny_low <= self.canny_high:
            raise ValueError(f"need 0 <= canny_low <= canny_high, got {self.canny_low}, {self.canny_high}")
        if self.val < 0 or (self.val >= 1 and self.val != int(self.val)):
            raise ValueError(f"val must be a whole count >= 1 or a fraction in [0, 1), got {self.val}")
        for name, allowed in (("views", VIEWS), ("phases", PHASES)):
            values = getattr(self, name)
            if not values or set(values) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 or null (every core), got {self.workers}")

    def to_dict(self) -> dict:
        """Plain YAML-able values (tuples as lists), as the store's ``config`` attribute holds them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Summary:
    """What a preprocessing run wrote; ``str(summary)`` is the table printed at the end."""

    out: Path
    subjects: dict[str, int]  # split -> number of subjects
    slices: dict[tuple[str, str, str], int]  # (view, phase, split) -> number of slices
    cases: int  # cases written
    dropped_unlabelled: int  # slices left out for having no label
    skipped: list[str] = field(default_factory=list)  # "file: reason", one per case left out
    seconds: float = 0.0

    @property
    def n_slices(self) -> int:
        return sum(self.slices.values())

    def __str__(self) -> str:
        lines = [
            f"wrote {self.out}: {self.n_slices} slices from {self.cases} cases, "
            f"{sum(self.subjects.values())} subjects in {self.seconds:.1f} s "
            f"({self.n_slices / max(self.seconds, 1e-9):.0f} slices/s)"
        ]
        lines.append("  subjects: " + ", ".join(f"{s} {n}" for s, n in sorted(self.subjects.items())))
        splits = [s for s in SPLIT_NAMES if s in self.subjects]
        lines.append(f"  {'view':<5}{'phase':<7}" + "".join(f"{s:>7}" for s in splits))
        for view in VIEWS:
            for phase in PHASES:
                row = [self.slices.get((view, phase, s), 0) for s in splits]
                if any(row):
                    lines.append(f"  {view:<5}{phase:<7}" + "".join(f"{n:>7}" for n in row))
        lines.append(f"  unlabelled slices dropped: {self.dropped_unlabelled}")
        lines.append(f"  files skipped: {len(self.skipped)}")
        lines += [f"    {s}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _CaseResult:
    """What a worker sends back for one case: arrays for the kept slices, or the error."""

    index: int
    image: np.ndarray | None = None  # (n, size, size) in the store's image dtype
    label: np.ndarray | None = None  # (n, size, size) uint8
    edge: np.ndarray | None = None  # (n, size, size) uint8
    slice_index: np.ndarray | None = None  # (n,) source z of each kept slice
    spacing: tuple[float, float] = (0.0, 0.0)
    affine: np.ndarray | None = None  # (n, 4, 4) each kept slice's grid affine (data/geometry.py)
    dropped: int = 0
    error: tuple[str | None, str] | None = None  # (file, reason) when the case could not be used


def process_case(case: Case, cfg: DataConfig) -> tuple:
    """One case -> (image, label, edge, slice_index, n_dropped, spacing, affine) for the slices it
    keeps; ``affine`` (n, 4, 4) places each grid slice in the scanner (:mod:`mmldm.data.geometry`)."""
    volume = load_case(case)
    source_affine = source_affine_of(case.image_path)
    try:
        image = normalize(volume.image, cfg.percentiles)
    except ValueError as e:
        raise DataError(case.image_path, str(e)) from None
    labelled = volume.label.any(axis=(0, 1))
    keep = np.arange(volume.label.shape[2]) if cfg.keep_unlabelled else np.flatnonzero(labelled)
    images, labels = crop_volume(image[:, :, keep], volume.label[:, :, keep], volume.spacing, cfg.fov_mm, cfg.size)
    edges = np.empty_like(labels)
    for i, img in enumerate(images):
        edges[i] = canny_edges(img, cfg.canny_sigma, cfg.canny_kernel, cfg.canny_low, cfg.canny_high, cfg.canny_blur)
    spacing = (float(volume.spacing[0]), float(volume.spacing[1]))
    windows = volume_windows(volume.label[:, :, keep], volume.spacing, cfg.fov_mm)
    affine = np.array([grid_affine(source_affine, w, cfg.size, int(z)) for w, z in zip(windows, keep)])
    affine = affine.reshape(-1, 4, 4)
    return images.astype(cfg.image_dtype), labels, edges, keep, len(labelled) - len(keep), spacing, affine


def source_affine_of(path) -> np.ndarray:
    """The 4 x 4 voxel-to-scanner affine of a NIfTI file (its header only is read)."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).affine, np.float64)


def _work(item: tuple[int, Case], cfg: DataConfig) -> _CaseResult:
    """Pool entry point: never raises DataError (it does not survive pickling); returns it instead."""
    index, case = item
    try:
        image, label, edge, keep, dropped, spacing, affine = process_case(case, cfg)
    except DataError as e:
        return _CaseResult(index, error=(None if e.path is None else str(e.path), e.problem))
    except Exception as e:
        e.add_note(f"while preprocessing {case.image_path}")
        raise
    return _CaseResult(index, image, label, edge, keep, spacing, affine, dropped)


def _worker_signals() -> None:
    """Pool workers die on SIGTERM at once (the parent, told too, cleans up; see mmldm.errors)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def preprocess(
    source: str | Path,
    out: str | Path,
    cfg: DataConfig | None = None,
    format: str = "auto",
    skip_bad: bool = False,
    progress: bool = True,
    split: str | None = None,
    replace: bool = True,
    runs_root: str | Path | None = None,
) -> Summary:
    """Preprocess the dataset at ``source`` into the HDF5 store ``out``; returns the Summary.

    With ``replace=False`` (the command line without ``--replace``) an existing ``out`` is refused,
    naming the runs under ``runs_root`` whose checkpoints were trained on it; the pipeline's own
    stage 02 replaces its store (the stage records then re-run what was trained on it).

    ``skip_bad`` (or ``cfg.skip_bad``) leaves out unusable cases instead of stopping. ``split``
    (``"train"``, ``"val"`` or ``"test"``) puts every subject into that split instead of drawing
    train/val with ``cfg.val``. With ``progress`` a tqdm bar runs while cases are processed and
    the summary is printed.
    """
    cfg = cfg or DataConfig()
    skip_bad = skip_bad or cfg.skip_bad
    if split is not None and split not in SPLIT_NAMES:
        raise DataError(None, f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    start = time.perf_counter()
    out = Path(out)
    listing: list[DataError] = []  # cases that could not even be listed
    cases = [c for c in find_cases(source, format, skipped=listing) if c.view in cfg.views and c.phase in cfg.phases]
    if listing and not skip_bad:
        first, more = listing[0], len(listing) - 1
        raise DataError(
            first.path,
            f"{first.problem} (skip_bad leaves such files out{f'; {more} more such problem(s)' if more else ''})",
        )
    if not cases:
        raise DataError(source, f"no cases with views {cfg.views} and phases {cfg.phases}")
    if out.exists() and any(os.path.samefile(out, f) for c in cases for f in (c.image_path, c.label_path)):
        raise DataError(
            out, "is one of the dataset's own files: the store would be written over it; choose another output"
        )
    if out.exists() and not replace:
        from mmldm.checkpoint import runs_trained_on

        users = runs_trained_on(out, runs_root) if runs_root is not None else []
        using = f"; trained on it: {', '.join(str(u.parent) for u in users)}" if users else ""
        raise DataError(
            out, f"a store already exists here{using}; write elsewhere with --out, or replace it with --replace"
        )
    workers = min(cfg.workers if cfg.workers is not None else (os.cpu_count() or 1), len(cases))

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep_stale(out.parent, out.name)  # a store left half-written by a killed run
    tmp = atomic.temporary_path(out)
    writer = None
    try:
        writer = StoreWriter(tmp, cfg.size, cfg.image_dtype, cfg.compression, cfg.image_compression)
        rows: list[tuple[Case, int, tuple[float, float]]] = []  # (case, slice index, spacing) per slice
        affines: list[np.ndarray] = []  # (4, 4) per slice
        skipped, sources, dropped, written = [str(e) for e in listing], [], 0, 0
        work = partial(_work, cfg=cfg)
        with ExitStack() as stack:  # the pool starts before tqdm's monitor thread, and always ends
            pool = (
                stack.enter_context(multiprocessing.get_context().Pool(workers, initializer=_worker_signals))
                if workers > 1
                else None
            )
            results = pool.imap(work, enumerate(cases), chunksize=1) if pool else map(work, enumerate(cases))
            bar = stack.enter_context(tqdm(total=len(cases), unit="case", desc="preprocess", disable=not progress))
            for result in results:
                check_terminated()
                bar.update(1)
                case = cases[result.index]
                if result.error is not None:
                    path, problem = result.error
                    if not skip_bad:
                        raise DataError(path, f"{problem} (skip_bad leaves such files out)")
                    skipped.append(f"{path}: {problem}" if path else problem)
                    continue
                dropped += result.dropped
                if len(result.slice_index) == 0:  # nothing labelled in this case
                    continue
                writer.append(result.image, result.label, result.edge)
                rows += [(case, int(z), result.spacing) for z in result.slice_index]
                affines += list(result.affine)
                sources += [str(case.image_path), str(case.label_path)]
                written += 1
        if not rows:
            raise DataError(
                source, "no labelled slices to write" + (f"; {len(skipped)} files skipped" if skipped else "")
            )

        if split is not None:
            splits = {c.subject: split for c, _, _ in rows}
        else:
            try:
                splits = split_subjects([c.subject for c, _, _ in rows], cfg.val, cfg.split_seed)
            except ValueError as e:
                raise DataError(
                    source, f"{e} (lower val in the data config, or preprocess a test set with --split test)"
                ) from None
        meta = {
            "subject": [c.subject for c, _, _ in rows],
            "view": [c.view for c, _, _ in rows],
            "phase": [c.phase for c, _, _ in rows],
            "slice_index": [z for _, z, _ in rows],
            "source": [c.source for c, _, _ in rows],
            "split": [splits[c.subject] for c, _, _ in rows],
            "vendor": [str(c.meta.get("vendor", "")) for c, _, _ in rows],
            "centre": [str(c.meta.get("centre", "")) for c, _, _ in rows],
            "pathology": [str(c.meta.get("pathology", "")) for c, _, _ in rows],
            "spacing": [s for _, _, s in rows],
            "affine": np.array(affines).reshape(-1, 4, 4),
        }
        writer.finish(
            meta,
            {
                "config": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                "sources": json.dumps(sources),
                "source_root": str(source),
                "skipped": json.dumps(skipped),
                "pixel_mm": cfg.fov_mm / cfg.size,
            },
        )
        check_terminated()  # never publish the store of a run that was told to stop
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise

    per_split = Counter(splits.values())
    summary = Summary(
        out=out,
        subjects={s: per_split.get(s, 0) for s in ([split] if split else ["train", "val"])},
        slices=dict(Counter(zip(meta["view"], meta["phase"], meta["split"]))),
        cases=written,
        dropped_unlabelled=dropped,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )
    if progress:
        print(summary)
    return summary

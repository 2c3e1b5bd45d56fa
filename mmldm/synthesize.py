"""Synthetic training sets: label maps in, a folder nnU-Net v2 (or MONAI) trains on out, with an audit.

    python -m mmldm synthesize --checkpoint runs/acdc_laptop/ldm/last.pt --input /data/ACDC/training \\
        --out nnUNet_raw/Dataset501_CardiacSynth --per-mask 2 --augment-masks 3

    from mmldm.synthesize import synthesize
    summary = synthesize("runs/acdc_laptop/ldm/last.pt", "data/processed/acdc_laptop.h5", "synth/")

What happens::

    input   -> source masks       every labelled slice, on the model's grid (size x size, fov_mm)
    masks   = sources x (1 + M)   each source, then M warped copies (data/mask_augment.py)
    cases   = masks x K           K samples per mask, each with its own seed
    batches of --batch-size cases -> LatentDiffusion.sample_latents -> decode     (inference.py)
    OUT/imagesTr/<case>_0000.nii.gz, OUT/labelsTr/<case>.nii.gz                  one per case
    OUT/audit.csv, OUT/audit.json                                                 read back, measured
    OUT/dataset.json (nnunet) or OUT/datalist.json (monai)                        last: the set is whole

Inputs (``--input``), recognised in this order:

- a preprocessed store (``.h5``, ``mmldm preprocess``): its label maps are on the model's grid
  already (its side must be the model's); ``split`` picks ``train``, ``val``, ``test`` or all rows,
  ``subjects`` (optional) the rows of those subjects only;
- a dataset folder in a layout the readers know (M&Ms-2 and the phantom, M&Ms, ACDC;
  ``data/readers/``): only the ``_gt`` label files are read, in the layout's own numbering, at
  each case's frame;
- a folder of label volumes (``.nii``/``.nii.gz`` directly in it; any other file is ignored) or
  one such file: ``labels`` must say their numbering (``acdc``, or ``mnms``/``mnms2``/``canonical``),
  as for ``generate``.

A label volume goes to the grid as ``generate`` does it (``generate_nifti.to_grid``): every slice
with a label, cropped to a ``data.fov_mm`` square around that slice's heart (the header's
spacing), resampled with nearest neighbour to ``data.size``. Slices without any label are left
out (the model never saw one).

Output: one 2-D case per mask and sample, on the model's grid, as a NIfTI of shape (size, size, 1),
axes as in the source (no reorientation), with the affine of its source slice on the grid
(:func:`mmldm.data.geometry.grid_affine`: the slice's direction cosines and place in the scanner,
pixels of about ``fov_mm / size`` mm, the third axis along the slice normal at 999 mm), so an
orientation-normalising reader turns real and synthetic slices of one mask alike; a store written
before stores kept affines gives ``diag(pixel_mm, pixel_mm, 999)``. 999 mm between "slices" is
nnU-Net's convention for 2-D data (its own converters write it), so nnU-Net plans a 2-D network
and never resamples across cases. A warped copy keeps its source slice's affine. Images are
float32 in [0, 1] (the model's [-1, 1] mapped by (x + 1) / 2; nnU-Net z-scores "MRI" channels
anyway), labels uint8 in ``label_order``: ``canonical`` (and ``mnms``, ``mnms2``) 1 LV, 2 MYO, 3 RV;
``acdc`` 1 RV, 2 MYO, 3 LV. Case names: ``case_<source:05d>_a<augmentation:02d>_k<sample:02d>``,
``a00`` the source mask itself, ``a01``... its warped copies. ``dataset.json`` follows nnU-Net
v2: ``channel_names`` {"0": "MRI"}, ``labels`` {"background": 0, ...} in the output order,
``numTraining``, ``file_ending`` ".nii.gz", with ``name``, ``description``, ``reference`` and an
``mmldm`` block (checkpoint, seeds, sampler, guidance). nnU-Net wants the folder to be
``$nnUNet_raw/Dataset<id:03d>_<name>``. ``layout="monai"`` writes the same files and
``datalist.json`` = ``{"training": [{"image": "imagesTr/...", "label": "labelsTr/..."}], ...}``
(paths relative to the file, as ``monai.data.load_decathlon_datalist`` reads them) instead.

Seeds. Mask slot ``j = source * (1 + M) + a`` (``a`` 0 for the source, 1..M for its copies), ``J``
slots in all; sample ``k`` of slot ``j`` starts from noise seeded with ``seed + k * J + j``, so no
two cases share their noise (the evaluation's realism seeds follow the same rule). Each case's
starting noise is drawn from its own seed, so with the deterministic samplers (DDIM with eta 0,
DPM-Solver) a case's image does not depend on its batch, the batch size or a resume: it is the
image ``LatentDiffusion.sample(cond, view, seed=seed + k * J + j)`` gives for that one mask.
DDPM (and DDIM with eta > 0) also draw noise at every step, from a generator seeded with the
batch's first seed: their images depend on the batching. Copy ``a`` of source ``i`` is warped with
``numpy.random.default_rng([seed, i, a])``.

Precision. ``precision="auto"`` (the default here, unlike evaluation's fp32) runs the UNet and
the decoder under bf16 autocast on a GPU or a CPU with AMX tiles, fp32 elsewhere
(``mmldm/precision.py``). Measured on 96 held-out ACDC masks, DDIM-50, ``laptop``: bf16
images differ from fp32's by 0.002 on average (p99 0.009, in [-1, 1]); SSIM 0.4987 vs 0.4988, the
segmenter's Dice 0.7558 vs 0.7561; 3.8 vs 1.2 images/s with the profile's guidance. The resolved
precision is recorded in ``dataset.json``'s ``mmldm`` block; a resume on another machine may mix.

Resume and refusals. ``OUT/synthesis.json`` records what the folder is (checkpoint weights, the
input's masks, sampler, guidance, edges, seed, K, M and the warp's settings, label order, layout)
before the first case is written. A re-run with the same settings skips the cases whose image and
label both exist and makes the rest; each file is written to a temporary name and renamed (a
killed run leaves no half file). ``dataset.json``/``datalist.json`` is removed while cases are
missing and written last, so its presence means the set is whole. A folder whose
``synthesis.json`` records other settings, or a non-empty folder without one, is refused (choose
another ``--out`` or delete it); so is an ``--out`` that is the input, lies inside an input
folder, or holds the input (such as the folder a store lies in). ``batch_size``, the audit's
settings, the dataset id and name may change between runs. One process writes a folder at a time
(``lock.py``).

Audit (``audit.json``, ``audit.csv``, recomputed over every case at each run):

- Dice of the segmenter's reading of each image against the mask it was made from
  (``evaluate/anatomy.anatomy_dice``: LV, MYO, RV and their mean, NaN where a class is in
  neither), with the evaluation's judge: ``segmenter``, default ``<run>/segmenter/segmenter.pt``
  beside the checkpoint's ``<run>/ldm/``; without one, Dice is "not measured" and says why.
  A case below ``flag_dice`` (mean foreground Dice) is flagged: the segmenter does not find the
  anatomy the label file claims, so image and label may disagree.
- Memorisation (``evaluate/memorisation``), in pixels: ``d_train``, the L2 distance (images in
  [-1, 1]) to the nearest image of ``train_store``'s ``train`` split (default: the checkpoint's own
  store, ``paths.store`` of its profile), ``rms_train`` = d_train / sqrt(pixels), and, when the
  store has a held-out split, ``ratio`` = d_train / d_heldout to its nearest held-out image (about
  1: no sign of copying; towards 0: a copy). A case below ``flag_ratio`` is flagged. Masks taken
  from the training split legitimately resemble their own training image, so their ratios run
  lower; a mask from the train store's held-out split is compared with held-out slices of other
  subjects only. The downstream value of a set (a segmenter trained on it) is measured elsewhere:
  benchmarks/README.md.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mmldm import __version__, atomic
from mmldm.data.condition import condition_from_mask
from mmldm.data.crop import heart_center, window_at, window_size
from mmldm.data.geometry import grid_affine, plain_affine
from mmldm.data.mask_augment import MaskAugmentConfig, augment_mask
from mmldm.data.nifti import NIFTI_SUFFIXES
from mmldm.data.readers.layout import detect_format, find_cases
from mmldm.data.schema import VIEWS
from mmldm.data.store import open_store, read_meta, verify_store
from mmldm.errors import DataError, MMLDMError, check_terminated, warn
from mmldm.generate_nifti import EDGE_MODES, LABEL_ORDERS, default_edges, read_labels, sampling_setup, to_grid
from mmldm.inference import LatentDiffusion, default_device
from mmldm.lock import run_lock
from mmldm.outputs import OutputError, check_outside, inside, same_path
from mmldm.progress import tqdm

LAYOUTS = ("nnunet", "monai")
SPLITS = ("all", "train", "val", "test")
CLASS_NAMES = {1: "LV", 2: "MYO", 3: "RV"}  # canonical value -> name in dataset.json and the audit
IMAGES, LABELS = "imagesTr", "labelsTr"
MANIFEST, DATASET_JSON, DATALIST_JSON = "synthesis.json", "dataset.json", "datalist.json"
AUDIT_JSON, AUDIT_CSV = "audit.json", "audit.csv"
WRITES = (MANIFEST, DATASET_JSON, DATALIST_JSON, AUDIT_JSON, AUDIT_CSV)
FILE_ENDING = ".nii.gz"
STORE_SUFFIXES = (".h5", ".hdf5")
DEFAULT_BATCH = 16
AUDIT_CHUNK = 256  # cases read back and measured at a time


# ---------------------------------------------------------------------------------------------
# Label orders
# ---------------------------------------------------------------------------------------------


def output_table(order: str) -> np.ndarray:
    """Lookup table canonical value -> value written for ``order`` (the inverse of the reading table)."""
    if order not in LABEL_ORDERS:
        raise MMLDMError(f"unknown label order {order!r}; choose one of {', '.join(LABEL_ORDERS)}")
    remap = LABEL_ORDERS[order]
    return np.arange(4, dtype=np.uint8) if remap is None else np.argsort(remap).astype(np.uint8)


def dataset_labels(order: str) -> dict[str, int]:
    """nnU-Net's ``labels``: {"background": 0, then the classes by the value ``order`` gives them}."""
    table = output_table(order)
    named = sorted((int(table[c]), name) for c, name in CLASS_NAMES.items())
    return {"background": 0, **{name: value for value, name in named}}


# ---------------------------------------------------------------------------------------------
# The input: what it is (cheap, before the model loads), then its masks on the model's grid
# ---------------------------------------------------------------------------------------------


@dataclass
class InputSpec:
    """What ``--input`` is: ``kind`` "store", a reader's layout ("acdc", "mnms", "mnms2") or
    "labels" (label volumes), with the files or cases to read and the order they are in."""

    kind: str
    path: Path
    order: str  # the label order the files are read with
    files: list[Path] = field(default_factory=list)  # label volumes
    cases: list = field(default_factory=list)  # reader cases (layouts)


@dataclass
class SourceMask:
    """One source slice on the model's grid: canonical label map, view, where it came from."""

    label: np.ndarray  # (size, size) uint8, canonical
    view: str
    file: str
    where: str
    subject: str = ""  # store rows only (the memorisation check's groups)
    split: str = ""
    affine: np.ndarray | None = None  # (4, 4) the grid slice in the scanner (data/geometry.py); None: unknown


def _is_nifti(path: Path) -> bool:
    return any(path.name.endswith(s) for s in NIFTI_SUFFIXES)


def _check_order(given: str | None, implied: str, where: str) -> None:
    """A ``labels`` that contradicts the numbering an input fixes itself is an error."""
    if given is None or given not in LABEL_ORDERS:
        return
    same = (LABEL_ORDERS[given] is None) == (LABEL_ORDERS[implied] is None)
    if not same:
        raise MMLDMError(
            f"--labels {given} contradicts {where}, whose labels are in {implied} order; leave --labels out"
        )


def find_input(path: str | Path, labels: str | None = None) -> InputSpec:
    """Recognise ``path`` (see the module docstring) and list what to read; reads no label map yet.

    A missing path, an empty folder, a store that is not one, or label volumes without ``labels``
    is an error naming the path.
    """
    path = Path(path)
    if labels is not None and labels not in LABEL_ORDERS:
        raise MMLDMError(f"unknown label order {labels!r}; choose one of {', '.join(LABEL_ORDERS)}")
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() in STORE_SUFFIXES:
            verify_store(path)  # a DataError when it is not an mmldm store, or a damaged one
            _check_order(labels, "canonical", f"the store {path}")
            return InputSpec("store", path, "canonical")
        if _is_nifti(path):
            return InputSpec("labels", path, _need_labels(labels, path), files=[path])
        raise DataError(path, "is neither a preprocessed store (.h5) nor a label volume (.nii, .nii.gz)")
    try:
        fmt = detect_format(path)
    except DataError:
        fmt = None
    if fmt is not None:
        order = "acdc" if fmt == "acdc" else "canonical"
        _check_order(labels, order, f"the {fmt} dataset {path}")
        return InputSpec(fmt, path, order, cases=find_cases(path, fmt))
    files = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p) and not p.name.startswith("."))
    if not files:
        raise DataError(
            path,
            "holds no label volumes (.nii, .nii.gz) and no dataset layout mmldm knows "
            "(M&Ms-2, M&Ms, ACDC); give a dataset folder, a folder of label volumes or a store (.h5)",
        )
    return InputSpec("labels", path, _need_labels(labels, path), files=files)


def _need_labels(labels: str | None, path: Path) -> str:
    if labels is None:
        raise MMLDMError(
            f"{path}: label volumes need --labels, the files' numbering: acdc (1 RV 2 MYO 3 LV) or "
            "mnms, mnms2, canonical (1 LV 2 MYO 3 RV)"
        )
    return labels


def _volume_masks(label, spacing, file, view, size, fov_mm, source_affine=None) -> list[SourceMask]:
    out = []
    shape = window_size(spacing[:2], fov_mm)
    for z in range(label.shape[2]):
        sl = label[:, :, z]
        if not sl.any():
            continue
        center = heart_center(sl)
        grid = to_grid(sl, center, spacing[:2], fov_mm, size)
        if grid.any():
            affine = None if source_affine is None else grid_affine(source_affine, window_at(center, shape), size, z)
            out.append(SourceMask(grid, view, str(file), f"slice {z}", affine=affine))
    return out


def load_masks(
    spec: InputSpec,
    size: int,
    fov_mm: float,
    view: str = "SA",
    split: str = "all",
    subjects: Sequence[str] | None = None,
) -> list[SourceMask]:
    """Every labelled slice of the input on the ``size`` x ``size`` grid of a ``fov_mm`` field of
    view; ``view`` for label volumes (datasets and stores say their own), ``split`` and
    ``subjects`` (only these subjects' rows) for stores."""
    if view not in VIEWS:
        raise MMLDMError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    if split not in SPLITS:
        raise MMLDMError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if subjects is not None and spec.kind != "store":
        raise MMLDMError(f"subjects choose rows of a preprocessed store; {spec.path} is a {spec.kind} input")
    if spec.kind == "store":
        masks = _store_masks(spec.path, size, fov_mm, split, subjects)
    elif spec.kind == "labels":
        masks = []
        for path in spec.files:
            check_terminated()
            label, spacing, img = read_labels(path, spec.order)
            masks += _volume_masks(label, spacing, path, view, size, fov_mm, img.affine)
    else:
        masks = []
        for case in spec.cases:
            check_terminated()
            label, spacing, img = read_labels(case.label_path, spec.order, case.frame)
            found = _volume_masks(label, spacing, case.label_path, case.view, size, fov_mm, img.affine)
            for m in found:
                m.where = f"{case.phase} {m.where}" + (f" (frame {case.frame})" if case.frame is not None else "")
            masks += found
    if not masks:
        raise DataError(spec.path, "holds no labelled slice: every label map is empty")
    return masks


def _store_masks(
    path: Path, size: int, fov_mm: float, split: str, subjects: Sequence[str] | None = None
) -> list[SourceMask]:
    with open_store(path) as f:
        side = int(f["label"].shape[-1])
        if side != size:
            raise DataError(
                path, f"holds {side}x{side} slices, the model makes {size}x{size}: preprocess at the model's size"
            )
        pixel_mm = f.attrs.get("pixel_mm")
        meta = read_meta(f)
        rows = np.arange(len(meta["split"])) if split == "all" else np.flatnonzero(meta["split"] == split)
        if not len(rows):
            raise DataError(path, f"has no {split!r} slices (it has {', '.join(sorted(set(meta['split'])))})")
        if subjects is not None:
            wanted = {str(x) for x in subjects}
            missing = sorted(wanted - {str(x) for x in meta["subject"][rows]})
            if missing:
                raise DataError(path, f"has no {split!r} slices of subject(s) {', '.join(missing[:5])}")
            rows = rows[np.isin(meta["subject"][rows].astype(str), sorted(wanted))]
        labels = f["label"][()]
    if pixel_mm is not None and abs(float(pixel_mm) - fov_mm / size) > 1e-3:
        warn(
            f"{path}: its pixels are {float(pixel_mm):.3g} mm, the model's {fov_mm / size:.3g} mm; "
            f"the synthetic images are labelled {fov_mm / size:.3g} mm"
        )
    out = []
    for i in rows:
        if labels[i].any():
            where = f"row {i} ({meta['subject'][i]} {meta['phase'][i]} slice {meta['slice_index'][i]})"
            affine = meta["affine"][i] if "affine" in meta else None  # stores before affines: unknown
            out.append(
                SourceMask(
                    labels[i],
                    str(meta["view"][i]),
                    str(path),
                    where,
                    str(meta["subject"][i]),
                    str(meta["split"][i]),
                    affine,
                )
            )
    return out


def fingerprint(masks: list[SourceMask]) -> str:
    """SHA-256 (16 hex digits) of the source masks and views: the same input gives the same value."""
    h = hashlib.sha256()
    for m in masks:
        h.update(f"{m.view}|{m.label.shape}|".encode())
        h.update(np.ascontiguousarray(m.label, np.uint8).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The plan: masks (sources and their warped copies), cases and seeds
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    slot: int  # mask slot j = source * (1 + M) + a
    source: int
    aug: int  # 0: the source mask; 1..M: a warped copy
    k: int  # sample index
    seed: int
    view: str


@dataclass
class Plan:
    masks: dict[int, np.ndarray]  # slot -> (size, size) canonical label map
    cases: list[Case]
    slots: int
    per: int  # slots per source, 1 + M
    rejects: int = 0  # warped tries rejected (mask_augment's rules)
    given_up: list[str] = field(default_factory=list)  # "source i copy a" whose every try failed


def case_name(source: int, aug: int, k: int) -> str:
    return f"case_{source:05d}_a{aug:02d}_k{k:02d}"


def make_plan(
    sources: list[SourceMask],
    per_mask: int = 1,
    augment_masks: int = 0,
    seed: int = 0,
    augment: MaskAugmentConfig | None = None,
) -> Plan:
    """Masks and cases with their seeds (see the module docstring)."""
    per = 1 + augment_masks
    slots = len(sources) * per
    plan = Plan({}, [], slots, per)
    for i, src in enumerate(sources):
        plan.masks[i * per] = src.label
        for a in range(1, per):
            result = augment_mask(src.label, np.random.default_rng([seed, i, a]), augment)
            plan.rejects += result.rejects
            if result.label is None:
                plan.given_up.append(f"source {i} copy {a} ({src.file} {src.where}): {result.reasons[-1]}")
                continue
            plan.masks[i * per + a] = result.label
    for j in sorted(plan.masks):
        i, a = divmod(j, per)
        for k in range(per_mask):
            plan.cases.append(Case(case_name(i, a, k), j, i, a, k, seed + k * slots + j, sources[i].view))
    return plan


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def image_path(out: Path, name: str) -> Path:
    return out / IMAGES / f"{name}_0000{FILE_ENDING}"


def label_path(out: Path, name: str) -> Path:
    return out / LABELS / f"{name}{FILE_ENDING}"


def _nifti(array: np.ndarray, affine: np.ndarray, dtype) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(array, dtype)[:, :, None], affine)
    img.set_qform(affine, code=1)  # scanner coordinates, as the source's
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    if dtype == np.float32:
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"], img.header["cal_max"] = 0.0, 1.0
    return img


def _save(img: nib.Nifti1Image, path: Path) -> None:
    """Write to the temporary name of mmldm.atomic, then rename (no per-file sweep of the folder:
    :func:`synthesize` sweeps the two case folders once, before it starts)."""
    tmp = atomic.temporary_path(path, FILE_ENDING)
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(path, f"cannot write: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def write_case(
    out: Path, name: str, image: np.ndarray, label: np.ndarray, pixel_mm: float, affine: np.ndarray | None = None
) -> None:
    """Image (size, size) in [0, 1] first, then its label (already in the output order): a case is
    whole when its label exists."""
    affine = plain_affine(pixel_mm) if affine is None else affine
    _save(_nifti(image, affine, np.float32), image_path(out, name))
    _save(_nifti(label, affine, np.uint8), label_path(out, name))


def finished_cases(out: Path) -> set[str]:
    """Names of the cases whose image and label both exist."""

    def names(folder: Path, ending: str) -> set[str]:
        if not folder.is_dir():
            return set()
        return {n[: -len(ending)] for n in os.listdir(folder) if n.endswith(ending) and not n.startswith(".")}

    return names(out / IMAGES, f"_0000{FILE_ENDING}") & names(out / LABELS, FILE_ENDING)


def _json(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False, default=_plain) + "\n"


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _finite(x) -> float | None:
    """A float for JSON, None for NaN/inf."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


# ---------------------------------------------------------------------------------------------
# Where the output may go, and what a folder already holds
# ---------------------------------------------------------------------------------------------


def check_out_placement(out: str | Path, input: str | Path) -> None:
    """Refuse an ``out`` that is the input, lies in an input folder (or in a folder a symlink in it
    points to), or holds the input (the folder an input file lies in, or one above it)
    (:class:`~mmldm.outputs.OutputError`). Paths are compared as written and with symlinks resolved."""
    out, input = Path(out), Path(input)
    if same_path(out, input) or inside(input, out):
        raise OutputError(f"--out {out}: it holds the input {input}; choose a folder outside it")
    if input.is_dir():
        check_outside(out, "--out", input, "input folder")


def check_out_folder(out: Path, identity: dict) -> bool:
    """Whether ``out`` continues a synthesis with this ``identity`` (True), or is new or empty
    (False); a folder of another synthesis, or non-empty without a manifest, is an OutputError."""
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())["identity"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(manifest, f"cannot be read ({err}); delete the folder to start again") from None
        differ = [k for k in identity if old.get(k) != identity[k]]
        if differ:
            raise OutputError(
                f"--out {out} holds a different synthesis (its {MANIFEST} records other "
                f"{', '.join(differ)}); choose another --out, or delete that folder to start again"
            )
        return True
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(not n.startswith(".") for n in os.listdir(out)):
        raise OutputError(
            f"--out {out} is not empty and holds no {MANIFEST}, so it is no synthetic set of mmldm; "
            "choose a new or empty folder"
        )
    return False


# ---------------------------------------------------------------------------------------------
# Sampling in batches
# ---------------------------------------------------------------------------------------------


def sample_batch(
    ldm: LatentDiffusion, labels: list[np.ndarray], views: list[str], seeds: list[int], sampler, guidance, edges: str
) -> torch.Tensor:
    """Images (B, 1, size, size) in [-1, 1] on the CPU for canonical masks ``labels``."""
    data = ldm.config.data
    cond = torch.stack([condition_from_mask(lab, data, edges) for lab in labels])
    view = torch.tensor([VIEWS.index(v) for v in views])
    return ldm.sample(cond, view, sampler=sampler, guidance=guidance, seed=seeds)  # a seed per row


# ---------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------

AUDIT_COLUMNS = (
    "case", "image", "label", "source_file", "source_slice", "view", "augmentation", "sample", "seed",
    "dice_LV", "dice_MYO", "dice_RV", "dice_fg", "d_train", "rms_train", "nearest_train", "d_heldout",
    "ratio", "flag_dice", "flag_copy",
)  # fmt: skip


def _read_image(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, np.float32)[:, :, 0] * 2.0 - 1.0


def default_segmenter(checkpoint: Path) -> Path:
    """``<run>/segmenter/segmenter.pt`` for a checkpoint ``<run>/ldm/last.pt``."""
    from mmldm.models.segmenter import CHECKPOINT_NAME

    return checkpoint.resolve().parent.parent / "segmenter" / CHECKPOINT_NAME


def _reference_images(store: Path, size: int) -> dict:
    """The train store's ``train`` images (and its held-out ones) as float32 (N, size, size)."""
    with open_store(store) as f:
        side = int(f["image"].shape[-1])
        if side != size:
            raise DataError(store, f"holds {side}x{side} slices, the synthetic images are {size}x{size}")
        meta = read_meta(f)
        train = np.flatnonzero(meta["split"] == "train")
        held = np.flatnonzero(meta["split"] != "train")
        if not len(train):
            raise DataError(store, "has no 'train' split to compare with")
        images = f["image"][()]  # float16 as stored; only the two sets become float32
        return {
            "train": torch.from_numpy(images[train].astype(np.float32)),
            "train_names": [f"{meta['subject'][i]} slice {meta['slice_index'][i]}" for i in train],
            "heldout": torch.from_numpy(images[held].astype(np.float32)) if len(held) else None,
            "heldout_subjects": meta["subject"][held],
        }


def run_audit(
    out: Path,
    plan: Plan,
    sources: list[SourceMask],
    judges: AuditSetup,
    *,
    input_is_train_store: bool,
    flag_dice: float,
    flag_ratio: float,
    progress: bool,
) -> tuple[dict, list[dict]]:
    """Measure every case of ``plan`` (read back from ``out``); returns (audit.json dict, csv rows)."""
    from mmldm.evaluate.anatomy import anatomy_dice
    from mmldm.evaluate.memorisation import memorisation_ratios, nearest_neighbours, ratio_summary

    cases = plan.cases
    size = next(iter(plan.masks.values())).shape[0]
    segmenter, train_store = judges.segmenter, judges.train_store
    ref = None if train_store is None else _reference_images(train_store, size)
    rows = []
    for c in cases:
        src = sources[c.source]
        rows.append(
            {
                "case": c.name,
                "image": str(image_path(out, c.name).relative_to(out)),
                "label": str(label_path(out, c.name).relative_to(out)),
                "source_file": src.file,
                "source_slice": src.where,
                "view": c.view,
                "augmentation": c.aug,
                "sample": c.k,
                "seed": c.seed,
            }
        )
    dice_cols = ("dice_LV", "dice_MYO", "dice_RV", "dice_fg")
    grouped_reference = "nearest held-out slice"
    bar = tqdm(total=len(cases), desc="audit", unit="img", disable=not progress)
    for start in range(0, len(cases), AUDIT_CHUNK):
        check_terminated()
        chunk = cases[start : start + AUDIT_CHUNK]
        images = torch.from_numpy(np.stack([_read_image(image_path(out, c.name)) for c in chunk]))[:, None]
        if segmenter is not None:
            masks = torch.from_numpy(np.stack([plan.masks[c.slot] for c in chunk])).long()
            dice = anatomy_dice(segmenter, images, masks)
            for i in range(len(chunk)):
                for col in dice_cols:
                    rows[start + i][col] = float(dice[col][i])
        if ref is not None:
            held = None
            if ref["heldout"] is None:
                d, idx = nearest_neighbours(images, ref["train"])
            else:
                groups = {}
                if input_is_train_store:  # a held-out mask's own slice (and subject) is no fair neighbour
                    q = np.array(
                        [sources[c.source].subject if sources[c.source].split != "train" else "" for c in chunk]
                    )
                    if (q != "").any():
                        groups = dict(query_groups=q, heldout_groups=ref["heldout_subjects"])
                try:
                    held = memorisation_ratios(images, ref["train"], ref["heldout"], **groups)
                    if groups:
                        grouped_reference = "nearest held-out slice of another subject (for masks of held-out subjects)"
                except ValueError:  # a single held-out subject: compare with every held-out slice
                    held = memorisation_ratios(images, ref["train"], ref["heldout"])
                d, idx = held["d_train"], held["index_train"]
            for i in range(len(chunk)):
                row = rows[start + i]
                row["d_train"] = float(d[i])
                row["rms_train"] = float(d[i]) / size
                row["nearest_train"] = ref["train_names"][int(idx[i])]
                if held is not None:
                    row["d_heldout"] = float(held["d_heldout"][i])
                    row["ratio"] = float(held["ratio"][i])
        bar.update(len(chunk))
    bar.close()
    flagged = []
    for row in rows:
        fg = row.get("dice_fg")
        row["flag_dice"] = int(fg is not None and (not math.isfinite(fg) or fg < flag_dice))
        ratio = row.get("ratio")
        row["flag_copy"] = int(ratio is not None and math.isfinite(ratio) and ratio < flag_ratio)
        if row["flag_dice"] or row["flag_copy"]:
            flagged.append(row["case"])

    def mean(col):
        values = np.array([r[col] for r in rows if col in r], np.float64)
        values = values[np.isfinite(values)]
        return (_finite(values.mean()) if len(values) else None), int(len(values))

    if segmenter is not None:
        means = {col.removeprefix("dice_"): mean(col) for col in dice_cols}
        dice_block = {
            "measured": True,
            "segmenter": str(judges.segmenter_path),
            "mean": {k: v[0] for k, v in means.items()},
            "n": {k: v[1] for k, v in means.items()},
            "flag_below": flag_dice,
            "flagged": sum(r["flag_dice"] for r in rows),
        }
    else:
        dice_block = {"measured": False, "reason": judges.segmenter_reason}
    if ref is not None:
        ratios = np.array([r.get("ratio", np.nan) for r in rows], np.float64)
        mem_block = {
            "measured": True,
            "space": "pixels (images in [-1, 1])",
            "train_store": str(train_store),
            "n_train": len(ref["train"]),
            "n_heldout": 0 if ref["heldout"] is None else len(ref["heldout"]),
            "d_train_mean": mean("d_train")[0],
            "rms_train_mean": mean("rms_train")[0],
            "ratio": {k: _finite(v) if isinstance(v, float) else v for k, v in ratio_summary(ratios).items()}
            if ref["heldout"] is not None
            else None,
            "heldout_reference": grouped_reference
            if ref["heldout"] is not None
            else "none: the store has no held-out split",
            "flag_below": flag_ratio,
            "flagged": sum(r["flag_copy"] for r in rows),
        }
    else:
        mem_block = {"measured": False, "reason": judges.train_reason}
    summary = {
        "cases": len(rows),
        "dice": dice_block,
        "memorisation": mem_block,
        "flagged": flagged,
        "n_flagged": len(flagged),
        "augmentation": {
            "copies_requested": plan.slots - len(sources),
            "copies_made": sum(1 for j in plan.masks if j % plan.per),
            "rejected_tries": plan.rejects,
            "given_up": plan.given_up,
        },
    }
    return summary, rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _check_options(layout, label_order, per_mask, augment_masks, batch_size, dataset_id, dataset_name, edges):
    if layout not in LAYOUTS:
        raise MMLDMError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if label_order not in LABEL_ORDERS:
        raise MMLDMError(f"label order must be one of {', '.join(LABEL_ORDERS)}, got {label_order!r}")
    if edges is not None and edges not in EDGE_MODES:
        raise MMLDMError(f"edges must be one of {', '.join(EDGE_MODES)}, got {edges!r}")
    if per_mask < 1 or augment_masks < 0 or (batch_size is not None and batch_size < 1):
        raise MMLDMError("per_mask and batch_size must be at least 1, augment_masks at least 0")
    if not 1 <= dataset_id <= 999:
        raise MMLDMError(f"dataset id {dataset_id}: nnU-Net takes 1 to 999 (custom sets from 500)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", dataset_name or ""):
        raise MMLDMError(f"dataset name {dataset_name!r}: use letters, digits, '_' and '-'")


@dataclass
class AuditSetup:
    """The audit's judges: the segmenter (loaded) and the train store, or why there is none."""

    segmenter: object = None
    segmenter_path: Path | None = None
    segmenter_reason: str = ""
    train_store: Path | None = None
    train_reason: str = ""


def _check_train_store(store: Path, size: int) -> None:
    with open_store(store) as f:
        side = int(f["image"].shape[-1])
        splits = set(read_meta(f)["split"])
    if side != size:
        raise DataError(store, f"holds {side}x{side} slices, the model makes {size}x{size}: not its train store")
    if "train" not in splits:
        raise DataError(store, "has no 'train' split to compare with")


def audit_setup(
    checkpoint: Path, ldm: LatentDiffusion, segmenter=None, train_store=None, device: str = "cpu"
) -> AuditSetup:
    """Load the segmenter and check the train store. Given ones must work (else an error, before
    anything is generated); the defaults (the run's segmenter, the profile's store) are used when
    they do, else the audit says why it measured nothing."""
    from mmldm.models.segmenter import load_segmenter

    size = ldm.size
    setup = AuditSetup()

    def judge(path: Path):
        model = load_segmenter(path, device)
        if size % model.cfg.downsampling:
            raise DataError(path, f"segments sizes divisible by {model.cfg.downsampling}, the images are {size}")
        return model

    if segmenter is not None:
        setup.segmenter_path = Path(segmenter)
        setup.segmenter = judge(setup.segmenter_path)
    else:
        path = default_segmenter(checkpoint)
        if not path.is_file():
            setup.segmenter_reason = f"no segmenter: none given and none at {path} (mmldm evaluate trains one there)"
        else:
            try:
                setup.segmenter, setup.segmenter_path = judge(path), path
            except MMLDMError as err:
                setup.segmenter_reason = f"the run's segmenter cannot be used: {err}"
    if train_store is not None:
        _check_train_store(Path(train_store), size)
        setup.train_store = Path(train_store)
        return setup
    try:
        store = Path(ldm.config.store_path)
    except Exception as err:  # noqa: BLE001 - a profile whose source folder is not on this machine
        setup.train_reason = f"no train store: none given, and the checkpoint's cannot be resolved ({err})"
        return setup
    if not store.is_file():
        setup.train_reason = f"no train store: none given and the checkpoint's {store} is not here"
        return setup
    try:
        _check_train_store(store, size)
        setup.train_store = store
    except MMLDMError as err:
        setup.train_reason = f"the checkpoint's store cannot be compared with: {err}"
    return setup


def synthesize(
    checkpoint: str | Path,
    input: str | Path,
    out: str | Path,
    *,
    layout: str = "nnunet",
    labels: str | None = None,
    label_order: str = "canonical",
    per_mask: int = 1,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    scale_mask: float | None = None,
    scale_edge: float | None = None,
    edges: str | None = None,
    augment_masks: int = 0,
    augment: MaskAugmentConfig | None = None,
    batch_size: int | None = None,
    dataset_id: int = 501,
    dataset_name: str = "CardiacSynth",
    segmenter: str | Path | None = None,
    train_store: str | Path | None = None,
    flag_dice: float = 0.5,
    flag_ratio: float = 0.5,
    view: str = "SA",
    split: str = "all",
    subjects: Sequence[str] | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = True,
    audit: bool = True,
) -> dict:
    """Make (or finish) the synthetic set ``out`` from ``input`` with the LDM ``checkpoint``.

    Options as in the module docstring; ``audit=False`` (benchmarks only) skips the audit files.
    Returns ``{"out", "cases", "generated", "skipped", "seconds", "images_per_second", "sampler",
    "guidance", "index", "audit", "layout", "dataset_folder", "step"}``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    _check_options(layout, label_order, per_mask, augment_masks, batch_size, dataset_id, dataset_name, edges)
    check_out_placement(out, input)
    spec = find_input(input, labels)  # bad input fails before the model loads
    if segmenter is not None and not Path(segmenter).is_file():
        raise DataError(segmenter, "segmenter checkpoint not found")
    if train_store is not None:
        verify_store(train_store)  # checked again, against the model's size, once it is loaded
    device = default_device(device)
    ldm = LatentDiffusion.from_checkpoint(checkpoint, device=device, precision=precision)
    edges = default_edges(ldm.config) if edges is None else edges
    cfg, sampler_cfg = sampling_setup(ldm.config, edges, sampler, steps, scale_mask, scale_edge)
    data = ldm.config.data
    size, pixel_mm = int(data.size), float(data.fov_mm) / int(data.size)
    sources = load_masks(spec, size, float(data.fov_mm), view, split, subjects)
    augment = augment or MaskAugmentConfig()
    plan = make_plan(sources, per_mask, augment_masks, seed, augment)
    table = output_table(label_order)
    judges = audit_setup(checkpoint, ldm, segmenter, train_store, device) if audit else AuditSetup()

    identity = json.loads(
        _json(
            {
                "checkpoint_weights": ldm.weights,
                "size": size,
                "fov_mm": float(data.fov_mm),
                "input": fingerprint(sources),
                "sampler": dataclasses.asdict(sampler_cfg),
                "guidance": {k: v for k, v in dataclasses.asdict(cfg.guidance).items() if not k.startswith("p_drop")},
                "edges": edges,
                "seed": seed,
                "per_mask": per_mask,
                "augment_masks": augment_masks,
                "augment": dataclasses.asdict(augment) if augment_masks else None,
                "label_order": label_order,
                "layout": layout,
            }
        )
    )
    provenance = {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_step": ldm.step,
        "input": str(Path(input).resolve()),
        "input_kind": spec.kind,
        "input_label_order": spec.order,
        "source_slices": len(sources),
        "seeds": "sample k of mask slot j (j = source * (1 + augment_masks) + copy): seed + k * slots + j",
        "slots": plan.slots,
        "precision": ldm.precision,
        "pixel_mm": pixel_mm,
        "mmldm_version": __version__,
    }
    with run_lock(out, "mmldm synthesize"):
        resumed = check_out_folder(out, identity)
        if not resumed:
            created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            atomic.write_text(
                out / MANIFEST, _json({"identity": identity, "provenance": provenance, "created": created})
            )
        for folder in (out / IMAGES, out / LABELS):
            folder.mkdir(parents=True, exist_ok=True)
            atomic.sweep_stale(folder)
        done = finished_cases(out)
        todo = [c for c in plan.cases if c.name not in done]
        index = out / (DATASET_JSON if layout == "nnunet" else DATALIST_JSON)
        if todo:
            index.unlink(missing_ok=True)  # present only while the set is whole
        batch = batch_size or DEFAULT_BATCH
        bar = tqdm(
            total=len(plan.cases),
            initial=len(plan.cases) - len(todo),
            desc="synthesize",
            unit="img",
            disable=not progress,
        )
        start = time.perf_counter()
        for b in range(0, len(todo), batch):
            check_terminated()
            chunk = todo[b : b + batch]
            images = sample_batch(
                ldm,
                [plan.masks[c.slot] for c in chunk],
                [c.view for c in chunk],
                [c.seed for c in chunk],
                sampler_cfg,
                cfg.guidance,
                edges,
            )
            for c, img in zip(chunk, images):
                image, label = (img[0].numpy() + 1.0) / 2.0, table[plan.masks[c.slot]]
                write_case(out, c.name, image, label, pixel_mm, sources[c.source].affine)
            bar.update(len(chunk))
        bar.close()
        seconds = time.perf_counter() - start

        summary = None
        if audit:
            summary, rows = run_audit(
                out,
                plan,
                sources,
                judges,
                input_is_train_store=spec.kind == "store"
                and judges.train_store is not None
                and same_path(spec.path, judges.train_store),
                flag_dice=flag_dice,
                flag_ratio=flag_ratio,
                progress=progress,
            )
            summary["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            _write_csv(out / AUDIT_CSV, rows)
            atomic.write_text(out / AUDIT_JSON, _json(summary))

        mmldm_block = {
            **provenance,
            "sampler": identity["sampler"],
            "guidance": identity["guidance"],
            "edges": edges,
            "seed": seed,
            "per_mask": per_mask,
            "augment_masks": augment_masks,
            "audit": AUDIT_JSON if audit else None,
        }
        names = [c.name for c in plan.cases]
        if layout == "nnunet":
            content = {
                "channel_names": {"0": "MRI"},
                "labels": dataset_labels(label_order),
                "numTraining": len(names),
                "file_ending": FILE_ENDING,
                "name": dataset_name,
                "description": f"Synthetic cardiac MRI slices made by mmldm's latent diffusion model from "
                f"{len(sources)} label slices ({spec.kind} input): {per_mask} sample(s) per mask, "
                f"{augment_masks} warped copies per source mask",
                "reference": "mmldm synthesize (see mmldm/synthesize.py)",
                "licence": "as the source label maps",
                "release": __version__,
                "mmldm": mmldm_block,
            }
        else:
            content = {
                "training": [
                    {
                        "image": str(image_path(out, n).relative_to(out)),
                        "label": str(label_path(out, n).relative_to(out)),
                    }
                    for n in names
                ],
                "labels": dataset_labels(label_order),
                "name": dataset_name,
                "mmldm": mmldm_block,
            }
        atomic.write_text(index, _json(content))

    dataset_folder = f"Dataset{dataset_id:03d}_{dataset_name}"
    return {
        "out": out,
        "cases": len(plan.cases),
        "generated": len(todo),
        "skipped": len(plan.cases) - len(todo),
        "sources": len(sources),
        "seconds": seconds,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else None,
        "sampler": identity["sampler"],
        "guidance": identity["guidance"],
        "index": index,
        "audit": summary,
        "layout": layout,
        "dataset_folder": dataset_folder,
        "resumed": resumed,
        "step": ldm.step,
        "rejected_tries": plan.rejects,
        "given_up": len(plan.given_up),
    }

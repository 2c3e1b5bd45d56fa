"""The preprocessed HDF5 store: one file holds every slice of a dataset, ready for training.

Layout (``N`` slices, all ``size`` x ``size``)::

    /image                (N, H, W) float16 (or float32)  normalised intensities in [-1, 1]
    /label                (N, H, W) uint8                 0 BG, 1 LV, 2 MYO, 3 RV (canonical)
    /edge                 (N, H, W) uint8                 Canny edges, {0, 1}
    /meta/subject         (N,) bytes   subject id as the dataset names it ("001", "patient042")
    /meta/view            (N,) bytes   "SA" or "LA"
    /meta/phase           (N,) bytes   "ED" or "ES"
    /meta/slice_index     (N,) int16   z index of the slice in its source volume
    /meta/source          (N,) bytes   "mnms2", "mnms", "acdc" or "phantom"
    /meta/split           (N,) bytes   "train" or "val" (drawn per subject, see split.py)
    /meta/vendor          (N,) bytes   scanner vendor, "" when the dataset does not say
    /meta/centre          (N,) bytes   acquisition centre, "" when unknown
    /meta/pathology       (N,) bytes   diagnosis group ("NOR", "DCM", ...), "" when unknown
    /meta/spacing         (N, 2) float32  in-plane spacing (mm) of the *source* slice
    /meta/affine          (N, 4, 4) float64  voxel-to-scanner affine of the slice on the grid
                          (data/geometry.py): exports keep the scan's place and orientation

    attributes of /:
      format_version      int, FORMAT_VERSION
      config              the DataConfig that made the file, as YAML
      sources             JSON list of the image and label files read
      source_root         the folder preprocessing was pointed at
      skipped             JSON list of "file: reason" for files left out (skip_bad)
      pixel_mm            output pixel size in mm (fov_mm / size)
      labels, cond_channels   JSON, the canonical label names and condition channel order
      checksums           JSON {array: SHA-256 of its bytes as written}, for image, label, edge and
                          every meta column: :func:`verify_store` proves a store whole before use

Strings are fixed-length UTF-8 bytes (fast to read in bulk); :func:`read_meta` decodes them.

Chunks and compression, chosen by measurement (``benchmarks/data_pipeline.py`` on the 100-subject
ACDC store at 256 x 256, 2-core machine, file in the page cache, one random slice per read):

    ===========  ================  ===========  ============
    array        filter            kB / slice   us / read
    ===========  ================  ===========  ============
    image f16    none (default)    131          30-40
    image f16    lzf               120          330-360
    image f16    gzip 1            99           600
    image f16    gzip 1 + shuffle  84           390-500
    label u8     none              66           20
    label u8     gzip 1 (default)  1.0          40-60
    label u8     lzf               1.8          85-95
    edge u8      gzip 1 (default)  6.3          80-90
    edge u8      lzf               10.0         105-115
    ===========  ================  ===========  ============

Noisy float16 MRI barely compresses (8-35 %) but decompressing it costs 10-20x the read, so the
image has no filter by default; labels and edges shrink 10-60x with gzip level 1 (faster than
lzf here, and smaller) for a small cost. Every array is chunked one slice per chunk, so a random
read touches exactly one chunk. A 256 x 256 slice costs about 140 kB on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import yaml

from mmldm.data.schema import COND_CHANNELS, LABELS
from mmldm.errors import DataError

FORMAT_VERSION = 1
ARRAYS = ("image", "label", "edge")
STRING_COLUMNS = ("subject", "view", "phase", "source", "split", "vendor", "centre", "pathology")
META_COLUMNS = STRING_COLUMNS[:3] + ("slice_index",) + STRING_COLUMNS[3:] + ("spacing", "affine")
OPTIONAL_COLUMNS = ("affine",)  # absent from stores written before it; read_meta leaves it out then


def _filter(name: str) -> dict:
    """h5py keyword arguments for a filter name: "none", "lzf" or "gzip" (level 1)."""
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf"}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    raise ValueError(f"unknown compression {name!r}; use 'none', 'lzf' or 'gzip'")


class StoreWriter:
    """Writes a store slice-block by slice-block: ``append`` arrays, then ``finish`` with metadata.

    The arrays grow as blocks arrive (``maxshape=(None, H, W)``), so the number of slices need not
    be known in advance. The caller owns atomicity (preprocess writes to a temporary name).
    """

    def __init__(
        self,
        path: str | Path,
        size: int,
        image_dtype: str = "float16",
        compression: str = "gzip",
        image_compression: str = "none",
    ):
        self.file = h5py.File(path, "w")
        self.n = 0
        self._hashes = {name: hashlib.sha256() for name in ARRAYS}
        shape, chunk = (0, size, size), (1, size, size)
        for name, dtype, filt in (
            ("image", image_dtype, image_compression),
            ("label", "uint8", compression),
            ("edge", "uint8", compression),
        ):
            self.file.create_dataset(
                name, shape=shape, maxshape=(None, size, size), dtype=dtype, chunks=chunk, **_filter(filt)
            )

    def append(self, image: np.ndarray, label: np.ndarray, edge: np.ndarray) -> None:
        """Add ``n`` slices: image (n, H, W) in [-1, 1], label and edge (n, H, W) uint8."""
        n = len(image)
        if not (len(label) == len(edge) == n):
            raise ValueError(f"append: {n} images but {len(label)} labels and {len(edge)} edge maps")
        for name, arr in (("image", image), ("label", label), ("edge", edge)):
            ds = self.file[name]
            ds.resize(self.n + n, axis=0)
            ds[self.n : self.n + n] = arr
            self._hashes[name].update(ds[self.n : self.n + n].tobytes())  # what the file holds, as read
        self.n += n

    def finish(self, meta: dict[str, np.ndarray | list], attrs: dict) -> None:
        """Write the metadata columns (each of length N) and the root attributes, then close."""
        missing = set(META_COLUMNS) - set(meta) - set(OPTIONAL_COLUMNS)
        if missing:
            raise ValueError(f"finish: metadata columns missing: {sorted(missing)}")
        group = self.file.create_group("meta")
        for name in META_COLUMNS:
            if name not in meta:  # an optional column the caller does not have
                continue
            col = meta[name]
            if name in STRING_COLUMNS:
                col = np.char.encode(np.asarray(col, dtype=str), "utf-8") if len(col) else np.zeros(0, "S1")
            elif name == "slice_index":
                col = np.asarray(col, dtype=np.int16)
            elif name == "affine":
                col = np.asarray(col, dtype=np.float64).reshape(-1, 4, 4)
            else:
                col = np.asarray(col, dtype=np.float32).reshape(-1, 2)
            if len(col) != self.n:
                raise ValueError(f"finish: metadata column {name!r} has {len(col)} rows for {self.n} slices")
            group.create_dataset(name, data=col)
        checksums = {name: h.hexdigest() for name, h in self._hashes.items()}
        checksums.update({f"meta/{name}": _sha256(group[name]) for name in group})
        self.file.attrs["checksums"] = json.dumps(checksums)
        self.file.attrs["format_version"] = FORMAT_VERSION
        self.file.attrs["labels"] = json.dumps(LABELS)
        self.file.attrs["cond_channels"] = json.dumps(COND_CHANNELS)
        for key, value in attrs.items():
            self.file.attrs[key] = value
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def open_store(path: str | Path) -> h5py.File:
    """Open a store read-only; a missing file or one that is not a store is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such store file (run `python -m mmldm preprocess` first)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"not a readable HDF5 file ({e})") from None
    version = f.attrs.get("format_version")
    missing = [k for k in ARRAYS + ("meta",) if k not in f]
    if missing or version != FORMAT_VERSION:
        f.close()
        problem = f"missing {missing}" if missing else f"format_version {version}, expected {FORMAT_VERSION}"
        raise DataError(path, f"not an mmldm store ({problem}); preprocess it again")
    return f


def _sha256(ds: h5py.Dataset, block: int = 256) -> str:
    """SHA-256 of a dataset's bytes, read ``block`` rows at a time."""
    h = hashlib.sha256()
    for start in range(0, max(len(ds), 1), block):
        h.update(ds[start : start + block].tobytes())
    return h.hexdigest()


_VERIFIED: set[tuple] = set()  # (path, size, mtime) proved whole in this process


def verify_store(path: str | Path) -> None:
    """Read every array of the store and compare it with the checksums recorded when it was written.

    A store damaged on disk (a bad sector, a partial copy, bytes overwritten) either fails to read
    (HDF5 names no file: here it becomes "<file>: damaged at /image ...") or, worse, reads as
    wrong numbers without any error; both are a :class:`DataError` naming the file and the array.
    Each file is read once per process while its size and time stay the same (about 0.2 s for the
    65 MB laptop ACDC store). Stores written before checksums were recorded are only opened."""
    path = Path(path)
    st = path.stat() if path.is_file() else None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns) if st else None
    if key in _VERIFIED:
        return
    with open_store(path) as f:
        recorded = json.loads(f.attrs.get("checksums", "{}"))
        for name, digest in recorded.items():
            try:
                found = _sha256(f[name])
            except (OSError, KeyError) as e:
                why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
                raise DataError(path, f"damaged at /{name} ({why}); preprocess it again") from None
            if found != digest:
                raise DataError(
                    path, f"damaged at /{name}: its bytes differ from what preprocess wrote; preprocess it again"
                )
    _VERIFIED.add(key)


def read_meta(f: h5py.File) -> dict[str, np.ndarray]:
    """All metadata columns as numpy arrays (strings decoded to ``str``), each of length N."""
    out = {}
    for name in META_COLUMNS:
        if name in OPTIONAL_COLUMNS and name not in f["meta"]:
            continue
        col = f["meta"][name][()]
        out[name] = np.char.decode(col, "utf-8") if name in STRING_COLUMNS else col
    return out


def read_config(f: h5py.File) -> dict:
    """The DataConfig that made the store, as a plain mapping."""
    return yaml.safe_load(f.attrs["config"])


def read_sources(f: h5py.File) -> list[str]:
    """The image and label files that went into the store."""
    return json.loads(f.attrs["sources"])


def read_skipped(f: h5py.File) -> list[str]:
    """``"file: reason"`` for each file that preprocessing left out (empty unless skip_bad)."""
    return json.loads(f.attrs.get("skipped", "[]"))


def store_size(path: str | Path) -> int:
    """The side, in pixels, of the store's slices (what a model trained on it expects)."""
    with open_store(path) as f:
        return int(f["image"].shape[-1])


def check_same_size(sizes: dict[str, int | None], fix: str = "") -> None:
    """Raise a DataError when the image sizes of ``{what: size}`` (None: unknown, skipped) differ.

    A model is trained at one image size; given slices of another it still runs (every layer is
    convolutional) and its numbers are silently wrong, so the store, the VQVAE and the LDM are
    checked against each other wherever two of them meet.
    """
    known = {what: int(size) for what, size in sizes.items() if size is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{what}: {size} px" for what, size in known.items())
        raise DataError(None, f"image sizes disagree ({listed}){'; ' + fix if fix else ''}")

"""Torch Dataset over a preprocessed store: one 2-D slice per item, conditions expanded on load.

    ds = CardiacSliceDataset("data/processed/mnms2.h5", split="train", views=("SA",))
    item = ds[0]
    item["image"]   (1, H, W) float32 in [-1, 1]
    item["edge"]    (1, H, W) float32 {0, 1}
    item["onehot"]  (4, H, W) float32, channels 0 BG, 1 LV, 2 MYO, 3 RV; exactly one 1 per pixel
    item["cond"]    (5, H, W) float32 = cat(edge, onehot), channel order sample.COND_CHANNELS
    item["label"]   (H, W) int64 canonical label map
    item["view"]    int64 scalar, 0 SA, 1 LA (index into sample.VIEWS)
    item["subject"], item["phase"], item["split"], item["source"] (str), item["slice_index"] (int),
    item["index"]   (int) row of the slice in the store

``edge`` and ``onehot`` are views into ``cond`` (no extra copy); the DataLoader's collate copies
each into its own batch tensor, so batches never share memory.

Compact items for DataLoaders (``expand=False``). An expanded 256 x 256 item is 3.3 MB of float32
and int64 (image, edge, one-hot, cond, label), made from 0.25 MB on disk. A DataLoader must
collate those bytes and, with workers, push them through shared memory, which on the 2-core
development machine caps it at a few hundred items/s whatever the read speed. So for training:

    ds = CardiacSliceDataset(path, expand=False)     # image float16 (1,H,W), label uint8 (H,W),
    for batch in DataLoader(ds, batch_size=32, num_workers=2):   # edge uint8 (1,H,W), view, meta
        batch = expand_batch(batch, device)          # -> the documented float tensors, on device

``expand_batch`` builds the same tensors as an expanded item, batched, on the training device
(the one-hot of a batch is free on a GPU). The image keeps the store's dtype until then.

Lazy opening. ``__init__`` reads only the metadata table (a few hundred kB) and closes the file;
the HDF5 file is opened on the first item read *in the process that reads it*. An open h5py
handle must never be pickled into, or inherited by, DataLoader workers (HDF5 is not fork-safe),
so the handle is dropped when pickling and re-opened after a fork (checked by process id).

Speed. Per item the store gives one chunk per array (image uncompressed, label and edge gzip
level 1, see store.py), about 0.15 ms on this machine. Conversions pick the faster library
(measured on this CPU): float16 -> float32 in torch (~8 us vs ~110 us in numpy), the one-hot in
numpy, written straight into the float32 ``cond`` buffer (~35 us vs ~150 us in torch).
``in_memory=True`` reads the filtered arrays once instead: about 256 kB per 256 x 256 slice
(float16 image + two uint8 maps), e.g. 1.8 GB for the ~7,000 labelled slices of 360 M&Ms-2-size
subjects, read in 5-20 s; DataLoader workers share it copy-on-write (Linux fork).
benchmarks/data_pipeline.py measures all of these.

Augmentation (``augment=True``, off by default): a random dihedral transform, i.e. one of the 4
rotations by 90 degrees, optionally mirrored, applied identically to image, edges and labels (an
exact pixel permutation, so the three stay aligned to the pixel), and an intensity jitter of the
image only, ``clip(image * (1 + a) + b, -1, 1)`` with ``a, b ~ U(-jitter, jitter)``. Randomness
comes from torch's global RNG, which the DataLoader seeds differently in every worker. Note that
mirroring puts the RV on the other side of the LV, an anatomy no scanner produces; use it only
when the model should be orientation-agnostic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmldm.data.condition import build_condition
from mmldm.data.schema import VIEWS
from mmldm.data.store import open_store, read_meta, verify_store
from mmldm.errors import DataError


def expand_batch(batch: dict, device: torch.device | str | None = None) -> dict:
    """Compact items (``expand=False``), one or collated, -> the documented float tensors.

    Works on any leading shape: label (..., H, W) gives onehot (..., 4, H, W). Moves image, label
    and edge to ``device`` first (default: where they are), so the expansion runs there.
    """
    label = batch["label"].to(device, non_blocking=True).long()
    cond = build_condition(label, batch["edge"].to(device, non_blocking=True))
    image = batch["image"].to(device, non_blocking=True).float()
    return {
        **batch,
        "image": image,
        "label": label,
        "edge": cond[..., :1, :, :],
        "onehot": cond[..., 1:, :, :],
        "cond": cond,
    }


def dihedral_jitter(image: torch.Tensor, label: np.ndarray, edge: np.ndarray, jitter: float):
    """One random dihedral transform (torch's global generator) of image (H, W), label and edge
    alike, then intensity jitter of the image only: ``image * (1 + a) + b``, a and b uniform in
    [-jitter, jitter], clamped to [-1, 1]."""
    k, flip = int(torch.randint(4, ())), bool(torch.randint(2, ()))
    a, b = ((torch.rand(2) * 2 - 1) * jitter).tolist()
    image = torch.rot90(image, k, dims=(0, 1))
    label, edge = np.rot90(label, k), np.rot90(edge, k)
    if flip:
        image, label, edge = image.flip(1), label[:, ::-1], edge[:, ::-1]
    image = (image * (1.0 + a) + b).clamp_(-1.0, 1.0).contiguous()
    return image, np.ascontiguousarray(label), np.ascontiguousarray(edge)  # fast numpy from here


def _runs(indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Sorted indices -> contiguous runs (position in ``indices``, first row, end row)."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(indices)]])
    return [(int(s), int(indices[s]), int(indices[e - 1]) + 1) for s, e in zip(starts, ends)]


class CardiacSliceDataset(Dataset):
    """Slices of one store, filtered by split and view; see the module docstring for the items."""

    def __init__(
        self,
        path: str | Path,
        split: str | None = "train",
        views: tuple[str, ...] | list[str] | str | None = None,
        augment: bool = False,
        jitter: float = 0.1,
        in_memory: bool = False,
        expand: bool = True,
    ):
        self.path = Path(path)
        self.split, self.augment, self.jitter = split, augment, jitter
        self.in_memory, self.expand = in_memory, expand
        self.views = (views,) if isinstance(views, str) else (tuple(views) if views is not None else None)
        if self.views is not None and set(self.views) - set(VIEWS):
            raise ValueError(f"views must be a subset of {VIEWS}, got {self.views}")
        verify_store(self.path)  # a damaged store is one line naming it, never wrong numbers
        with open_store(self.path) as f:
            meta = read_meta(f)
            keep = np.ones(len(meta["subject"]), bool)
            if split is not None:
                keep &= meta["split"] == split
            if self.views is not None:
                keep &= np.isin(meta["view"], self.views)
            self.indices = np.flatnonzero(keep)
            if len(self.indices) == 0:
                raise DataError(self.path, f"no slices with split={split!r} and views={self.views}")
            self.meta = {k: v[self.indices] for k, v in meta.items()}
            self._view_ids = np.array([VIEWS.index(v) for v in self.meta["view"]], np.int64)
            self._image_dtype = torch.from_numpy(np.zeros(0, f["image"].dtype)).dtype
            self._arrays = self._load(f) if in_memory else None
        self._file, self._datasets, self._pid = None, None, None

    def _load(self, f) -> tuple[np.ndarray, ...]:
        """Read the filtered rows of image, label and edge into memory, one contiguous run at a time."""
        out = []
        for name in ("image", "label", "edge"):
            ds = f[name]
            arr = np.empty((len(self.indices),) + ds.shape[1:], ds.dtype)
            for pos, start, end in _runs(self.indices):
                ds.read_direct(arr, np.s_[start:end], np.s_[pos : pos + end - start])
            out.append(arr)
        return tuple(out)

    def __len__(self) -> int:
        return len(self.indices)

    # -- lazy, per-process file handle ---------------------------------------------------------
    def _open(self):
        if self._datasets is None or self._pid != os.getpid():
            self._file = open_store(self.path)
            self._datasets = (self._file["image"], self._file["label"], self._file["edge"])
            self._pid = os.getpid()
        return self._datasets

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets, self._pid = None, None, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _datasets=None, _pid=None)  # never pickle an open HDF5 handle
        return state

    # -- items ---------------------------------------------------------------------------------
    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (image float16/32, label uint8, edge uint8) of item ``i``, each (H, W), no augmentation.

        With ``in_memory`` these are views of the cached arrays: do not write to them.
        """
        if self._arrays is not None:
            return self._arrays[0][i], self._arrays[1][i], self._arrays[2][i]
        row = self.indices[i]
        image, label, edge = self._open()
        return image[row], label[row], edge[row]

    def _augment(self, image: torch.Tensor, label: np.ndarray, edge: np.ndarray):
        return dihedral_jitter(image, label, edge, self.jitter)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        image, label, edge = self.read(i)
        image = torch.from_numpy(np.array(image))  # a copy: items never alias the in-memory cache
        if self.augment:
            image, label, edge = self._augment(image.float(), label, edge)
        item = {
            "view": torch.tensor(self._view_ids[i]),
            "subject": str(self.meta["subject"][i]),
            "phase": str(self.meta["phase"][i]),
            "split": str(self.meta["split"][i]),
            "source": str(self.meta["source"][i]),
            "slice_index": int(self.meta["slice_index"][i]),
            "index": int(self.indices[i]),
        }
        if not self.expand:  # compact: the store's dtypes; np.array copies (never alias the cache)
            item["image"] = image.to(self._image_dtype).contiguous()[None]
            item["label"] = torch.from_numpy(np.array(label))
            item["edge"] = torch.from_numpy(np.array(edge))[None]
            return item
        cond = build_condition(label, edge)  # data/condition.py: one float32 buffer, no torch ops
        # torch converts float16 -> float32 ~10x faster than numpy does
        item.update(
            image=image.float().contiguous()[None],
            edge=cond[0:1],
            onehot=cond[1:],
            cond=cond,
            label=torch.from_numpy(np.ascontiguousarray(label)).long(),
        )
        return item

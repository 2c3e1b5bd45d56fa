"""Data pipeline throughput: preprocessing (slices/s) and random-access Dataset reads (samples/s).

    python benchmarks/data_pipeline.py                       # 360-subject phantom (M&Ms-2 size)
    python benchmarks/data_pipeline.py --subjects 20         # a quick look
    python benchmarks/data_pipeline.py --source ../shared/data/acdc/training
    python benchmarks/data_pipeline.py --store data/processed/x.h5   # Dataset part only

The phantom is generated once into ``data/raw/phantom<N>`` (the folder the configs use) and
reused. The store is written to a temporary folder and deleted afterwards unless ``--keep``.

What is timed:
- preprocess: the whole ``preprocess()`` call (find cases, load, normalise, crop, Canny, write,
  rename), wall clock, with the configured worker pool;
- Dataset: ``--samples`` random indices (uniform, with replacement), read one by one with
  ``ds[i]``, and through a DataLoader (batch 32, random sampler) with 0 and 2 workers, counting
  samples out of the loader (collate included, worker start-up excluded by a warm-up batch);
  for expanded items (the default) and compact ones (``expand=False``, expanded per batch by
  ``expand_batch`` on the training device), each for the HDF5-backed and ``in_memory`` Dataset;
- filters: random single-slice reads of each array under each HDF5 filter (the table in
  ``mmldm/data/store.py``).

Targets on the 2-core development machine: the 360-subject preprocess under 2 minutes, the
Dataset at least 2,000 samples/s. Benchmarks print; they never assert (timings vary with load).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mmldm.data.dataset import CardiacSliceDataset, expand_batch  # noqa: E402
from mmldm.data.explore import read_rate  # noqa: E402
from mmldm.data.preprocess import DataConfig, preprocess  # noqa: E402


def ensure_phantom(subjects: int, folder: Path) -> Path:
    if not (folder / "dataset_information.csv").exists():
        from mmldm.data.phantom import write_phantom

        print(f"generating a {subjects}-subject phantom in {folder} (once) ...", flush=True)
        t = time.perf_counter()
        write_phantom(folder, subjects, seed=0, size=256)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def time_preprocess(source: Path, fmt: str, store: Path, workers: int | None) -> tuple[int, float]:
    t = time.perf_counter()
    summary = preprocess(source, store, DataConfig(workers=workers), format=fmt, progress=False)
    seconds = time.perf_counter() - t
    print(summary)
    return summary.n_slices, seconds


def loader_rate(ds, samples: int, workers: int, batch: int = 32, expand: bool = False) -> float:
    sampler = RandomSampler(
        ds, replacement=True, num_samples=samples + batch, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    next(it)  # warm-up: workers started, files opened
    t, n = time.perf_counter(), 0
    for b in it:
        if expand:
            b = expand_batch(b)
        n += len(b["index"])
    return n / (time.perf_counter() - t)


def filter_table(store: Path, n: int = 300, reads: int = 1500) -> list[tuple[str, str, float, float]]:
    """(array, filter, kB per slice, microseconds per random read) for each array and filter."""
    rows = []
    with h5py.File(store, "r") as f:
        arrays = {k: f[k][: min(n, len(f[k]))] for k in ("image", "label", "edge")}
    idx = np.random.default_rng(0).integers(0, len(arrays["image"]), reads)
    with tempfile.TemporaryDirectory() as tmp:
        for name, arr in arrays.items():
            for label, kw in (
                ("none", {}),
                ("lzf", {"compression": "lzf"}),
                ("gzip 1", {"compression": "gzip", "compression_opts": 1}),
                ("gzip 1 + shuffle", {"compression": "gzip", "compression_opts": 1, "shuffle": True}),
            ):
                path = Path(tmp) / "f.h5"
                with h5py.File(path, "w") as f:
                    f.create_dataset("a", data=arr, chunks=(1,) + arr.shape[1:], **kw)
                with h5py.File(path, "r") as f:
                    ds = f["a"]
                    t = time.perf_counter()
                    for i in idx:
                        ds[i]
                    us = (time.perf_counter() - t) / reads * 1e6
                rows.append((f"{name} {arr.dtype}", label, path.stat().st_size / len(arr) / 1e3, us))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=360, help="phantom size (M&Ms-2: 360)")
    p.add_argument("--source", type=Path, help="a real dataset folder instead of the phantom")
    p.add_argument("--format", default="auto")
    p.add_argument("--store", type=Path, help="skip preprocessing; benchmark this store")
    p.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: every core)")
    p.add_argument("--samples", type=int, default=4000, help="random reads per Dataset measurement")
    p.add_argument("--keep", action="store_true", help="keep the store (printed path)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, h5py {h5py.__version__}")

    tmp = Path(tempfile.mkdtemp(prefix="mmldm-bench-"))
    results = []
    try:
        store = args.store
        if store is None:
            if args.source is not None:
                source, fmt, what = args.source, args.format, args.source.name
            else:
                source = ensure_phantom(args.subjects, REPO / "data" / "raw" / f"phantom{args.subjects}")
                fmt, what = "phantom", f"phantom, {args.subjects} subjects"
            store = tmp / "store.h5"
            n, seconds = time_preprocess(source, fmt, store, args.workers)
            results.append(
                (
                    f"preprocess ({what})",
                    f"{n / seconds:,.0f} slices/s",
                    f"{n} slices in {seconds:.1f} s, {store.stat().st_size / 1e6:.0f} MB",
                )
            )

        for in_memory in (False, True):
            kind = "in_memory" if in_memory else "HDF5"
            t = time.perf_counter()
            ds = CardiacSliceDataset(store, split=None, in_memory=in_memory)
            results.append((f"{kind}: open", f"{time.perf_counter() - t:.2f} s", f"{len(ds)} slices"))
            results.append((f"{kind}: ds[i]", f"{read_rate(ds, args.samples):,.0f} samples/s", "expanded items"))
            aug = CardiacSliceDataset(store, split=None, in_memory=in_memory, augment=True)
            results.append(
                (f"{kind}: ds[i], augment", f"{read_rate(aug, args.samples):,.0f} samples/s", "expanded items")
            )
            compact = CardiacSliceDataset(store, split=None, in_memory=in_memory, expand=False)
            for workers in (0, 2):
                for name, d in (("expanded", ds), ("compact", compact)):
                    rate = loader_rate(d, args.samples, workers)
                    results.append(
                        (f"{kind}: DataLoader {name}", f"{rate:,.0f} samples/s", f"batch 32, {workers} workers")
                    )
            rate = loader_rate(compact, args.samples, 2, expand=True)
            results.append(
                (
                    f"{kind}: DataLoader compact+expand_batch",
                    f"{rate:,.0f} samples/s",
                    "batch 32, 2 workers, one-hot on CPU",
                )
            )
            del ds, aug, compact

        print()
        print(f"{'what':<44}{'rate':>20}   notes")
        for what, rate, note in results:
            print(f"{what:<44}{rate:>20}   {note}")
        print()
        print(f"{'HDF5 array':<16}{'filter':<20}{'kB/slice':>10}{'us/read':>10}")
        for name, filt, kb, us in filter_table(store):
            print(f"{name:<16}{filt:<20}{kb:>10.1f}{us:>10.0f}")
        if args.keep and args.store is None:
            kept = REPO / "data" / "processed" / "benchmark.h5"
            shutil.move(store, kept)
            print(f"\nstore kept at {kept}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

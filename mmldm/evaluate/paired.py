"""Paired generation on held-out slices: each image made from a real slice's own conditions.

For every chosen slice of a split (the validation subjects, never trained on) we take its label
map and an edge map (by ``edges``: the real slice's own Canny edges, ``"image"``, a reconstruction
benchmark; edges drawn from the mask, ``"mask"``, which is all a user with a label map has; or
none, ``"none"``), generate an image from them, and keep the real slice beside it, so that
paired metrics (SSIM, PSNR, NMSE), anatomy Dice against the conditioning mask, and distribution
metrics can all be computed on the same set:

    result = generate_paired(ldm, store, split="val", n=128, sampler=..., guidance=...)
    result["generated"], result["real"]   (N, 1, H, W) in [-1, 1]
    result["label"]                        (N, H, W) canonical masks the images were asked for
    result["meta"]                         subject, view, phase, pathology ... per image

Everything is seeded: the same slices, the same noise for the same seed, whatever the batch.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from mmldm.data.condition import mask_edges
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.diffusion.base_sampler import SamplerConfig
from mmldm.diffusion.guidance import GuidanceConfig
from mmldm.errors import check_terminated
from mmldm.inference import LatentDiffusion
from mmldm.progress import tqdm

EDGE_SOURCES = ("image", "mask", "none")  # where the condition's edge channel comes from


def pick_indices(n_total: int, n: int | None) -> np.ndarray:
    """``n`` evenly spread dataset positions (all of them when ``n`` is None or too large)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def generate_paired(
    ldm: LatentDiffusion,
    store_path: str | Path,
    split: str = "val",
    n: int | None = None,
    sampler: SamplerConfig | None = None,
    guidance: GuidanceConfig | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    indices: np.ndarray | None = None,
    edges: str = "image",
) -> dict:
    """Generate one image per chosen slice of ``split`` from that slice's conditions.

    ``ldm`` is the loaded model (it samples on its own device). ``sampler``/``guidance`` default
    to the checkpoint's profile. The slices are ``n`` evenly spread ones (:func:`pick_indices`), or
    exactly the dataset positions ``indices`` when given (e.g. a subset of another run's slices).
    The batch starting at position ``start`` of that list is sampled with seed ``seed + start``,
    so the same list, seed and ``batch_size`` give the same images. ``edges`` (one of
    :data:`EDGE_SOURCES`) says what fills the edge channel; ``result["cond"]`` holds what was given.
    """
    if edges not in EDGE_SOURCES:
        raise ValueError(f"edges must be one of {', '.join(EDGE_SOURCES)}, got {edges!r}")
    sampler = sampler or ldm.config.sampler
    guidance = guidance or ldm.config.guidance
    ds = CardiacSliceDataset(store_path, split=split)
    if len(ds) == 0:
        raise ValueError(f"{store_path}: no slices in split {split!r}")
    if indices is None:
        idx = pick_indices(len(ds), n)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(ds):
            raise ValueError(f"{store_path}: indices must be positions in the {len(ds)} {split!r} slices")
    gen, real, label, cond_all = [], [], [], []
    seconds = 0.0
    bar = tqdm(
        range(0, len(idx), batch_size), desc=f"generating {len(idx)} {split} slices", disable=not progress, leave=False
    )
    for start in bar:
        check_terminated()
        items = [ds[int(i)] for i in idx[start : start + batch_size]]
        cond = torch.stack([it["cond"] for it in items])
        if edges == "mask":
            drawn = [mask_edges(it["label"].numpy(), ldm.config.data) for it in items]
            cond[:, 0] = torch.from_numpy(np.stack(drawn)).float()
        elif edges == "none":
            cond[:, 0] = 0
        view = torch.stack([torch.as_tensor(it["view"]) for it in items])
        t0 = time.perf_counter()
        images = ldm.sample(cond, view, sampler=sampler, guidance=guidance, seed=seed + start)
        seconds += time.perf_counter() - t0
        gen.append(images)
        real.append(torch.stack([it["image"] for it in items]))
        label.append(torch.stack([it["label"] for it in items]))
        cond_all.append(cond)
    meta = {k: np.asarray(v)[idx] for k, v in ds.meta.items()}
    return {
        "generated": torch.cat(gen),
        "real": torch.cat(real),
        "label": torch.cat(label),
        "cond": torch.cat(cond_all),
        "meta": meta,
        "indices": idx,
        "seconds_per_image": seconds / len(idx),
        "sampler": dataclasses.asdict(sampler),
        "guidance": dataclasses.asdict(guidance),
        "edges": edges,
    }


def saturated_fraction(images: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of images that are blown out or blank: |mean| > ``level`` or std < 0.02.

    Images are in [-1, 1]; a real normalised slice has a mean near -0.3 and std near 0.4. The
    failure mode this catches (all-white, all-black, flat) is one a small LDM falls into.
    """
    flat = images.reshape(len(images), -1)
    bad = (flat.mean(1).abs() > level) | (flat.std(1) < 0.02)
    return float(bad.float().mean())

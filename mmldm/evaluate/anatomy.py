"""Anatomy compliance: does a generated image show the anatomy it was asked for?

The generator is given a label map ``M`` (and edges) and returns an image. A segmenter trained
on real training images only (models/segmenter.py, train/segmenter.py) segments that image into
``P``; the Dice of ``P`` against ``M``, class by class, measures compliance:

    Dice_c(P, M) = 2 |P_c ∩ M_c| / (|P_c| + |M_c|),     P_c = {pixels of P labelled c}

for c in LV (1), myocardium (2), RV (3). The same segmenter's Dice on the *real* held-out images
against their own masks is the ceiling: generated images cannot be judged more compliant than
real ones by a judge that errs on real ones too.

**Empty-empty convention.** When a class is absent from both P and M (a basal slice without
RV, an LA view without it) Dice is 0/0. We return NaN for that class of that image: it is
*excluded* from means (``metrics.summarise`` counts n without it), not scored 1, which would
inflate every score by the slices where there was nothing to get right. A class present in only
one of P and M scores 0. ``dice_fg`` is the mean of an image's non-NaN class Dice values.
"""

from __future__ import annotations

import numpy as np
import torch

from mmldm.models.segmenter import Segmenter

DICE_CLASSES = {1: "LV", 2: "MYO", 3: "RV"}  # canonical labels (data/sample.py), short names


def dice_per_class(
    pred: torch.Tensor, target: torch.Tensor, classes: tuple[int, ...] = tuple(DICE_CLASSES)
) -> torch.Tensor:
    """Dice of each class for each image: label maps (N, H, W) -> (N, len(classes)) float64.

    NaN where the class is absent from both maps (see the module docstring).
    """
    if pred.shape != target.shape:
        raise ValueError(f"label maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    pred, target = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    out = torch.empty(len(pred), len(classes), dtype=torch.float64)
    for j, c in enumerate(classes):
        p, t = pred == c, target == c
        inter = (p & t).sum(1).double()
        total = (p.sum(1) + t.sum(1)).double()
        out[:, j] = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan)
    return out


@torch.inference_mode()
def segment(segmenter: Segmenter, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Label maps (N, H, W) int64 of images (N, 1, H, W) in [-1, 1], in batches, on the CPU."""
    segmenter.eval()
    device = next(segmenter.parameters()).device
    return torch.cat(
        [
            segmenter.predict(images[i : i + batch_size].to(device).float()).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def anatomy_dice(
    segmenter: Segmenter, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Segment ``images`` and score them against ``masks`` (N, H, W) canonical labels.

    Returns per-image arrays ``{"dice_LV", "dice_MYO", "dice_RV", "dice_fg"}`` (NaN where the
    class is in neither map), ready for ``metrics.metric_table`` / ``metrics.summarise``. Call it
    on generated images with the masks they were generated from, and on the real held-out images
    with their own masks for the ceiling.
    """
    if masks.ndim == 4:  # a one-hot (N, 4, H, W) mask -> its label map
        if masks.shape[1] != 4:
            raise ValueError(
                f"a one-hot mask has 4 channels (BG, LV, MYO, RV), got {masks.shape[1]}; "
                "pass cond[:, 1:] (the mask part of a condition), not the whole condition"
            )
        masks = masks.argmax(dim=1)
    dice = dice_per_class(segment(segmenter, images, batch_size), masks.long().cpu())
    out = {f"dice_{name}": dice[:, j].numpy() for j, name in enumerate(DICE_CLASSES.values())}
    present = ~torch.isnan(dice)
    fg = torch.where(present, dice, 0.0).sum(1) / present.sum(1)  # 0/0 -> NaN: no class anywhere
    out["dice_fg"] = fg.numpy()
    return out

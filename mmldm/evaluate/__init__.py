"""Evaluation: how good, how faithful and how original are the generated images.

    metrics.py       paired fidelity per image: SSIM, PSNR, NMSE; tables and mean ± std per group
    fid.py           FID and KID (torchmetrics) on standard Inception features or in-domain
                     segmenter features; the Inception weights are read from a local file only
    anatomy.py       Dice per class (LV, MYO, RV) of the segmenter's output against the condition mask
    memorisation.py  nearest training vs nearest held-out image: the copy ratio
    spectrum.py      radially averaged power spectra and the high-frequency power ratio (texture)
    reconstruction.py the VQ-VAE's reconstructions: SSIM / PSNR / NMSE, codebook usage, realism
    paired.py        each held-out slice generated from its own mask and edges (paired sets)
    settings.py      the sampler / condition variants and the ``evaluation`` config section
    run.py           the whole evaluation of a checkpoint -> metrics.json, samples.pt, per_image.csv
                     (``python -m mmldm evaluate``; import it from mmldm.evaluate.run)

The segmenter these use is models/segmenter.py, trained by train/segmenter.py.
"""

from mmldm.evaluate.anatomy import anatomy_dice, dice_per_class, segment
from mmldm.evaluate.fid import (
    INCEPTION_NAME,
    SEGMENTER_NAME,
    InceptionFeatures,
    SegmenterFeatures,
    distribution_metrics,
    extract_features,
    fid_from_features,
    find_inception_weights,
    kid_from_features,
    load_inception,
)
from mmldm.evaluate.memorisation import memorisation_check, memorisation_ratios, nearest_neighbours, ratio_summary
from mmldm.evaluate.metrics import metric_table, nmse, paired_metrics, summarise

__all__ = [
    "INCEPTION_NAME",
    "SEGMENTER_NAME",
    "InceptionFeatures",
    "SegmenterFeatures",
    "anatomy_dice",
    "dice_per_class",
    "distribution_metrics",
    "extract_features",
    "fid_from_features",
    "find_inception_weights",
    "kid_from_features",
    "load_inception",
    "memorisation_check",
    "memorisation_ratios",
    "metric_table",
    "nearest_neighbours",
    "nmse",
    "paired_metrics",
    "ratio_summary",
    "segment",
    "summarise",
]

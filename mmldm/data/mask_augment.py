"""New label maps from old ones: a random affine and a smooth elastic warp, kept only if the heart stays a heart.

    rng = np.random.default_rng([seed, j, m])
    result = augment_mask(label, rng)                    # label: (H, W) uint8, canonical 0..3
    result.label        the deformed map (None when every try was rejected)
    result.rejects      tries rejected before it, and why (``result.reasons``)

``mmldm synthesize --augment-masks M`` draws M such maps per source mask, so that the diffusion
model is asked for shapes no dataset holds. The warp, one per try::

    p_src = c + A^-1 (p - c - t) + e(p)         for every output pixel p (x right, y down)
    A     = R(theta) . Shear(phi) . s            rotation, shear along x, isotropic scale
    c     = centre of the heart's bounding box   so the heart turns in place and stays in frame
    t     ~ U(-translate, translate) * size      a small shift, both axes
    e(p)  = smooth random field                  uniform noise, Gaussian-blurred (sigma =
                                                  elastic_sigma * size), scaled so that its
                                                  largest displacement is elastic_alpha * size

sampled with nearest neighbour (``cv2.remap(INTER_NEAREST)``), outside the map as background.
Nearest neighbour keeps every pixel a valid class, but it can cut a thin myocardium ring, chip a
ventricle into pieces or shrink a small class away; so each try is cleaned and checked.

Clean-up. A class that the source holds as ``n`` connected components (8-connected; one for a
normal slice) keeps its ``n`` largest in the result; the pixels of the pieces cut off take the
label of the nearest kept pixel (``scipy.ndimage.distance_transform_edt``).

Validity, each against the source map (a rule the source itself breaks is not asked of the result):

1. every class of the source is there, and none that it lacks;
2. each class keeps between ``1 / max_area_change`` and ``max_area_change`` times its area;
3. the pieces cut off in clean-up were at most ``max_fragment`` of that class's area;
4. the LV is enclosed by myocardium: of the pixel borders between the LV and another class,
   the share that is *not* myocardium (background or RV) may exceed the source's share by at
   most ``lv_contact_slack``. A complete ring stays complete, give or take a pixel or two;
   a basal slice whose ring is open may stay as open as it was;
5. the RV lies beside the myocardium: if the source's RV touches the myocardium, so does the result's;
6. the heart stays in the frame: no foreground on the map's border unless the source had some.

A rejected try is drawn again from the same generator, up to ``max_tries`` times; a mask whose
tries all fail is given up (``label`` None). The generator alone decides the result, so a seed
reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from mmldm.data.crop import heart_center
from mmldm.data.schema import NUM_CLASSES

LV, MYO, RV = 1, 2, 3


@dataclass(frozen=True)
class MaskAugmentConfig:
    """How far a mask may be warped, and how strictly the result is checked (see the module docstring)."""

    rotation_deg: float = 15.0  # theta ~ U(-rotation_deg, rotation_deg)
    scale: tuple[float, float] = (0.9, 1.1)  # s ~ U(scale)
    shear_deg: float = 5.0  # phi ~ U(-shear_deg, shear_deg)
    translate: float = 0.04  # t ~ U(-translate, translate) * size, per axis
    elastic_alpha: float = 0.03  # largest elastic displacement, as a fraction of the side
    elastic_sigma: float = 0.08  # smoothness of the elastic field, as a fraction of the side
    max_tries: int = 10  # tries per mask before it is given up
    max_area_change: float = 1.6  # rule 2
    max_fragment: float = 0.1  # rule 3
    lv_contact_slack: float = 0.02  # rule 4

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must be 0 < low <= high, got {self.scale}")
        if self.max_tries < 1 or self.max_area_change < 1 or not 0 <= self.max_fragment <= 1:
            raise ValueError("max_tries >= 1, max_area_change >= 1 and max_fragment in [0, 1] are needed")


@dataclass
class Augmented:
    """One augmented mask: ``label`` (None when every try was rejected), the rejected tries and why."""

    label: np.ndarray | None
    rejects: int = 0
    reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The warp
# ---------------------------------------------------------------------------------------------


def random_warp(shape: tuple[int, int], center: tuple[float, float], rng: np.random.Generator, cfg: MaskAugmentConfig):
    """(map_x, map_y) float32 (H, W) for ``cv2.remap``: the source coordinates of each output pixel."""
    H, W = shape
    size = max(H, W)
    theta = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    phi = np.deg2rad(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    s = rng.uniform(*cfg.scale)
    t = rng.uniform(-cfg.translate, cfg.translate, 2) * size  # (x, y)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shear = np.array([[1.0, np.tan(phi)], [0.0, 1.0]])
    inverse = np.linalg.inv(rot @ shear * s)
    cy, cx = center
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    dx, dy = xx - cx - t[0], yy - cy - t[1]
    src_x = inverse[0, 0] * dx + inverse[0, 1] * dy + cx
    src_y = inverse[1, 0] * dx + inverse[1, 1] * dy + cy
    if cfg.elastic_alpha > 0:
        sigma = max(cfg.elastic_sigma * size, 0.5)
        for coord in (src_x, src_y):
            noise = cv2.GaussianBlur(rng.uniform(-1, 1, (H, W)), (0, 0), sigma)
            peak = np.abs(noise).max()
            if peak > 0:
                coord += noise * (cfg.elastic_alpha * size / peak)
    return src_x.astype(np.float32), src_y.astype(np.float32)


def warp_label(label: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """``label`` sampled at (map_x, map_y) with nearest neighbour; outside it is background."""
    return cv2.remap(
        np.ascontiguousarray(label, np.uint8),
        map_x,
        map_y,
        interpolation=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


# ---------------------------------------------------------------------------------------------
# Clean-up and the rules
# ---------------------------------------------------------------------------------------------

_EIGHT = np.ones((3, 3), bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean map: (labels, count)."""
    return ndimage.label(mask, structure=_EIGHT)


def keep_largest(label: np.ndarray, counts: dict[int, int]) -> tuple[np.ndarray, dict[int, float]]:
    """Keep the ``counts[c]`` largest components of each class c (default 1); the pixels of the
    pieces cut off take the label of the nearest kept pixel. Returns (map, {c: share of c's
    pixels cut off})."""
    out = label.copy()
    removed = np.zeros(label.shape, bool)
    share = {}
    for c in range(1, NUM_CLASSES):
        comp, n = components(label == c)
        keep = max(counts.get(c, 1), 1)
        if n <= keep:
            share[c] = 0.0
            continue
        sizes = np.bincount(comp.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:keep] + 1
        cut = (comp > 0) & ~np.isin(comp, kept)
        removed |= cut
        share[c] = float(cut.sum() / max(sizes.sum(), 1))
    if removed.any():
        _, (rows, cols) = ndimage.distance_transform_edt(removed, return_indices=True)
        out[removed] = label[rows[removed], cols[removed]]
    return out, share


def contacts(label: np.ndarray) -> np.ndarray:
    """(4, 4) counts of 4-neighbour pixel borders between classes a and b (symmetric, diagonal 0)."""
    table = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for a, b in ((label[1:, :], label[:-1, :]), (label[:, 1:], label[:, :-1])):
        diff = a != b
        np.add.at(table, (a[diff], b[diff]), 1)
    return table + table.T


def lv_foreign_share(table: np.ndarray) -> float:
    """Of the LV's borders with other classes, the share that is not myocardium (0 when none)."""
    total = table[LV].sum()
    return float((total - table[LV, MYO]) / total) if total else 0.0


def _counts(label: np.ndarray) -> dict[int, int]:
    return {c: components(label == c)[1] for c in range(1, NUM_CLASSES)}


def _on_border(label: np.ndarray) -> bool:
    return bool(label[0].any() or label[-1].any() or label[:, 0].any() or label[:, -1].any())


def check_anatomy(
    label: np.ndarray,
    source: np.ndarray,
    cfg: MaskAugmentConfig | None = None,
    cut_share: dict[int, float] | None = None,
) -> list[str]:
    """The rules ``label`` breaks, measured against ``source`` (an empty list: valid).

    ``cut_share``: what :func:`keep_largest` cut off each class (rule 3; omitted: not checked).
    """
    cfg = cfg or MaskAugmentConfig()
    problems = []
    names = {LV: "LV", MYO: "myocardium", RV: "RV"}
    area = np.bincount(label.ravel(), minlength=NUM_CLASSES)
    area_src = np.bincount(source.ravel(), minlength=NUM_CLASSES)
    for c, name in names.items():
        if (area[c] > 0) != (area_src[c] > 0):
            problems.append(f"{name} {'vanished' if area_src[c] else 'appeared'}")
        elif area_src[c] and not 1 / cfg.max_area_change <= area[c] / area_src[c] <= cfg.max_area_change:
            problems.append(f"{name} area changed {area[c] / area_src[c]:.2f}x")
        if cut_share and cut_share.get(c, 0.0) > cfg.max_fragment:
            problems.append(f"{name} broke into pieces ({cut_share[c]:.0%} cut off)")
    table, table_src = contacts(label), contacts(source)
    if area[LV] and lv_foreign_share(table) > lv_foreign_share(table_src) + cfg.lv_contact_slack:
        problems.append(
            f"LV not enclosed by myocardium ({lv_foreign_share(table):.0%} of its border, source "
            f"{lv_foreign_share(table_src):.0%})"
        )
    if table_src[RV, MYO] > 0 and area[RV] and table[RV, MYO] == 0:
        problems.append("RV no longer beside the myocardium")
    if _on_border(label) and not _on_border(source):
        problems.append("heart left the frame")
    return problems


def augment_mask(label: np.ndarray, rng: np.random.Generator, cfg: MaskAugmentConfig | None = None) -> Augmented:
    """A warped, cleaned, checked copy of ``label`` (H, W) canonical; tries are redrawn from ``rng``
    until one is valid or ``cfg.max_tries`` were rejected (then ``label`` is None)."""
    cfg = cfg or MaskAugmentConfig()
    label = np.asarray(label, np.uint8)
    center = heart_center(label) or ((label.shape[0] - 1) / 2.0, (label.shape[1] - 1) / 2.0)
    counts = _counts(label)
    result = Augmented(None)
    for _ in range(cfg.max_tries):
        warped = warp_label(label, *random_warp(label.shape, center, rng, cfg))
        cleaned, cut = keep_largest(warped, counts)
        problems = check_anatomy(cleaned, label, cfg, cut)
        if not problems:
            result.label = cleaned
            return result
        result.rejects += 1
        result.reasons.append("; ".join(problems))
    return result

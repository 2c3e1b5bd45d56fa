"""One phantom subject's anatomy as a handful of numbers, drawn at random per pathology.

The phantom's heart is a truncated ellipsoid: the left ventricle (LV) is a bullet, ``length``
millimetres from the base (the mitral valve plane) to the epicardial apex, whose short-axis
sections are rings of cavity radius ``r_endo`` and wall thickness ``wall`` at their widest; the
right ventricle (RV) is a crescent wrapped around the septal side, shorter than the LV. Outlines
are made irregular by smooth random radial "wobbles" (a few Fourier harmonics), blended from the
base to the apex.

End-systole (ES) is derived from end-diastole (ED) the way the heart contracts: the base moves
towards the apex (``shortening``), each short-axis cavity keeps ``es_area`` of its ED area, and
the myocardium keeps (a little more than) its area, so the wall thickens.

Pathologies (M&Ms-2 disease codes; the phantom uses four of the seven):

- ``NOR`` normal.
- ``LV``  dilated left ventricle: large cavity, thin wall, long LV, poor contraction (low EF).
- ``HCM`` hypertrophic cardiomyopathy: thick wall (thickest at the septum), small cavity that
          nearly empties at ES.
- ``TRI`` tricuspid regurgitation, standing in for the RV-dilating codes (M&Ms-2 also has
          ``FALL`` and ``CIA``): large RV reaching the apex, septum flattened towards the LV.

``ARR`` (arrhythmogenic cardiomyopathy) is not simulated. All sizes are in millimetres; angles
are radians in image coordinates (x right, y down: pi points left, 3 pi / 2 points up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmldm.data.phantom.shapes import random_wobble

DISEASES = ("NOR", "LV", "HCM", "TRI")
DISEASE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)

DEG = np.pi / 180


@dataclass(frozen=True)
class Heart:
    """Ventricles at end-diastole, and how they contract."""

    r_endo: float  # widest LV cavity radius
    wall: float  # LV wall thickness
    septal_bulge: float  # extra relative wall thickness facing the RV (asymmetric HCM)
    flattening: float  # how far a pressure-loaded RV pushes the septum into the LV (0..~0.2)
    length: float  # base to epicardial apex
    es_area: float  # ES / ED cavity area in a short-axis section (about 1 - ejection fraction)
    es_myo: float  # ES / ED myocardial area in a section (> 1: the wall thickens)
    shortening: float  # fraction of ``length`` the base descends at ES
    rv_reach: float  # RV free wall distance beyond the LV epicardium, in LV epicardial radii
    rv_span: float  # half-angle (radians) of the LV circumference the RV wraps around
    rv_length: float  # fraction of the LV length the RV covers
    rv_es: float  # ES / ED RV reach
    papillary: float  # papillary muscle radius
    epi_fat: float  # epicardial fat thickness around the heart
    wobble_endo: np.ndarray  # (2, K, 2): base and apex harmonic coefficients
    wobble_wall: np.ndarray
    wobble_rv: np.ndarray

    @property
    def r_epi(self) -> float:
        return self.r_endo + self.wall


@dataclass(frozen=True)
class Torso:
    """The body around the heart, relative to the heart's position in each view."""

    half_width: float  # body ellipse semi-axes
    half_height: float
    fat: float  # subcutaneous fat thickness (women: a little more)
    muscle: float  # chest wall muscle thickness
    liver: float  # liver size (its ellipse semi-axis)
    arms: bool  # upper arms beside the chest (often cut by the field of view)
    wobble: np.ndarray  # body outline irregularity
    fat_wobble: np.ndarray  # how the fat and muscle thickness vary around the body
    muscle_wobble: np.ndarray
    back: float  # the back lies flat on the table: its distance from the centre, in half-heights


@dataclass(frozen=True)
class ShortAxisView:
    """Where the short-axis stack cuts the heart, and how the heart sits in its images."""

    positions: tuple[float, ...]  # slice distances below the ED base (negative: above it)
    gap: float  # slice spacing
    centre: tuple[float, float]  # LV axis position at mid-ventricle (image mm)
    drift: tuple[float, float]  # how far the LV axis moves from base to apex
    rv_angle: float  # direction LV centre -> RV
    body_offset: tuple[float, float]  # body centre relative to the LV centre
    body_tilt: float


@dataclass(frozen=True)
class FourChamberView:
    """Where the heart sits in the 4-chamber long-axis image."""

    base: tuple[float, float]  # mitral annulus centre (image mm)
    axis_angle: float  # direction base -> apex
    la_size: float  # left atrium semi-axis
    ra_size: float  # right atrium semi-axis
    tricuspid_offset: float  # how much more apical the tricuspid annulus lies
    body_offset: tuple[float, float]  # body centre relative to the mitral annulus
    body_tilt: float


@dataclass(frozen=True)
class Anatomy:
    disease: str
    heart: Heart
    torso: Torso
    short_axis: ShortAxisView
    four_chamber: FourChamberView


def sample_anatomy(rng: np.random.Generator, disease: str, female: bool = False) -> Anatomy:
    """Draw one subject's anatomy for ``disease`` (one of :data:`DISEASES`)."""
    if disease not in DISEASES:
        raise ValueError(f"unknown phantom disease {disease!r}; expected one of {DISEASES}")
    heart = _sample_heart(rng, disease, female)
    torso = _sample_torso(rng, female)
    return Anatomy(
        disease=disease,
        heart=heart,
        torso=torso,
        short_axis=_sample_short_axis(rng, heart, torso),
        four_chamber=_sample_four_chamber(rng, heart, disease),
    )


def _sample_heart(rng: np.random.Generator, disease: str, female: bool) -> Heart:
    u = rng.uniform
    scale = u(0.92, 1.08) * (0.93 if female else 1.0)  # body size
    # Normal values first; each pathology then overrides what it changes.
    p = dict(
        r_endo=u(22, 27),
        wall=u(6.5, 9.0),
        septal_bulge=0.0,
        flattening=0.0,
        length=u(85, 100),
        es_area=u(0.33, 0.48),
        es_myo=u(1.05, 1.2),
        shortening=u(0.12, 0.18),
        rv_reach=u(0.7, 0.95),
        rv_span=u(1.4, 1.65),
        rv_length=u(0.75, 0.88),
        rv_es=u(0.5, 0.65),
    )
    if disease == "LV":
        p.update(
            r_endo=u(31, 37),
            wall=u(5.0, 6.5),
            length=u(100, 115),
            es_area=u(0.72, 0.86),
            es_myo=u(1.0, 1.06),
            shortening=u(0.03, 0.07),
            rv_reach=u(0.5, 0.75),
        )
    elif disease == "HCM":
        p.update(
            r_endo=u(16, 21),
            wall=u(13, 18),
            septal_bulge=u(0.2, 0.6),
            length=u(80, 92),
            es_area=u(0.15, 0.28),
            es_myo=u(1.05, 1.15),
            shortening=u(0.08, 0.13),
        )
    elif disease == "TRI":
        p.update(
            r_endo=u(19, 24),
            flattening=u(0.1, 0.2),
            rv_reach=u(1.2, 1.6),
            rv_span=u(1.55, 1.8),
            rv_length=u(0.88, 0.97),
            rv_es=u(0.72, 0.85),
        )
    for key in ("r_endo", "wall", "length"):
        p[key] *= scale
    return Heart(
        **p,
        papillary=u(3.0, 4.5) * scale,
        epi_fat=u(1.0, 3.5),
        wobble_endo=np.stack([random_wobble(rng, 0.04), random_wobble(rng, 0.06)]),
        wobble_wall=np.stack([random_wobble(rng, 0.08), random_wobble(rng, 0.10)]),
        wobble_rv=np.stack([random_wobble(rng, 0.06), random_wobble(rng, 0.08)]),
    )


def _sample_torso(rng: np.random.Generator, female: bool) -> Torso:
    u = rng.uniform
    return Torso(
        half_width=u(190, 260),
        half_height=u(95, 125),
        fat=u(5, 14) + (5 if female else 0),
        muscle=u(10, 18),
        liver=u(100, 135),
        arms=bool(rng.random() < 0.5),
        wobble=random_wobble(rng, 0.04, harmonics=5),
        fat_wobble=random_wobble(rng, 0.5, harmonics=5),
        muscle_wobble=random_wobble(rng, 0.25, harmonics=5),
        back=u(0.8, 0.92),
    )


def _sample_short_axis(rng: np.random.Generator, heart: Heart, torso: Torso) -> ShortAxisView:
    u = rng.uniform
    length = heart.length
    n_above = int(rng.integers(0, 3))  # slices above the base: atria, outflow tracts
    n_below = int(rng.integers(0, 2))  # a slice past the apex
    n_lv = int(round(length / u(8.5, 10.5)))
    total = int(np.clip(n_above + n_lv + n_below, 8, 12))
    n_lv = max(6, total - n_above - n_below)
    total = n_above + n_lv + n_below
    # The last LV slice lands about 0.3 gaps short of the apex (it shows the apical cap).
    offset = u(0.15, 0.45)
    gap = length / (n_lv - 1 + offset + 0.3)
    positions = tuple(float((k - n_above + offset) * gap) for k in range(total))
    front = torso.half_height - torso.fat - 0.9 * torso.muscle - heart.r_epi * (1 + 0.5 * heart.rv_reach)
    return ShortAxisView(
        positions=positions,
        gap=float(gap),
        centre=(u(-12, 12), u(-12, 8)),
        drift=(u(-8, 8), u(-8, 8)),
        rv_angle=u(195, 250) * DEG,
        # The heart lies against the chest wall: the body centre is as far below the LV axis
        # as the anterior chest wall is above the RV.
        body_offset=(u(-45, -15), front + u(0, 8)),
        body_tilt=u(-10, 10) * DEG,
    )


def _sample_four_chamber(rng: np.random.Generator, heart: Heart, disease: str) -> FourChamberView:
    u = rng.uniform
    axis = u(60, 105) * DEG
    # Put the middle of the heart (a little beyond the valves) near the image centre.
    centre = np.array([u(-12, 12), u(-12, 12)])
    direction = np.array([np.cos(axis), np.sin(axis)])
    base = centre - 0.3 * heart.length * direction
    la = u(21, 27) * (1.2 if disease in ("LV", "HCM") else 1.0)
    ra = u(20, 26) * (1.3 if disease == "TRI" else 1.0)
    return FourChamberView(
        base=(float(base[0]), float(base[1])),
        axis_angle=float(axis),
        la_size=la,
        ra_size=ra,
        tricuspid_offset=u(4, 9),
        body_offset=(u(-25, 5), u(-10, 20)),
        body_tilt=(axis - 90 * DEG) * 0.5 + u(-8, 8) * DEG,
    )

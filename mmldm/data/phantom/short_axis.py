"""Short-axis slices of the phantom heart: label maps and the tissue layers behind them.

A short-axis slice at distance ``d`` below the end-diastolic base cuts the LV as a ring. With
``t = d / length`` the normalised long-axis position (0 base, 1 epicardial apex):

- the cavity and epicardial radii follow half-ellipse profiles, widest a quarter of the way
  down, a little narrower at the base, closing at the apex; the cavity closes first, so the
  last slices show an apical cap of myocardium only;
- the RV is a crescent on the septal side whose free wall reaches ``rv_reach`` LV radii out
  and which fades out ``rv_length`` of the way to the apex; at the base it turns towards the
  chest wall (the outflow tract);
- slices above the base cut the atria and the great vessels (no label), slices past the apex
  cut the liver and chest (no label).

At end-systole the base has descended, so the same slice sits further down the ventricle
(``t`` is measured on the shortened heart), and each section is the ED section contracted.

Labels are set first, from the same signed distances the image weights come from, so the drawn
anatomy and the labels agree pixel for pixel (papillary muscles are labelled LV blood pool, as
in M&Ms-2 and ACDC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmldm.data.phantom.heart import Anatomy, Heart
from mmldm.data.phantom.shapes import Grid, Layer, disks, ellipse
from mmldm.data.phantom.torso import TorsoDrawer, TorsoPlacement

WIDEST = 0.25  # normalised long-axis position of the widest section
BASE_NARROWING = 0.35  # the base is sqrt(1 - 0.35) ~ 80 % of the widest section


@dataclass(frozen=True)
class Section:
    """The LV and RV in one short-axis slice (radii before angular shape changes)."""

    t: float  # normalised long-axis position on this phase's heart
    r_endo: float  # mean cavity radius (0 past the cavity's apex)
    r_epi: float  # mean epicardial radius
    rv_reach: float  # RV free wall distance beyond the epicardium (0: no RV)
    rv_span: float  # half-angle the RV wraps around
    rv_angle: float  # direction of the RV


def profile(t: float, end: float) -> float:
    """Relative radius of a half-ellipsoid that is widest at WIDEST and closes at ``end``."""
    if t < 0 or t >= end:
        return 0.0
    if t <= WIDEST:
        return float(np.sqrt(1 - BASE_NARROWING * ((WIDEST - t) / WIDEST) ** 2))
    return float(np.sqrt(max(0.0, 1 - ((t - WIDEST) / (end - WIDEST)) ** 2)))


def section(heart: Heart, rv_angle: float, d: float, phase: str) -> Section:
    """The section ``d`` mm below the ED base at ``phase`` ("ED" or "ES")."""
    base = 0.0 if phase == "ED" else heart.shortening * heart.length
    t = (d - base) / (heart.length - base)
    cavity_end = 1 - 0.8 * heart.wall / heart.length
    r_endo = heart.r_endo * profile(t, cavity_end)
    r_epi = heart.r_epi * profile(t, 1.0)
    rv = profile(t / heart.rv_length, 1.0) if t >= 0 else 0.0
    reach = heart.rv_reach * heart.r_epi * rv
    span = heart.rv_span * (0.7 + 0.3 * rv)
    outflow = max(0.0, 1 - t / 0.3)  # towards the base the RV swings up to the outflow tract
    if phase == "ES":
        r_endo_ed = r_endo
        r_endo = np.sqrt(heart.es_area) * r_endo_ed
        r_epi = np.sqrt(r_endo**2 + heart.es_myo * (r_epi**2 - r_endo_ed**2))
        reach *= heart.rv_es
        span *= 0.92
    return Section(t, float(r_endo), float(r_epi), float(reach), float(span), rv_angle + 0.35 * outflow)


class ShortAxisDrawer:
    """Draws every slice of one subject's short-axis stack, both phases."""

    def __init__(self, anatomy: Anatomy, grid: Grid, rng: np.random.Generator):
        self.anatomy, self.grid = anatomy, grid
        view, heart = anatomy.short_axis, anatomy.heart
        cx, cy = view.centre
        bx, by = view.body_offset
        place = TorsoPlacement(
            centre=(cx + bx, cy + by),
            tilt=view.body_tilt,
            anterior=1.5 * np.pi + view.body_tilt,
            liver=(cx + bx - 0.75 * anatomy.torso.half_width, cy + by + 0.25 * anatomy.torso.half_height),
            abdomen=(cx + bx + 0.55 * anatomy.torso.half_width, cy + by + 0.35 * anatomy.torso.half_height),
        )
        self.torso = TorsoDrawer(grid, anatomy.torso, place, rng)
        self.seed = int(rng.integers(2**31))
        # Everything of the heart fits in this box around the LV axis.
        self.reach = heart.r_epi * (1.3 + heart.septal_bulge + 1.3 * heart.rv_reach) + heart.epi_fat + 12

    def centre(self, d: float) -> tuple[float, float]:
        """The LV axis position in a slice (the long axis is not quite perpendicular to it)."""
        view, t = self.anatomy.short_axis, d / self.anatomy.heart.length - 0.5
        return view.centre[0] + view.drift[0] * t, view.centre[1] + view.drift[1] * t

    def torso_layers(self, d: float, rng: np.random.Generator) -> list[Layer]:
        """Everything that does not move between ED and ES: body, lungs, liver, pericardial fat."""
        heart = self.anatomy.heart
        t = d / heart.length
        layers = self.torso.layers(depth=float(np.clip(0.6 + 0.7 * t, 0, 1.3)), rng=rng)
        # Pericardial fat hugging the heart, sized on the ED section (or the atria above it):
        # at ES the heart pulls away from it a little, as a real one does.
        ed = section(heart, self.anatomy.short_axis.rv_angle, d, "ED")
        size = max(ed.r_epi + 0.5 * ed.rv_reach, 1.2 * heart.r_epi if t < 0 else 0.0)
        if size > 0:
            cx, cy = self.centre(d)
            a = self.anatomy.short_axis.rv_angle
            g = self.grid.window(cx, cy, self.reach)
            polar = g.polar(cx + 0.35 * size * np.cos(a), cy + 0.35 * size * np.sin(a))
            radius = polar.ellipse_radius(1.05 * size + 3, 1.0 * size + 3, a)
            radius *= 1 + polar.wobble(heart.wobble_rv[0])
            layers.append(g.layer("mediastinum", polar.inside(radius)))
        return layers

    def heart(self, d: float, phase: str) -> tuple[list[Layer], np.ndarray]:
        """The heart's layers and the label map (uint8, M&Ms order) of one slice."""
        sec = section(self.anatomy.heart, self.anatomy.short_axis.rv_angle, d, phase)
        label = np.zeros((self.grid.size, self.grid.size), np.uint8)
        g = self.grid.window(*self.centre(d), self.reach)
        if sec.t < 0:
            return self._above_base(g, d), label
        if sec.r_epi <= 0:
            return [], label
        return self._ventricles(g, d, sec, phase, label[g.where]), label

    def _ventricles(self, g: Grid, d: float, sec: Section, phase: str, label: np.ndarray) -> list[Layer]:
        heart = self.anatomy.heart
        polar = g.polar(*self.centre(d))
        blend = float(np.clip(sec.t, 0, 1))

        def wobble(coeffs: np.ndarray) -> np.ndarray:
            return 1 + polar.wobble((1 - blend) * coeffs[0] + blend * coeffs[1])

        facing_rv = np.maximum(polar.towards(self.anatomy.short_axis.rv_angle), 0) ** 2
        flattened = 1 - np.float32(heart.flattening) * facing_rv
        r_endo = np.float32(sec.r_endo) * wobble(heart.wobble_endo) * flattened
        r_endo = np.maximum(r_endo, 0)
        wall_wobble = wobble(heart.wobble_wall)
        bulge = 1 + np.float32(heart.septal_bulge) * facing_rv
        wall = np.float32(sec.r_epi - sec.r_endo) * bulge * wall_wobble
        min_wall = max(3.0, 2.0 * g.pixel)  # >= 2 pixels: the ring stays closed on the grid
        r_epi = r_endo + np.maximum(wall, np.float32(min_wall))
        endo, epi = polar.inside(r_endo), polar.inside(r_epi)

        # RV: a bump on the epicardium, full height facing the RV and fading to its two
        # insertion points at +-span; the crescent is what lies outside the LV epicardium.
        c = np.float32(np.cos(sec.rv_span))
        bump = np.clip((polar.towards(sec.rv_angle) - c) / (1 - c), 0, 1) ** np.float32(0.9)
        rv = polar.inside(r_epi + np.float32(sec.rv_reach) * bump * wobble(heart.wobble_rv))

        # Labels: RV first, then myocardium and the LV cavity over it.
        if sec.rv_reach > 0:
            label[rv > 0] = 3
        label[epi > 0] = 2
        label[endo > 0] = 1

        layers = [g.layer("epicardial_fat", np.maximum(epi, rv) + np.float32(heart.epi_fat) * wall_wobble)]
        if sec.rv_reach > 0:
            rv_wall = np.float32(3.0) * np.minimum(1, 4 * bump)  # the RV free wall, where there is an RV
            layers += [g.layer("myocardium", rv + rv_wall), g.layer("blood_rv", rv)]
        layers += [g.layer("myocardium", epi), g.layer("blood", endo)]
        layers += self._papillary(g, d, sec, phase, endo)
        layers += self._trabeculae(g, d, sec, endo)
        return layers

    def _papillary(self, g: Grid, d: float, sec: Section, phase: str, endo: np.ndarray) -> list[Layer]:
        """Two dark papillary muscles in the cavity, mid-ventricle, opposite the septum."""
        heart = self.anatomy.heart
        presence = np.sin(np.pi * (sec.t - 0.3) / 0.55) if 0.3 < sec.t < 0.85 else 0.0
        if presence <= 0 or sec.r_endo < 4:
            return []
        radius = min(heart.papillary * np.sqrt(presence) * (1.2 if phase == "ES" else 1.0), 0.4 * sec.r_endo)
        reach = sec.r_endo - 1.3 * radius
        cx, cy = self.centre(d)
        away = self.anatomy.short_axis.rv_angle + np.pi
        centres = [(cx + reach * np.cos(away + s), cy + reach * np.sin(away + s)) for s in (-0.9, 0.9)]
        weight = disks(g, centres, [radius, radius * 0.85]) * g.soft(endo)
        return [Layer("myocardium", weight, g.where)]

    def _trabeculae(self, g: Grid, d: float, sec: Section, endo: np.ndarray) -> list[Layer]:
        """Small dark muscle bundles along the endocardium. Like the papillary muscles they
        are inside the LV label: manual contours run round them, not along them."""
        if sec.r_endo < 6:
            return []
        rng = np.random.default_rng(int(d * 1000) % 2**32 + self.seed)  # same bundles at ED and ES
        n = int(rng.integers(3, 9))
        angle = rng.uniform(0, 2 * np.pi, n)
        reach = sec.r_endo * rng.uniform(0.85, 0.97, n)
        cx, cy = self.centre(d)
        centres = np.stack([cx + reach * np.cos(angle), cy + reach * np.sin(angle)], 1)
        weight = disks(g, centres, rng.uniform(1.0, 2.2, n)) * g.soft(endo) * np.float32(0.8)
        return [Layer("myocardium", weight, g.where)]

    def _above_base(self, g: Grid, d: float) -> list[Layer]:
        """Atria and great vessels above the valve planes (unlabelled): the left atrium behind,
        the aortic root in the middle, the right atrium to the side and the RV outflow tract
        in front, each a blood pool in a thin dark wall."""
        heart = self.anatomy.heart
        cx, cy = self.centre(d)
        a, r = self.anatomy.short_axis.rv_angle, heart.r_epi
        up = 1.5 * np.pi  # anterior, towards the chest wall

        def at(angle: float, dist: float) -> tuple[float, float]:
            return cx + dist * np.cos(angle), cy + dist * np.sin(angle)

        shapes = [  # (centre, semi-axes, orientation, tissue), painted back to front
            (at(a - 0.9, 1.15 * r), (0.7 * r, 0.55 * r), a, "atrium"),  # right atrium
            (at(up + np.pi + 0.3, 0.45 * r), (0.95 * r, 0.6 * r), 0.0, "atrium"),  # left atrium
            (at(a + 0.7, 1.05 * r), (0.75 * r, 0.4 * r), a + 0.7 + np.pi / 2, "blood_rv"),  # RVOT
            (at(up, 0.1 * r), (13.0, 12.0), 0.0, "vessel"),  # aortic root
        ]
        layers: list[Layer] = []
        for i, ((x, y), (sa, sb), angle, tissue) in enumerate(shapes):
            inside = ellipse(g, x, y, sa, sb, angle, heart.wobble_rv[i % 2])
            layers += [g.layer("myocardium", inside + 2.5), g.layer(tissue, inside)]
        return layers

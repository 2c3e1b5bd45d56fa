"""The 4-chamber long-axis slice: the same heart as the short-axis stack, cut along its length.

In the heart's own frame, ``u`` runs from the mitral annulus (u = 0) towards the apex and ``v``
across, positive towards the LV's lateral wall; the RV lies on the negative side, beyond the
septum. The image places the annulus at ``FourChamberView.base`` with the apex pointing along
``axis_angle`` (downwards, as in the stored M&Ms-2 long-axis images):

- the LV cavity is a bullet, widest a quarter of the way down, ``r_endo`` half-wide, closing
  short of the apex by the apical wall; the epicardium is the same bullet grown by the wall;
  both are cut off at the mitral valve plane, so the myocardium is a U open towards the atrium;
- the RV is a narrower, shorter bullet beside the septum, starting at the tricuspid annulus
  (a few millimetres more apical than the mitral one) and ending ``rv_length`` of the way down;
- the atria sit above the valve planes: blood pools in thin walls, unlabelled, with the mitral
  and tricuspid leaflets drawn as dark lines (open into the ventricles at ED, shut at ES).

At ES the valve planes descend towards the fixed apex by ``shortening``, the cavities narrow
to keep ``es_area`` of their area per section, the walls thicken, and the atria fill.
"""

from __future__ import annotations

import cv2
import numpy as np

from mmldm.data.phantom.heart import Anatomy
from mmldm.data.phantom.shapes import Grid, Layer, Polar
from mmldm.data.phantom.short_axis import BASE_NARROWING, WIDEST
from mmldm.data.phantom.torso import TorsoDrawer, TorsoPlacement


class FourChamberDrawer:
    """Draws one subject's 4-chamber image at ED and ES."""

    def __init__(self, anatomy: Anatomy, grid: Grid, rng: np.random.Generator):
        self.anatomy, self.grid = anatomy, grid
        view, heart = anatomy.four_chamber, anatomy.heart
        self.base = np.array(view.base)
        self.e_u = np.array([np.cos(view.axis_angle), np.sin(view.axis_angle)])  # towards the apex
        self.e_v = np.array([self.e_u[1], -self.e_u[0]])  # towards the LV lateral wall
        self.rv_width = heart.rv_reach * heart.r_epi
        bx, by = self.base + np.array(view.body_offset)
        # Below the diaphragm, beyond the apex: the liver under the RV, the stomach under the LV.
        liver = self.base + self.e_u * heart.length * 0.9 - self.e_v * (heart.r_epi + self.rv_width + 50)
        abdomen = self.base + self.e_u * heart.length * 1.5 + self.e_v * heart.r_epi
        place = TorsoPlacement(
            centre=(bx, by),
            tilt=view.body_tilt,
            anterior=view.axis_angle + view.body_tilt,
            liver=(float(liver[0]), float(liver[1])),
            abdomen=(float(abdomen[0]), float(abdomen[1])),
            height_scale=1.25,
        )
        self.torso = TorsoDrawer(grid, anatomy.torso, place, rng)
        middle = self.base + self.e_u * 0.25 * heart.length
        self.window = grid.window(middle[0], middle[1], 0.85 * heart.length + 2.2 * view.la_size + 20)

    def point(self, u: float, v: float) -> np.ndarray:
        """Image position (mm) of heart-frame coordinates."""
        return self.base + u * self.e_u + v * self.e_v

    def torso_layers(self, rng: np.random.Generator) -> list[Layer]:
        """Body, lungs, liver and the pericardial fat around the (ED) heart: shared by ED and ES."""
        shapes = self._shapes("ED")
        layers = self.torso.layers(depth=0.6, rng=rng)
        around = np.maximum(np.maximum(shapes["epi"], shapes["rv"]), np.maximum(shapes["ra"], shapes["la"]))
        layers.append(self.window.layer("mediastinum", around + 4))
        return layers

    def heart(self, phase: str) -> tuple[list[Layer], np.ndarray]:
        """The heart's layers and label map (uint8, M&Ms order) at ``phase``."""
        g, heart = self.window, self.anatomy.heart
        shapes = self._shapes(phase)
        endo, epi, rv = shapes["endo"], shapes["epi"], shapes["rv"]

        label = np.zeros((self.grid.size, self.grid.size), np.uint8)
        window_label = label[g.where]
        window_label[rv > 0] = 3
        window_label[epi > 0] = 2
        window_label[endo > 0] = 1

        outline = np.maximum(np.maximum(epi, rv), np.maximum(shapes["ra"], shapes["la"]))
        layers = [g.layer("epicardial_fat", outline + heart.epi_fat)]
        for atrium in ("ra", "la"):
            layers += [g.layer("myocardium", shapes[atrium] + 2.0), g.layer("atrium", shapes[atrium])]
        layers += [
            g.layer("myocardium", rv + 3.0),  # RV free wall (the LV covers its septal side)
            g.layer("blood_rv", rv),
            g.layer("myocardium", epi),
            g.layer("blood", endo),
            self._valves(g, phase),
        ]
        return layers, label

    def _frame(self, phase: str) -> dict[str, float]:
        """The sizes that change with the phase (mm)."""
        heart, view = self.anatomy.heart, self.anatomy.four_chamber
        es = phase == "ES"
        drop = heart.shortening * heart.length if es else 0.0  # how far the valve planes descend
        w_endo = heart.r_endo * (np.sqrt(heart.es_area) if es else 1.0)
        myo = (heart.es_myo if es else 1.0) * (heart.r_epi**2 - heart.r_endo**2)
        return dict(
            es=float(es),
            drop=drop,
            w_endo=w_endo,
            w_epi=float(np.sqrt(w_endo**2 + myo)),
            apex_wall=0.8 * heart.wall * ((heart.es_myo + 0.2) if es else 1.0),
            rv_width=self.rv_width * (heart.rv_es if es else 1.0),
            tricuspid=drop + view.tricuspid_offset,
        )

    def _shapes(self, phase: str) -> dict[str, np.ndarray]:
        """Signed distances (mm, positive inside) of LV cavity, epicardium, RV and atria."""
        heart, view, g = self.anatomy.heart, self.anatomy.four_chamber, self.window
        f = self._frame(phase)
        drop, w_endo, w_epi, rv_width = f["drop"], f["w_endo"], f["w_epi"], f["rv_width"]
        length = heart.length - drop
        angle = view.axis_angle

        # LV: cavity and epicardium share their centre at the widest section.
        centre_u = drop + WIDEST * length
        to_base = WIDEST * length / np.sqrt(BASE_NARROWING)
        polar = g.polar(*self.point(centre_u, 0))
        facing_septum = np.maximum(polar.towards(np.arctan2(-self.e_v[1], -self.e_v[0])), 0) ** 2
        wobble_endo = 1 + polar.wobble(heart.wobble_endo[0])
        wobble_wall = 1 + polar.wobble(heart.wobble_wall[0])
        cavity_to_apex = heart.length - f["apex_wall"] - centre_u
        r_endo = _bullet(polar, angle, cavity_to_apex, to_base, w_endo) * wobble_endo
        wall = (w_epi - w_endo) * (1 + heart.septal_bulge * facing_septum) * wobble_wall
        r_epi = r_endo + np.maximum(wall, np.float32(max(3.0, 2 * g.pixel)))
        apex_cap = _bullet(polar, angle, heart.length - centre_u, to_base, w_epi) * wobble_endo
        r_epi = np.maximum(r_epi, apex_cap)
        mitral = g.half_plane(*self.point(drop, 0), angle)  # > 0 on the ventricular side
        endo = np.minimum(polar.inside(r_endo), mitral)
        epi = np.minimum(polar.inside(r_epi), mitral)

        # RV: a narrower, shorter bullet beside the septum, from the tricuspid annulus down.
        rv_end = heart.rv_length * heart.length
        rv_centre_u = f["tricuspid"] + 0.2 * (rv_end - f["tricuspid"])
        rv_polar = g.polar(*self.point(rv_centre_u, -(w_epi + 0.5 * rv_width)))
        r_rv = _bullet(
            rv_polar, angle, rv_end - rv_centre_u, (rv_centre_u - f["tricuspid"]) * 1.6, 0.5 * rv_width + 0.5 * w_epi
        )
        r_rv = r_rv * (1 + rv_polar.wobble(heart.wobble_rv[0]))
        tricuspid = g.half_plane(*self.point(f["tricuspid"], 0), angle)
        rv = np.minimum(np.minimum(rv_polar.inside(r_rv), tricuspid), -epi)

        ra, la = self._atria(g, f)
        return dict(endo=endo, epi=epi, rv=rv, ra=ra, la=la)

    def _atria(self, g: Grid, f: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Signed distances of the right and left atria. Their far walls stay put while the
        valve planes descend, so at ES they are longer, and they are fuller (filling)."""
        view, heart = self.anatomy.four_chamber, self.anatomy.heart
        fill = 1.12 if f["es"] else 1.0
        out = []
        for size, v, start in (
            (view.ra_size, -(f["w_epi"] + 0.5 * f["rv_width"]), f["tricuspid"]),
            (view.la_size, 0.1 * heart.r_endo, f["drop"]),
        ):
            back = -2.0 * size  # the far wall, where it is at ED
            along = 0.5 * (start - back)
            polar = g.polar(*self.point(start - along, v))
            radius = polar.ellipse_radius(along + 1.0, size * fill, view.axis_angle)
            out.append(polar.inside(radius * (1 + polar.wobble(heart.wobble_rv[1]))))
        return out[0], out[1]

    def _valves(self, g: Grid, phase: str) -> Layer:
        """Mitral and tricuspid leaflets as dark lines hinged at each annulus."""
        f = self._frame(phase)
        canvas = np.zeros(g.shape, np.uint8)
        rows, cols = g.where
        half = (g.size - 1) / 2
        annulus = np.sqrt(1 - BASE_NARROWING)
        valves = [
            (f["drop"], 0.0, f["w_endo"] * annulus),
            (f["tricuspid"], -(f["w_epi"] + 0.5 * f["rv_width"]), 0.45 * f["rv_width"]),
        ]
        for u0, v0, reach in valves:
            for side in (-1, 1):
                # ED: open, hanging towards the apex; ES: shut, meeting in the middle.
                if f["es"]:
                    tip = (u0 + 0.15 * reach, v0 + side * 0.05 * reach)
                else:
                    tip = (u0 + 0.75 * reach, v0 + side * 0.6 * reach)
                ends = []
                for u, v in ((u0, v0 + side * reach), tip):
                    x, y = self.point(u, v)
                    col, row = x / g.pixel + half - cols.start, y / g.pixel + half - rows.start
                    ends.append((int(round(col * 16)), int(round(row * 16))))
                cv2.line(canvas, ends[0], ends[1], 255, max(1, int(round(2.0 / g.pixel))), cv2.LINE_AA, 4)
        return Layer("myocardium", canvas.astype(np.float32) * np.float32(0.8 / 255), g.where)


def _bullet(polar: Polar, angle: float, to_apex: float, to_base: float, half_width: float) -> np.ndarray:
    """Radius of an egg: half-ellipses of semi-axis ``to_apex`` along ``angle`` and ``to_base``
    against it, both ``half_width`` across."""
    towards_apex = polar.towards(angle) > 0
    return np.where(
        towards_apex,
        polar.ellipse_radius(max(to_apex, 1.0), half_width, angle),
        polar.ellipse_radius(max(to_base, 1.0), half_width, angle),
    )

"""The body around the heart: skin fat, chest wall, lungs, liver, stomach, spine, aorta, arms.

Drawn as :class:`~mmldm.data.phantom.shapes.Layer` objects painted in order; the tissue names
are looked up in the MR appearance table of :mod:`mmldm.data.phantom.mri`. Nothing here is
labelled: the torso is background (label 0) in every slice.

The subject lies supine, so the back is flat on the table. Fat and muscle thickness vary around
the body (thick paraspinal muscles at the back, pectorals in front). The liver is a large
ellipse centred low on the patient's right: inside the chest it shows as the diaphragm's dome,
rising into more of the image in slices nearer the apex.

A :class:`TorsoDrawer` is built once per view: the body outline is the same in every slice and
phase, so those layers are drawn once; each slice adds what differs (how much liver and
stomach it cuts, and the random lung vessels and ribs).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mmldm.data.phantom.heart import Torso
from mmldm.data.phantom.shapes import Grid, Layer, disks, ring, smooth_noise


@dataclass(frozen=True)
class TorsoPlacement:
    """Where the body lies in one view's images."""

    centre: tuple[float, float]  # body ellipse centre (mm)
    tilt: float  # rotation of the body ellipse's long axis from +x
    anterior: float  # direction of the chest wall (towards the sternum)
    liver: tuple[float, float]  # liver centre (mm)
    abdomen: tuple[float, float]  # centre of stomach, spleen and bowel under the left diaphragm
    height_scale: float = 1.0  # the body section is taller in the long-axis view


class TorsoDrawer:
    def __init__(self, grid: Grid, torso: Torso, place: TorsoPlacement, rng: np.random.Generator):
        self.grid, self.torso, self.place = grid, torso, place
        t, g = torso, grid
        cx, cy = place.centre
        polar = g.polar(cx, cy)
        half_height = t.half_height * place.height_scale
        radius = polar.ellipse_radius(t.half_width, half_height, place.tilt) * (1 + polar.wobble(t.wobble))
        posterior = place.anterior + np.pi
        table = t.back * half_height
        on_table = (cx + table * np.cos(posterior), cy + table * np.sin(posterior))
        back_plane = g.half_plane(*on_table, place.anterior)
        body = np.minimum(polar.inside(radius), back_plane)
        facing_back = np.maximum(polar.towards(posterior), 0) ** 2
        facing_front = np.maximum(polar.towards(place.anterior), 0) ** 2
        flanks = 1 - facing_back - facing_front  # subcutaneous fat gathers at the sides
        fat = t.fat * (0.7 + 0.9 * flanks) * np.maximum(1 + polar.wobble(t.fat_wobble), 0.3)
        muscle = t.muscle * (0.7 + 0.2 * facing_front + 1.3 * facing_back)
        muscle = muscle * (1 + polar.wobble(t.muscle_wobble))
        self.thorax = body - fat - muscle

        ant = np.array([np.cos(place.anterior), np.sin(place.anterior)])
        right = np.array([-ant[1], ant[0]])
        self.ant = ant
        self.lateral = right if right[0] >= 0 else -right  # the patient's left, as displayed
        depth = table - t.fat - t.muscle * 1.4
        self.vertebra = np.array(place.centre) - ant * depth
        self.aorta = self.vertebra + ant * 26 + self.lateral * 28

        patches = np.clip(smooth_noise(rng, g.size, 10) + 0.3, 0, 1)
        self.static: list[Layer] = []
        if t.arms:
            self.static += self._arms()
        self.static.append(g.layer("fat", body))
        self.static += [
            g.layer("muscle", body - fat),
            Layer("fat", g.soft(ring(body - fat - 0.45 * muscle, 2.0)) * patches, g.where),  # fat plane
            g.layer("lung", self.thorax),
        ]
        self.spine = self._spine_and_aorta()
        self.liver_polar = g.polar(*place.liver)
        self.liver_radius = self.liver_polar.ellipse_radius(1.25, 0.9, place.tilt + 0.4) * (
            1 + self.liver_polar.wobble(t.wobble)
        )

    def layers(self, depth: float, rng: np.random.Generator) -> list[Layer]:
        """The torso's layers for one slice; ``depth`` in [0, 1.3] says how far below the
        diaphragm's top the slice reaches (more liver and abdomen towards the apex)."""
        g, t = self.grid, self.torso
        out = list(self.static)
        out.append(Layer("vessel", self._lung_vessels(rng), g.where))
        if depth > 0.05:
            # Big ellipses centred low in the chest: inside the thorax they show as domes.
            liver = np.minimum(
                self.liver_polar.inside(self.liver_radius * np.float32(t.liver * depth)), self.thorax - 1
            )
            out.append(g.layer("muscle", liver + 3))  # the diaphragm over the liver
            out.append(g.layer("liver", liver))
            out.append(Layer("vessel", self._liver_vessels(rng) * g.soft(liver - 4), g.where))
            out += self._abdomen(depth, rng)
        out.append(Layer("bone", self._ribs(rng), g.where))
        out += self.spine
        return out

    # --- pieces ---------------------------------------------------------------------------

    def _spine_and_aorta(self) -> list[Layer]:
        vx, vy = self.vertebra
        ax, ay = self.aorta
        g = self.grid.window(vx, vy, 60)
        vertebra = g.polar(vx, vy).inside(15.0)
        aorta = g.polar(ax, ay).inside(11.0)
        canal = self.vertebra - self.ant * 24
        return [
            g.layer("muscle", vertebra + 12),  # paraspinal muscle and crura around the spine
            g.layer("cortex", vertebra + 1.5),
            g.layer("bone", vertebra),
            Layer("csf", disks(g, [canal], [6.0]), g.where),
            g.layer("fat", aorta + 4),
            g.layer("myocardium", aorta + 1.5),  # the aortic wall: thin and dark
            g.layer("vessel", aorta),
        ]

    def _abdomen(self, depth: float, rng: np.random.Generator) -> list[Layer]:
        """Under the left hemidiaphragm: stomach, spleen and bowel, a mottled mix of fluid, fat
        and gut wall, with the stomach's fluid as one bright pool."""
        g, t = self.grid, self.torso
        size = 0.75 * t.liver * max(0.0, depth - 0.2)
        if size < 10:
            return []
        x, y = self.place.abdomen
        polar = g.polar(x, y)
        dome = np.minimum(
            polar.inside(polar.ellipse_radius(1.2 * size, 0.9 * size, self.place.tilt - 0.3)), self.thorax - 1
        )
        stomach = np.array([x, y]) + self.ant * 0.5 * size - self.lateral * 0.2 * size
        n = int(rng.integers(0, 4))
        pockets = np.array([x, y]) + rng.uniform(-0.7 * size, 0.7 * size, (n, 2))
        inside = g.soft(dome - 4)
        return [
            g.layer("muscle", dome + 3),  # diaphragm
            g.layer("abdomen", dome),
            Layer("stomach", disks(g, [stomach], [0.35 * size]) * inside, g.where),
            # Bowel gas: black pockets.
            Layer("cortex", disks(g, pockets, rng.uniform(2, 6, n)) * inside * np.float32(0.7), g.where),
        ]

    def _lung_vessels(self, rng: np.random.Generator) -> np.ndarray:
        """Bright dots: pulmonary vessels cut across, scattered through the lungs."""
        t, (cx, cy) = self.torso, self.place.centre
        n = int(rng.integers(10, 25))
        angle = rng.uniform(0, 2 * np.pi, n)
        reach = np.sqrt(rng.uniform(0.05, 1, n)) * 0.8
        a = t.half_width - t.fat - t.muscle
        b = t.half_height * self.place.height_scale - t.fat - t.muscle
        centres = np.stack([cx + reach * a * np.cos(angle), cy + reach * b * np.sin(angle)], 1)
        dots = disks(self.grid, centres, rng.uniform(1.5, 3.5, n))
        return cv2.GaussianBlur(dots, (0, 0), 1.0 / self.grid.pixel * 1.5)  # vessels are blurry tubes

    def _liver_vessels(self, rng: np.random.Generator) -> np.ndarray:
        """Hepatic vessels: bright dots scattered near the liver's centre."""
        n = int(rng.integers(4, 12))
        spread = self.torso.liver * 0.8
        centres = np.array(self.place.liver) + rng.uniform(-spread, spread, (n, 2))
        return disks(self.grid, centres, rng.uniform(1.5, 4.5, n))

    def _ribs(self, rng: np.random.Generator) -> np.ndarray:
        """Rib sections: small ovals in the chest wall, just outside the lungs."""
        t, (cx, cy) = self.torso, self.place.centre
        n = int(rng.integers(3, 7))
        angle = self.place.anterior + rng.uniform(-2.2, 2.2, n)  # not at the spine
        a = t.half_width - t.fat - 0.6 * t.muscle
        b = t.half_height * self.place.height_scale - t.fat - 0.6 * t.muscle
        centres = np.stack([cx + a * np.cos(angle), cy + b * np.sin(angle)], 1)
        return disks(self.grid, centres, rng.uniform(3.0, 5.0, n))

    def _arms(self) -> list[Layer]:
        t, g = self.torso, self.grid
        side = np.array([np.cos(self.place.tilt), np.sin(self.place.tilt)])
        centres = [np.array(self.place.centre) + s * side * (t.half_width + 48) for s in (-1, 1)]
        arm = np.maximum(*[g.polar(*c).inside(42.0) for c in centres])
        bone = np.maximum(*[g.polar(*c).inside(10.0) for c in centres])
        return [
            g.layer("fat", arm),
            g.layer("muscle", arm - 7),
            g.layer("cortex", bone + 2),
            g.layer("bone", bone),
        ]

"""Soft 2-D shapes on a pixel grid in millimetres: the phantom's drawing primitives.

Every shape is described around a centre by its radius in each direction, ``r(theta)``, so a
pixel at distance ``rho`` from the centre lies ``r(theta) - rho`` millimetres inside it. That
signed distance gives two things at once:

- the *label* (hard mask): ``r(theta) - rho > 0``;
- the *partial-volume* weight for the image: ``clip(0.5 + (r(theta) - rho) / pixel, 0, 1)``,
  which is above 0.5 exactly where the label is set, so image and labels never disagree.

Directions are never evaluated with trigonometric functions per pixel: a :class:`Polar` frame
keeps ``cos(theta)`` and ``sin(theta)`` of every pixel and builds ``cos(k theta)``,
``sin(k theta)`` by the angle-addition recurrence, a few multiply-adds per harmonic.

Small things (the heart fills a fifth of the image's width) are drawn on a :meth:`Grid.window`
around them, so their arithmetic costs what their size is, not what the image is; a
:class:`Layer` remembers where its window lies in the full image.

Image coordinates: ``x`` grows to the right (columns), ``y`` grows downwards (rows); angles are
measured from +x towards +y, so 90 degrees points down and 270 degrees points up.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Window = tuple[slice, slice]  # (rows, columns) of the full image


@dataclass(frozen=True)
class Layer:
    """Paint ``tissue`` with partial-volume ``weight`` over the pixels ``where``."""

    tissue: str
    weight: np.ndarray
    where: Window


class Grid:
    """Pixel-centre coordinates (mm) of a ``size`` x ``size`` image centred on (0, 0), or of a
    rectangular window of it."""

    def __init__(self, size: int, pixel_mm: float, where: Window | None = None):
        self.size = size
        self.pixel = float(pixel_mm)
        self.where = where or (slice(0, size), slice(0, size))
        rows, cols = self.where
        axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * np.float32(self.pixel)
        self.shape = (rows.stop - rows.start, cols.stop - cols.start)
        self.x = np.broadcast_to(axis[cols][None, :], self.shape)
        self.y = np.broadcast_to(axis[rows][:, None], self.shape)

    def window(self, cx: float, cy: float, half_mm: float) -> Grid:
        """The square window of the full image centred on (cx, cy), clipped to the image."""
        half = (self.size - 1) / 2

        def span(centre: float) -> slice:
            lo = int(np.floor((centre - half_mm) / self.pixel + half))
            hi = int(np.ceil((centre + half_mm) / self.pixel + half)) + 1
            lo = min(max(0, lo), self.size - 1)  # at least one pixel, inside the image
            return slice(lo, max(lo + 1, min(self.size, hi)))

        return Grid(self.size, self.pixel, (span(cy), span(cx)))

    def soft(self, inside_mm: np.ndarray) -> np.ndarray:
        """Partial-volume weight in [0, 1] from a signed distance (mm, positive inside)."""
        weight = inside_mm * np.float32(1 / self.pixel) + np.float32(0.5)
        return np.clip(weight, 0, 1, out=weight)

    def layer(self, tissue: str, inside_mm: np.ndarray) -> Layer:
        return Layer(tissue, self.soft(inside_mm), self.where)

    def polar(self, cx: float, cy: float) -> Polar:
        return Polar(self, cx, cy)

    def half_plane(self, px: float, py: float, angle: float) -> np.ndarray:
        """Signed distance (mm) to the line through (px, py) whose inside normal is ``angle``."""
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        return (self.x - np.float32(px)) * cos + (self.y - np.float32(py)) * sin


class Polar:
    """Distance and direction of every pixel of a grid from one centre, with cached harmonics."""

    def __init__(self, grid: Grid, cx: float, cy: float):
        self.grid = grid
        dx = grid.x - np.float32(cx)
        dy = grid.y - np.float32(cy)
        self.rho = np.sqrt(dx * dx + dy * dy)
        inverse = 1 / np.maximum(self.rho, np.float32(1e-6))
        self.cos = dx * inverse
        self.sin = dy * inverse
        self._harmonics = {1: (self.cos, self.sin)}

    def harmonic(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(cos(k theta), sin(k theta))`` per pixel, by recurrence from lower harmonics."""
        if k not in self._harmonics:
            c1, s1 = self._harmonics[1]
            ck, sk = self.harmonic(k - 1)
            # cos(kt) = cos((k-1)t) cos t - sin((k-1)t) sin t, and likewise for sin.
            self._harmonics[k] = (ck * c1 - sk * s1, sk * c1 + ck * s1)
        return self._harmonics[k]

    def towards(self, angle: float) -> np.ndarray:
        """``cos(theta - angle)``: 1 facing ``angle``, -1 facing away."""
        return self.cos * np.float32(np.cos(angle)) + self.sin * np.float32(np.sin(angle))

    def across(self, angle: float) -> np.ndarray:
        """``sin(theta - angle)``: the direction's component perpendicular to ``angle``."""
        return self.sin * np.float32(np.cos(angle)) - self.cos * np.float32(np.sin(angle))

    def wobble(self, coeffs: np.ndarray) -> np.ndarray:
        """Smooth relative radius change ``sum_k a_k cos(k theta) + b_k sin(k theta)``.

        ``coeffs`` has shape (K, 2) for harmonics 2..K+1 (harmonic 1 would only shift the
        shape, so it is left out).
        """
        out = np.zeros_like(self.rho)
        for k, (a, b) in enumerate(coeffs, start=2):
            ck, sk = self.harmonic(k)
            out += np.float32(a) * ck
            out += np.float32(b) * sk
        return out

    def ellipse_radius(self, a: float, b: float, angle: float) -> np.ndarray:
        """Radius, in each pixel's direction, of an ellipse with semi-axes ``a`` along
        ``angle`` and ``b`` across it."""
        c = self.towards(angle)
        s = self.across(angle)
        return np.float32(a * b) / np.sqrt((np.float32(b) * c) ** 2 + (np.float32(a) * s) ** 2)

    def inside(self, radius) -> np.ndarray:
        """Signed distance (mm, positive inside) to the shape ``rho < radius``."""
        return np.float32(radius) - self.rho if np.isscalar(radius) else radius - self.rho


def ellipse(grid: Grid, cx, cy, a, b, angle=0.0, wobble=None) -> np.ndarray:
    """Signed distance (mm) to an ellipse, optionally with a smooth radial wobble."""
    polar = grid.polar(cx, cy)
    radius = polar.ellipse_radius(a, b, angle)
    if wobble is not None:
        radius = radius * (1 + polar.wobble(wobble))
    return polar.inside(radius)


def ring(inside_outer: np.ndarray, thickness_mm: float) -> np.ndarray:
    """Signed distance to a band of ``thickness_mm`` just inside a shape's boundary."""
    return np.minimum(inside_outer, np.float32(thickness_mm) - inside_outer)


def disks(grid: Grid, centres_mm, radii_mm) -> np.ndarray:
    """Partial-volume weight of filled circles, anti-aliased by OpenCV (cheap for many small
    shapes such as vessels, ribs and papillary muscles, which carry no label)."""
    canvas = np.zeros(grid.shape, np.uint8)
    half = (grid.size - 1) / 2
    rows, cols = grid.where
    for (x, y), r in zip(np.asarray(centres_mm, float).reshape(-1, 2), np.asarray(radii_mm, float).ravel()):
        col, row = x / grid.pixel + half - cols.start, y / grid.pixel + half - rows.start
        radius = r / grid.pixel
        if -radius < col < grid.shape[1] + radius and -radius < row < grid.shape[0] + radius:
            centre = (int(round(col * 16)), int(round(row * 16)))  # 4 fractional bits
            cv2.circle(canvas, centre, max(1, int(round(radius * 16))), 255, -1, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) * np.float32(1 / 255)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field over the full image: ``cells`` x ``cells``
    Gaussian values upsampled bicubically (features about ``size / cells`` pixels wide)."""
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    step = size / cells
    big = cv2.resize(coarse, (int(round(step * (cells + 3))),) * 2, interpolation=cv2.INTER_CUBIC)
    start = int(round(step * 1.5))
    field = big[start : start + size, start : start + size]
    return (field - field.mean()) / (field.std() + np.float32(1e-6))


def random_wobble(rng: np.random.Generator, amplitude: float, harmonics: int = 4) -> np.ndarray:
    """Random (K, 2) harmonic coefficients whose amplitude falls as 1/k (smooth outlines)."""
    k = np.arange(2, harmonics + 2, dtype=np.float64)[:, None]
    return rng.normal(0.0, amplitude, (harmonics, 2)) * (2.0 / k)

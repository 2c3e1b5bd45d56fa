"""MR appearance: turns tissue layers into a balanced-SSFP cine magnitude image.

bSSFP contrast depends on T2/T1, so blood and fat are bright, myocardium and skeletal muscle
dark, liver in between, and lungs and air almost black. The steps, in the order a scanner
applies them:

1. *Tissue signal*: each layer paints its tissue's signal (relative to blood = 1) with a smooth
   random texture (fine and coarse), weighted by its partial-volume map. Static tissue is
   painted once per slice and shared by ED and ES, as in a real cine.
2. *Vendor contrast*: a gamma per vendor on every tissue's signal (jittered per subject).
3. *Coil sensitivity*: a smooth multiplicative bias field, stronger at 3 T.
4. *Resolution*: k-space is cut along the phase-encode axis (fewer lines acquired than pixels
   displayed) with a Fermi roll-off, which blurs edges and adds a little Gibbs ringing.
5. *Noise*: complex Gaussian noise, then the magnitude (Rician), so air is a noise floor.
6. *Scanner scale*: vendor-dependent units (hundreds to thousands), rounded to integers like
   the stored DICOM values, returned as float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmldm.data.phantom.shapes import Layer, smooth_noise

# tissue: (signal relative to blood, fine texture, coarse texture)
TISSUES: dict[str, tuple[float, float, float]] = {
    "lung": (0.06, 0.5, 0.4),
    "vessel": (0.85, 0.0, 0.05),
    "fat": (1.05, 0.08, 0.10),
    "epicardial_fat": (0.75, 0.10, 0.10),
    "mediastinum": (0.6, 0.25, 0.15),
    "muscle": (0.32, 0.12, 0.10),
    "liver": (0.42, 0.06, 0.08),
    "stomach": (0.7, 0.05, 0.15),
    "abdomen": (0.55, 0.3, 0.25),
    "bone": (0.45, 0.15, 0.10),
    "cortex": (0.03, 0.0, 0.0),
    "csf": (0.9, 0.0, 0.05),
    "blood": (1.0, 0.02, 0.05),
    "blood_rv": (0.95, 0.02, 0.06),
    "atrium": (0.9, 0.02, 0.08),
    "myocardium": (0.33, 0.05, 0.06),
}

# vendor: (blood signal in scanner units, gamma, relative noise at 1.5 T)
VENDORS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "SIEMENS": ((700.0, 1500.0), (0.95, 1.05), (0.02, 0.04)),
    "Philips": ((150.0, 450.0), (0.85, 0.95), (0.02, 0.04)),
    "GE": ((1500.0, 3500.0), (1.05, 1.25), (0.025, 0.045)),
}


@dataclass(frozen=True)
class Look:
    """One subject's scanner: contrast, scale, noise and acquisition settings."""

    scale: float
    gamma: float
    noise: float
    bias: float  # strength of the coil bias field (log scale)
    phase_axis: int  # image axis along which k-space is cut
    phase_fraction: float  # fraction of k-space lines kept along it
    signal: dict[str, float]  # per-tissue signal after subject jitter


def sample_look(rng: np.random.Generator, vendor: str, field: float) -> Look:
    (s0, s1), (g0, g1), (n0, n1) = VENDORS[vendor]
    three_tesla = field > 2
    signal = {name: s * rng.uniform(0.85, 1.15) for name, (s, _, _) in TISSUES.items()}
    signal["blood"] = 1.0
    return Look(
        scale=rng.uniform(s0, s1),
        gamma=rng.uniform(g0, g1),
        noise=rng.uniform(n0, n1) * (0.6 if three_tesla else 1.0),
        bias=rng.uniform(0.15, 0.3) if three_tesla else rng.uniform(0.08, 0.18),
        phase_axis=int(rng.integers(0, 2)),
        phase_fraction=rng.uniform(0.6, 0.85),
        signal=signal,
    )


class Scanner:
    """Renders one subject's slices of one view (fixed size, look and coil bias)."""

    def __init__(self, look: Look, size: int, rng: np.random.Generator):
        self.look, self.size = look, size
        field = smooth_noise(rng, size, 2) + 0.5 * smooth_noise(rng, size, 4)
        self.bias = np.exp(np.float32(look.bias) * field)
        self.kspace = _kspace_window(size, look.phase_axis, look.phase_fraction).astype(np.float32)

    def textures(self, rng: np.random.Generator) -> Textures:
        """The textured tissue signals of one slice position (shared by its ED and ES)."""
        return Textures(
            self.look, smooth_noise(rng, self.size, max(4, self.size // 5)), smooth_noise(rng, self.size, 8)
        )

    @staticmethod
    def paint(image: np.ndarray, layers: list[Layer], textures: Textures) -> np.ndarray:
        """Paint layers in order: each replaces what lies under it by its weight."""
        for layer in layers:
            under = image[layer.where]
            under += layer.weight * (textures.on(layer.tissue, layer.where) - under)
        return image

    def acquire(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scanner steps 3-6: coil bias, k-space resolution, Rician noise, units."""
        look = self.look
        image = np.fft.irfft2(np.fft.rfft2(signal * self.bias) * self.kspace, s=signal.shape)
        noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * np.float32(look.noise)
        real = image + noise[0]
        magnitude = np.sqrt(real * real + noise[1] * noise[1])
        return np.rint(magnitude.astype(np.float64) * look.scale)


class Textures:
    """Each tissue's signal times its texture over a window of the image. Whole-image textures
    (the torso's) are kept for reuse; small windows (the heart's) are cheaper to recompute."""

    def __init__(self, look: Look, fine: np.ndarray, coarse: np.ndarray):
        self.look, self.fine, self.coarse = look, fine, coarse
        self.whole = (slice(0, fine.shape[0]), slice(0, fine.shape[1]))
        self._cache: dict[str, np.ndarray] = {}

    def on(self, tissue: str, where: tuple[slice, slice]) -> np.ndarray:
        if where == self.whole and tissue in self._cache:
            return self._cache[tissue]
        _, f, c = TISSUES[tissue]
        # Vendor contrast (step 2) acts on each tissue's signal: blood stays at 1.
        signal = np.float32(self.look.signal[tissue] ** self.look.gamma)
        fine, coarse = self.fine[where], self.coarse[where]
        texture = signal + np.float32(signal * f) * fine + np.float32(signal * c) * coarse
        if where == self.whole:
            self._cache[tissue] = texture
        return texture


def _kspace_window(size: int, phase_axis: int, fraction: float) -> np.ndarray:
    """Fermi-filtered k-space truncation: all of the readout, ``fraction`` of phase encodes."""
    ky = np.abs(np.fft.fftfreq(size))[:, None]  # rows, full spectrum
    kx = np.abs(np.fft.rfftfreq(size))[None, :]  # columns, half spectrum (real image)
    k_phase, k_read = (ky, kx) if phase_axis == 0 else (kx, ky)

    def fermi(k, cutoff):
        return 1 / (1 + np.exp((k - cutoff) / 0.012))

    return fermi(k_phase, 0.5 * fraction) * fermi(k_read, 0.48)

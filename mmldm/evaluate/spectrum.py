"""Texture in numbers: the radially averaged power spectrum of a set of images.

FID says *that* two sets differ; the power spectrum says *how*, in a way a student can read:
how much of an image's contrast sits in coarse structure (low spatial frequencies) and how much
in fine texture, edges and noise (high frequencies). Decoders and diffusion models tend to make
images that are too smooth: their spectrum falls off faster than a real scan's.

For one image ``x`` (H x W, intensities in [-1, 1]) and a window ``w`` (the 2-D Hann window
``w[i, j] = h_H[i] h_W[j]``, or ``w = 1`` without one)::

    m      = sum(w x) / sum(w)                        the (window-weighted) mean, so the DC term is 0
    X      = FFT2( w (x - m) )
    P[k]   = |X[k]|^2 / sum(w^2)                      power at 2-D frequency k = (k_y, k_x)
    f[k]   = sqrt(f_y^2 + f_x^2)                      cycles/pixel, f_y = k_y / H, f_x = k_x / W
                                                      (numpy's fftfreq: each in [-0.5, 0.5))

Dividing by ``sum(w^2)`` makes white noise of variance s^2 have ``E P[k] = s^2`` at every k
(Parseval), with or without the window, except at and (with the window) right next to k = 0,
which the mean subtraction empties; the window stops the image's borders, which an FFT sees as
wrapping round, from leaking false high-frequency power.

**Radial average.** With ``M = min(H, W)``, frequency k falls in ring ``r = round(M f[k])``, and
the spectrum is the mean power per ring for ``r = 0 ... M // 2``, i.e. at frequencies ``r / M``
from 0 to 0.5 cycles/pixel (the corners beyond 0.5, reached only diagonally, are left out of the
curve)::

    S(r) = mean_{k : round(M f[k]) = r} P[k]

**High-frequency fraction** of a set: the share of its (non-DC) power above ``cutoff`` cycles per
pixel, from the set's mean 2-D spectrum, corners included::

    HF(set) = sum_{k : f[k] > cutoff} Pbar[k] / sum_{k : f[k] > 0} Pbar[k],    Pbar = mean over images of P

    high_frequency_ratio(generated, real) = HF(generated) / HF(real)

1 means the generated images carry fine detail in the same proportion as real ones; below 1 they
are smoother, above 1 noisier. The default cutoff, 0.25 cycles/pixel, is half the Nyquist
frequency: structure with a period shorter than 4 pixels.

**Power by band.** One share hides errors of opposite sign: too much power just below the cutoff
(hard edges, specks) and too little near Nyquist (missing grain) can give a ratio of 1. So the
absolute power of each octave band ``(lo, hi]`` of :data:`BANDS` is also compared::

    band_ratio(set, band) = sum_{k : lo < f[k] <= hi} Pbar_set[k] / sum_{same k} Pbar_reference[k]

The last band runs to the corners (f up to 0.5 sqrt 2). A set that is right everywhere has every
band ratio near 1; a decoder that paints flat regions and sharp borders shows a mid band above 1
and a top band below it. Everything is computed in float64 on
the CPU; images are (N, 1, H, W) (or (N, H, W)) tensors.

    freqs, spectrum = mean_radial_spectrum(real)                  # (R,), (R,)
    high_frequency_ratio(generated, real)["ratio"]
    compare_spectra({"generated": g, "heldout": h}, reference="heldout")   # for metrics.json
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

CUTOFF = 0.25  # cycles/pixel: half the Nyquist frequency
# Octave bands (cycles/pixel) for band_power_ratio: coarse shape, structure, edges, fine texture/noise.
BANDS = ((0.0, 0.0625), (0.0625, 0.125), (0.125, 0.25), (0.25, float("inf")))


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) or (N, H, W) -> (N, H, W) float64 on the CPU; anything else is a ValueError."""
    x = torch.as_tensor(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got images of shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images (N, 1, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images")
    if min(x.shape[-2:]) < 4:
        raise ValueError(f"images of {x.shape[-2]} x {x.shape[-1]} pixels are too small for a spectrum")
    return x.detach().to("cpu", torch.float64)


def _check_cutoff(cutoff: float) -> None:
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must lie between 0 and 0.5 cycles/pixel, got {cutoff}")


def frequency_grid(height: int, width: int) -> torch.Tensor:
    """``f[k]`` (H, W): the radial frequency of every FFT bin in cycles/pixel (FFT order, DC at [0, 0])."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)
    fx = torch.fft.fftfreq(width, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def hann_window_2d(height: int, width: int) -> torch.Tensor:
    """The separable 2-D Hann window ``h_H[i] h_W[j]`` (symmetric: zero on the border)."""
    return (
        torch.hann_window(height, periodic=False, dtype=torch.float64)[:, None]
        * torch.hann_window(width, periodic=False, dtype=torch.float64)[None, :]
    )


def power_spectrum(images: torch.Tensor, window: bool = True) -> torch.Tensor:
    """``P`` (N, H, W) of each image, in FFT order (see the module docstring for the formula)."""
    x = _as_batch(images)
    h, w = x.shape[-2:]
    win = hann_window_2d(h, w) if window else torch.ones(h, w, dtype=torch.float64)
    mean = (x * win).sum((-2, -1), keepdim=True) / win.sum()
    spectrum = torch.fft.fft2(win * (x - mean))
    return spectrum.abs() ** 2 / (win**2).sum()


def _rings(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ring index of every bin (H*W,), mask of the bins kept (ring <= M // 2), number of rings)."""
    m = min(height, width)
    ring = torch.round(frequency_grid(height, width) * m).long().reshape(-1)
    n_rings = m // 2 + 1
    return ring, ring < n_rings, n_rings


def radial_average(power: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Ring means of 2-D spectra ``power`` (H, W) or (N, H, W) -> (frequencies (R,) in cycles/pixel,
    profile (R,) or (N, R)), R = min(H, W) // 2 + 1 rings of width 1 / min(H, W)."""
    p = torch.as_tensor(power, dtype=torch.float64)
    single = p.ndim == 2
    p = p[None] if single else p
    h, w = p.shape[-2:]
    ring, keep, n_rings = _rings(h, w)
    flat = p.reshape(len(p), -1)[:, keep]
    sums = torch.zeros(len(p), n_rings, dtype=torch.float64).index_add_(1, ring[keep], flat)
    counts = torch.bincount(ring[keep], minlength=n_rings).to(torch.float64)
    profile = (sums / counts).numpy()
    freqs = np.arange(n_rings) / min(h, w)
    return freqs, profile[0] if single else profile


def radial_power_spectrum(images: torch.Tensor, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each image's radially averaged power spectrum: (frequencies (R,), spectra (N, R))."""
    return radial_average(power_spectrum(images, window))


def mean_power_spectrum(images: torch.Tensor, window: bool = True, batch_size: int = 64) -> torch.Tensor:
    """``Pbar`` (H, W): the mean 2-D power spectrum of a set, computed ``batch_size`` images at a time."""
    x = torch.as_tensor(images)
    if len(x) == 0:
        raise ValueError("no images")
    total = sum(power_spectrum(x[i : i + batch_size], window).sum(0) for i in range(0, len(x), batch_size))
    return total / len(x)


def mean_radial_spectrum(
    images: torch.Tensor, window: bool = True, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The radial average of a set's mean spectrum: (frequencies (R,), spectrum (R,))."""
    return radial_average(mean_power_spectrum(images, window, batch_size))


def high_frequency_fraction(power: torch.Tensor, cutoff: float = CUTOFF) -> float:
    """``HF``: the share of the non-DC power of ``power`` (H, W), or of the mean of (N, H, W),
    above ``cutoff`` cycles/pixel. NaN when there is no power at all (a constant image)."""
    _check_cutoff(cutoff)
    p = torch.as_tensor(power, dtype=torch.float64)
    p = p.mean(0) if p.ndim == 3 else p
    f = frequency_grid(*p.shape[-2:])
    total = float(p[f > 0].sum())
    return float(p[f > cutoff].sum()) / total if total > 0 else float("nan")


def band_edges(bands: tuple[tuple[float, float], ...] = BANDS) -> list[list]:
    """``bands`` as JSON-ready ``[[lo, hi], ...]``, an open top end (infinity) written as None."""
    return [[lo, None if hi == float("inf") else hi] for lo, hi in bands]


def band_power_ratio(
    power: torch.Tensor, reference: torch.Tensor, bands: tuple[tuple[float, float], ...] = BANDS
) -> list[float]:
    """``band_ratio`` of every band: the power of ``power`` (H, W), or of the mean of (N, H, W),
    in ``lo < f <= hi`` over the same sum of ``reference``; NaN where the reference has none."""
    p, r = (torch.as_tensor(x, dtype=torch.float64) for x in (power, reference))
    p, r = (x.mean(0) if x.ndim == 3 else x for x in (p, r))
    if p.shape != r.shape:
        raise ValueError(f"spectra of different sizes: {tuple(p.shape)} and {tuple(r.shape)}")
    f = frequency_grid(*p.shape[-2:])
    out = []
    for lo, hi in bands:
        if not 0 <= lo < hi:
            raise ValueError(f"a band needs 0 <= lo < hi, got ({lo}, {hi})")
        keep = (f > lo) & (f <= hi)
        ref = float(r[keep].sum())
        out.append(float(p[keep].sum()) / ref if ref > 0 else float("nan"))
    return out


def high_frequency_ratio(
    generated: torch.Tensor, real: torch.Tensor, cutoff: float = CUTOFF, window: bool = True
) -> dict:
    """``HF(generated) / HF(real)`` with both fractions and set sizes::

        {"cutoff", "window", "generated_fraction", "real_fraction", "ratio", "n_generated", "n_real"}

    The two sets may differ in size, not in image size. ``ratio`` is NaN when the real set has
    no high-frequency power."""
    _check_cutoff(cutoff)
    if _as_batch(generated[:1]).shape[-2:] != _as_batch(real[:1]).shape[-2:]:
        raise ValueError(f"image sizes differ: {tuple(generated.shape[-2:])} and {tuple(real.shape[-2:])}")
    g = high_frequency_fraction(mean_power_spectrum(generated, window), cutoff)
    r = high_frequency_fraction(mean_power_spectrum(real, window), cutoff)
    return {
        "cutoff": cutoff,
        "window": "hann" if window else "none",
        "generated_fraction": g,
        "real_fraction": r,
        "ratio": g / r if r > 0 else float("nan"),
        "n_generated": len(generated),
        "n_real": len(real),
    }


def compare_spectra(
    sets: Mapping[str, torch.Tensor], reference: str, cutoff: float = CUTOFF, window: bool = True
) -> dict:
    """Mean radial spectra and high-frequency fractions of several sets of same-size images,
    each fraction also over the ``reference`` set's (``hf_ratio``); JSON-ready lists::

        {"frequency": [R], "cutoff", "window", "reference",
         "spectra": {name: [R]}, "hf_fraction": {name}, "hf_ratio": {name: HF(name) / HF(reference)},
         "bands": [[lo, hi], ...], "band_ratio": {name: [band power / reference's, one per band]},
         "n": {name: images}}
    """
    _check_cutoff(cutoff)
    if reference not in sets:
        raise ValueError(f"reference {reference!r} is not one of the sets {list(sets)}")
    sizes = {name: tuple(_as_batch(x[:1]).shape[-2:]) for name, x in sets.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"image sizes differ between sets: {sizes}")
    mean_power = {name: mean_power_spectrum(x, window) for name, x in sets.items()}
    fractions = {name: high_frequency_fraction(p, cutoff) for name, p in mean_power.items()}
    ref = fractions[reference]
    freqs = None
    spectra = {}
    for name, p in mean_power.items():
        freqs, spectra[name] = radial_average(p)
    return {
        "frequency": freqs.tolist(),
        "cutoff": cutoff,
        "window": "hann" if window else "none",
        "reference": reference,
        "spectra": {k: v.tolist() for k, v in spectra.items()},
        "hf_fraction": fractions,
        "hf_ratio": {k: (v / ref if ref > 0 else float("nan")) for k, v in fractions.items() if k != reference},
        "bands": band_edges(),
        "band_ratio": {k: band_power_ratio(p, mean_power[reference]) for k, p in mean_power.items() if k != reference},
        "n": {k: len(v) for k, v in sets.items()},
    }

"""Radially averaged power spectra and the high-frequency ratio (mmldm/evaluate/spectrum.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmldm.evaluate.spectrum import (
    BANDS,
    band_power_ratio,
    compare_spectra,
    frequency_grid,
    high_frequency_fraction,
    high_frequency_ratio,
    mean_power_spectrum,
    mean_radial_spectrum,
    power_spectrum,
    radial_average,
    radial_power_spectrum,
)


def noise(n=64, size=32, std=0.3, seed=0):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * std


def blur(images, passes=2):
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    k2 = (kernel[:, None] * kernel[None, :])[None, None]
    for _ in range(passes):
        images = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), k2)
    return images


@pytest.mark.parametrize("window", [True, False])
def test_white_noise_is_flat_at_its_variance(window):
    freqs, spectrum = mean_radial_spectrum(noise(n=256, std=0.3), window=window)
    assert freqs[0] == 0 and freqs[-1] == 0.5 and len(freqs) == 17  # rings of width 1/32, 0 .. 0.5
    assert spectrum[0] == pytest.approx(0, abs=1e-12)  # mean subtracted: no DC power
    # E P = s^2 = 0.09 at every frequency (Parseval, normalised by sum(w^2)); away from DC the rings are flat.
    np.testing.assert_allclose(spectrum[3:], 0.09, rtol=0.1)


def test_parseval_without_window():
    x = noise(n=3, size=16)
    p = power_spectrum(x, window=False)
    centred = x[:, 0].double() - x[:, 0].double().mean((-2, -1), keepdim=True)
    # sum_k P[k] = sum |X|^2 / (H W) = sum of squared (mean-subtracted) pixels
    torch.testing.assert_close(p.sum((-2, -1)), (centred**2).sum((-2, -1)))


def test_a_single_sinusoid_lands_in_its_ring():
    size, cycles = 32, 6  # 6 cycles across 32 pixels: 0.1875 cycles/pixel
    x = torch.cos(2 * math.pi * cycles * torch.arange(size) / size)[None, None, None, :].expand(1, 1, size, size)
    freqs, spectrum = radial_power_spectrum(x, window=False)
    assert spectrum.shape == (1, 17)
    assert freqs[int(np.argmax(spectrum[0]))] == pytest.approx(cycles / size)
    assert high_frequency_fraction(power_spectrum(x, window=False), cutoff=0.25) == pytest.approx(0, abs=1e-12)
    assert high_frequency_fraction(power_spectrum(x, window=False), cutoff=0.1) == pytest.approx(1)


def test_white_noise_fraction_is_the_share_of_frequency_bins():
    f = frequency_grid(32, 32)
    expected = float((f > 0.25).sum() / (f > 0).sum())  # flat spectrum: power share = bin share (~0.80)
    got = high_frequency_fraction(mean_power_spectrum(noise(n=256), window=False), cutoff=0.25)
    assert got == pytest.approx(expected, rel=0.03) and 0.75 < got < 0.85


def test_blurring_lowers_the_high_frequency_fraction_and_ratio():
    x = noise(n=32)
    sharp = high_frequency_fraction(mean_power_spectrum(x))
    smooth = high_frequency_fraction(mean_power_spectrum(blur(x)))
    assert smooth < 0.5 * sharp
    r = high_frequency_ratio(blur(x), x)
    assert r["ratio"] == pytest.approx(r["generated_fraction"] / r["real_fraction"]) and r["ratio"] < 0.5
    assert r["n_generated"] == r["n_real"] == 32 and r["cutoff"] == 0.25 and r["window"] == "hann"
    assert high_frequency_ratio(x, blur(x))["ratio"] > 2  # the other way round: sharper than the reference


def test_ratio_of_a_set_with_itself_is_one_and_sizes_may_differ():
    x = noise(n=20, size=24, seed=3)
    assert high_frequency_ratio(x, x)["ratio"] == pytest.approx(1.0)
    r = high_frequency_ratio(x[:5], noise(n=40, size=24, seed=4))  # 5 against 40 images of the same size
    assert r["n_generated"] == 5 and r["n_real"] == 40 and 0.8 < r["ratio"] < 1.25


def test_batching_and_channel_layout_do_not_change_the_numbers():
    x = noise(n=10, size=16)
    torch.testing.assert_close(mean_power_spectrum(x, batch_size=3), mean_power_spectrum(x, batch_size=64))
    torch.testing.assert_close(power_spectrum(x), power_spectrum(x[:, 0]))
    # Adding a constant (a brightness offset) changes nothing: each image is mean-subtracted.
    torch.testing.assert_close(power_spectrum(x + 0.5), power_spectrum(x))


def test_non_square_images_use_the_shorter_side():
    x = torch.randn(4, 1, 16, 24, generator=torch.Generator().manual_seed(1))
    freqs, spectra = radial_power_spectrum(x)
    assert spectra.shape == (4, 9) and freqs[-1] == 0.5 and freqs[1] == pytest.approx(1 / 16)
    f2, single = radial_average(power_spectrum(x)[0])
    assert single.shape == (9,) and np.allclose(single, spectra[0])


def test_edge_cases_are_errors_or_nan():
    with pytest.raises(ValueError, match="one channel"):
        power_spectrum(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        power_spectrum(torch.zeros(2, 1, 2, 8))
    with pytest.raises(ValueError, match="no images"):
        mean_power_spectrum(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        power_spectrum(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_fraction(torch.ones(8, 8), cutoff=0.5)
    with pytest.raises(ValueError, match="sizes differ"):
        high_frequency_ratio(noise(n=2, size=16), noise(n=2, size=32))
    flat = torch.full((3, 1, 8, 8), 0.2)  # a constant image has no power to share out
    assert math.isnan(high_frequency_fraction(mean_power_spectrum(flat)))
    assert math.isnan(high_frequency_ratio(noise(n=3, size=8), flat)["ratio"])


def test_compare_spectra_gives_json_ready_lists():
    real = noise(n=16, size=16, seed=5)
    out = compare_spectra(
        {"generated": blur(real), "heldout": real, "train": noise(n=8, size=16, seed=6)}, reference="heldout"
    )
    assert len(out["frequency"]) == 9 and all(len(s) == 9 for s in out["spectra"].values())
    assert all(isinstance(v, float) for v in out["spectra"]["generated"])
    assert set(out["hf_ratio"]) == {"generated", "train"} and out["n"] == {"generated": 16, "heldout": 16, "train": 8}
    fraction = out["hf_fraction"]
    assert out["hf_ratio"]["generated"] == pytest.approx(fraction["generated"] / fraction["heldout"])
    assert out["hf_ratio"]["generated"] < 0.6 < out["hf_ratio"]["train"]
    with pytest.raises(ValueError, match="reference"):
        compare_spectra({"a": real}, reference="b")
    with pytest.raises(ValueError, match="sizes differ"):
        compare_spectra({"a": real, "b": noise(n=2, size=32)}, reference="a")


def test_band_ratios_see_what_the_one_share_hides():
    """A filter that doubles the amplitude at 1/8-1/4 cycles/pixel and halves it above: without a
    window the FFT is exact, so every band's power ratio is the squared gain of that band."""
    x = noise(n=16, size=32, seed=7)[:, 0].double()
    f = frequency_grid(32, 32)
    gain = torch.ones_like(f)
    gain[(f > 0.125) & (f <= 0.25)] = 2.0
    gain[f > 0.25] = 0.5
    y = torch.fft.ifft2(torch.fft.fft2(x) * gain).real
    ratios = band_power_ratio(power_spectrum(y, window=False), power_spectrum(x, window=False))
    assert ratios == pytest.approx([1.0, 1.0, 4.0, 0.25])
    assert band_power_ratio(power_spectrum(x), power_spectrum(x)) == pytest.approx([1.0] * len(BANDS))
    with pytest.raises(ValueError, match="different sizes"):
        band_power_ratio(torch.ones(8, 8), torch.ones(16, 16))
    with pytest.raises(ValueError, match="lo < hi"):
        band_power_ratio(torch.ones(8, 8), torch.ones(8, 8), bands=((0.2, 0.1),))
    flat = torch.zeros(8, 8)
    assert math.isnan(band_power_ratio(torch.ones(8, 8), flat)[0])
    out = compare_spectra({"filtered": y[:, None].float(), "real": x[:, None].float()}, reference="real")
    assert set(out["band_ratio"]) == {"filtered"} and len(out["bands"]) == len(BANDS)
    assert out["bands"][-1][1] is None and out["bands"][0] == [0.0, 0.0625]
    assert out["band_ratio"]["filtered"][2] > 2.5 and out["band_ratio"]["filtered"][3] < 0.5

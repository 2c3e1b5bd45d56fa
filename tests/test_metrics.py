"""Paired fidelity metrics on cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmldm.evaluate.metrics import metric_table, nmse, paired_metrics, summarise, to_unit_range


def test_identical_images_are_perfect():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    m = paired_metrics(x, x.clone())
    assert m["ssim"] == pytest.approx([1.0] * 3, abs=1e-6)
    assert np.all(m["nmse"] == 0.0)
    assert np.all(np.isinf(m["psnr"]))


def test_nmse_by_hand():
    # real in [0, 1]: a 2x2 image [[1, 0], [0, 1]] (sum x^2 = 2); generated [[0.5, 0], [0, 1]]:
    # sum (x_hat - x)^2 = 0.25, so NMSE = 0.25 / 2 = 0.125.
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    gen = torch.tensor([[0.5, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    assert nmse(gen, real).item() == pytest.approx(0.125)
    # Through paired_metrics, in [-1, 1] (SSIM's 11x11 window needs a larger image): real 0.5
    # everywhere on 16x16 (sum x^2 = 256 * 0.25 = 64), generated 0 at 4 pixels (sum of squared
    # differences 4 * 0.25 = 1): NMSE = 1 / 64.
    real = torch.full((1, 1, 16, 16), 0.5)
    gen = real.clone()
    gen[0, 0, 3, 4:8] = 0.0
    assert paired_metrics(gen * 2 - 1, real * 2 - 1)["nmse"][0] == pytest.approx(1 / 64)


def test_black_image_has_nmse_one_and_psnr_by_hand():
    real = torch.rand(2, 1, 32, 32) * 2 - 1
    black = -torch.ones_like(real)  # 0 in [0, 1]
    m = paired_metrics(black, real)
    assert m["nmse"] == pytest.approx([1.0, 1.0])
    u = to_unit_range(real)
    mse = (u**2).mean(dim=(1, 2, 3))
    assert m["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).tolist(), rel=1e-5)


def test_metrics_are_per_image_and_batching_does_not_matter():
    torch.manual_seed(0)
    real = torch.rand(5, 1, 32, 32) * 2 - 1
    gen = (real + 0.2 * torch.randn_like(real)).clamp(-1, 1)
    whole, batched = paired_metrics(gen, real), paired_metrics(gen, real, batch_size=2)
    for k in whole:
        assert whole[k].shape == (5,)
        assert whole[k] == pytest.approx(batched[k], rel=1e-6)
    assert np.all(whole["ssim"] < 1) and np.all(whole["nmse"] > 0)
    noisier = paired_metrics((real + 0.5 * torch.randn_like(real)).clamp(-1, 1), real)
    assert np.all(noisier["ssim"] < whole["ssim"]) and np.all(noisier["nmse"] > whole["nmse"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        paired_metrics(torch.zeros(2, 1, 32, 32), torch.zeros(3, 1, 32, 32))


def test_table_and_summary_by_group():
    meta = {"view": np.array(["SA", "SA", "LA"]), "subject": [b"001", b"002", b"003"]}
    table = metric_table({"ssim": [0.5, 0.7, 0.9], "nmse": [0.2, 0.4, np.nan]}, meta)
    assert list(table.columns) == ["view", "subject", "ssim", "nmse"]
    assert table["subject"].tolist() == ["001", "002", "003"]  # bytes decoded

    overall = summarise(table, ["ssim", "nmse"])
    ssim = overall.set_index("metric").loc["ssim"]
    assert ssim["n"] == 3 and ssim["mean"] == pytest.approx(0.7) and ssim["std"] == pytest.approx(0.2)
    assert ssim["text"] == "0.700 ± 0.200"
    assert overall.set_index("metric").loc["nmse", "n"] == 2  # NaN skipped

    per_view = summarise(table, ["ssim", "nmse"], by="view").set_index(["view", "metric"])
    assert per_view.loc[("SA", "ssim"), "mean"] == pytest.approx(0.6)
    assert per_view.loc[("LA", "ssim"), "text"] == "0.900"  # one image: no std
    assert math.isnan(per_view.loc[("LA", "ssim"), "std"])
    assert ("LA", "nmse") not in per_view.index  # its only value was NaN


def test_table_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="rows"):
        metric_table({"ssim": [1.0, 1.0]}, {"view": np.array(["SA"])})
    assert isinstance(metric_table({"ssim": [1.0]}), pd.DataFrame)

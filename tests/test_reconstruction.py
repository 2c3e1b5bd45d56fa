"""Reconstruction report of a VQ-VAE: per-image metrics, codebook usage, examples, JSON summary.

An untrained smoke VQ-VAE on the tiny ring store of test_train.py: the numbers are poor, but the
shapes, keys and bookkeeping are what is checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmldm.config import load_config
from mmldm.data.dataset import CardiacSliceDataset
from mmldm.evaluate.reconstruction import (
    codebook_usage,
    recon_summary,
    reconstruct_images,
    reconstruction_report,
    save_recon_metrics,
)
from mmldm.evaluate.spectrum import high_frequency_ratio
from mmldm.models.vqvae import VQVAE
from mmldm.viz import plots
from smoke_models import write_tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("store") / "tiny.h5")


@pytest.fixture(scope="module")
def vqvae():
    torch.manual_seed(0)
    return VQVAE(load_config("smoke").vqvae)


def test_codebook_usage_formulas():
    u = codebook_usage(np.array([5, 5, 0, 0]))
    assert u == {"codebook_size": 4, "positions": 10, "used": 2, "fraction_used": 0.5, "perplexity": pytest.approx(2.0)}
    assert codebook_usage(np.array([0, 7, 0]))["perplexity"] == pytest.approx(1.0)
    assert codebook_usage(np.ones(8, int))["perplexity"] == pytest.approx(8.0)


def test_report_shapes_keys_and_usage_sums(store, vqvae):
    vqvae.train()
    before = {k: v.clone() for k, v in vqvae.state_dict().items()}
    report = reconstruction_report(vqvae, store, split="val", batch_size=4, n_examples=3)
    n = len(CardiacSliceDataset(store, split="val"))
    assert report["split"] == "val" and report["n_images"] == n == 6
    assert set(report["metrics"]) == {"ssim", "psnr", "nmse"}
    assert all(v.shape == (n,) and np.isfinite(v).all() for v in report["metrics"].values())
    assert len(report["table"]) == n and {"subject", "view", "ssim"} <= set(report["table"].columns)
    # Every latent position of every image picks exactly one code.
    k = vqvae.config.codebook_size
    assert report["counts"].shape == (k,) and report["latent_shape"] == (vqvae.config.latent_channels, 8, 8)
    assert report["counts"].sum() == n * 8 * 8 == report["codebook"]["positions"]
    usage = report["codebook"]
    assert usage["used"] == (report["counts"] > 0).sum() and usage["fraction_used"] == usage["used"] / k
    assert 1.0 <= usage["perplexity"] <= usage["used"]
    ex = report["examples"]
    assert ex["index"] == [0, 2, 5] and ex["real"].shape == ex["reconstruction"].shape == (3, 1, 32, 32)
    assert ex["reconstruction"].abs().max() <= 1
    # No side effects: training mode back, codebook untouched (no EMA update, no restarts).
    assert vqvae.training
    assert all(torch.equal(before[k], v) for k, v in vqvae.state_dict().items())


def test_batch_size_does_not_change_the_numbers(store, vqvae):
    a = reconstruction_report(vqvae, store, batch_size=64)
    b = reconstruction_report(vqvae, store, batch_size=4)
    assert np.array_equal(a["counts"], b["counts"])
    for name in a["metrics"]:
        np.testing.assert_allclose(a["metrics"][name], b["metrics"][name], rtol=1e-5)


def test_recon_metrics_json_and_histogram(store, vqvae, tmp_path):
    report = reconstruction_report(vqvae, store, split="train", n_examples=2)
    path = save_recon_metrics(report, tmp_path / "vqvae" / "recon_metrics.json", profile="smoke", step=0)
    data = json.loads(path.read_text())
    assert data["profile"] == "smoke" and data["split"] == "train" and data["n_images"] == 24
    assert set(data["metrics"]) == {"ssim", "psnr", "nmse"} and data["metrics"]["ssim"]["n"] == 24
    assert data["metrics"]["nmse"]["mean"] == pytest.approx(report["metrics"]["nmse"].mean())
    assert data["codebook"]["positions"] == 24 * 64
    assert data["realism"]["spectrum"]["n"] == 24 and data["realism"]["spectrum"]["hf_ratio"] > 0
    assert data["realism"]["inception"]["fid"] is None  # not asked for: notebook 03 stays cheap
    assert [p.name for p in path.parent.iterdir()] == ["recon_metrics.json"]  # no temporary left behind
    fig = plots.codebook_histogram(report["counts"])
    assert "perplexity" in fig.axes[0].get_title()
    plots.plt.close(fig)


class PooledPixels(torch.nn.Module):
    """A cheap stand-in for Inception: 4 x 4 average-pooled pixels (16 features)."""

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def test_realism_of_reconstructions_is_streamed_exactly(store, vqvae):
    report = reconstruction_report(vqvae, store, split="val", batch_size=4)  # fid off: spectrum only
    spec, inc = report["realism"]["spectrum"], report["realism"]["inception"]
    assert inc["requested"] is False and inc["available"] is False and inc["fid"] is None
    # The batch-by-batch spectrum equals the one of the whole sets at once.
    ds = CardiacSliceDataset(store, split="val", expand=False)
    real = torch.from_numpy(np.stack([np.asarray(ds.read(i)[0], np.float32) for i in range(len(ds))]))[:, None]
    ds.close()
    whole = high_frequency_ratio(reconstruct_images(vqvae, real, batch_size=5), real)
    assert spec["n"] == 6 and spec["cutoff"] == 0.25
    assert spec["real_fraction"] == pytest.approx(whole["real_fraction"])
    assert spec["reconstruction_fraction"] == pytest.approx(whole["generated_fraction"], rel=1e-4)
    assert spec["hf_ratio"] == pytest.approx(whole["ratio"], rel=1e-4) and spec["hf_ratio"] > 0


def test_reconstruction_fid_when_asked_and_available(store, vqvae, tmp_path, monkeypatch):
    missing = reconstruction_report(vqvae, store, fid=True, inception_path=tmp_path / "absent.pt")
    assert missing["realism"]["inception"]["requested"] is True
    assert (
        missing["realism"]["inception"]["available"] is False
        and "absent.pt" in missing["realism"]["inception"]["reason"]
    )
    from mmldm.evaluate import reconstruction

    monkeypatch.setattr(reconstruction, "load_inception", lambda path=None, device="cpu": (PooledPixels(), ""))
    report = reconstruction_report(vqvae, store, split="val", batch_size=4, fid=True)
    inc = report["realism"]["inception"]
    assert inc["available"] is True and inc["n"] == 6 and inc["fid"] > 0 and inc["kid_mean"] is not None
    real, recon = (PooledPixels()(x) for x in (report["examples"]["real"], report["examples"]["reconstruction"]))
    assert not torch.allclose(real, recon)  # an untrained VQ-VAE: the two sets differ, FID > 0 above
    summary = recon_summary(report, profile="smoke")
    assert summary["realism"]["inception"]["fid"] == pytest.approx(inc["fid"])
    json.dumps(summary, allow_nan=False)  # NaN-free

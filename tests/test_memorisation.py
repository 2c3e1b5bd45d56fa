"""Nearest neighbours in chunks, and the copy ratio: a training image copied scores 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmldm.evaluate.memorisation import memorisation_check, memorisation_ratios, nearest_neighbours, ratio_summary
from mmldm.models.segmenter import Segmenter, SegmenterConfig


def test_chunked_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(37, 5, generator=g), torch.randn(53, 5, generator=g)
    d, i = nearest_neighbours(q, r, chunk=8)  # chunks that do not divide either size
    full = torch.cdist(q.double(), r.double())
    assert torch.equal(i, full.argmin(1))
    assert torch.allclose(d, full.min(1).values, atol=1e-10)


def test_copies_of_training_images_have_ratio_zero_and_fresh_images_do_not():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(40, 1, 32, 32, generator=g) * 2 - 1
    heldout = torch.rand(20, 1, 32, 32, generator=g) * 2 - 1
    fresh = torch.rand(10, 1, 32, 32, generator=g) * 2 - 1
    generated = torch.cat([train[[3, 17, 29]], fresh])  # three copies, then ten new images
    out = memorisation_ratios(generated, train, heldout, chunk=16)
    assert out["ratio"][:3].tolist() == [0.0, 0.0, 0.0]  # exactly: the distance is recomputed directly
    assert out["index_train"][:3].tolist() == [3, 17, 29]
    assert np.all(out["ratio"][3:] > 0.8)  # i.i.d. noise: as far from train as from held-out
    s = ratio_summary(out["ratio"])
    assert s["n"] == 13 and s["min"] == 0.0 and s["below_0.1"] == pytest.approx(3 / 13)


def test_memorisation_check_in_pixels_and_segmenter_features():
    torch.manual_seed(0)
    seg = Segmenter(SegmenterConfig(channels=(8, 16), num_layers=1))
    train, heldout = torch.rand(12, 1, 32, 32) * 2 - 1, torch.rand(6, 1, 32, 32) * 2 - 1
    out = memorisation_check(train[:2].clone(), train, heldout, segmenter=seg)
    assert set(out) == {"pixels", "segmenter features"}
    assert out["pixels"]["ratio"].tolist() == [0.0, 0.0]
    # features of the same image in another batch may differ in the last bits (BLAS paths)
    assert np.all(out["segmenter features"]["ratio"] < 1e-4)
    for space in out.values():
        assert space["index_train"].tolist() == [0, 1]

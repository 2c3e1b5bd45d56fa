"""The classifier two-sample test: chance on one distribution, near 1 on two that differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmldm.evaluate.c2st import assign_folds, auc_score, c2st

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2).clamp(-1, 1)


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc_score(scores, labels) == pytest.approx(brute)
    with pytest.raises(ValueError, match="both classes"):
        auc_score(scores, np.ones(40))


def test_one_distribution_scores_chance_and_two_score_near_one():
    a, b = smooth_images(96, 0), smooth_images(96, 1)
    same = c2st(a, b, folds=3, epochs=4, seed=0)
    assert 0.35 <= same["accuracy"] <= 0.65 and 0.3 <= same["auc"] <= 0.7
    grain = (b + 0.4 * torch.randn(b.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    differ = c2st(a, grain, folds=3, epochs=6, batch_size=16, seed=0)
    assert differ["accuracy"] >= 0.9 and differ["auc"] >= 0.95
    assert differ["n_a"] == differ["n_b"] == 96 and differ["folds"] == 3 and not differ["grouped"]
    assert c2st(a, grain, folds=3, epochs=6, batch_size=16, seed=0) == differ  # seeded


def test_groups_stay_in_one_fold_across_both_sets():
    groups = np.array(["p1", "p2", "p3", "p1", "p4", "p2", "p5", "p6"])
    fold = assign_folds(groups, 3, seed=0)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(np.array(["a", "b"]), 3, 0)
    a, b = smooth_images(24, 0), smooth_images(30, 1)
    subjects = [f"s{i % 6}" for i in range(30)]
    out = c2st(a, b, subjects[:24], subjects, folds=3, epochs=1)
    assert out["grouped"] and out["n_a"] == out["n_b"] == 24


def test_bad_sets_are_refused():
    a = smooth_images(16, 0)
    with pytest.raises(ValueError, match="image shape"):
        c2st(a, smooth_images(16, 1, size=16))
    with pytest.raises(ValueError, match="at least"):
        c2st(a[:3], a[:3], folds=4)
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        c2st(bad, a, folds=2, epochs=1)

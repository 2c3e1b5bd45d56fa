"""The classifier two-sample test (C2ST): can a small network tell two sets of slices apart?

Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017. Label set A 0 and set B
1, train a classifier on part of the union, and score it on the rest. If the two sets come from
one distribution no classifier beats chance on held-out data, so the test accuracy (and AUC)
sit at 0.5; the further above 0.5, the easier the sets are told apart::

    folds   k groups of the union, by subject where subjects are given (no subject on both sides
            of a split, so a classifier cannot score by recognising a patient it trained on)
    for each fold f:
        train  a fresh CNN on the other k - 1 folds (binary cross-entropy, A = 0, B = 1)
        score  p = sigmoid(CNN(x)) on fold f
    accuracy = mean over folds of  mean(1[p > 1/2] == label)
    AUC      = mean over folds of  P(p(b) > p(a)) for b in B, a in A   (Mann-Whitney, ties 1/2)

Unlike FID, which looks through one fixed network's features, the C2ST *learns* what differs
(specks, missing grain, flat regions, wrong contrast), so a generator cannot pass it by matching
one feature space. It is a judge: nothing in mmldm trains against it. Real slices of other
subjects differ too (scanner, patient), so a C2ST of real *training* against real held-out
slices is its floor: a generator is as real as the data allows when it scores that.

The network is deliberately small and ends in a global average pool: it judges texture and
local structure wherever they are, not where in the field of view something sits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn


class C2STNet(nn.Module):
    """Four stride-2 3x3 convs (GroupNorm, SiLU), a global average pool and one logit."""

    def __init__(self, channels=(8, 16, 32, 64)):
        super().__init__()
        layers, prev = [], 1
        for c in channels:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a 1 > score of a 0), ties counted 1/2.

    >>> auc_score(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both classes in the test fold")
    # Mann-Whitney U from the ranks of the union (average ranks for ties).
    rank_of = rankdata(np.concatenate([neg, pos]))
    u = rank_of[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def assign_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number per item: whole groups to a fold, groups shuffled by ``seed`` and dealt round."""
    names = np.unique(groups)
    if len(names) < k:
        raise ValueError(f"C2ST: {len(names)} group(s) cannot fill {k} folds")
    perm = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[p]: i % k for i, p in enumerate(perm)}
    return np.array([fold_of[g] for g in groups])


def _train(net, x, y, epochs, batch_size, lr, generator):
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=generator) < 0.5  # left-right flips: no side wins
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def _scores(net, x, batch_size):
    net.eval()
    return torch.cat([torch.sigmoid(net(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()


def c2st(
    a: torch.Tensor,
    b: torch.Tensor,
    groups_a=None,
    groups_b=None,
    folds: int = 4,
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict:
    """The C2ST of image sets ``a`` and ``b`` (N, 1, H, W) in [-1, 1]; returns
    ``{"accuracy", "accuracy_std", "auc", "auc_std", "folds", "n_a", "n_b", "grouped", "epochs"}``.

    The larger set is cut to the smaller one's size (evenly spread), so chance is exactly 0.5.
    ``groups_a`` / ``groups_b`` (one name per image, e.g. the subject) keep each group inside
    one fold, the same fold for a name found in both sets. Runs on the CPU with the current
    thread settings; seeded by ``seed`` (the same sets and seed give the same result)."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"C2ST needs two (N, C, H, W) sets of one image shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    n = min(len(a), len(b))
    if n < 2 * folds:
        raise ValueError(f"C2ST needs at least {2 * folds} images per set for {folds} folds, got {n}")
    keep_a = np.unique(np.linspace(0, len(a) - 1, n).round().astype(int))
    keep_b = np.unique(np.linspace(0, len(b) - 1, n).round().astype(int))
    x = torch.cat([a[keep_a], b[keep_b]]).float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError("C2ST: the images contain NaN or inf")
    y = torch.cat([torch.zeros(len(keep_a)), torch.ones(len(keep_b))])
    grouped = groups_a is not None and groups_b is not None
    if grouped:
        groups = np.concatenate([np.asarray(groups_a)[keep_a], np.asarray(groups_b)[keep_b]]).astype(str)
    else:  # every image its own group
        groups = np.array([f"{side}{i}" for side, idx in (("a", keep_a), ("b", keep_b)) for i in idx])
    fold = assign_folds(groups, folds, seed)
    accs, aucs = [], []
    for f in range(folds):
        test = fold == f
        y_test = y.numpy()[test]
        if y_test.min() == y_test.max():  # a fold of one class (few groups): skip it
            continue
        torch.manual_seed(seed * 1000 + f)
        net = C2STNet()
        g = torch.Generator().manual_seed(seed * 1000 + f)
        train = torch.from_numpy(~test)
        _train(net, x[train], y[train], epochs, batch_size, lr, g)
        p = _scores(net, x[torch.from_numpy(test)], batch_size)
        accs.append(float(((p > 0.5) == (y_test > 0.5)).mean()))
        aucs.append(auc_score(p, y_test))
    if not accs:
        raise ValueError("C2ST: no fold held both sets; give more groups")
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
        "auc": float(np.mean(aucs)),
        "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
        "folds": len(accs),
        "n_a": len(keep_a),
        "n_b": len(keep_b),
        "grouped": grouped,
        "epochs": epochs,
    }

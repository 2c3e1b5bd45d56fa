"""Memorisation check: is a generated image a copy of a training image?

For each generated image ``g`` we find its nearest training image and its nearest held-out image
(images the generator never saw), in some space ``phi`` (pixels, or the segmenter's features),
and take the ratio of the two distances::

    d_train(g) = min_i ||phi(g) - phi(t_i)||_2        d_held(g) = min_j ||phi(g) - phi(h_j)||_2
    ratio(g)   = d_train(g) / d_held(g)

A model that generalises makes images that are about as far from the training set as from fresh
images of the same distribution: ratios near 1 (a little below, because the training set is
usually larger, so its nearest neighbour is a little nearer). A model that copies makes images
that sit on a training image: ratios near 0 (an exact copy gives 0). The histogram of the ratios
shows both; there is no universal threshold, so compare with a model known not to copy, or with
real held-out images queried against the training set and against a second held-out set.

Distances are computed in chunks with ``torch.cdist`` (matrix-product form
``||a||^2 + ||b||^2 - 2 a.b``, fast on thousands x thousands), keeping a running minimum, so memory
stays at ``chunk x chunk`` distances. The product form loses precision for near-identical vectors
(float32 cancellation), so the distance to the chosen neighbour is then recomputed directly, in
float64: a copy gets a distance of exactly 0.

Plotting is left to the report: these functions return arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from mmldm.evaluate.fid import SegmenterFeatures, extract_features
from mmldm.models.segmenter import Segmenter


def nearest_neighbours(
    queries: torch.Tensor, reference: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the L2 distance to its nearest reference item and that item's index.

    ``queries`` (Q, ...) and ``reference`` (R, ...) are flattened to vectors (pixels or features).
    Returns ``(distance (Q,) float64, index (Q,) int64)``.
    """
    q = queries.reshape(len(queries), -1).float()
    r = reference.reshape(len(reference), -1).float()
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values each, the reference {r.shape[1]}")
    if len(r) == 0:
        raise ValueError("empty reference set")
    index = torch.empty(len(q), dtype=torch.long)
    for i in range(0, len(q), chunk):
        best = torch.full((min(chunk, len(q) - i),), torch.inf)
        arg = torch.zeros_like(best, dtype=torch.long)
        for j in range(0, len(r), chunk):
            d = torch.cdist(q[i : i + chunk], r[j : j + chunk])  # (chunk, chunk)
            d_min, d_arg = d.min(dim=1)
            better = d_min < best
            best = torch.where(better, d_min, best)
            arg = torch.where(better, d_arg + j, arg)
        index[i : i + chunk] = arg
    exact = (q.double() - r[index].double()).norm(dim=1)  # direct, float64: a copy is exactly 0
    return exact, index


def memorisation_ratios(
    generated: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor,
    chunk: int = 1024,
    query_groups=None,
    heldout_groups=None,
) -> dict[str, np.ndarray]:
    """Nearest training and held-out neighbours of every generated item, and the ratio.

    Inputs are (N, ...) tensors in one space (images -> pixel space, features -> feature space).
    Returns numpy arrays: ``d_train``, ``index_train`` (row in ``train``), ``d_heldout``,
    ``index_heldout`` and ``ratio = d_train / d_heldout`` (NaN for 0/0, inf for x/0).

    ``query_groups`` / ``heldout_groups`` (one label per item, e.g. the subject) restrict each
    query's held-out neighbour to held-out items of *another* group. Use them when the generated
    images were made from the held-out slices' own conditions: an image then resembles the real
    slice it was generated from (that is the aim), and letting that slice, or its subject's other
    slices, be the "nearest held-out image" would push every ratio above 1 and hide a copy.
    """
    d_train, i_train = nearest_neighbours(generated, train, chunk)
    if query_groups is None:
        d_held, i_held = nearest_neighbours(generated, heldout, chunk)
    else:
        d_held, i_held = _nearest_in_other_groups(generated, heldout, query_groups, heldout_groups, chunk)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d_train.numpy() / d_held.numpy()
    return {
        "d_train": d_train.numpy(),
        "index_train": i_train.numpy(),
        "d_heldout": d_held.numpy(),
        "index_heldout": i_held.numpy(),
        "ratio": ratio,
    }


def _nearest_in_other_groups(
    queries: torch.Tensor, heldout: torch.Tensor, query_groups, heldout_groups, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_neighbours` of each query among the held-out items of the other groups."""
    qg, hg = np.asarray(query_groups), np.asarray(heldout_groups)
    if len(qg) != len(queries) or len(hg) != len(heldout):
        raise ValueError(
            f"{len(qg)} query groups for {len(queries)} queries, "
            f"{len(hg)} held-out groups for {len(heldout)} held-out items"
        )
    dist = torch.full((len(queries),), torch.nan, dtype=torch.float64)
    index = torch.full((len(queries),), -1, dtype=torch.long)
    for group in np.unique(qg):
        rows = torch.from_numpy(np.flatnonzero(qg == group))
        others = torch.from_numpy(np.flatnonzero(hg != group))
        if len(others) == 0:
            raise ValueError(f"no held-out item outside group {group!r} to compare with")
        d, i = nearest_neighbours(queries[rows], heldout[others], chunk)
        dist[rows], index[rows] = d, others[i]
    return dist, index


def memorisation_check(
    generated: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor,
    segmenter: Segmenter | None = None,
    chunk: int = 1024,
    batch_size: int = 64,
    query_groups=None,
    heldout_groups=None,
) -> dict[str, dict]:
    """:func:`memorisation_ratios` in pixel space and, with a segmenter, in its feature space.

    Images are (N, 1, H, W) in [-1, 1]. Returns ``{"pixels": {...}, "segmenter features": {...}}``.
    ``query_groups`` / ``heldout_groups``: see :func:`memorisation_ratios`.
    """
    groups = dict(query_groups=query_groups, heldout_groups=heldout_groups)
    out = {"pixels": memorisation_ratios(generated, train, heldout, chunk, **groups)}
    if segmenter is not None:
        phi = SegmenterFeatures(segmenter)
        feats = [extract_features(phi, x, batch_size) for x in (generated, train, heldout)]
        out["segmenter features"] = memorisation_ratios(*feats, chunk=chunk, **groups)
    return out


def ratio_summary(ratio: np.ndarray, thresholds: tuple[float, ...] = (0.1, 0.5)) -> dict[str, float]:
    """Median, 5th percentile and minimum of the ratios, and the fraction below each threshold
    (``below_0.5`` etc.): the few numbers a report table can hold beside the histogram."""
    r = np.asarray(ratio, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return {"n": 0, "median": np.nan, "p05": np.nan, "min": np.nan, **{f"below_{t:g}": np.nan for t in thresholds}}
    out = {"n": int(r.size), "median": float(np.median(r)), "p05": float(np.percentile(r, 5)), "min": float(r.min())}
    out.update({f"below_{t:g}": float(np.mean(r < t)) for t in thresholds})
    return out

"""What the tests build their smoke models from: a tiny ring store, the training, one torch thread.

``write_tiny_store`` writes a store directly (32 x 32 concentric LV / myocardium / RV rings), so the
tests need neither the phantom nor real data; ``train_smoke_ldm`` trains the ``smoke`` VQVAE then
LDM on it (seconds). conftest's session fixture ``smoke_ldm`` is the usual way to get them; a test
that needs another store (test_evaluate_run.py: two held-out subjects, two pathologies) calls these
itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mmldm.data.store import StoreWriter


@contextmanager
def one_torch_thread():
    """One intra-op thread: the machine is shared, and two threads of tiny ops mostly spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_tiny_store(path, size: int = 32, subjects: int = 5, per_subject: int = 6, seed: int = 0,
                     held_out: int = 1, pathologies: tuple[str, ...] = ("",)) -> Path:
    """Rings of label 3/2/1 (RV, myocardium, LV) around a jittered centre; the last ``held_out``
    subjects are validation; the view is SA but LA for each subject's last slice; phases alternate
    ED/ES and ``pathologies`` change every two slices."""
    rng = np.random.default_rng(seed)
    n = subjects * per_subject
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = size / 2 + rng.uniform(-3, 3, 2)
        r = np.hypot(yy - cy, xx - cx)
        for lab, frac in ((3, 0.35), (2, 0.25), (1, 0.15)):
            labels[i][r < size * frac] = lab
    images = np.array([-0.8, 0.6, -0.2, 0.3], np.float32)[labels] + rng.normal(0, 0.05, labels.shape)
    edges = np.zeros_like(labels)
    edges[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    edges[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    writer = StoreWriter(path, size)
    writer.append(np.clip(images, -1, 1).astype(np.float32), labels, edges)
    subject = [f"{s:03d}" for s in range(subjects) for _ in range(per_subject)]
    writer.finish(
        {"subject": subject, "view": (["SA"] * (per_subject - 1) + ["LA"]) * subjects,
         "phase": ["ED", "ES"] * (n // 2), "slice_index": list(range(n)), "source": ["phantom"] * n,
         "split": ["val" if int(s) >= subjects - held_out else "train" for s in subject],
         "vendor": [""] * n, "centre": [""] * n, "pathology": [pathologies[i // 2 % len(pathologies)] for i in range(n)],
         "spacing": [(1.0, 1.0)] * n},
        {"config": f"size: {size}\n", "sources": "[]"},
    )
    return path


def train_smoke_ldm(cfg, store, run_dir: Path, figures_dir: Path) -> tuple[dict, dict]:
    """Train ``cfg``'s VQVAE into ``run_dir/vqvae``, then its LDM into ``run_dir/ldm``, on one thread.

    Returns the two trainers' summaries (``train_vqvae``'s, ``train_ldm``'s)."""
    from mmldm.train.checkpoint import LAST
    from mmldm.train.ldm import train_ldm
    from mmldm.train.vqvae import train_vqvae

    with one_torch_thread():
        vq = train_vqvae(cfg, store, run_dir / "vqvae", progress=False, figures_dir=figures_dir)
        ldm = train_ldm(cfg, store, run_dir / "vqvae" / LAST, run_dir / "ldm", progress=False, figures_dir=figures_dir)
    return vq, ldm

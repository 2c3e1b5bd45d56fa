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


def write_tiny_store(
    path,
    size: int = 32,
    subjects: int = 5,
    per_subject: int = 6,
    seed: int = 0,
    held_out: int = 1,
    pathologies: tuple[str, ...] = ("",),
) -> Path:
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
        {
            "subject": subject,
            "view": (["SA"] * (per_subject - 1) + ["LA"]) * subjects,
            "phase": ["ED", "ES"] * (n // 2),
            "slice_index": list(range(n)),
            "source": ["phantom"] * n,
            "split": ["val" if int(s) >= subjects - held_out else "train" for s in subject],
            "vendor": [""] * n,
            "centre": [""] * n,
            "pathology": [pathologies[i // 2 % len(pathologies)] for i in range(n)],
            "spacing": [(1.0, 1.0)] * n,
        },
        {"config": f"size: {size}\n", "sources": "[]"},
    )
    return path


def train_smoke_ldm(cfg, store, run_dir: Path, figures_dir: Path) -> tuple[dict, dict]:
    """Train ``cfg``'s VQVAE into ``run_dir/vqvae``, then its LDM into ``run_dir/ldm``, on one thread.

    Returns the two trainers' summaries (``train_vqvae``'s, ``train_ldm``'s)."""
    from mmldm.checkpoint import LAST
    from mmldm.train.ldm import train_ldm
    from mmldm.train.vqvae import train_vqvae

    with one_torch_thread():
        vq = train_vqvae(cfg, store, run_dir / "vqvae", progress=False, figures_dir=figures_dir)
        ldm = train_ldm(cfg, store, run_dir / "vqvae" / LAST, run_dir / "ldm", progress=False, figures_dir=figures_dir)
    return vq, ldm


# ---------------------------------------------------------------------------------------------
# The command line as a user calls it, and a tiny raw dataset to point it at
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def cli_env() -> dict:
    """The environment of a CLI subprocess: this checkout's mmldm, one thread."""
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli_command(*args) -> list[str]:
    import sys

    return [sys.executable, "-m", "mmldm", *map(str, args)]


def run_cli(*args, timeout: float = 300):
    """``python -m mmldm ARGS`` in a subprocess; the CompletedProcess (text stdout, stderr, returncode)."""
    import subprocess

    return subprocess.run(cli_command(*args), env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def dead_pid() -> int:
    """The id of a process that has just ended (and been reaped): no process has it now."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_acdc(root, patients: int = 3, size: int = 40, slices: int = 4, seed: int = 0) -> Path:
    """A tiny ACDC-layout folder: ``patientNNN/Info.cfg`` (ED frame 1, ES frame 2) and the two
    frames' image + ``_gt`` (ACDC numbering 1 RV, 2 MYO, 3 LV) with ring anatomy, 1.5 mm pixels."""
    import nibabel as nib

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for p in range(1, patients + 1):
        name = f"patient{p:03d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\nHeight: 170.0\nNbFrame: 2\nWeight: 70.0\n")
        for frame in (1, 2):
            cy, cx = size / 2 + rng.uniform(-2, 2, 2)
            r = np.hypot(yy - cy, xx - cx)
            label = np.zeros((size, size, slices), np.uint8)
            for acdc_value, frac in ((1, 0.35), (2, 0.25), (3, 0.15)):  # RV outside, LV inside
                label[r < size * frac] = acdc_value
            image = (np.array([20.0, 150.0, 60.0, 200.0], np.float32)[label] + rng.normal(0, 5, label.shape)).astype(
                np.float32
            )
            affine = np.diag([1.5, 1.5, 10.0, 1.0])
            nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}_frame{frame:02d}.nii.gz"))
            nib.save(nib.Nifti1Image(label, affine), str(folder / f"{name}_frame{frame:02d}_gt.nii.gz"))
    return root

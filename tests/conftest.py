"""Shared fixtures.

Real-data tests read ``../shared/data`` (ACDC and one M&Ms-2 subject). On a user's fresh machine
it is absent and those tests skip; CI sets ``MMLDM_REQUIRE_REAL_DATA=1`` so that a missing
folder fails instead of silently skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MMLDM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _real(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        if os.environ.get("MMLDM_REQUIRE_REAL_DATA") == "1":
            pytest.fail(f"real data required (MMLDM_REQUIRE_REAL_DATA=1) but {path} is missing")
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """``../shared/data/acdc/training``: ACDC patients, labels 1 RV 2 MYO 3 LV on disk."""
    return _real("acdc/training")


@pytest.fixture(scope="session")
def mnms2_root() -> Path:
    """``../shared/data/mnms2``: one M&Ms-2 subject (001), labels 1 LV 2 MYO 3 RV on disk."""
    return _real("mnms2")


@pytest.fixture
def one_thread():
    """One torch thread during a test (modules that want it everywhere: ``pytestmark``)."""
    from smoke_models import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def smoke_ldm(tmp_path_factory) -> dict:
    """A smoke VQ-VAE + LDM trained once per session (1 thread, seconds) on the tiny ring store
    (tests/smoke_models.py).

    Returns ``{"store", "ckpt", "figures", "overrides", "cfg", "run", "vqvae", "ldm"}``;
    ``overrides`` point a ``smoke`` config (``cfg``, and the notebooks' ``overrides`` parameter) at
    this store, run folder ``run`` and figures folder; ``vqvae`` and ``ldm`` are the trainers'
    summaries.
    """
    from mmldm.config import load_config
    from smoke_models import train_smoke_ldm, write_tiny_store

    root = tmp_path_factory.mktemp("smoke_ldm")
    store = write_tiny_store(root / "store.h5")
    overrides = [f"paths.store={store}", f"paths.runs={root / 'runs'}", f"paths.figures={root / 'figures'}"]
    cfg = load_config("smoke", overrides=overrides)
    vq, ldm = train_smoke_ldm(cfg, store, cfg.run_dir, cfg.figures_dir)
    return {
        "store": store,
        "ckpt": cfg.run_dir / "ldm" / "last.pt",
        "figures": cfg.figures_dir,
        "overrides": overrides,
        "cfg": cfg,
        "run": cfg.run_dir,
        "vqvae": vq,
        "ldm": ldm,
    }

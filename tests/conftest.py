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

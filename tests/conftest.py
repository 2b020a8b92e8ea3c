"""Shared test fixtures: paths to the shared real images (skipped when absent) and the repo's sample images."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data relative to the repo root; a user's clone has none, and the tests that need it skip.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SHARED_PAPER_DIR = REPO_ROOT.parent / "shared" / "paper"
#: Small UCMerced validation images shipped in the repo (USGS public domain).
SAMPLES_DIR = REPO_ROOT / "assets" / "samples"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder, or skip the test with the reason."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"needs the shared real images at {SHARED_DATA_DIR} (not part of a user's clone)")
    return SHARED_DATA_DIR


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES_DIR

"""Shared fixtures: the real SDSS dev file beside the repo, and the bundled sample."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DEV = ROOT.parent / "shared" / "data" / "gz1_sdss_dev.h5"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
SAMPLE = ROOT / "data" / "gz1_sdss_sample.h5"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def dev_file():
    if not SHARED_DEV.exists():
        pytest.skip(f"{SHARED_DEV} is absent (only in the project's workspace, not in a user's clone)")
    return SHARED_DEV


@pytest.fixture(scope="session")
def shared_weights():
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"{SHARED_WEIGHTS} is absent (only in the project's workspace, not in a user's clone)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def sample_file():
    assert SAMPLE.exists(), f"the bundled sample {SAMPLE} is missing from the repo"
    return SAMPLE

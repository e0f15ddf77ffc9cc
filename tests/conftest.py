"""Shared helpers of the top-level tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture
def tether_bin() -> Path:
    """The installed ``tether`` console script of the interpreter running the tests."""
    path = Path(sys.executable).parent / "tether"
    assert path.exists(), f"{path} missing: run `make venv`"
    return path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without TETHER_* variables, for subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}

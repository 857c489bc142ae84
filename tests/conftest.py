"""Shared fixtures: tiny hand-made datasets and the path to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture
def tiny_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["red shoe", "blue shoe", "green hat", "black hat"],
            "category": ["shoes", "shoes", "hats", "hats"],
            "price": [10.0, 12.0, 5.0, 6.0],
        }
    )
    inter = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u3", "u3", "u3"],
            "item_id": ["a", "b", "c", "c", "d", "a", "b", "d"],
            "event": ["view", "click", "purchase", "click", "click", "view", "click", "click"],
            "timestamp": [1, 2, 9, 3, 8, 4, 5, 10],
        }
    )
    judg = pd.DataFrame(
        {"query": ["shoe", "shoe", "hat", "hat"], "item_id": ["a", "b", "c", "a"], "grade": [3, 2, 3, 0]}
    )
    return items, inter, judg

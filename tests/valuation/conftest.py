"""Shared fixtures of the valuation tests."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from shoprank.valuation.features import Embedder


@pytest.fixture
def fake_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random but fixed vectors instead of the text encoder (fast, offline)."""

    def vec(texts: list[str]) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little") for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=8) for s in seeds]).astype(np.float32)

    monkeypatch.setattr(Embedder, "items", lambda self: vec(self.ds.items["item_id"].tolist()))
    monkeypatch.setattr(Embedder, "queries", lambda self, qs: vec(list(qs)))

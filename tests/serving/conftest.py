"""Fixtures for the serving tests: the tiny synthetic shop, two saved models, started services.

The frozen encoder is slow on CPU, so item vectors go through a persistent embedding cache
(keyed by encoder fingerprint and text, so it can never serve a stale vector)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoprank.data.dataset import Dataset
from shoprank.data.synth import SynthConfig, synthesize
from shoprank.models.base import get_model_class
from shoprank.serving.service import Service
from shoprank.serving.settings import Settings

API_KEY = "test-key-123"
BIDS = {"i000003": 2.0, "i000010": 0.5, "i000020": 1.0, "i000030": 3.0, "i000040": 0.1}


@pytest.fixture(scope="session")
def emb_cache() -> Path:
    d = Path(tempfile.gettempdir()) / "shoprank-test-embeddings"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    ds, _ = synthesize(SynthConfig.preset("tiny"))
    items = ds.items.copy()
    for iid, bid in BIDS.items():
        row = items.index[items["item_id"] == iid][0]
        attrs = json.loads(str(items.at[row, "attributes"] or "{}"))
        items.at[row, "attributes"] = json.dumps(attrs | {"bid": bid})
    ds = ds.with_tables(items=items)
    path = tmp_path_factory.mktemp("shop") / "data"
    ds.save(path)
    return ds, path


@pytest.fixture(scope="session")
def dense_dir(shop: tuple[Dataset, Path], emb_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "dense"
    get_model_class("dense")(cache_dir=str(emb_cache)).fit(shop[0]).save(out)
    return out


@pytest.fixture(scope="session")
def pop_dir(shop: tuple[Dataset, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "popularity"
    get_model_class("popularity")().fit(shop[0]).save(out)
    return out


def make_settings(model_dir: Path, data_dir: Path, tmp: Path, emb_cache: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"store_url": f"sqlite:///{tmp / 'store.sqlite'}", "api_key": API_KEY,
                            "cache_dir": emb_cache, "poll_seconds": 0.2}
    return Settings(model_dir=model_dir, data_dir=data_dir, **(base | kw))


@pytest.fixture(scope="session")
def dense_service(shop: tuple[Dataset, Path], dense_dir: Path, emb_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One started service for the in-process tests (they use distinct users and items)."""
    tmp = tmp_path_factory.mktemp("svc")
    reports = tmp / "reports"
    reports.mkdir()
    svc = Service(make_settings(dense_dir, shop[1], tmp, emb_cache, reports_dir=reports))
    svc.start()
    yield svc
    svc.stop()


"""SASRec: learns a deterministic next-item rule, is reproducible, and round-trips on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.errors import NotFittedError, ShoprankError
from shoprank.models.base import UserBatch, get_model_class, load_model
from shoprank.models.sasrec import SASRec

N_ITEMS = 12
FAST = {"max_len": 8, "hidden": 32, "n_layers": 1, "n_heads": 1, "dropout": 0.1, "lr": 1e-2,
        "epochs": 40, "patience": 5, "verbose": False, "num_threads": 1}


def _cyclic(n_users: int = 60, length: int = 8, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Each user walks i, i+1, ... (mod N_ITEMS) from a random start; last step is valid."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(N_ITEMS)],
                          "title": [f"item {k}" for k in range(N_ITEMS)]})
    rows = []
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for j in range(length):
            rows.append((f"u{u}", f"i{(start + j) % N_ITEMS}", "purchase", t0 + pd.Timedelta(hours=j), j == length - 1))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "timestamp", "last"])
    ds = Dataset.from_frames("cyclic", items, inter.drop(columns="last"))
    last = inter["last"].to_numpy()
    train = ds.with_tables(interactions=ds.interactions[~last].reset_index(drop=True))
    valid = ds.with_tables(interactions=ds.interactions[last].reset_index(drop=True))
    return train, valid


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset]:
    return _cyclic()


@pytest.fixture(scope="module")
def fitted(data: tuple[Dataset, Dataset]) -> SASRec:
    """Fixed epochs (no early stopping): valid NDCG saturates at 1.0 before every prefix is learnt."""
    return SASRec(**FAST).fit(data[0])


def _probe(ds: Dataset) -> tuple[UserBatch, np.ndarray]:
    """Histories of 1..4 consecutive items (internal ids) and the item that follows."""
    hist, tgt = [], []
    for start in range(N_ITEMS):
        for n in (1, 2, 4):
            ext = [f"i{(start + j) % N_ITEMS}" for j in range(n)]
            hist.append(ds.item_map.to_internal(ext))
            tgt.append(ds.item_map.to_internal([f"i{(start + n) % N_ITEMS}"])[0])
    return UserBatch([f"p{i}" for i in range(len(hist))], hist), np.asarray(tgt)


def test_learns_next_item(fitted: SASRec, data: tuple[Dataset, Dataset]) -> None:
    users, tgt = _probe(data[0])
    scores = fitted.score_users(users)
    assert scores.dtype == np.float32 and scores.shape == (len(users), N_ITEMS)
    hr1 = float((scores.argmax(1) == tgt).mean())
    assert hr1 >= 0.95
    top, _ = fitted.recommend(users, k=1)
    assert (top[:, 0] == scores.argmax(1)).all()


def test_early_stopping_restores_best(data: tuple[Dataset, Dataset]) -> None:
    train, valid = data
    m = SASRec(**(FAST | {"epochs": 200, "patience": 3})).fit(train, valid)
    assert len(m.history_) < 200  # stopped early
    assert m.best_epoch_ == len(m.history_) - 3
    assert m.best_valid_ndcg_ > 0.8
    vset = m._valid_set(train, valid)
    assert vset is not None
    assert m._ndcg10(*vset) == pytest.approx(m.best_valid_ndcg_)  # best weights are back


def test_fit_returns_self_and_registered(data: tuple[Dataset, Dataset]) -> None:
    m = SASRec(**(FAST | {"epochs": 1}))
    assert m.fit(data[0]) is m
    assert get_model_class("sasrec") is SASRec
    assert m.tasks == frozenset({"recommend", "click"})


def test_unfitted_raises() -> None:
    users = UserBatch(["u"], [np.array([0, 1])])
    with pytest.raises(NotFittedError):
        SASRec().score_users(users)
    with pytest.raises(NotFittedError):
        SASRec().recommend(users)


def test_empty_history_uses_fallback(fitted: SASRec) -> None:
    scores = fitted.score_users(UserBatch(["a", "b"], [np.zeros(0, np.int64), np.array([0])]))
    assert np.isfinite(scores).all()
    assert fitted.net_ is not None
    np.testing.assert_allclose(scores[0], fitted.net_.fallback.numpy())


def test_save_load_identical(fitted: SASRec, data: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    users, tgt = _probe(data[0])
    fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / "weights.pt").exists()
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, SASRec)
    np.testing.assert_array_equal(loaded.score_users(users), fitted.score_users(users))
    np.testing.assert_array_equal(loaded.score(users, tgt), fitted.score(users, tgt))


def test_same_seed_same_scores(data: tuple[Dataset, Dataset]) -> None:
    users, _ = _probe(data[0])
    cfg = FAST | {"epochs": 3}
    a = SASRec(**cfg).fit(*data).score_users(users)
    b = SASRec(**cfg).fit(*data).score_users(users)
    c = SASRec(**(cfg | {"seed": 1})).fit(*data).score_users(users)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_param_rejected() -> None:
    with pytest.raises(ShoprankError, match="unknown SASRec parameter"):
        SASRec(hiden=32)

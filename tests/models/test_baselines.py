"""Baseline rankers on tiny hand-made shops: contracts, persistence and planted behaviour."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import log_loss, roc_auc_score

from shoprank.data.dataset import Dataset
from shoprank.data.splits import histories_for
from shoprank.errors import NotFittedError
from shoprank.models.base import MODEL_REGISTRY, Ranker, UserBatch, get_model_class, load_model
from shoprank.models.baselines import (
    ALSRanker,
    BM25Ranker,
    BPRRanker,
    ItemKNNRanker,
    LightGBMRanker,
    PopularityRanker,
    TransitionRanker,
    tokenize,
)

T0 = 1_600_000_000


def shop(n_items: int, events: list[tuple[str, int, int]]) -> Dataset:
    """Dataset with items i0..i{n-1} and (user, item, time offset) click events."""
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]})
    inter = pd.DataFrame(
        {
            "user_id": [u for u, _, _ in events],
            "item_id": [f"i{i}" for _, i, _ in events],
            "event": "click",
            "timestamp": [T0 + t for _, _, t in events],
        }
    )
    return Dataset.from_frames("tiny", items, inter)


def batch(*histories: list[int]) -> UserBatch:
    return UserBatch([f"q{i}" for i in range(len(histories))], [np.array(h, dtype=np.int64) for h in histories])


def block_shop(seed: int = 0) -> Dataset:
    """Two taste groups: users u0.. like items 0-9, users v0.. like items 10-19."""
    rng = np.random.default_rng(seed)
    ev = []
    for g, (prefix, lo) in enumerate((("u", 0), ("v", 10))):
        for u in range(15):
            for t, i in enumerate(rng.choice(10, size=5, replace=False)):
                ev.append((f"{prefix}{u}", lo + int(i), g * 1000 + u * 10 + t))
    return shop(20, ev)


def text_shop() -> Dataset:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["cordless drill 18v", "hammer drill bits set", "garden hose 50 ft", "drill press stand"],
            "brand": ["Bosch", "Makita", "Gardena", None],
            "category": ["tools", "tools", "garden", "tools"],
            "description": ["a drill", None, "water hose for garden", "heavy stand"],
        }
    )
    return Dataset.from_frames("text", items)


def chain_shop() -> Dataset:
    """Every user takes 5 (popular), then walks the chain 0 -> 1 -> 2 -> 3 (some only part)."""
    ev = []
    for u in range(6):
        for t, i in enumerate([0, 1, 2, 3][: 2 + u % 3]):
            ev.append((f"u{u}", i, u * 100 + t))
        ev.append((f"u{u}", 5, u * 100 - 50))
    return shop(6, [*ev, ("x", 5, 0), ("y", 5, 0)])


def rule_shop(n_users: int = 60, per_user: int = 24, seed: int = 0) -> Dataset:
    """Ratings: a user likes an item iff it is in the user's home category (planted rule)."""
    rng = np.random.default_rng(seed)
    n_items, cats = 40, ["red", "green", "blue", "gold"]
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"item {i}" for i in range(n_items)],
            "category": [cats[i % 4] for i in range(n_items)],
            "price": rng.uniform(1, 100, n_items).round(2),
        }
    )
    rows = []
    for u in range(n_users):
        home = u % 4
        for t, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rows.append((f"u{u}", f"i{i}", "rating", float(i % 4 == home), T0 + u * 1000 + t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "label", "timestamp"])
    return Dataset.from_frames("rules", items, inter)


def fast(name: str) -> Ranker:
    settings: dict[str, dict[str, object]] = {
        "als": {"factors": 8, "iterations": 10, "num_threads": 1},
        "bpr": {"factors": 8, "iterations": 50, "num_threads": 1},
        "lightgbm": {"n_estimators": 30, "num_threads": 1, "min_child_samples": 5},
    }
    return get_model_class(name)(**settings.get(name, {}))


REC_MODELS = ["popularity", "itemknn", "transition", "als", "bpr"]
ALL_MODELS = [*REC_MODELS, "bm25", "lightgbm"]


def test_registry_and_tasks() -> None:
    assert set(ALL_MODELS) <= set(MODEL_REGISTRY)
    for name in REC_MODELS:
        assert get_model_class(name).tasks == {"recommend", "click"}
    assert BM25Ranker.tasks == {"search"}
    assert LightGBMRanker.tasks == {"click"}


def _use(model: Ranker) -> object:
    if "recommend" in model.tasks:
        return model.recommend(batch([0, 1]), k=3)
    if "search" in model.tasks:
        return model.search(["drill"], k=2)
    return model.score(batch([0, 1]), np.array([2]))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unfitted_raises(name: str) -> None:
    with pytest.raises(NotFittedError):
        _use(fast(name))
    with pytest.raises(NotFittedError):
        fast(name).save("/nonexistent/never-written")


def _fitted(name: str) -> tuple[Ranker, Dataset]:
    ds = text_shop() if name == "bm25" else rule_shop(20, 12) if name == "lightgbm" else block_shop()
    model = fast(name)
    assert model.fit(ds) is model
    assert model.n_items_ == ds.n_items
    return model, ds


@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model, ds = _fitted(name)
    model.save(tmp_path / name)
    assert not list((tmp_path / name).glob("*.pkl"))
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.params == model.params
    if "recommend" in model.tasks:
        users = batch([0, 1, 2], [], [12, 15], [19, 3, 3, 7])
        a, b = model.score_users(users), loaded.score_users(users)
        assert a.dtype == np.float32 and a.shape == (4, ds.n_items)
        np.testing.assert_array_equal(a, b)
    elif "search" in model.tasks:
        qs = ["drill", "garden hose", "nothing matches"]
        cands = [np.array([0, 1, 3]), np.array([2, 0]), np.array([1])]
        for x, y in zip(model.score_query_items(qs, cands), loaded.score_query_items(qs, cands), strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(model.search(qs, 3)[1], loaded.search(qs, 3)[1])
    else:
        rows = pd.DataFrame({"user_id": ["u1", "u2", "new"], "timestamp": pd.Timestamp.now(tz="UTC")})
        h = histories_for(ds, rows)
        users = UserBatch(rows["user_id"].tolist(), h.items, h.labels)
        items = np.array([0, 5, 9])
        np.testing.assert_array_equal(model.score(users, items), loaded.score(users, items))


@pytest.mark.parametrize("name", REC_MODELS)
def test_click_through_score_users(name: str) -> None:
    model, _ = _fitted(name)
    users = batch([0, 1], [13], [])
    items = np.array([2, 14, 7])
    full = model.score_users(users)
    np.testing.assert_allclose(model.score(users, items), full[np.arange(3), items])


@pytest.mark.parametrize("name", [*REC_MODELS, "lightgbm"])
def test_empty_batch(name: str) -> None:
    model, ds = _fitted(name)
    assert model.score(batch(), np.zeros(0, np.int64)).shape == (0,)
    if "recommend" in model.tasks:
        assert model.score_users(batch()).shape == (0, ds.n_items)


def test_unsupported_tasks_say_so() -> None:
    pop, _ = _fitted("popularity")
    with pytest.raises(NotImplementedError, match="'popularity' does not support search"):
        pop.search(["drill"])
    bm25, _ = _fitted("bm25")
    with pytest.raises(NotImplementedError, match="'bm25' does not support recommend"):
        bm25.recommend(batch([0]))
    with pytest.raises(NotImplementedError, match="does not support click"):
        bm25.score(batch([0]), np.array([1]))
    gbm, _ = _fitted("lightgbm")
    with pytest.raises(NotImplementedError, match="'lightgbm' does not support recommend"):
        gbm.score_users(batch([0]))


def test_popularity_order_and_decay() -> None:
    # item 2: 3 old clicks; item 1: 2 recent clicks; item 0: 1 click
    ev = [("a", 2, 0), ("b", 2, 0), ("c", 2, 0), ("a", 1, 90 * 86400), ("b", 1, 90 * 86400), ("c", 0, 50)]
    ds = shop(4, ev)
    ids, _ = PopularityRanker().fit(ds).recommend(batch([], [3]), k=4)
    assert ids.tolist() == [[2, 1, 0, 3], [2, 1, 0, 3]]
    ids, _ = PopularityRanker(half_life_days=7).fit(ds).recommend(batch([]), k=2)
    assert ids.tolist() == [[1, 2]]


def test_itemknn_recommends_cooccurring_item() -> None:
    # 0 and 1 are always taken together; 2 and 3 together; 4 alone
    ev = [(f"u{u}", i, t) for u in range(5) for t, i in enumerate([0, 1])]
    ev += [(f"v{u}", i, t) for u in range(5) for t, i in enumerate([2, 3])]
    ev += [("w", 4, 0), ("w", 2, 1)]
    model = ItemKNNRanker(k_neighbors=2).fit(shop(5, ev))
    ids, _ = model.recommend(batch([0], [3]), k=1, exclude_seen=True)
    assert ids[:, 0].tolist() == [1, 2]
    assert model.sim_[0].nnz <= 2
    unknown, _ = model.recommend(batch([]), k=1)  # empty history: popularity back-off
    assert unknown[0, 0] == 2


def test_transition_predicts_next_in_chain() -> None:
    model = TransitionRanker().fit(chain_shop())
    ids, _ = model.recommend(batch([0], [0, 1], [1, 2], [0]), k=1, exclude_seen=True)
    assert ids[:, 0].tolist() == [1, 2, 3, 1]
    ids, _ = model.recommend(batch([]), k=1)  # nothing to follow: most popular
    assert ids[0, 0] == 5


@pytest.mark.parametrize("cls", [ALSRanker, BPRRanker])
def test_factor_models_find_taste_groups(cls: Callable[..., Ranker]) -> None:
    params: dict[str, object] = {"factors": 4, "num_threads": 1, "random_state": 0}  # planted rank 2
    params |= {"iterations": 15} if cls is ALSRanker else {"iterations": 300, "learning_rate": 0.05}
    model = cls(**params).fit(block_shop())
    users = batch([0, 1, 2], [10, 11, 12], [4])
    s = model.score_users(users)
    assert np.isfinite(s).all()
    assert s[0, 3:10].mean() > s[0, 10:20].mean() + 1e-3
    assert s[1, 13:20].mean() > s[1, 0:10].mean() + 1e-3
    ids, _ = model.recommend(users, k=5, exclude_seen=True)
    assert (ids[0] < 10).all() and (ids[1] >= 10).all() and (ids[2] < 10).sum() >= 4


def test_als_fold_in_matches_implicit_user_step() -> None:
    from implicit.als import AlternatingLeastSquares

    model = ALSRanker(factors=6, iterations=5, num_threads=1, alpha=5.0).fit(block_shop())
    hist = [[0, 3, 4], [12], [1, 2, 15, 19]]
    ref = AlternatingLeastSquares(factors=6, regularization=model.regularization, alpha=5.0, num_threads=1)
    ref.item_factors = model.item_factors_
    rows = np.repeat(np.arange(3), [len(h) for h in hist])
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(hist))), shape=(3, 20))
    np.testing.assert_allclose(model.user_factors(batch(*hist)), ref.recalculate_user(np.arange(3), x), rtol=1e-3, atol=1e-5)


def test_bm25_exact_title_first() -> None:
    model = BM25Ranker().fit(text_shop())
    assert model.mode_ == "word"
    ids, scores = model.search(["Drill press stand", "garden hose", "zzz"], k=2)
    assert ids[0, 0] == 3 and ids[1, 0] == 2
    assert (scores[2] == 0).all()
    (s,) = model.score_query_items(["cordless drill"], [np.array([2, 0, 1])])
    assert s[1] > s[2] > s[0] == 0


def test_bm25_chinese_catalog() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["p1", "p2", "p3", "p4"],
            "title": ["华为手机 Mate 60 全网通", "苹果平板电脑 iPad", "蒙牛纯牛奶 250ml", "洗发水 去屑 清爽"],
        }
    )
    model = BM25Ranker().fit(Dataset.from_frames("zh", items))
    assert model.mode_ == "cjk_bigram"
    ids, _ = model.search(["手机", "牛奶", "平板电脑", "ipad"], k=1)
    assert ids[:, 0].tolist() == [0, 2, 1, 1]
    assert BM25Ranker(tokenizer="word").fit(Dataset.from_frames("zh", items)).search(["手机"], 1)[1][0, 0] == 0
    assert tokenize("华为手机 Mate60", "cjk_bigram") == ["华为", "为手", "手机", "mate60"]


def test_lightgbm_learns_planted_rule() -> None:
    ds = rule_shop()
    inter = ds.interactions
    user_no = inter["user_id"].str[1:].astype(int)
    step = (inter["timestamp"] - pd.Timestamp(T0, unit="s", tz="UTC")).dt.total_seconds() % 1000
    train = ds.with_tables(interactions=inter[user_no < 40])
    valid_users = ds.with_tables(interactions=inter[(user_no >= 40) & (step < 12)])
    test = inter[(user_no >= 40) & (step >= 12)]
    model = LightGBMRanker(n_estimators=100, num_threads=1, min_child_samples=5).fit(train, valid_users)
    # held-out users: histories from all their earlier ratings
    h = histories_for(ds, test)
    users = UserBatch(test["user_id"].tolist(), h.items, h.labels)
    p = model.score(users, ds.item_map.to_internal(test["item_id"]))
    assert p.dtype == np.float32 and np.isfinite(p).all()
    assert roc_auc_score(test["label"].to_numpy(), p) > 0.9


def _with_weights(ds: Dataset, w: np.ndarray) -> Dataset:
    return ds.with_tables(interactions=ds.interactions.assign(weight=w))


def _last_of_every_other_user(ds: Dataset) -> np.ndarray:
    """The last event of every other user (each user keeps earlier events)."""
    inter = ds.interactions
    last = inter.groupby("user_id")["timestamp"].transform("max") == inter["timestamp"]
    users = sorted(inter["user_id"].unique())
    return (last & inter["user_id"].isin(users[::2])).to_numpy()


@pytest.mark.parametrize("name", ["popularity", "itemknn", "transition", "als"])
def test_weight_zero_is_the_same_as_removing_the_events(name: str) -> None:
    """Value-aware retraining of the classical baselines: `data weigh --drop-lowest` sets
    weight 0, which must act exactly like deleting the rows (and a model that ignored the
    column would keep them)."""
    ds = block_shop()
    drop = _last_of_every_other_user(ds)
    weighted = fast(name).fit(_with_weights(ds, np.where(drop, 0.0, 1.0)))
    removed = fast(name).fit(ds.with_tables(interactions=ds.interactions[~drop].reset_index(drop=True)))
    kept = fast(name).fit(ds)
    b = batch([0, 1, 2], [10, 11], [3], [])
    np.testing.assert_allclose(weighted.score_users(b), removed.score_users(b), rtol=1e-5, atol=1e-6)
    assert not np.allclose(weighted.score_users(b), kept.score_users(b))


@pytest.mark.parametrize("name", REC_MODELS)
def test_unit_weights_change_nothing(name: str) -> None:
    ds = block_shop()
    b = batch([0, 1, 2], [10, 11], [3])
    np.testing.assert_array_equal(fast(name).fit(_with_weights(ds, np.ones(len(ds.interactions)))).score_users(b),
                                  fast(name).fit(ds).score_users(b))


def test_fractional_weights_scale_counts() -> None:
    """Half-weight events count half: popularity sums weights; a transition counts the weight
    of the event it leads to."""
    ds = chain_shop()  # six users take 5; 0 -> 1 for all six, 1 -> 2 for four
    half = (ds.interactions["item_id"] == "i5").to_numpy()
    pop = PopularityRanker().fit(_with_weights(ds, np.where(half, 0.5, 1.0)))
    assert pop.item_scores_[5] == pytest.approx(4.0) and pop.item_scores_[0] == pytest.approx(6.0)
    to2 = (ds.interactions["item_id"] == "i2").to_numpy()
    tr = TransitionRanker(normalize=False).fit(_with_weights(ds, np.where(to2, 0.25, 1.0)))
    plain = TransitionRanker(normalize=False).fit(ds)
    assert tr.trans_[1, 2] == pytest.approx(0.25 * plain.trans_[1, 2]) and plain.trans_[1, 2] > 0
    assert tr.trans_[2, 3] == pytest.approx(plain.trans_[2, 3])  # leaving item 2 keeps its weight


def test_weighted_itemknn_similarity() -> None:
    """A pair's entry is its weight: down-weighting the co-clicks of items 0 and 1 lowers their
    cosine, and a pair weighs as much as its best event (a real click beside a 0-weight one)."""
    ds = shop(3, [("a", 0, 0), ("a", 1, 1), ("b", 0, 2), ("b", 1, 3), ("b", 1, 4), ("c", 2, 5)])
    base = ItemKNNRanker(shrink=0.0).fit(ds)
    low = ItemKNNRanker(shrink=0.0).fit(_with_weights(ds, np.array([1.0, 0.1, 1.0, 1.0, 1.0, 1.0])))
    assert low.sim_[0, 1] < base.sim_[0, 1] - 0.05
    dup = ItemKNNRanker(shrink=0.0).fit(_with_weights(ds, np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0])))
    assert dup.sim_[0, 1] == pytest.approx(base.sim_[0, 1])


def test_lightgbm_record_weights_take_noisy_rows_out() -> None:
    """Value-aware retraining: flipped labels at weight 0 leave the rule intact; a model that
    ignored the `weight` column would score exactly as the noisy one."""
    ds = rule_shop()
    inter = ds.interactions
    user_no = inter["user_id"].str[1:].astype(int)
    step = (inter["timestamp"] - pd.Timestamp(T0, unit="s", tz="UTC")).dt.total_seconds() % 1000
    tr = inter[user_no < 40].copy()
    flip = np.random.default_rng(1).random(len(tr)) < 0.4
    tr.loc[flip, "label"] = 1.0 - tr.loc[flip, "label"]
    test = inter[(user_no >= 40) & (step >= 12)]
    h = histories_for(ds, test)
    users, items = UserBatch(test["user_id"].tolist(), h.items, h.labels), ds.item_map.to_internal(test["item_id"])
    y = test["label"].to_numpy()
    kw = {"n_estimators": 60, "num_threads": 1, "min_child_samples": 5}
    noisy = LightGBMRanker(**kw).fit(ds.with_tables(interactions=tr))
    weighted = LightGBMRanker(**kw).fit(ds.with_tables(interactions=tr.assign(weight=np.where(flip, 0.0, 1.0))))
    p_noisy, p_weighted = noisy.score(users, items), weighted.score(users, items)
    assert roc_auc_score(y, p_weighted) >= roc_auc_score(y, p_noisy)
    assert log_loss(y, p_weighted) < log_loss(y, p_noisy) - 0.05, (log_loss(y, p_noisy), log_loss(y, p_weighted))


def test_random_ranker_is_deterministic_and_order_free(tiny_frames):
    from shoprank.data.dataset import Dataset
    from shoprank.models.base import UserBatch, get_model_class

    items, inter, _ = tiny_frames
    ds = Dataset.from_frames("t", items, inter)
    m = get_model_class("random")(seed=3).fit(ds)
    ub = UserBatch(["u1", "u2"], [np.zeros(0, np.int64)] * 2)
    full = m.score_users(ub)
    assert full.shape == (2, 4) and np.all((full >= 0) & (full < 1))
    np.testing.assert_array_equal(m.score_users(ub.slice(1, 2))[0], full[1])
    np.testing.assert_array_equal(m.score(ub, np.array([2, 3])), full[[0, 1], [2, 3]])
    q = m.score_query_items(["hat"], [np.array([3, 1])])[0]
    assert q[0] == m.score_query_items(["hat"], [np.array([3])])[0][0]
    assert not np.array_equal(full, get_model_class("random")(seed=4).fit(ds).score_users(ub))


def test_a_baseline_loads_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from shoprank.models.base import get_model_class; get_model_class('popularity'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-500:]

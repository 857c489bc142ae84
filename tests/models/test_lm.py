"""Fine-tuned two-tower LM ranker: tuning strategies, exact activation cache, learning, I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import shoprank.models.lm  # noqa: F401  (registers "lm")
from shoprank.data.dataset import Dataset
from shoprank.errors import NotFittedError, ShoprankError
from shoprank.models.base import UserBatch, get_model_class, load_model
from shoprank.models.lm import LMRanker
from shoprank.models.tuning import CachedTower, TopKConfig, get_tuning, load_backbone

TITLES = [
    "running shoes", "leather hiking boots", "espresso coffee beans", "green tea leaves",
    "cordless power drill", "claw hammer", "wool winter sweater", "cotton t-shirt",
    "stainless steel water bottle", "yoga mat", "bluetooth headphones", "phone charger cable",
    "rain umbrella", "sunglasses", "laptop backpack", "wristwatch",
]
# slang synonyms -> item; the frozen encoder misranks about half of them
SYNONYMS = {
    "kicks": 0, "trekking footwear": 1, "java": 2, "cuppa": 3, "driver": 4, "nail whacker": 5,
    "jumper": 6, "tee": 7, "flask": 8, "exercise pad": 9, "cans": 10, "lead": 11,
    "brolly": 12, "shades": 13, "rucksack": 14, "ticker": 15,
}
FAST = {"max_length": 32, "batch_size": 8, "verbose": False, "num_threads": 1, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shop() -> Dataset:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TITLES))], "title": TITLES})
    # each user buys item 2j then its "partner" 2j+1 (shoes -> boots, coffee -> tea, ...)
    rows = []
    for u in range(8):
        a = 2 * (u % 8)
        for t, it in enumerate((a, a + 1, (a + 2) % 16, (a + 3) % 16)):
            rows.append({"user_id": f"u{u}", "item_id": f"i{it}", "event": "click", "timestamp": 10 * u + t})
    judg = pd.DataFrame({"query": list(SYNONYMS), "item_id": [f"i{i}" for i in SYNONYMS.values()],
                         "grade": [2.0] * len(SYNONYMS)})
    return Dataset.from_frames("lm", items, pd.DataFrame(rows), judg)


def _search_only(ds: Dataset) -> Dataset:
    return ds.with_tables(interactions=ds.interactions.iloc[0:0])


def _mrr(model: LMRanker) -> float:
    idx, _ = model.search(list(SYNONYMS), k=len(TITLES))
    ranks = [int(np.flatnonzero(row == t)[0]) for row, t in zip(idx, SYNONYMS.values(), strict=True)]
    return float(np.mean([1.0 / (r + 1) for r in ranks]))


def test_every_strategy_trains_and_counts_its_parameters(shop: Dataset) -> None:
    ds = _search_only(shop)
    bb, _ = load_backbone("minilm")
    layers = bb.encoder.layer
    d = int(bb.config.hidden_size)
    proj = d * d + d
    expect = {
        "head": proj,
        "top_k": sum(p.numel() for p in layers[-2:].parameters()) + proj,
        "lora": len(layers) * 2 * 4 * (d + d) + proj,  # rank 4 on query and value
        "full": sum(p.numel() for p in bb.parameters()) + proj,  # pooler dropped
    }
    cfgs = {"head": {}, "top_k": {"k": 2}, "lora": {"r": 4}, "full": {}}
    got = {}
    for name, cfg in cfgs.items():
        m = LMRanker(tuning=name, tuning_config=cfg, epochs=1, **FAST).fit(ds)
        before = get_tuning(name, cfg).build(*load_backbone("minilm"), max_length=32).trainable_state()
        after = m.tower.trainable_state()
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in after), f"{name}: nothing trained"
        assert np.isfinite(m.history_[-1]["loss"]) and m.history_[-1]["pairs_per_s"] > 0
        got[name] = m.n_trainable_
    assert got == expect
    assert got["head"] < got["lora"] < got["top_k"] < got["full"]
    assert got["lora"] < 0.02 * got["full"]


def test_top_k_cache_equals_the_full_model_with_frozen_lower_layers() -> None:
    texts = ["red running shoes for trail and road", "coffee", "a cordless power drill with two batteries",
             "tea", "wool sweater"]
    bb, tok = load_backbone("minilm", dropout=0.1)
    tower = get_tuning("top_k", {"k": 2}).build(bb, tok, max_length=32)
    assert isinstance(tower, CachedTower)
    tower.set_caching(False)
    tower.train()
    torch.manual_seed(0)
    ref = tower(texts)  # the model's own forward; lower layers frozen (eval mode, no grad)
    ref.sum().backward()
    ref_grad = {k: p.grad.clone() for k, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)

    tower.set_caching(True)
    tower.lower(texts[::-1][:3])  # fill part of the cache in another batch composition
    torch.manual_seed(0)  # same dropout masks in the trainable top layers
    out = tower(texts)
    out.sum().backward()
    assert tower.cache_size == len(texts) and tower.n_lower_forwards == len(texts)
    assert (out - ref).abs().max().item() < 1e-5
    for k, g in ref_grad.items():
        p = dict(tower.named_parameters())[k]
        assert p.grad is not None and (p.grad - g).abs().max().item() < 1e-5, k
    assert set(ref_grad) == {k for k, p in tower.named_parameters() if p.requires_grad}

    tower.eval()  # inference: cached path again equals the uncached forward, no new bottom pass
    with torch.no_grad():
        cached = tower(texts)
        tower.set_caching(False)
        plain = tower(texts)
    assert (cached - plain).abs().max().item() < 1e-5
    assert tower.n_lower_forwards == len(texts)


def test_planted_synonyms_are_learned_beyond_the_frozen_encoder(shop: Dataset) -> None:
    ds = _search_only(shop)
    frozen = LMRanker(tuning="top_k", tuning_config={"k": 1}, epochs=0, **FAST).fit(ds)
    tuned = LMRanker(tuning="top_k", tuning_config={"k": 1}, epochs=8, lr=1e-3, warmup_ratio=0.0, **FAST).fit(ds)
    base, after = _mrr(frozen), _mrr(tuned)
    assert base < 0.8
    assert after > base + 0.15 and after > 0.9


@pytest.mark.parametrize("tuning", ["lora", "top_k"])
def test_save_load_restores_identical_scores(shop: Dataset, tmp_path: Path, tuning: str) -> None:
    m = LMRanker(tuning=tuning, tuning_config={"r": 4} if tuning == "lora" else {"k": 1}, epochs=1,
                 n_negatives=2, **FAST).fit(shop)
    users = UserBatch(["a", "b", "c"], [np.array([0, 1]), np.array([], dtype=np.int64), np.array([4])])
    m.save(tmp_path / "m")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "m" / "trainable.safetensors")))
    if tuning == "lora":
        assert keys and all("lora_" in k or k.startswith("proj.") for k in keys)
    else:
        assert any("layer.5." in k for k in keys) and not any("layer.4." in k for k in keys)
    back = load_model(tmp_path / "m")
    assert isinstance(back, LMRanker) and back.params == m.params
    np.testing.assert_allclose(back.score_users(users), m.score_users(users), atol=1e-6)
    np.testing.assert_allclose(back.score(users, np.array([3, 5, 7])), m.score(users, np.array([3, 5, 7])), atol=1e-6)
    cands = [np.array([0, 2, 4]), np.array([5, 1])]
    for a, b in zip(back.score_query_items(["kicks", "tea"], cands), m.score_query_items(["kicks", "tea"], cands), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(back.search(["java"], k=5)[0], m.search(["java"], k=5)[0])


def test_recommend_validation_early_stopping_and_determinism(shop: Dataset) -> None:
    train = shop.with_tables(interactions=shop.interactions.groupby("user_id").head(3))
    valid = shop.with_tables(interactions=shop.interactions.groupby("user_id").tail(1), judgments=shop.judgments.iloc[:4])
    kw = {"tuning": "head", "epochs": 2, "patience": 1, "n_negatives": 2, **FAST}
    a = LMRanker(**kw).fit(train, valid)
    b = LMRanker(**kw).fit(train, valid)
    assert a.history_[0]["epoch"] == 0 and "valid_ndcg10" in a.history_[0]
    assert a.best_valid_ndcg_ == max(h["valid_ndcg10"] for h in a.history_)
    users = UserBatch(["x", "y"], [np.array([0]), np.array([2, 3])], [np.array([1.0]), np.array([1.0, 0.0])])
    np.testing.assert_array_equal(a.score_users(users), b.score_users(users))
    top, _ = a.recommend(users, k=3, exclude_seen=True)
    assert top.shape == (2, 3) and 0 not in top[0]
    assert a.user_texts(users) == ["running shoes", "espresso coffee beans"]  # disliked item left out
    assert get_model_class("lm") is LMRanker


def test_unfitted_model_raises() -> None:
    m = LMRanker(**FAST)
    users = UserBatch(["u"], [np.array([0])])
    with pytest.raises(NotFittedError):
        m.score_users(users)
    with pytest.raises(NotFittedError):
        m.search(["shoes"])
    with pytest.raises(NotFittedError):
        m.score_query_items(["shoes"], [np.array([0])])
    with pytest.raises(NotFittedError):
        m.save("unused")


def test_strategy_errors_are_clear() -> None:
    with pytest.raises(ShoprankError,
                       match=r"unknown tuning strategy 'nope'; available: adalora, full, head, ia3, lora, prefix, top_k"):
        LMRanker(tuning="nope")
    with pytest.raises(ShoprankError, match="unknown setting"):
        LMRanker(tuning="top_k", tuning_config={"kk": 2})
    with pytest.raises(ShoprankError, match="unknown LMRanker parameter"):
        LMRanker(learning_rate=1.0)
    m = LMRanker(tuning=TopKConfig(k=1))
    assert m.params["tuning"] == "top_k" and m.params["tuning_config"]["k"] == 1


def test_record_weights_reach_the_training_pairs(shop: Dataset) -> None:
    """Value-aware retraining: an event's `weight` scales its pair's loss; weight 0 removes it as a
    target while it stays in the later histories."""
    inter = shop.interactions.copy()
    inter["weight"] = 1.0
    inter.loc[(inter["user_id"] == "u0") & (inter["item_id"] == "i1"), "weight"] = 0.0
    inter.loc[(inter["user_id"] == "u1") & (inter["item_id"] == "i4"), "weight"] = 0.25
    ds = shop.with_tables(interactions=inter)
    m = LMRanker(tuning="head", **FAST)
    m.titles_ = list(TITLES)
    plain, weighted = m.rec_pairs(shop), m.rec_pairs(ds)
    assert len(plain) == 8 * 3 and len(weighted) == 8 * 3 - 1
    got = dict(zip(zip(weighted.query, weighted.item.tolist(), strict=True), weighted.weight.tolist(), strict=True))
    assert ("running shoes", 1) not in got  # u0's i1 has weight 0
    assert got[("leather hiking boots ; running shoes", 2)] == 1.0  # ... but stays in u0's history
    assert got[("green tea leaves ; espresso coffee beans", 4)] == 0.25
    j = shop.judgments.assign(weight=[0.0] + [1.0] * (len(shop.judgments) - 1))
    sp = m.search_pairs(shop.with_tables(judgments=j))
    assert len(sp) == len(shop.judgments) - 1 and "kicks" not in sp.query


def test_negative_weights_are_rejected_with_the_row() -> None:
    from shoprank.data.schema import INTERACTIONS
    from shoprank.data.validate import validate_table

    df = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["i0", "i1"], "event": ["click", "click"],
                       "timestamp": [1, 2], "weight": [1.0, -0.5]})
    with pytest.raises(ShoprankError, match=r"weight.*negative|negative.*weight"):
        validate_table(df, INTERACTIONS, file="events.csv")

"""lm-click: P(like | history, item) from a fine-tuned encoder, on tiny hand-made ratings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from shoprank.data.dataset import Dataset
from shoprank.data.splits import histories_for
from shoprank.errors import NotFittedError, ShoprankError
from shoprank.models.base import UserBatch, get_model_class, load_model
from shoprank.models.lmclick import LMClickRanker

CATS = ["western", "horror", "comedy", "romance"]
NOUNS = ["river", "train", "city", "garden", "island", "winter", "castle", "doctor", "mirror", "letter"]
T0 = 1_600_000_000
FAST = {"verbose": False, "num_threads": 1, "seed": 0, "max_length": 16, "epochs": 15, "patience": 4}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rules() -> tuple[Dataset, Dataset, Dataset, pd.DataFrame]:
    """A user likes an item iff its title has the user's category word (planted rule).

    Returns (all data, train, valid, held-out test rows of unseen users)."""
    rng = np.random.default_rng(0)
    n = len(CATS) * len(NOUNS)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)],
                          "title": [f"{CATS[i % 4]} {NOUNS[i // 4]}" for i in range(n)]})
    rows = []
    for u in range(36):
        home = u % 4
        for t, i in enumerate(rng.choice(n, size=10, replace=False)):
            rows.append((f"u{u}", f"i{i}", "rating", float(i % 4 == home), T0 + u * 1000 + t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "label", "timestamp"])
    ds = Dataset.from_frames("rules", items, inter)
    no = ds.interactions["user_id"].str[1:].astype(int)
    train = ds.with_tables(interactions=ds.interactions[no < 24])
    valid = ds.with_tables(interactions=ds.interactions[(no >= 24) & (no < 30)])
    test = ds.interactions[no >= 30]
    test = test.groupby("user_id").tail(5)  # targets with at least five earlier ratings
    return ds, train, valid, test


def _test_batch(rules: tuple[Dataset, Dataset, Dataset, pd.DataFrame]) -> tuple[UserBatch, np.ndarray, np.ndarray]:
    ds, _, _, test = rules
    h = histories_for(ds, test)
    users = UserBatch(test["user_id"].tolist(), h.items, h.labels)
    return users, ds.item_map.to_internal(test["item_id"]), test["label"].to_numpy()


@pytest.fixture(scope="module")
def fitted(rules: tuple[Dataset, Dataset, Dataset, pd.DataFrame]) -> LMClickRanker:
    _, train, valid, _ = rules
    return LMClickRanker(**FAST).fit(train, valid)


def test_learns_planted_rule_with_probabilities(rules, fitted: LMClickRanker) -> None:
    users, items, y = _test_batch(rules)
    p = fitted.score(users, items)
    assert p.dtype == np.float32 and p.shape == (len(y),)
    assert np.all((p >= 0) & (p <= 1))
    assert roc_auc_score(y, p) > 0.8
    # learnt, not just the dense prior it starts from (epoch 0 is the untrained model)
    assert fitted.best_valid_auc_ > fitted.history_[0]["valid_auc"] + 0.1


def test_save_load_identical_scores(rules, fitted: LMClickRanker, tmp_path: Path) -> None:
    users, items, _ = _test_batch(rules)
    fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / "trainable.safetensors").exists()
    again = load_model(tmp_path / "m")
    assert isinstance(again, LMClickRanker)
    np.testing.assert_array_equal(again.score(users, items), fitted.score(users, items))


def test_unfitted_raises_and_fit_returns_self(rules) -> None:
    _, train, _, _ = rules
    users, items, _ = _test_batch(rules)
    m = get_model_class("lm-click")(**FAST | {"epochs": 1})
    with pytest.raises(NotFittedError):
        m.score(users, items)
    assert m.fit(train) is m
    assert m.tasks == frozenset({"click"}) and m.probabilistic


def test_text_repr_topk_is_deterministic(rules) -> None:
    _, train, valid, _ = rules
    users, items, _ = _test_batch(rules)
    cfg = FAST | {"user_repr": "text", "tuning": "top_k", "tuning_config": {"k": 1}, "epochs": 1,
                  "max_length": 32}
    a = LMClickRanker(**cfg).fit(train, valid).score(users, items)
    b = LMClickRanker(**cfg).fit(train, valid).score(users, items)
    assert np.all((a >= 0) & (a <= 1))
    np.testing.assert_array_equal(a, b)


def test_bad_settings_fail_early() -> None:
    with pytest.raises(ShoprankError, match="user_repr"):
        LMClickRanker(user_repr="graph")
    with pytest.raises(ShoprankError, match="unknown tuning"):
        LMClickRanker(tuning="bogus")
    with pytest.raises(ShoprankError, match="unknown"):
        LMClickRanker(learning_rate=1.0)


def test_record_weights_take_noisy_rows_out_of_the_loss(rules) -> None:
    """Value-aware retraining: with the flipped rows at weight 0 the model learns the rule
    again; a model that ignored the `weight` column would score exactly as the noisy one."""
    _, train, valid, _ = rules
    inter = train.interactions.copy()
    flip = np.random.default_rng(1).random(len(inter)) < 0.4
    inter.loc[flip, "label"] = 1.0 - inter.loc[flip, "label"]
    users, items, y = _test_batch(rules)
    noisy = LMClickRanker(**FAST).fit(train.with_tables(interactions=inter), valid)
    weighted = LMClickRanker(**FAST).fit(train.with_tables(interactions=inter.assign(weight=np.where(flip, 0.0, 1.0))),
                                         valid)
    p_noisy, p_weighted = noisy.score(users, items), weighted.score(users, items)
    assert roc_auc_score(y, p_weighted) >= roc_auc_score(y, p_noisy)
    # 40% flipped labels pull the noisy model's probabilities towards 0.5
    assert log_loss(y, p_weighted) < log_loss(y, p_noisy) - 0.05, (log_loss(y, p_noisy), log_loss(y, p_weighted))

"""Streaming full-ranking evaluation, click and search drivers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shoprank.evaluation import (
    RankingReport,
    auc,
    evaluate_click,
    evaluate_full_ranking,
    evaluate_search,
    gauc,
    item_coverage,
    logloss,
    ndcg_at_k_graded,
    ranking_metrics,
    search_report,
)
from shoprank.models.base import Ranker, UserBatch, top_k


class MatrixModel(Ranker):
    """Returns row int(user_id) of a fixed score matrix (a view: tests check it stays intact)."""

    tasks = frozenset({"recommend"})

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = scores
        self.fitted_ = True
        self.n_items_ = scores.shape[1]
        self.calls: list[int] = []

    def score_users(self, users: UserBatch) -> np.ndarray:
        self.calls.append(len(users))
        idx = np.array([int(u) for u in users.user_ids], dtype=np.int64)
        if len(idx) and np.all(np.diff(idx) == 1):
            return self.scores[idx[0] : idx[-1] + 1]  # a view into the model's own array
        return self.scores[idx]


def _setup(
    n_users: int = 60, n_items: int = 80, seed: int = 0
) -> tuple[MatrixModel, UserBatch, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items)).astype(np.float32)
    users = UserBatch(
        [str(i) for i in range(n_users)],
        [rng.choice(n_items, 3, replace=False) for _ in range(n_users)],
    )
    targets = [rng.choice(n_items, rng.integers(1, 5), replace=False) for _ in range(n_users)]
    # make some users easy: their first target gets the top score
    for i in range(0, n_users, 3):
        scores[i, targets[i][0]] = 2.0
    return MatrixModel(scores), users, targets


def test_batch_size_does_not_change_results() -> None:
    model, users, targets = _setup()
    cold = np.arange(len(users)) % 4 == 0
    pop = np.random.default_rng(1).random(model.n_items_)
    kw: dict[str, Any] = dict(ks=(5, 10), slices={"cold": cold}, item_popularity=pop, n_bootstrap=200, progress=False)
    a = evaluate_full_ranking(model, users, targets, batch_size=7, exclude=users.histories, **kw)
    b = evaluate_full_ranking(model, users, targets, batch_size=1000, exclude=users.histories, **kw)
    assert a.metrics == b.metrics
    assert a.ci == b.ci
    assert a.slices == b.slices and a.slice_ci == b.slice_ci
    assert a.per_user.keys() == b.per_user.keys()
    for k in a.per_user:
        np.testing.assert_array_equal(a.per_user[k], b.per_user[k])
    assert max(model.calls[:9]) == 7  # really streamed in batches of 7


def test_matches_brute_force_on_full_matrix() -> None:
    model, users, targets = _setup()
    rep = evaluate_full_ranking(model, users, targets, ks=(5, 10), batch_size=16, n_bootstrap=0, progress=False)
    top, _ = top_k(model.scores, 10)
    ref = ranking_metrics(top, targets, ks=(5, 10))
    for k, v in ref.items():
        np.testing.assert_allclose(rep.per_user[k], v)
        assert rep.metrics[k] == pytest.approx(float(np.mean(v)))
    assert rep.metrics["coverage@10"] == pytest.approx(item_coverage(top, model.n_items_))
    assert rep.metrics["coverage@5"] == pytest.approx(item_coverage(top[:, :5], model.n_items_))
    assert rep.ci == {}  # n_bootstrap=0
    assert list(rep.metrics)[:6] == ["ndcg@5", "recall@5", "precision@5", "hr@5", "map@5", "ndcg@10"]
    assert {"mrr", "hr@10", "recall@10", "map@10"} <= set(rep.metrics)


def test_exclude_masks_items_without_touching_model_scores() -> None:
    model, users, targets = _setup()
    before = model.scores.copy()
    seen = [np.array([t[0]]) for t in targets]  # exclude the first target of every user
    rep = evaluate_full_ranking(model, users, targets, ks=(10,), exclude=seen, n_bootstrap=0, progress=False)
    np.testing.assert_array_equal(model.scores, before)
    masked = model.scores.copy()
    for i, s in enumerate(seen):
        masked[i, s] = -np.inf
    top, _ = top_k(masked, 10)
    np.testing.assert_allclose(rep.per_user["hr@10"], ranking_metrics(top, targets, ks=(10,))["hr@10"])
    easy = np.arange(len(users)) % 3 == 0
    plain = evaluate_full_ranking(model, users, targets, ks=(10,), n_bootstrap=0, progress=False)
    assert np.all(plain.per_user["mrr"][easy] == 1.0)
    assert np.all(rep.per_user["mrr"][easy] < 1.0)  # the planted top item is excluded


def test_slices_ci_and_skipped_users() -> None:
    model, users, targets = _setup()
    targets[5] = np.array([], dtype=np.int64)  # nothing to find: skipped
    mask = np.arange(len(users)) < 30
    rep = evaluate_full_ranking(
        model, users, targets, ks=(10,), slices={"first": mask, "rest": ~mask}, n_bootstrap=300, progress=False
    )
    assert rep.n_users == 59 and rep.n_skipped == 1
    assert math.isnan(rep.per_user["ndcg@10"][5])
    assert rep.slices["first"]["n"] == 29 and rep.slices["rest"]["n"] == 30
    sel = mask & ~np.isnan(rep.per_user["ndcg@10"])
    assert rep.slices["first"]["ndcg@10"] == pytest.approx(rep.per_user["ndcg@10"][sel].mean())
    for name in ("ndcg@10", "hr@10", "mrr"):
        lo, hi = rep.ci[name]
        assert lo <= rep.metrics[name] <= hi
    assert set(rep.slice_ci["first"]) == set(rep.per_user)
    assert 0 < rep.slices["first"]["coverage@10"] <= rep.metrics["coverage@10"]


def test_report_serialises() -> None:
    model, users, targets = _setup()
    pop = np.arange(model.n_items_, dtype=float)
    rep = evaluate_full_ranking(
        model, users, targets, ks=(10,), item_popularity=pop, slices={"s": np.ones(len(users), bool)},
        n_bootstrap=50, progress=False,
    )
    assert isinstance(rep, RankingReport)
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["metrics"]["pop_pct@10"] == pytest.approx(rep.metrics["pop_pct@10"])
    assert "arp@10" in d["metrics"] and "per_user" not in d
    assert len(rep.to_dict(per_user=True)["per_user"]["ndcg@10"]) == len(users)
    f = rep.to_frame()
    assert isinstance(f, pd.DataFrame)
    assert list(f.columns) == ["value", "ci_lo", "ci_hi", "s"]
    assert f.loc["n", "value"] == len(users)
    assert f.loc["ndcg@10", "value"] == pytest.approx(f.loc["ndcg@10", "s"])


def test_small_catalog_graded_gains_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(5)
    scores = rng.random((10, 6)).astype(np.float32)
    model = MatrixModel(scores)
    users = UserBatch([str(i) for i in range(10)], [np.array([], dtype=np.int64)] * 10)
    targets = [np.array([i % 6, (i + 1) % 6]) for i in range(10)]
    gains = [np.array([1.0, 3.0]) for _ in range(10)]
    rep = evaluate_full_ranking(model, users, targets, ks=(3, 10), gains=gains, n_bootstrap=0, batch_size=4)
    assert "evaluate" in capsys.readouterr().err  # tqdm bar on stderr
    assert rep.metrics["coverage@10"] == 1.0  # whole (6 item) catalog ranked
    assert rep.metrics["recall@10"] == 1.0 and rep.metrics["hr@3"] <= 1.0
    dense = np.zeros((10, 6))
    for i in range(10):
        dense[i, targets[i]] = gains[i]
    # ranking the whole catalog = reranking all 6 items as judged candidates
    for k in (3, 10):
        ref = ndcg_at_k_graded(list(scores), list(dense), k)
        np.testing.assert_allclose(rep.per_user[f"ndcg@{k}"], ref)


def test_input_validation() -> None:
    model, users, targets = _setup()
    with pytest.raises(ValueError, match="target lists"):
        evaluate_full_ranking(model, users, targets[:-1], progress=False)
    with pytest.raises(ValueError, match="boolean mask"):
        evaluate_full_ranking(model, users, targets, slices={"x": np.ones(3, bool)}, progress=False)
    bad = list(targets)
    bad[0] = np.array([10_000])
    with pytest.raises(ValueError, match="target item ids"):
        evaluate_full_ranking(model, users, bad, progress=False)


# -- click ------------------------------------------------------------------------------------


def test_evaluate_click_matches_metrics_and_slices() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    g = rng.integers(0, 100, n)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    cold = g < 20
    out = evaluate_click(y, p, groups=g, slices={"cold": cold}, n_bootstrap=300)
    json.dumps(out, allow_nan=False)
    assert out["auc"] == pytest.approx(auc(y, p))
    assert out["gauc"] == pytest.approx(gauc(y, p, g))
    assert out["logloss"] == pytest.approx(logloss(y, p))
    assert out["ci_unit"] == "group"
    for m in ("auc", "gauc", "logloss"):
        lo, hi = out[f"{m}_ci"]
        assert lo <= out[m] <= hi
    assert out["slices"]["cold"]["n"] == int(cold.sum())
    assert out["slices"]["cold"]["auc"] == pytest.approx(auc(y[cold], p[cold]))
    raw = evaluate_click(y, p * 5 - 1, n_bootstrap=100)
    assert raw["logloss"] is None and "logloss_skipped" in raw
    assert raw["auc"] == pytest.approx(out["auc"]) and raw["ci_unit"] == "row"
    assert "gauc" not in raw


def test_click_row_bootstrap_agrees_with_resampled_sklearn_auc() -> None:
    # the weighted-AUC bootstrap must equal AUC recomputed on explicitly resampled rows
    from shoprank.evaluation.bootstrap import resample_indices

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)
    out = evaluate_click(y, s, n_bootstrap=50, seed=9)
    vals = []
    for idx in resample_indices(60, 50, seed=9):
        for row in idx:
            if 0 < y[row].sum() < 60:
                vals.append(auc(y[row], s[row]))
    assert out["auc_ci"] == pytest.approx(list(np.quantile(vals, [0.025, 0.975])), abs=1e-12)


# -- search -----------------------------------------------------------------------------------


def test_evaluate_search() -> None:
    rng = np.random.default_rng(2)
    lens = rng.integers(3, 15, 40)
    grades = [rng.integers(0, 4, n).astype(float) for n in lens]
    grades[0] = np.zeros(lens[0])  # unjudged-as-relevant query: skipped
    scores = [g + rng.normal(0, 1.0, len(g)) for g in grades]
    rep = search_report(scores, grades, ks=(5, 10), relevance_threshold=3.0, n_bootstrap=200)
    assert rep.unit == "query" and rep.n_users == 39 and rep.n_skipped == 1
    np.testing.assert_allclose(rep.per_user["ndcg@5"], ndcg_at_k_graded(scores, grades, 5))
    assert rep.metrics["ndcg@10"] == pytest.approx(np.nanmean(ndcg_at_k_graded(scores, grades, 10)))
    lo, hi = rep.ci["mrr"]
    assert lo <= rep.metrics["mrr"] <= hi
    d = evaluate_search(scores, grades, ks=(5, 10), n_bootstrap=100)
    json.dumps(d, allow_nan=False)
    assert d["unit"] == "query" and len(d["per_query"]["ndcg@5"]) == 40
    assert d["per_query"]["ndcg@5"][0] is None


def test_click_group_bootstrap_agrees_with_explicit_cluster_resampling() -> None:
    from shoprank.evaluation.bootstrap import resample_indices

    rng = np.random.default_rng(2)
    g = rng.integers(0, 8, 80)
    y = rng.integers(0, 2, 80)
    p = np.round(rng.random(80), 1)
    out = evaluate_click(y, p, groups=g, n_bootstrap=40, seed=3)
    aucs, losses = [], []
    for idx in resample_indices(8, 40, seed=3):
        for groups in idx:
            rows = np.concatenate([np.flatnonzero(g == k) for k in groups])
            if 0 < y[rows].sum() < len(rows):
                aucs.append(auc(y[rows], p[rows]))
            losses.append(logloss(y[rows], p[rows]))
    assert out["auc_ci"] == pytest.approx(list(np.quantile(aucs, [0.025, 0.975])), abs=1e-12)
    assert out["logloss_ci"] == pytest.approx(list(np.quantile(losses, [0.025, 0.975])), abs=1e-9)

"""Metrics against scikit-learn where it has them, and against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from shoprank.evaluation import (
    auc,
    gauc,
    gauc_detail,
    hit_rate_at_k,
    item_coverage,
    logloss,
    map_at_k,
    mrr,
    mrr_graded,
    ndcg_at_k,
    ndcg_at_k_graded,
    popularity_bias,
    popularity_percentiles,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    recommendation_popularity,
)

D = [1 / math.log2(i + 2) for i in range(10)]  # discounts by 0-based position


# -- click ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y.astype(bool), -s) == pytest.approx(roc_auc_score(y, -s), abs=1e-12)


def test_auc_single_class_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="single class"):
        auc(np.ones(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="0/1"):
        auc(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_logloss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = rng.uniform(0.01, 0.99, 300)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    extreme = logloss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(extreme)
    assert extreme == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_gauc_hand_example() -> None:
    # group a: AUC 1 (3 rows); group b: AUC 0 (2 rows); group c: positives only -> skipped
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    s = np.array([0.9, 0.5, 0.7, 0.2, 0.8, 0.3, 0.4])
    g = np.array(["a", "a", "a", "b", "b", "c", "c"])
    d = gauc_detail(y, s, g)
    assert d.gauc == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)
    assert (d.n_groups, d.n_skipped) == (3, 1)
    np.testing.assert_allclose(d.group_auc[:2], [1.0, 0.0])
    assert math.isnan(d.group_auc[2])
    np.testing.assert_array_equal(d.group_weight, [3, 2, 2])
    assert gauc(y, s, g) == d.gauc


def test_gauc_per_group_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400), 2)
    g = rng.integers(0, 12, 400)
    d = gauc_detail(y, s, g)
    num = den = 0.0
    for i, key in enumerate(np.unique(g)):
        m = g == key
        if len(set(y[m])) == 2:
            a = roc_auc_score(y[m], s[m])
            assert d.group_auc[i] == pytest.approx(a, abs=1e-12)
            num += a * m.sum()
            den += m.sum()
    assert d.gauc == pytest.approx(num / den)


def test_gauc_all_groups_skipped_is_nan() -> None:
    d = gauc_detail(np.array([1, 0]), np.array([0.1, 0.2]), np.array([1, 2]))
    assert math.isnan(d.gauc) and d.n_skipped == 2


# -- top-k ranking ----------------------------------------------------------------------------


def test_hand_values_hr_recall_mrr_map_precision() -> None:
    topk = np.array([[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]])
    targets = [np.array([2, 5, 9]), np.array([0])]
    # user 0: hits at ranks 2 and 5 (1-based); user 1: no hit
    np.testing.assert_allclose(hit_rate_at_k(topk, targets, 1), [0, 0])
    np.testing.assert_allclose(hit_rate_at_k(topk, targets, 2), [1, 0])
    np.testing.assert_allclose(recall_at_k(topk, targets, 5), [2 / 3, 0])
    np.testing.assert_allclose(recall_at_k(topk, targets, 2), [1 / 3, 0])
    np.testing.assert_allclose(precision_at_k(topk, targets, 5), [2 / 5, 0])
    np.testing.assert_allclose(mrr(topk, targets), [1 / 2, 0])
    np.testing.assert_allclose(mrr(topk, targets, k=1), [0, 0])
    np.testing.assert_allclose(map_at_k(topk, targets, 5), [(1 / 2 + 2 / 5) / 3, 0])
    np.testing.assert_allclose(map_at_k(topk, targets, 2), [(1 / 2) / 2, 0])
    ndcg5 = (D[1] + D[4]) / (D[0] + D[1] + D[2])
    np.testing.assert_allclose(ndcg_at_k(topk, targets, 5), [ndcg5, 0])


def test_map_normalised_by_min_rel_k() -> None:
    topk = np.array([[1, 2, 3]])
    targets = [np.arange(1, 11)]  # 10 relevant, all 3 slots hit
    assert map_at_k(topk, targets, 3)[0] == pytest.approx(1.0)
    assert recall_at_k(topk, targets, 3)[0] == pytest.approx(0.3)  # |hits| / |rel|


def test_ranking_metrics_keys_and_consistency() -> None:
    rng = np.random.default_rng(0)
    topk = np.stack([rng.permutation(50)[:20] for _ in range(30)])
    targets = [rng.choice(50, rng.integers(1, 6), replace=False) for _ in range(30)]
    out = ranking_metrics(topk, targets, ks=(5, 20))
    assert set(out) == {
        f"{m}@{k}" for m in ("ndcg", "recall", "precision", "hr", "map") for k in (5, 20)
    } | {"mrr"}
    np.testing.assert_allclose(out["ndcg@5"], ndcg_at_k(topk, targets, 5))
    np.testing.assert_allclose(out["map@20"], map_at_k(topk, targets, 20))
    np.testing.assert_allclose(out["mrr"], mrr(topk, targets))
    assert all(v.shape == (30,) for v in out.values())


def _sklearn_inputs(
    topk: np.ndarray, targets: list[np.ndarray], n_items: int, gains: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dense y_true / y_score so that sklearn ranks exactly as topk (all scores distinct)."""
    n, k = topk.shape
    rng = np.random.default_rng(123)
    y_true = np.zeros((n, n_items))
    y_score = np.zeros((n, n_items))
    for i in range(n):
        y_true[i, targets[i]] = 1.0 if gains is None else gains[i]
        y_score[i] = rng.random(n_items)  # in [0, 1): below every ranked item
        y_score[i, topk[i]] = np.arange(k, 0, -1) + 1.0
    return y_true, y_score


@pytest.mark.parametrize("k", [1, 3, 10])
def test_binary_ndcg_matches_sklearn(k: int) -> None:
    rng = np.random.default_rng(1)
    n_items, n = 40, 25
    topk = np.stack([rng.permutation(n_items)[:10] for _ in range(n)])
    targets = [rng.choice(n_items, rng.integers(1, 8), replace=False) for _ in range(n)]
    y_true, y_score = _sklearn_inputs(topk, targets, n_items)
    ours = ndcg_at_k(topk, targets, k)
    ref = [ndcg_score(y_true[i : i + 1], y_score[i : i + 1], k=k) for i in range(n)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_graded_linear_ndcg_matches_sklearn(k: int) -> None:
    rng = np.random.default_rng(2)
    n_items, n = 30, 20
    topk = np.stack([rng.permutation(n_items)[:10] for _ in range(n)])
    targets = [rng.choice(n_items, rng.integers(1, 10), replace=False) for _ in range(n)]
    gains = [rng.integers(1, 4, len(t)).astype(float) for t in targets]
    y_true, y_score = _sklearn_inputs(topk, targets, n_items, gains)
    ours = ndcg_at_k(topk, targets, k, gains=gains, gain="linear")
    ref = [ndcg_score(y_true[i : i + 1], y_score[i : i + 1], k=k) for i in range(n)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_graded_exp_ndcg_hand_value() -> None:
    topk = np.array([[3, 1, 2]])
    targets = [np.array([1, 2, 5])]
    gains = [np.array([1.0, 2.0, 3.0])]
    dcg = 0 * D[0] + (2**1 - 1) * D[1] + (2**2 - 1) * D[2]
    idcg = (2**3 - 1) * D[0] + (2**2 - 1) * D[1] + (2**1 - 1) * D[2]
    assert ndcg_at_k(topk, targets, 3, gains=gains)[0] == pytest.approx(dcg / idcg)
    # IDCG is truncated at k: at k=1 only the best gain counts
    assert ndcg_at_k(topk, targets, 1, gains=gains)[0] == 0.0
    assert ndcg_at_k(np.array([[5, 2, 1]]), targets, 1, gains=gains)[0] == pytest.approx(1.0)


def test_zero_gain_targets_are_not_relevant_and_duplicates_count_once() -> None:
    topk = np.array([[4, 5, 6]])
    r = ranking_metrics(topk, [np.array([4, 9])], ks=(3,), gains=[np.array([0.0, 1.0])])
    assert r["hr@3"][0] == 0.0 and r["recall@3"][0] == 0.0
    dup = ranking_metrics(topk, [np.array([5, 5, 7])], ks=(3,))
    assert dup["recall@3"][0] == pytest.approx(0.5)  # |{5, 7}| = 2 relevant
    best = ranking_metrics(topk, [np.array([4, 4])], ks=(1,), gains=[np.array([1.0, 3.0])])
    assert best["ndcg@1"][0] == pytest.approx(1.0)  # the larger gain is kept


def test_users_without_targets_are_nan_and_padding_never_hits() -> None:
    topk = np.array([[1, -1, -1], [0, 2, 3]])
    out = ranking_metrics(topk, [np.array([], dtype=np.int64), np.array([2])], ks=(3,))
    for v in out.values():
        assert math.isnan(v[0]) and math.isfinite(v[1])
    pad = ranking_metrics(np.array([[7, -1, -1]]), [np.array([7, 8])], ks=(3,))
    assert pad["precision@3"][0] == pytest.approx(1 / 3)
    assert pad["recall@3"][0] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="exceeds"):
        ranking_metrics(topk, [np.array([1]), np.array([2])], ks=(4,))


# -- search reranking -------------------------------------------------------------------------


def test_ndcg_graded_hand_value_and_stable_ties() -> None:
    # scores tie for the first two candidates: the given order (grade 0 first) is kept
    scores = [np.array([1.0, 1.0, 0.0])]
    grades = [np.array([0.0, 2.0, 1.0])]
    dcg = 0 * D[0] + 3 * D[1] + 1 * D[2]
    idcg = 3 * D[0] + 1 * D[1]
    assert ndcg_at_k_graded(scores, grades, 3)[0] == pytest.approx(dcg / idcg)
    swapped = ndcg_at_k_graded([np.array([1.0, 1.0, 0.0])], [np.array([2.0, 0.0, 1.0])], 3)
    assert swapped[0] == pytest.approx((3 * D[0] + 1 * D[2]) / idcg)


def test_ndcg_graded_linear_matches_sklearn_and_nan_for_unjudged() -> None:
    rng = np.random.default_rng(4)
    lens = [5, 12, 8, 3]
    scores = [rng.random(n) for n in lens]
    grades = [rng.integers(0, 4, n).astype(float) for n in lens]
    grades[3] = np.zeros(3)
    ours = ndcg_at_k_graded(scores, grades, 5, gain="linear")
    for i in range(3):
        ref = ndcg_score(grades[i][None], scores[i][None], k=5)
        assert ours[i] == pytest.approx(ref, abs=1e-12)
    assert math.isnan(ours[3])


def test_mrr_graded_threshold() -> None:
    scores = [np.array([0.9, 0.5, 0.1]), np.array([0.3, 0.2])]
    grades = [np.array([1.0, 0.0, 3.0]), np.array([1.0, 1.0])]
    np.testing.assert_allclose(mrr_graded(scores, grades), [1.0, 1.0])
    r = mrr_graded(scores, grades, threshold=2.0)
    assert r[0] == pytest.approx(1 / 3) and math.isnan(r[1])


# -- catalog effects --------------------------------------------------------------------------


def test_item_coverage() -> None:
    topk = np.array([[0, 1, 2], [2, 3, -1]])
    assert item_coverage(topk, 10) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        item_coverage(topk, 3)


def test_popularity_percentile_and_arp() -> None:
    pop = np.array([0.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(popularity_percentiles(pop), [0.125, 0.375, 0.625, 0.875])
    topk = np.array([[3, 2], [0, -1]])
    np.testing.assert_allclose(recommendation_popularity(topk, pop, "arp"), [25.0, 0.0])
    np.testing.assert_allclose(recommendation_popularity(topk, pop), [0.75, 0.125])
    assert popularity_bias(topk, pop, "arp") == pytest.approx(12.5)
    rng = np.random.default_rng(0)
    big = rng.lognormal(size=1000)
    rand = np.stack([rng.permutation(1000)[:50] for _ in range(200)])
    assert popularity_bias(rand, big) == pytest.approx(0.5, abs=0.02)  # random: no bias
    top = np.argsort(-big)[:50][None]
    assert popularity_bias(top, big) > 0.95

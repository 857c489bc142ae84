"""Hybrid BM25 + dense retrieval, RRF fusion and the LambdaRank re-ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoprank.data.dataset import Dataset
from shoprank.data.splits import DataSplit, split_dataset
from shoprank.data.synth import SynthConfig, synthesize
from shoprank.errors import NotFittedError, ShoprankError
from shoprank.evaluation.protocol import evaluate_model
from shoprank.models.base import UserBatch, load_model
from shoprank.models.baselines import BM25Ranker
from shoprank.models.dense import DenseRanker
from shoprank.models.hybrid import HybridRanker
from shoprank.text.render import render_query


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shop() -> Dataset:
    ds, _ = synthesize(SynthConfig.preset("tiny", seed=3))
    return ds


@pytest.fixture(scope="module")
def split(shop: Dataset) -> DataSplit:
    return split_dataset(shop, "time")


@pytest.fixture(scope="module")
def fitted(split: DataSplit) -> tuple[DenseRanker, BM25Ranker]:
    """One frozen dense model and one BM25 index, shared (embedding the catalog is the slow part)."""
    return DenseRanker().fit(split.train), BM25Ranker().fit(split.train)


def test_rrf_is_the_sum_of_reciprocal_ranks(shop: Dataset, split: DataSplit, fitted: tuple) -> None:
    m = HybridRanker.from_models(*fitted, split.train, fusion="rrf", rrf_k=60)
    q = shop.judgments["query"].iloc[0]
    cand = np.arange(12)
    got = m.score_query_items([q], [cand])[0]
    d = m.dense.score_query_items([q], [cand])[0]
    b = m.bm25.score_query_items([render_query(q)], [cand])[0]

    def ranks(x: np.ndarray) -> np.ndarray:
        r = np.empty(len(x))
        r[np.argsort(-x, kind="stable")] = np.arange(len(x))
        return r

    want = 1 / (61 + ranks(d)) + 1 / (61 + ranks(b))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_search_merges_both_candidate_lists(shop: Dataset, split: DataSplit, fitted: tuple) -> None:
    m = HybridRanker.from_models(*fitted, split.train, fusion="rrf", n_candidates=20)
    queries = shop.judgments["query"].drop_duplicates().head(5).tolist()
    ids, scores = m.search(queries, k=10)
    assert ids.shape == (5, 10) and np.all(np.diff(scores, axis=1) <= 1e-7)
    di, _ = m.dense.search(queries, 20)
    bi, bv = m.bm25.search([render_query(q) for q in queries], 20)
    for r in range(5):  # every result came from one of the two retrievers
        pool = set(di[r]) | set(bi[r][bv[r] > 0])
        assert set(ids[r]) <= pool


def test_ltr_reranker_learns_on_valid_and_round_trips(split: DataSplit, fitted: tuple, tmp_path: Path) -> None:
    qs = split
    m = HybridRanker.from_models(*fitted, qs.train, qs.valid, fusion="ltr", ltr_params={"num_boost_round": 30})
    assert m.ltr_ is not None
    report = evaluate_model(m, qs, task="search", n_bootstrap=0, progress=False)
    assert 0.0 <= report["metrics"]["ndcg@10"] <= 1.0
    out = m.save(tmp_path / "hyb")
    back = load_model(out)
    queries = qs.test.judgments["query"].drop_duplicates().head(4).tolist()
    cands = [np.arange(15)] * 4
    for a, b in zip(m.score_query_items(queries, cands), back.score_query_items(queries, cands), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_recommendation_reranks_the_dense_candidates(shop: Dataset, split: DataSplit, fitted: tuple,
                                                     tmp_path: Path) -> None:
    m = HybridRanker.from_models(*fitted, split.train, split.valid, fusion="ltr", n_candidates=30,
                                 ltr_params={"num_boost_round": 20})
    assert m.rec_ltr_ is not None
    users = UserBatch(["a", "b"], [np.array([0, 1, 2]), np.array([5])])
    full = m.dense.score_users(users)
    sc = m.score_users(users)
    assert sc.shape == (2, shop.n_items)
    top = np.argsort(-sc, axis=1)[:, :30]
    dense_top = np.argsort(-full, axis=1)[:, :30]
    for r in range(2):  # the top 30 are the dense candidates, re-ordered
        assert set(top[r]) == set(dense_top[r])
    back = load_model(m.save(tmp_path / "rec"))
    np.testing.assert_allclose(back.score_users(users), sc, rtol=1e-5, atol=1e-5)
    rrf = HybridRanker.from_models(*fitted, split.train, fusion="rrf", n_candidates=30)
    assert rrf.score_users(users).shape == (2, shop.n_items)


def test_fit_trains_both_parts(split: DataSplit) -> None:
    small = split.train.with_tables(items=split.train.items)
    m = HybridRanker(dense="dense", fusion="rrf").fit(small)
    assert m.dense.fitted_ and m.bm25.fitted_


def test_errors() -> None:
    with pytest.raises(ShoprankError, match="fusion"):
        HybridRanker(fusion="max")
    with pytest.raises(NotFittedError):
        HybridRanker().search(["x"])

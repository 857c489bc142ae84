"""The incremental BM25 equals bm25s on the same documents; adds and typo fixes behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shoprank.data.dataset import Dataset
from shoprank.models.base import get_model_class
from shoprank.models.baselines import item_texts
from shoprank.serving.textindex import TextIndex, levenshtein

QUERIES = ["phone charger", "standing desk walnut", "rugged", "nothing matches this zzz", "desk desk"]


def test_scores_equal_bm25s(shop: tuple[Dataset, Path]) -> None:
    ds = shop[0]
    ref = get_model_class("bm25")().fit(ds)
    idx = TextIndex.build(item_texts(ds.items, 500))
    all_items = np.arange(ds.n_items)
    for q in QUERIES:
        want = ref.score_query_items([q], [all_items])[0]
        np.testing.assert_allclose(idx.scores(idx.tokens(q)), want, rtol=1e-5, atol=1e-6)


def test_add_equals_full_build_and_compaction(shop: tuple[Dataset, Path]) -> None:
    texts = item_texts(shop[0].items, 500)
    full = TextIndex.build(texts)
    inc = TextIndex.build(texts[:150]).add(texts[150:170]).add(texts[170:])
    assert len(inc.segments) == 2 and inc.n_docs == full.n_docs
    for q in QUERIES:
        np.testing.assert_allclose(inc.scores(inc.tokens(q)), full.scores(full.tokens(q)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(inc.compacted().scores(inc.tokens(q)), full.scores(full.tokens(q)),
                                   rtol=1e-5, atol=1e-6)


def test_term_scores_equal_one_term_scores(shop: tuple[Dataset, Path]) -> None:
    """`/v1/explain`'s per-term weights for one product, without a catalog pass per term,
    match scoring each term over the catalog (base and delta segments)."""
    texts = item_texts(shop[0].items, 500)
    idx = TextIndex.build(texts[:150]).add(texts[150:])
    checked = 0
    for q in QUERIES:
        toks = idx.tokens(q)
        for sl in np.flatnonzero(idx.scores(toks) > 0)[:20].tolist() + [0, idx.n_docs - 1]:
            got = idx.term_scores(toks, sl)
            want = {t: float(idx.scores([t])[sl]) for t in set(toks) if idx.scores([t])[sl] > 0}
            assert got.keys() == want.keys()
            for t in want:
                assert abs(got[t] - want[t]) < 1e-5 * max(1.0, want[t])
            checked += len(want)
    assert checked > 20
    assert idx.term_scores(["desk"], idx.n_docs + 5) == {}


def test_old_versions_ignore_words_added_later() -> None:
    a = TextIndex.build(["red shoe", "blue hat"])
    b = a.add(["quantum widget"])
    assert a.scores(["quantum"]).tolist() == [0.0, 0.0]
    assert b.scores(["quantum"])[2] > 0 and b.n_docs == 3


def test_typo_correction() -> None:
    idx = TextIndex.build(["phone charger black", "standing desk walnut", "wireless headphones"])
    fixed, fixes = idx.correct(idx.tokens("phone chargr standnig dsk xqzvw"))
    assert fixes == {"chargr": "charger", "standnig": "standing", "dsk": "desk"}
    assert fixed == ["phone", "charger", "standing", "desk", "xqzvw"]
    assert levenshtein("kitten", "sitting", 5) == 3 and levenshtein("abc", "xyzuvw", 1) == 2

"""Cross-fitted confidence: flipped labels get low values; folds are stratified."""

import numpy as np
import pytest

from shoprank.errors import ShoprankError
from shoprank.valuation import CrossFitConfidence, ValuationData, get_method
from shoprank.valuation.crossfit import stratified_folds
from shoprank.valuation.experiments import detection_metrics, flip_labels


def _blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5)) + 3.0 * y[:, None]
    return x, y


def test_flipped_labels_get_the_lowest_values() -> None:
    x, y = _blobs()
    yn, flipped = flip_labels(y, 0.1, seed=1)
    res = CrossFitConfidence(n_folds=3, n_repeats=2).fit(ValuationData(x, yn, x[:5], y[:5])).result
    assert res.values.shape == (len(y),)
    assert np.all(res.values <= 0)  # log-probabilities
    m = detection_metrics(res.values, flipped)
    assert m["auroc"] > 0.95 and m["f1"] > 0.8
    assert np.all(res.counts == 2) and np.any(res.stderr > 0)


def test_registered_and_list_inputs() -> None:
    x, y = _blobs(60)
    texts = [f"{'good' if c else 'bad'} item {i}" for i, c in enumerate(y)]
    v = get_method("cross-fit", seed=3)
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    v.estimator = make_pipeline(CountVectorizer(), LogisticRegression())
    res = v.fit(ValuationData(texts, y, texts[:2], y[:2])).result
    assert res.values.mean() > np.log(0.5)  # the word gives the label away


def test_folds_are_stratified_and_settings_checked() -> None:
    y = np.array([0] * 10 + [1] * 6)
    fold = stratified_folds(y, 2, np.random.default_rng(0))
    for c in (0, 1):
        counts = np.bincount(fold[y == c], minlength=2)
        assert abs(counts[0] - counts[1]) <= 1
    x, y2 = _blobs(20)
    with pytest.raises(ShoprankError, match="n_folds"):
        CrossFitConfidence(n_folds=1).fit(ValuationData(x, y2, x, y2))
    with pytest.raises(ShoprankError, match="class labels"):
        CrossFitConfidence().fit(ValuationData(x, np.ones((20, 3)), x, y2))
    with pytest.raises(ShoprankError, match="single class"):
        CrossFitConfidence().fit(ValuationData(x, np.zeros(20, int), x, y2))


def test_low_value_groups_finds_the_spammed_items() -> None:
    from shoprank.valuation.experiments import low_value_groups

    rng = np.random.default_rng(0)
    items = rng.integers(0, 200, 3000).astype(str)
    values = rng.normal(1.0, 2.0, 3000)
    items = np.concatenate([items, ["spam-a"] * 150, ["spam-b"] * 80])
    values = np.concatenate([values, rng.normal(0.0, 2.0, 230)])
    g = low_value_groups(values, items)
    assert set(g.loc[g["flagged"], "group"]) == {"spam-a", "spam-b"}
    assert g["p"].is_monotonic_increasing
    assert g.loc[g["group"] == "spam-a", "n"].item() == 150
    with pytest.raises(ShoprankError, match="differ in length"):
        low_value_groups(values, items[:-1])


def test_adjust_p_matches_hand_computed_values() -> None:
    """Bonferroni, Holm and Benjamini-Hochberg on four p-values worked out by hand."""
    from shoprank.valuation.experiments import adjust_p

    p = np.array([0.04, 0.01, 0.03, 0.5])
    np.testing.assert_allclose(adjust_p(p, "bonferroni"), [0.16, 0.04, 0.12, 1.0])
    # Holm, sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (running max), 0.5
    np.testing.assert_allclose(adjust_p(p, "holm"), [0.09, 0.04, 0.09, 0.5])
    # BH, sorted times 4/i = 0.04, 0.06, 0.0533, 0.5 -> running min from the top: 0.04, 0.0533, 0.0533, 0.5
    np.testing.assert_allclose(adjust_p(p, "bh"), [0.16 / 3, 0.04, 0.16 / 3, 0.5])
    assert len(adjust_p(np.array([]), "bh")) == 0
    with pytest.raises(ShoprankError, match="unknown multiple-testing correction 'fdr'"):
        adjust_p(p, "fdr")


def test_low_value_groups_bh_finds_a_spread_out_farm_bonferroni_misses() -> None:
    """A click farm over 30 products, each only mildly below the rest: Benjamini-Hochberg flags
    more of them than Bonferroni, every Bonferroni flag among them, and few real products."""
    from shoprank.valuation.experiments import low_value_groups

    rng = np.random.default_rng(1)
    items = rng.integers(0, 300, 9000).astype(str)
    values = rng.normal(1.0, 2.0, 9000)
    farm = np.repeat([f"spam-{i}" for i in range(30)], 40)
    items = np.concatenate([items, farm])
    values = np.concatenate([values, rng.normal(-0.5, 2.0, len(farm))])
    bonf = low_value_groups(values, items)
    bh = low_value_groups(values, items, correction="bh")
    f_bonf = set(bonf.loc[bonf["flagged"], "group"])
    f_bh = set(bh.loc[bh["flagged"], "group"])
    spam = {f"spam-{i}" for i in range(30)}
    assert f_bonf <= f_bh
    assert len(f_bh & spam) > len(f_bonf & spam) + 5
    assert len(f_bh - spam) <= 3
    both = bh.merge(bonf, on="group", suffixes=("_bh", "_bonf"))
    assert (both["q_bh"] >= both["p_bh"]).all() and (both["q_bh"] <= both["q_bonf"]).all()
    with pytest.raises(ShoprankError, match="unknown multiple-testing correction"):
        low_value_groups(values, items, correction="none")

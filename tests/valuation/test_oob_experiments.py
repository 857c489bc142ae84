"""Data-OOB and the OpenDataVal-style experiment helpers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from shoprank.errors import ShoprankError
from shoprank.valuation import DataOOB, KNNShapley, ValuationData
from shoprank.valuation.experiments import (
    CEILING,
    add_feature_noise,
    best_threshold_f1,
    clean_label_ceiling,
    detection_metrics,
    flip_labels,
    method_factory,
    noise_detection_experiment,
    plot_curves,
    summarize,
    value_curves,
)


def blobs(n: int = 300, seed: int = 0) -> ValuationData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(scale=3.0, size=(3, 6))
    x = centres[y] + rng.normal(size=(n, 6))
    yv = rng.integers(0, 3, 150)
    return ValuationData(x, y, centres[yv] + rng.normal(size=(150, 6)), yv)


def test_flip_labels() -> None:
    y = np.repeat([0, 1, 2], 100)
    yn, mask = flip_labels(y, 0.2, seed=1)
    assert mask.sum() == 60 and (yn[mask] != y[mask]).all() and (yn[~mask] == y[~mask]).all()
    assert set(np.unique(yn)) <= {0, 1, 2}
    x, m = add_feature_noise(np.ones((10, 2)), 0.3, seed=0)
    assert m.sum() == 3


def test_detection_metrics() -> None:
    noisy = np.zeros(100, dtype=bool)
    noisy[:20] = True
    perfect = np.where(noisy, -1.0, 1.0) + np.linspace(0, 0.01, 100)
    m = detection_metrics(perfect, noisy)
    assert m == {"f1": 1.0, "f1_best": 1.0, "auroc": 1.0, "precision_at_k": 1.0}
    assert detection_metrics(-perfect, noisy)["auroc"] == 0.0
    with pytest.raises(ShoprankError, match="1 values are NaN or infinite \\(first at row 7\\)"):
        detection_metrics(np.where(np.arange(100) == 7, np.nan, perfect), noisy)


def test_best_threshold_f1_is_the_best_cut_and_keeps_ties_together() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        v = rng.integers(0, 6, 40).astype(float)  # many ties
        m = rng.random(40) < 0.3
        m[0] = True
        brute = 0.0
        for t in np.unique(v):  # every rule "flag the values <= t"
            flag = v <= t
            tp = (flag & m).sum()
            brute = max(brute, 2 * tp / (flag.sum() + m.sum()))
        assert best_threshold_f1(v, m) == pytest.approx(brute)
        assert best_threshold_f1(v, m) >= detection_metrics(v, m)["f1"] - 1e-12  # 2-means is one cut
    # one tie spanning a noisy and a clean record: no cut separates them
    assert best_threshold_f1(np.array([0.0, 0.0, 1.0, 2.0]), np.array([True, False, False, False])) == pytest.approx(2 / 3)
    assert best_threshold_f1(np.zeros(3), np.zeros(3, bool)) == 0.0
    with pytest.raises(ShoprankError, match="length"):
        best_threshold_f1(np.zeros(3), np.zeros(4, bool))


def test_clean_label_ceiling_judges_observed_labels_with_a_model_of_the_clean_ones() -> None:
    d = blobs()
    yn, noisy = flip_labels(d.y_train, 0.2, seed=0)
    ceil = clean_label_ceiling(d.x_train, d.y_train, yn, seed=0)
    assert ceil.shape == (len(yn),) and (ceil <= 0).all()
    assert detection_metrics(ceil, noisy)["auroc"] > 0.95
    # with the observed labels equal to the clean ones nothing looks wrong: the flipped rows' scores rise
    same = clean_label_ceiling(d.x_train, d.y_train, d.y_train, seed=0)
    assert same[noisy].mean() > ceil[noisy].mean() + 2
    assert np.allclose(same[~noisy], ceil[~noisy])  # same folds, same model: unflipped rows unchanged
    both = clean_label_ceiling(d.x_train, d.y_train, np.stack([yn, d.y_train]), seed=0)  # one set of fits
    assert both.shape == (2, len(yn)) and np.allclose(both[0], ceil) and np.allclose(both[1], same)
    with pytest.raises(ShoprankError, match="differ in length"):
        clean_label_ceiling(d.x_train, d.y_train, yn[:-1])
    with pytest.raises(ShoprankError, match="n_folds"):
        clean_label_ceiling(d.x_train, d.y_train, yn, n_folds=1)
    df = noise_detection_experiment(d, {"oob": method_factory("data-oob", n_estimators=10)}, seeds=(0,), ceiling=True)
    assert CEILING in set(df["method"]) and "f1_best" in df.columns


def test_data_oob_finds_flipped_labels_and_is_deterministic() -> None:
    d = blobs()
    yn, noisy = flip_labels(d.y_train, 0.2, seed=0)
    nd = ValuationData(d.x_train, yn, d.x_valid, d.y_valid)
    r1 = DataOOB(n_estimators=40, n_components=None).fit(nd).result
    r2 = DataOOB(n_estimators=40, n_components=None, backend="threads", n_jobs=2).fit(nd).result
    assert np.allclose(r1.values, r2.values) and (r1.counts > 0).all()
    assert detection_metrics(r1.values, noisy)["auroc"] > 0.9
    tree = DataOOB(n_estimators=20, estimator=DecisionTreeClassifier(max_depth=3)).fit(nd).result
    assert detection_metrics(tree.values, noisy)["auroc"] > 0.8
    reg = DataOOB(n_estimators=20, target="regression").fit(ValuationData(d.x_train, d.x_train[:, 0], d.x_valid, None))
    assert reg.values.max() <= 0


def test_noise_detection_experiment_has_random_baseline() -> None:
    df = noise_detection_experiment(blobs(200), {"knn": method_factory("knn-shapley", k=5, metric="euclidean"),
                                                 "oob": method_factory("data-oob", n_estimators=20)}, seeds=(0, 1))
    assert set(df["method"]) == {"knn", "oob", "random"} and len(df) == 6
    s = summarize(df).set_index("method")
    assert s.loc["knn", "auroc"] > 0.8 and s.loc["oob", "auroc"] > 0.8
    assert abs(s.loc["random", "auroc"] - 0.5) < 0.2
    assert "f1_std" in s.columns


def test_value_curves() -> None:
    d = blobs(120)
    yn, noisy = flip_labels(d.y_train, 0.3, seed=0)
    nd = ValuationData(d.x_train, yn, d.x_valid, d.y_valid)
    vals = KNNShapley(k=5, metric="euclidean").fit(nd).values
    df = value_curves({"knn": vals}, nd, LogisticRegression(max_iter=300), fractions=(0.0, 0.2, 0.3), random_seeds=(0,))
    assert set(df["order"]) == {"high-first", "low-first", "random"}
    low = df[(df.method == "knn") & (df.order == "low-first")].set_index("fraction")["score"]
    high = df[(df.method == "knn") & (df.order == "high-first")].set_index("fraction")["score"]
    assert low[0.3] > high[0.3]  # dropping the lowest values (the noise) helps, the highest hurts
    fig = plot_curves(df, title="removal")
    assert fig.axes
    with pytest.raises(Exception, match="mode"):
        value_curves({"knn": vals}, nd, LogisticRegression(), mode="bogus")


def test_implicit_pairs_with_vector_targets() -> None:
    """Next-item pairs: a corrupted pair (random next item) gets a low value from both methods."""
    from shoprank.valuation import knn_shapley_values

    rng = np.random.default_rng(0)
    topics = rng.normal(size=(6, 16))
    t = rng.integers(0, 6, 400)
    hist = topics[t] + 0.3 * rng.normal(size=(400, 16))
    nxt = topics[t] + 0.3 * rng.normal(size=(400, 16))
    noisy = rng.random(400) < 0.2
    nxt[noisy] = topics[rng.integers(0, 6, int(noisy.sum()))] + 0.3 * rng.normal(size=(int(noisy.sum()), 16))
    oob = DataOOB(n_estimators=30, target="embedding", n_components=None).fit(ValuationData(hist, nxt, hist[:1], None))
    assert detection_metrics(oob.values, noisy)["auroc"] > 0.7
    knn = knn_shapley_values(hist, nxt, None, None, k=10, target="embedding")
    assert detection_metrics(knn, noisy)["auroc"] > 0.7

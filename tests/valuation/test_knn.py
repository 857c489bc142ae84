"""Exact KNN-Shapley against brute-force Shapley of the KNN utility."""

from __future__ import annotations

import numpy as np
import pytest

from shoprank.valuation import (
    ExactShapley,
    KNNShapley,
    ValuationData,
    knn_shapley_values,
    knn_utility,
    nearest_item_lists,
)


@pytest.mark.parametrize("target", ["classification", "graded"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("n", "k"), [(5, 1), (6, 3), (7, 2), (5, 10)])
def test_equals_brute_force(target: str, metric: str, n: int, k: int) -> None:
    rng = np.random.default_rng(n * 10 + k)
    n_cls = 2 if target == "classification" else 4
    xtr, ytr = rng.normal(size=(n, 3)), rng.integers(0, n_cls, n)
    xte, yte = rng.normal(size=(4, 3)), rng.integers(0, n_cls, 4)
    fast = knn_shapley_values(xtr, ytr, xte, yte, k=k, metric=metric, target=target)
    brute = ExactShapley().fit(knn_utility(xtr, ytr, xte, yte, k=k, metric=metric, target=target)).values
    assert np.allclose(fast, brute, atol=1e-12)
    # efficiency: the values add up to u(all) - u(empty)
    u = knn_utility(xtr, ytr, xte, yte, k=k, metric=metric, target=target)
    assert fast.sum() == pytest.approx(u(np.arange(n)))


def test_chunking_and_threads_give_identical_values() -> None:
    rng = np.random.default_rng(0)
    xtr, ytr = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    xte, yte = rng.normal(size=(97, 8)).astype(np.float32), rng.integers(0, 3, 97)
    ref = knn_shapley_values(xtr, ytr, xte, yte, k=5, chunk_size=97)
    for chunk in (1, 7, 32):
        assert np.allclose(knn_shapley_values(xtr, ytr, xte, yte, k=5, chunk_size=chunk), ref, rtol=0, atol=1e-12)
    thr = knn_shapley_values(xtr, ytr, xte, yte, k=5, chunk_size=7, backend="threads", n_jobs=2)
    assert np.allclose(thr, ref, rtol=0, atol=1e-12)


def test_mislabelled_points_get_low_values() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] > 0).astype(int)
    noisy = rng.random(400) < 0.15
    y_tr = np.where(noisy, 1 - y, y)
    xv = rng.normal(size=(200, 5))
    data = ValuationData(x, y_tr, xv, (xv[:, 0] > 0).astype(int))
    res = KNNShapley(k=5, metric="euclidean").fit(data).result
    assert res.values[noisy].mean() < 0 < res.values[~noisy].mean()
    assert res.algorithm == "knn-shapley" and len(res) == 400


def test_degenerate_inputs() -> None:
    v = knn_shapley_values(np.zeros((0, 2)), np.zeros(0), np.ones((2, 2)), np.zeros(2))
    assert v.shape == (0,)
    one = knn_shapley_values(np.ones((1, 2)), np.array([1]), np.ones((3, 2)), np.array([1, 1, 0]), k=3)
    assert one[0] == pytest.approx(2 / 3 / 3)  # alone it is the nearest neighbour: (1/K) * P(match)


def test_self_valuation_is_the_mean_of_leave_self_out_games() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 3)), rng.integers(0, 2, 9)
    expect = np.zeros(9)
    for i in range(9):
        others = np.delete(np.arange(9), i)
        expect[others] += knn_shapley_values(x[others], y[others], x[i:i + 1], y[i:i + 1], k=3)
    got = knn_shapley_values(x, y, None, None, k=3, chunk_size=4)
    assert np.allclose(got, expect / 9, atol=1e-12)
    res = KNNShapley(k=3, self_valuation=True).fit(ValuationData(x, y, x[:0], None)).result
    assert np.allclose(res.values, got)


def test_attribution_names_the_supporting_neighbours() -> None:
    from shoprank.valuation import knn_attribution

    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [5.0, 0.0], [0.05, 0.0]])
    y = np.array([1, 1, 0, 0, 0])
    r = knn_attribution(x, y, np.array([0.0, 0.01]), 1, k=2, metric="euclidean", top=3,
                        names=np.array(["a", "b", "c", "d", "e"]))
    assert list(r.names[:2]) == ["a", "b"] and len(r) == 3
    full = knn_attribution(x, y, np.array([0.0, 0.01]), 1, k=2, metric="euclidean", top=5)
    assert full.values[-1] < 0  # the nearby record with the other label pulled the other way


@pytest.mark.parametrize("n", [5, 7])
def test_embedding_targets_equal_brute_force(n: int) -> None:
    """Implicit next-item pairs: x = history vector, y = next-item vector."""
    rng = np.random.default_rng(n)
    xtr, ytr = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    xte, yte = rng.normal(size=(3, 3)), rng.normal(size=(3, 4))
    fast = knn_shapley_values(xtr, ytr, xte, yte, k=2, target="embedding")
    brute = ExactShapley().fit(knn_utility(xtr, ytr, xte, yte, k=2, target="embedding")).values
    assert np.allclose(fast, brute, atol=1e-6)  # float32 vectors
    with pytest.raises(Exception, match="vectors"):
        knn_shapley_values(xtr, ytr[:, 0], xte, yte[:, 0], target="embedding")


@pytest.mark.parametrize("n", [5, 8])
def test_list_targets_equal_brute_force(n: int) -> None:
    """`target="lists"`: a neighbour matches when the test id is in its list."""
    rng = np.random.default_rng(n)
    lists = nearest_item_lists(rng.normal(size=(6, 3)), 2)
    xtr, xte = rng.normal(size=(n, 3)), rng.normal(size=(4, 3))
    ytr, yte = lists[rng.integers(0, 6, n)], rng.integers(0, 6, 4)
    fast = knn_shapley_values(xtr, ytr, xte, yte, k=3, target="lists", chunk_size=3)
    brute = ExactShapley().fit(knn_utility(xtr, ytr, xte, yte, k=3, target="lists")).values
    assert np.allclose(fast, brute, atol=1e-12)
    with pytest.raises(Exception, match="id lists"):
        knn_shapley_values(xtr, ytr[:, 0], xte, yte, target="lists")


def test_nearest_item_lists() -> None:
    v = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.0]])  # item 4 duplicates item 0
    lists = nearest_item_lists(v, 3, chunk=2)
    assert lists[:, 0].tolist() == [0, 1, 2, 3, 4]  # itself first, even beside an exact duplicate
    assert lists[0, 1] == 4 and lists[4, 1] == 0 and lists[2, 1] == 3
    assert nearest_item_lists(v, 5).shape == (5, 5)
    with pytest.raises(Exception, match="list size"):
        nearest_item_lists(v, 6)


def test_list_match_gives_a_hub_no_credit() -> None:
    """Why lists: a "hub" next item (close to every validation item) earns cosine credit from
    all of them, yet none of them is among its own nearest items."""
    items = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.9, 0.1, 0.0],
                      [0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.58, 0.58, 0.57],  # item 6: the hub
                      [0.6, 0.56, 0.57]])  # item 7: the hub's own nearest item
    xtr = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    ytr_items = np.array([0, 1, 6])  # two ordinary next items and one click on the hub
    xte, yte = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]]), np.array([3, 4, 5])
    cos = knn_shapley_values(xtr, items[ytr_items], xte, items[yte], k=1, target="embedding")
    lists = nearest_item_lists(items, 2)
    lst = knn_shapley_values(xtr, lists[ytr_items], xte, yte, k=1, target="lists")
    assert cos[2] > 0.3  # the hub click looks useful under the cosine match
    assert lst[2] <= 0 < min(lst[0], lst[1])

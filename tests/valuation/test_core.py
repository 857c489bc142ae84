"""ValuationResult, stopping rules, utilities and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shoprank.errors import ShoprankError
from shoprank.valuation import (
    AbsoluteStandardError,
    FunctionUtility,
    MaxChecks,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    ModelUtility,
    ValuationData,
    ValuationResult,
    available_methods,
    get_method,
)


def test_running_update_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 50))
    r = ValuationResult.zeros(3)
    for j in range(50):
        for i in range(3):
            r.update(i, samples[i, j])
    assert np.allclose(r.values, samples.mean(1))
    assert np.allclose(r.variances, samples.var(1, ddof=1))
    assert np.allclose(r.stderr, samples.std(1, ddof=1) / np.sqrt(50))


def test_merge_equals_pooled() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 20)), rng.normal(size=(2, 35))
    ra = ValuationResult.from_sums(a.sum(1), (a**2).sum(1), np.full(2, 20), n_updates=20)
    rb = ValuationResult.from_sums(b.sum(1), (b**2).sum(1), np.full(2, 35), n_updates=35)
    m = ra + rb
    both = np.hstack([a, b])
    assert np.allclose(m.values, both.mean(1)) and np.allclose(m.variances, both.var(1, ddof=1))
    assert m.n_updates == 55 and list(m.counts) == [55, 55]


def test_sort_dataframe_csv(tmp_path: Path) -> None:
    r = ValuationResult(np.array([0.3, -0.1, 0.3, 0.9]), names=["a", "b", "c", "d"], algorithm="x")
    s = r.sort()
    assert list(s.names) == ["b", "a", "c", "d"]  # ties keep index order
    assert list(r.sort(reverse=True).names) == ["d", "a", "c", "b"]
    assert list(r.ranks()) == [1, 0, 2, 3]
    df = r.to_dataframe()
    assert list(df.columns) == ["index", "name", "value", "stderr", "count"]
    back = ValuationResult.from_csv(r.to_csv(tmp_path / "v.csv"))
    assert np.allclose(back.values, r.values) and list(back.names) == ["a", "b", "c", "d"]
    assert r.value_of("d") == pytest.approx(0.9)
    with pytest.raises(ShoprankError):
        r.sort(key="nope")


def test_stopping_rules_combine() -> None:
    r = ValuationResult.zeros(2)
    assert not MaxUpdates(3)(r)
    r.n_updates = 3
    assert MaxUpdates(3)(r) and not MinUpdates(1)(r)
    assert (MaxUpdates(3) | MinUpdates(1))(r)
    assert not (MaxUpdates(3) & MinUpdates(1))(r)
    assert (~MinUpdates(1))(r)
    mc = MaxChecks(2)
    assert not mc(r) and mc(r)
    t = MaxTime(0.0)
    t.reset()
    assert t(r)
    for i, v in enumerate([1.0, 1.0, 1.0, 1.0, 1.0]):
        r.update(i % 2, v)
    assert not AbsoluteStandardError(0.1, burn_in=3)(r)  # index 1 has 2 samples only
    r.update(1, 1.0)
    assert AbsoluteStandardError(0.1, burn_in=3)(r)


def test_utility_cache_and_groups() -> None:
    calls: list[tuple[int, ...]] = []

    def f(s: np.ndarray) -> float:
        calls.append(tuple(s))
        return float(len(s))

    u = FunctionUtility(f, 3)
    assert u([2, 0]) == 2 and u([0, 2]) == 2
    assert calls == [(0, 2)] and u.hits == 1 and u.misses == 1

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = (x[:, 0] > 0).astype(int)
    groups = np.array(["b", "a"] * 20)
    data = ValuationData(x, y, x, y, groups=groups)
    mu = ModelUtility(LogisticRegression(), data, "accuracy")
    assert mu.n_players == 2 and list(mu.names) == ["a", "b"]
    assert mu([]) == 0.0  # the scorer's default without data
    assert mu([0, 1]) > 0.9
    assert len(mu.rows([0])) == 20 and (groups[mu.rows([0])] == "a").all()
    one_class = ValuationData(x[:5], np.ones(5, int), x, y)
    assert ModelUtility(LogisticRegression(), one_class, "accuracy")(np.arange(5)) == pytest.approx(y.mean())


def test_registry() -> None:
    names = available_methods()
    for m in ("knn-shapley", "data-oob", "tmc-shapley", "beta-shapley", "msr-banzhaf", "loo", "random"):
        assert m in names
    assert get_method("knn-shapley", k=3).k == 3  # type: ignore[attr-defined]
    with pytest.raises(ShoprankError, match="unknown valuation method"):
        get_method("nope")
    with pytest.raises(ShoprankError):
        get_method("knn-shapley", bogus=1)

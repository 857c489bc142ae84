"""Bootstrap intervals: coverage of the mean, shrinking with n, chunking, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shoprank.evaluation import (
    bootstrap_ci,
    bootstrap_mean_cis,
    bootstrap_stats,
    paired_bootstrap_diff,
)


def test_ci_contains_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(100)
    big = rng.random(10_000)
    lo_s, hi_s = bootstrap_ci(small, n=500)
    lo_b, hi_b = bootstrap_ci(big, n=500)
    assert lo_s <= small.mean() <= hi_s
    assert lo_b <= big.mean() <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 10x expected
    # for U(0,1), the 95% CI of the mean is about +-1.96 * 0.2887 / sqrt(n)
    assert hi_b - lo_b == pytest.approx(2 * 1.96 * 0.2887 / 100, rel=0.15)


def test_deterministic_and_chunk_invariant() -> None:
    v = np.random.default_rng(1).random(300)
    a = bootstrap_ci(v, n=400, seed=7)
    assert a == bootstrap_ci(v, n=400, seed=7)
    assert a != bootstrap_ci(v, n=400, seed=8)
    tiny_chunks = bootstrap_ci(v, n=400, seed=7, max_elems=1000)  # 3 resamples per chunk
    assert tiny_chunks == pytest.approx(a, abs=1e-12)


def test_mean_fast_path_equals_generic_stat() -> None:
    v = np.random.default_rng(2).random(200)
    fast = bootstrap_stats(v, n=300, seed=3)
    slow = bootstrap_stats(v, n=300, seed=3, stat=lambda x, axis: np.mean(x, axis=axis))
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    med = bootstrap_ci(v, n=300, stat=np.median)
    assert med[0] <= np.median(v) <= med[1]


def test_shared_resamples_match_single_columns() -> None:
    rng = np.random.default_rng(3)
    cols = {"a": rng.random(150), "b": rng.normal(size=150)}
    many = bootstrap_mean_cis(cols, n=200, seed=5)
    for k, v in cols.items():
        assert many[k] == pytest.approx(bootstrap_ci(v, n=200, seed=5), abs=1e-12)
    with pytest.raises(ValueError):
        bootstrap_mean_cis({"x": np.array([1.0, np.nan])})


def test_edge_cases_and_nan_policy() -> None:
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))
    assert bootstrap_ci(np.array([0.3])) == (0.3, 0.3)
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci(np.array([1.0, np.nan]))
    assert bootstrap_ci(np.array([1.0, np.nan, 1.0]), nan_policy="omit") == (1.0, 1.0)


def test_paired_diff() -> None:
    rng = np.random.default_rng(4)
    base = rng.random(500)
    same = paired_bootstrap_diff(base, base.copy(), n=300)
    assert same.diff == 0.0 and same.p_value == 1.0 and same.n == 500
    better = paired_bootstrap_diff(base + 0.05 + rng.normal(0, 0.05, 500), base, n=500)
    assert better.lo > 0 and better.lo <= better.diff <= better.hi
    assert better.p_value < 0.01
    noise = paired_bootstrap_diff(base + rng.normal(0, 0.1, 500), base, n=500)
    assert noise.lo < 0 < noise.hi or noise.p_value > 0.01
    assert 0 < noise.p_value <= 1
    with pytest.raises(ValueError):
        paired_bootstrap_diff(base, base[:10])
    om = paired_bootstrap_diff(np.array([1.0, np.nan, 2.0]), np.array([0.0, 1.0, 1.0]), nan_policy="omit")
    assert om.n == 2 and om.diff == pytest.approx(1.0)

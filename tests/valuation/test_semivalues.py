"""Semivalues on toy games with known values, and on a grouped model utility."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shoprank.errors import ShoprankError
from shoprank.valuation import (
    AbsoluteStandardError,
    BetaShapley,
    ExactBanzhaf,
    ExactBetaShapley,
    ExactShapley,
    FunctionUtility,
    LeaveOneOut,
    MaxUpdates,
    ModelUtility,
    MSRBanzhaf,
    TMCShapley,
    ValuationData,
    banzhaf_sizes,
    beta_sizes,
    shapley_sizes,
)

WEIGHTS = np.array([3.0, -1.0, 0.5, 2.0, 0.0])


def additive() -> FunctionUtility:
    return FunctionUtility(lambda s: float(WEIGHTS[s].sum()), len(WEIGHTS), names=list("abcde"))


def glove() -> FunctionUtility:
    """Players 0, 1 hold left gloves, player 2 a right glove; a pair is worth 1."""
    return FunctionUtility(lambda s: float(min(int(np.isin(s, [0, 1]).sum()), int((s == 2).sum()))), 3)


def test_size_distributions() -> None:
    for n in (1, 4, 9):
        for p in (shapley_sizes(n), banzhaf_sizes(n), beta_sizes(n, 16, 1), beta_sizes(n, 4, 2)):
            assert p.sum() == pytest.approx(1.0) and (p >= 0).all()
        assert np.allclose(beta_sizes(n, 1, 1), shapley_sizes(n))
    p = beta_sizes(10, 16, 1)
    assert p[0] > p[1] > p[-1]  # Beta(16, 1) weighs small coalitions


@pytest.mark.parametrize("cls", [ExactShapley, ExactBanzhaf, ExactBetaShapley])
def test_exact_additive_game(cls: type) -> None:
    res = cls().fit(additive()).result
    assert np.allclose(res.values, WEIGHTS)  # every semivalue of an additive game is the weights
    assert list(res.names) == list("abcde")


def test_exact_glove_game() -> None:
    assert np.allclose(ExactShapley().fit(glove()).values, [1 / 6, 1 / 6, 2 / 3])
    assert np.allclose(ExactBanzhaf().fit(glove()).values, [1 / 4, 1 / 4, 3 / 4])
    assert np.allclose(LeaveOneOut().fit(glove()).values, [0, 0, 1])


def test_tmc_shapley_converges() -> None:
    stop = AbsoluteStandardError(0.01, burn_in=10) | MaxUpdates(4000)
    res = TMCShapley(truncation_rtol=None, stopping=stop, seed=1, batch_size=50).fit(glove()).result
    assert np.allclose(res.values, [1 / 6, 1 / 6, 2 / 3], atol=4 * res.stderr.max() + 1e-9)
    assert res.values.sum() == pytest.approx(1.0)  # efficiency holds for every permutation
    add = TMCShapley(truncation_rtol=None, stopping=MaxUpdates(20)).fit(additive()).result
    assert np.allclose(add.values, WEIGHTS) and np.allclose(add.stderr, 0)


def test_tmc_truncation_saves_evaluations() -> None:
    w = np.array([5.0, 0.001, 0.001, 0.001, 0.001, 0.001])
    u_full, u_trunc = FunctionUtility(lambda s: min(1.0, float(w[s].sum())), 6), \
        FunctionUtility(lambda s: min(1.0, float(w[s].sum())), 6)
    TMCShapley(truncation_rtol=None, stopping=MaxUpdates(40), seed=0).fit(u_full)
    r = TMCShapley(truncation_rtol=0.01, stopping=MaxUpdates(40), seed=0).fit(u_trunc).result
    assert u_trunc.misses < u_full.misses
    assert r.values[0] == pytest.approx(1.0, abs=0.01)


def test_beta_shapley_matches_exact() -> None:
    exact = ExactBetaShapley(alpha=4, beta=1).fit(glove()).values
    stop = AbsoluteStandardError(0.01, burn_in=10) | MaxUpdates(6000)
    mc = BetaShapley(alpha=4, beta=1, stopping=stop, seed=2, batch_size=100).fit(glove()).result
    assert np.allclose(mc.values, exact, atol=4 * mc.stderr.max() + 1e-9)


def test_msr_banzhaf_matches_exact() -> None:
    stop = AbsoluteStandardError(0.02, burn_in=20) | MaxUpdates(5000)
    res = MSRBanzhaf(stopping=stop, seed=0, batch_size=100).fit(glove()).result
    assert np.allclose(res.values, [1 / 4, 1 / 4, 3 / 4], atol=4 * res.stderr.max())
    add = MSRBanzhaf(stopping=MaxUpdates(2000), batch_size=500).fit(additive()).result
    assert np.allclose(add.values, WEIGHTS, atol=4 * add.stderr.max())


def test_same_answer_for_any_worker_count() -> None:
    a = TMCShapley(truncation_rtol=None, stopping=MaxUpdates(40), batch_size=5, seed=3)
    b = TMCShapley(truncation_rtol=None, stopping=MaxUpdates(40), batch_size=5, seed=3, backend="threads", n_jobs=2)
    ra, rb = a.fit(glove()).result, b.fit(glove()).result
    # every sample is seeded by its number, so the workers only change the summation order
    assert rb.n_updates == 40 and ra.n_updates == 40
    assert np.allclose(ra.values, rb.values, atol=1e-12) and np.allclose(ra.stderr, rb.stderr)
    ma = MSRBanzhaf(stopping=MaxUpdates(60), batch_size=10, seed=4).fit(glove()).result
    mb = MSRBanzhaf(stopping=MaxUpdates(60), batch_size=10, seed=4, backend="threads", n_jobs=2).fit(glove()).result
    assert np.allclose(ma.values, mb.values, atol=1e-12)


def test_group_valuation_finds_the_noisy_group() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
    groups = np.repeat(["clean1", "clean2", "noisy", "small"], [90, 60, 70, 20])
    y_tr = y.copy()
    y_tr[groups == "noisy"] = 1 - y_tr[groups == "noisy"]  # a source whose labels are all wrong
    xv = rng.normal(size=(200, 3))
    data = ValuationData(x, y_tr, xv, (xv[:, 0] + 0.3 * xv[:, 1] > 0).astype(int), groups=groups)
    u = ModelUtility(LogisticRegression(), data, "accuracy")
    exact = ExactShapley().fit(u).result
    assert exact.sort().names[0] == "noisy" and exact.value_of("noisy") < 0
    hits_before = u.hits
    tmc = TMCShapley(stopping=MaxUpdates(12), seed=0).fit(u).result
    assert u.hits > hits_before  # the 16 coalitions were already cached
    assert tmc.sort().names[0] == "noisy"
    assert LeaveOneOut().fit(u).result.sort().names[0] == "noisy"
    assert MSRBanzhaf(stopping=MaxUpdates(40)).fit(u).result.sort().names[0] == "noisy"


def test_needs_model_for_data() -> None:
    data = ValuationData(np.zeros((3, 1)), np.zeros(3), np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ShoprankError, match="model"):
        TMCShapley().fit(data)

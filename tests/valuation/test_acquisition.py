"""Group tables, learning curves, the acquisition planner and the active labeller."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shoprank.errors import ShoprankError
from shoprank.valuation import ValuationData, ValuationResult
from shoprank.valuation.acquisition import (
    AcquisitionPlanner,
    ActiveLabeler,
    PowerLaw,
    aggregate,
    group_table,
    learning_curves,
    project,
)


def test_aggregate_and_table() -> None:
    r = ValuationResult(np.array([1.0, 2.0, -1.0, 0.5]))
    g = aggregate(r, ["a", "a", "b", "c"])
    assert list(g.names) == ["a", "b", "c"] and np.allclose(g.values, [3.0, -1.0, 0.5])
    assert np.allclose(aggregate(r, ["a", "a", "b", "c"], how="mean").values, [1.5, -1.0, 0.5])
    t = group_table(g, {"a": 2, "b": 1, "c": 1}, {"a": 1.0, "b": 0.1, "c": 0.1})
    assert list(t["group"]) == ["c", "a", "b"]  # 0.5/0.1 > 3/2 > -1/0.1
    assert t.loc[0, "value_per_cost"] == pytest.approx(5.0)


def test_power_law_fit_and_projection() -> None:
    n = np.array([50, 100, 200, 400, 800])
    y = 0.9 - 2.0 * n ** -0.5
    law = PowerLaw.fit(n, y)
    assert law.kind == "power" and law(1600) == pytest.approx(0.9 - 2.0 * 1600**-0.5, abs=1e-4)
    flat = PowerLaw.fit(np.array([10, 20]), np.array([0.5, 0.6]))
    assert flat.kind == "log"


def _grouped(seed: int = 0) -> ValuationData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] > 0).astype(int)
    groups = np.repeat(["good", "noisy", "small"], [150, 100, 50])
    y = np.where((groups == "noisy") & (rng.random(300) < 0.6), 1 - y, y)
    xv = rng.normal(size=(200, 4))
    return ValuationData(x, y, xv, (xv[:, 0] > 0).astype(int), groups=groups)


def test_learning_curves_and_planner() -> None:
    data = _grouped()
    curves = learning_curves(data, LogisticRegression(), fractions=(0.5, 1.0), seeds=(0,))
    assert len(curves) == 3 * 3 and set(curves["group"]) == {"good", "noisy", "small"}
    proj = project(curves, 100).set_index("group")
    assert proj.loc["noisy", "projected_gain"] < proj.loc["good", "projected_gain"] + 1e-9
    values = ValuationResult(np.array([0.2, -0.05, 0.02]), names=["good", "noisy", "small"])
    plan = AcquisitionPlanner(LogisticRegression(), costs={"good": 0.01, "noisy": 0.001, "small": 0.001},
                              n_more=100, fractions=(0.5, 1.0)).fit(data, values)
    assert plan.best == "small" and "projected_gain_per_cost" in plan.table_.columns
    assert plan.table_.iloc[-1]["group"] == "noisy"


def test_active_labeler_prefers_uncertain_valuable_points() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] > 0).astype(int)
    pool = np.array([[3.0, 0.0], [0.01, 0.5], [-3.0, 0.0], [0.02, -0.5]])
    al = ActiveLabeler(k_neighbors=5).fit(x, y, values=np.abs(x[:, 1]))
    pick = al.select(pool, 2)
    assert set(pick.tolist()) == {1, 3}  # the two on the boundary
    unc = ActiveLabeler(strategy="uncertainty").fit(x, y)
    assert set(unc.select(pool, 2).tolist()) == {1, 3}
    assert len(ActiveLabeler(strategy="random").fit(x, y).select(pool, 3)) == 3


def test_active_labeler_diverse_batch_spreads_over_the_boundary() -> None:
    """Plain uncertainty spends the batch on near-copies; the diverse strategy covers the boundary."""
    rng = np.random.default_rng(0)
    half = rng.normal(size=(100, 3))
    x = np.vstack([half, half * [1, -1, -1], half * [-1, 1, 1], half * [-1, -1, -1]])  # symmetric: boundary x0 = 0
    y = (x[:, 0] > 0).astype(int)
    copies = np.column_stack([np.zeros(50), 1.0 + rng.normal(0, 1e-3, 50), rng.normal(0, 1e-3, 50)])
    spread = np.array([[0.05, -1.0, 0.0], [0.05, 0.0, 1.0], [0.05, 0.0, -1.0], [0.05, 0.7, -0.7]])  # distinct
    far = np.column_stack([rng.choice([-6.0, 6.0], 100), rng.normal(size=(100, 2))])  # certain
    pool = np.vstack([copies, spread, far])
    plain = ActiveLabeler(strategy="uncertainty", max_similarity=None).fit(x, y).select(pool, 5)
    assert (plain < 50).all()  # all five from the near-copies
    div = ActiveLabeler(strategy="diverse-uncertainty", beta=11).fit(x, y).select(pool, 5)
    assert len(set(div.tolist())) == 5
    assert (div < 50).sum() == 1 and set(range(50, 54)) <= set(div.tolist())  # one copy + the four distinct points
    with pytest.raises(ShoprankError, match="unknown strategy"):
        ActiveLabeler(strategy="nope").fit(x, y)
    with pytest.raises(ShoprankError, match="beta"):
        ActiveLabeler(strategy="diverse-uncertainty", beta=0).fit(x, y)


def _fisher_by_brute_force(al: ActiveLabeler, x_lab: np.ndarray, pool: np.ndarray, k: int) -> list[int]:
    """The BAIT greedy step written out: refactorise and recompute the trace for every candidate."""
    vl, vp = al._fisher_rows(x_lab), al._fisher_rows(pool)
    f = (vp.T @ vp + vl.T @ vl) / (len(vp) + len(vl))
    m = vl.T @ vl + al.l2 * np.eye(vp.shape[1])
    chosen: list[int] = []
    for _ in range(k):
        trace = [np.inf if i in chosen else np.trace(np.linalg.inv(m + np.outer(v, v)) @ f) for i, v in enumerate(vp)]
        i = int(np.argmin(trace))
        chosen.append(i)
        m = m + np.outer(vp[i], vp[i])
    return chosen


def test_active_labeler_fisher_matches_the_brute_force_greedy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    pool = rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5]
    al = ActiveLabeler(strategy="fisher", l2=0.5).fit(x, y)
    assert al.select(pool, 8).tolist() == _fisher_by_brute_force(al, x, pool, 8)
    with pytest.raises(ShoprankError, match="l2"):
        ActiveLabeler(strategy="fisher", l2=0).fit(x, y)


def test_active_labeler_fisher_asks_where_the_weights_are_unknown() -> None:
    """No labelled pair varies along feature 2, so its weight is a guess; the pool does vary there.

    Uncertainty spends the batch on the boundary the labels already pin down; the Fisher batch
    goes to the pairs that vary along feature 2.
    """
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=(200, 2)), np.zeros(200)])
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    boundary = np.column_stack([rng.normal(0, 0.02, 30), rng.normal(size=30), np.zeros(30)])
    new = np.column_stack([rng.choice([-0.5, 0.5], 10), rng.normal(size=10), rng.choice([-1.0, 1.0], 10)])
    pool = np.vstack([boundary, new])
    plain = ActiveLabeler(strategy="uncertainty", max_similarity=None).fit(x, y).select(pool, 5)
    assert (plain < 30).all()
    pick = ActiveLabeler(strategy="fisher").fit(x, y).select(pool, 5)
    assert len(set(pick.tolist())) == 5 and (pick >= 30).sum() >= 4

"""Evaluation drivers: full-catalog ranking, click prediction and judged search reranking.

`evaluate_full_ranking` streams users in batches: each batch is scored, masked, cut to its
top items and reduced to per-user metric values before the next one is scored, so memory
depends on `batch_size x n_items`, never on the number of users. Means, bootstrap CIs and
slices are computed afterwards from the per-user arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shoprank.evaluation.bootstrap import (
    DEFAULT_MAX_ELEMS,
    bootstrap_ci,
    bootstrap_mean_cis,
    resample_indices,
)
from shoprank.evaluation.metrics import (
    GainKind,
    _binary_labels,
    _grouped_auc,
    _mrr_from_ranked,
    _ndcg_from_ranked,
    _pad_ranked_grades,
    _scores_1d,
    logloss_per_row,
    match_topk,
    metrics_from_matched,
    popularity_percentiles,
    recommendation_popularity,
)
from shoprank.models.base import Ranker, UserBatch, top_k

CI = tuple[float, float]


def _num(x: float) -> float | None:
    """JSON has no NaN: undefined values become null."""
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class RankingReport:
    """Result of a ranking evaluation (per user for recommendation, per query for search).

    `metrics` are means over evaluated units (those with at least one relevant item);
    `ci` holds percentile-bootstrap intervals over those units; `slices[name]` holds the same
    means restricted to a boolean mask, plus "n" (units evaluated in the slice);
    `per_user` holds one value per input unit, NaN where undefined, in input order.
    """

    metrics: dict[str, float]
    ci: dict[str, CI]
    slices: dict[str, dict[str, float]]
    per_user: dict[str, np.ndarray]
    slice_ci: dict[str, dict[str, CI]] = field(default_factory=dict)
    n_users: int = 0  # units evaluated
    n_skipped: int = 0  # units without any relevant item: NaN in per_user, left out of means
    unit: str = "user"
    alpha: float = 0.05
    n_bootstrap: int = 0

    def to_dict(self, per_user: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict (NaN -> None); per-unit arrays only if asked (they are large)."""
        out: dict[str, Any] = {
            "unit": self.unit,
            "n": self.n_users,
            "n_skipped": self.n_skipped,
            "alpha": self.alpha,
            "n_bootstrap": self.n_bootstrap,
            "metrics": {k: _num(v) for k, v in self.metrics.items()},
            "ci": {k: [_num(lo), _num(hi)] for k, (lo, hi) in self.ci.items()},
            "slices": {
                s: {k: (int(v) if k == "n" else _num(v)) for k, v in d.items()}
                for s, d in self.slices.items()
            },
            "slice_ci": {
                s: {k: [_num(lo), _num(hi)] for k, (lo, hi) in d.items()}
                for s, d in self.slice_ci.items()
            },
        }
        if per_user:
            out["per_" + self.unit] = {
                k: [_num(float(x)) for x in v] for k, v in self.per_user.items()
            }
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per metric (plus "n"): value, CI bounds, then one column per slice."""
        names = list(self.metrics)
        data: dict[str, list[float]] = {
            "value": [self.metrics[k] for k in names] + [float(self.n_users)],
            "ci_lo": [self.ci.get(k, (np.nan, np.nan))[0] for k in names] + [np.nan],
            "ci_hi": [self.ci.get(k, (np.nan, np.nan))[1] for k in names] + [np.nan],
        }
        for s, d in self.slices.items():
            data[s] = [d.get(k, np.nan) for k in names] + [float(d.get("n", 0))]
        return pd.DataFrame(data, index=pd.Index([*names, "n"], name="metric"))


# ---------------------------------------------------------------------------------------------
# Shared summarising
# ---------------------------------------------------------------------------------------------


def _check_slices(slices: Mapping[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, mask in (slices or {}).items():
        m = np.asarray(mask)
        if m.shape != (n,) or m.dtype != bool:
            raise ValueError(f"slice {name!r} must be a boolean mask of shape ({n},)")
        out[name] = m
    return out


def _cis(
    columns: dict[str, np.ndarray], n_bootstrap: int, alpha: float, seed: int
) -> dict[str, CI]:
    """Bootstrap CIs of means; columns that are finite on every unit share their resamples."""
    if n_bootstrap < 1:
        return {}
    shared = {k: v for k, v in columns.items() if np.isfinite(v).all()}
    out = bootstrap_mean_cis(shared, n_bootstrap, alpha, seed)
    for k, v in columns.items():
        if k not in shared:
            out[k] = bootstrap_ci(v, n_bootstrap, alpha, seed, nan_policy="omit")
    return {k: out[k] for k in columns}


def _mean(v: np.ndarray) -> float:
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _summarise(
    per_user: dict[str, np.ndarray],
    valid: np.ndarray,
    masks: dict[str, np.ndarray],
    n_bootstrap: int,
    alpha: float,
    seed: int,
) -> tuple[dict[str, float], dict[str, CI], dict[str, dict[str, float]], dict[str, dict[str, CI]]]:
    cols = {k: v[valid] for k, v in per_user.items()}
    metrics = {k: _mean(v) for k, v in cols.items()}
    ci = _cis(cols, n_bootstrap, alpha, seed)
    sl: dict[str, dict[str, float]] = {}
    sl_ci: dict[str, dict[str, CI]] = {}
    for i, (name, mask) in enumerate(masks.items()):
        sel = valid & mask
        scol = {k: v[sel] for k, v in per_user.items()}
        sl[name] = {"n": int(sel.sum()), **{k: _mean(v) for k, v in scol.items()}}
        sl_ci[name] = _cis(scol, n_bootstrap, alpha, seed + i + 1)
    return metrics, ci, sl, sl_ci


# ---------------------------------------------------------------------------------------------
# Full-catalog ranking
# ---------------------------------------------------------------------------------------------


def _flat(lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), lens)
    cols = (
        np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in lists])
        if lens.sum()
        else np.empty(0, dtype=np.int64)
    )
    return rows, cols


def evaluate_full_ranking(
    model: Ranker,
    users: UserBatch,
    targets: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = (10, 20),
    gains: Sequence[np.ndarray] | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    batch_size: int = 512,
    slices: Mapping[str, np.ndarray] | None = None,
    item_popularity: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    alpha: float = 0.05,
    gain: GainKind = "exp",
) -> RankingReport:
    """Rank the whole catalog for every user and score the top max(ks) against `targets`.

    - `targets[i]`: user i's held-out relevant items; `gains[i]` optional graded relevance.
    - `exclude[i]`: items never to recommend to user i (e.g. the training history); they are
      scored -inf. Any slot whose score is -inf counts as "nothing recommended" (id -1).
    - `slices`: boolean masks over users (e.g. "cold_start"); each gets its own means and CIs.
    - `item_popularity` (n_items,): adds "pop_pct@k" (mean popularity percentile of the
      recommended items; 0.5 = unbiased) and "arp@k" (mean raw popularity).
    - Users with no relevant target are left out of every aggregate (counted in n_skipped).
    - Keys: ndcg/recall/precision/hr/map@k per k, "mrr" (first hit within max(ks)),
      coverage@k (catalog share recommended to evaluated users; no CI), pop_pct@k, arp@k.
    """
    n = len(users)
    if n == 0:
        raise ValueError("no users to evaluate")
    if len(targets) != n:
        raise ValueError(f"got {len(targets)} target lists for {n} users")
    if gains is not None and len(gains) != n:
        raise ValueError(f"got {len(gains)} gain lists for {n} users")
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"got {len(exclude)} exclude lists for {n} users")
    kset = sorted({int(k) for k in ks})
    if not kset or kset[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    kmax = kset[-1]
    masks = _check_slices(slices, n)

    per_user: dict[str, np.ndarray] = {}
    n_rel = np.zeros(n, dtype=np.int64)
    n_items: int | None = None
    seen: dict[int, np.ndarray] = {}
    slice_seen: dict[str, dict[int, np.ndarray]] = {}
    pop: np.ndarray | None = None
    pct: np.ndarray | None = None

    def column(name: str) -> np.ndarray:
        if name not in per_user:
            per_user[name] = np.full(n, np.nan)
        return per_user[name]

    with tqdm(total=n, desc="evaluate", unit="user", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            b = stop - start
            scores = np.asarray(model.score_users(users.slice(start, stop)))
            if scores.ndim != 2 or scores.shape[0] != b:
                raise ValueError(f"score_users returned shape {scores.shape} for {b} users")
            if n_items is None:
                n_items = scores.shape[1]
                seen = {k: np.zeros(n_items, dtype=bool) for k in kset}
                slice_seen = {s: {k: np.zeros(n_items, dtype=bool) for k in kset} for s in masks}
                if item_popularity is not None:
                    pop = np.asarray(item_popularity, dtype=np.float64)
                    if pop.shape != (n_items,):
                        raise ValueError(f"item_popularity must have shape ({n_items},)")
                    pct = popularity_percentiles(pop)
            elif scores.shape[1] != n_items:
                raise ValueError(f"score_users returned {scores.shape[1]} items, then {n_items}")
            tgt = targets[start:stop]
            _, tcols = _flat(tgt)
            if tcols.size and (tcols.min() < 0 or tcols.max() >= n_items):
                raise ValueError(f"target item ids must be in [0, {n_items})")
            if exclude is not None:
                erows, ecols = _flat(exclude[start:stop])
                if ecols.size and (ecols.min() < 0 or ecols.max() >= n_items):
                    raise ValueError(f"exclude item ids must be in [0, {n_items})")
                scores = np.array(scores, copy=True)  # never write into the model's array
                scores[erows, ecols] = -np.inf
            top, top_scores = top_k(scores, kmax)
            del scores
            top = np.where(np.isneginf(top_scores), -1, top)
            if top.shape[1] < kmax:  # catalog smaller than kmax
                top = np.pad(top, ((0, 0), (0, kmax - top.shape[1])), constant_values=-1)

            m = match_topk(top, tgt, None if gains is None else gains[start:stop], gain)
            n_rel[start:stop] = m.n_rel
            for name, vals in metrics_from_matched(m, kset).items():
                column(name)[start:stop] = vals
            ok = m.n_rel > 0
            for k in kset:
                ids = top[ok, :k]
                seen[k][ids[ids >= 0]] = True
                for s, mask in masks.items():
                    sids = top[ok & mask[start:stop], :k]
                    slice_seen[s][k][sids[sids >= 0]] = True
                if pop is not None:
                    pp = recommendation_popularity(top[:, :k], pop, "percentile", percentiles=pct)
                    ar = recommendation_popularity(top[:, :k], pop, "arp")
                    column(f"pop_pct@{k}")[start:stop] = np.where(ok, pp, np.nan)
                    column(f"arp@{k}")[start:stop] = np.where(ok, ar, np.nan)
            bar.update(b)

    valid = n_rel > 0
    metrics, ci, sl, sl_ci = _summarise(per_user, valid, masks, n_bootstrap, alpha, seed)
    assert n_items is not None
    for k in kset:  # catalog-level: one number per population, no per-user value or CI
        metrics[f"coverage@{k}"] = float(seen[k].sum() / n_items)
        for s in masks:
            sl[s][f"coverage@{k}"] = float(slice_seen[s][k].sum() / n_items)
    order = _metric_order(list(metrics), kset)
    return RankingReport(
        metrics={k: metrics[k] for k in order},
        ci=ci,
        slices={s: {"n": d["n"], **{k: d[k] for k in order}} for s, d in sl.items()},
        per_user=per_user,
        slice_ci=sl_ci,
        n_users=int(valid.sum()),
        n_skipped=int((~valid).sum()),
        unit="user",
        alpha=alpha,
        n_bootstrap=n_bootstrap,
    )


def _metric_order(names: list[str], ks: list[int]) -> list[str]:
    """Readable order: per-k accuracy metrics, then mrr, then catalog-level ones."""
    first = ["ndcg", "recall", "precision", "hr", "map"]
    later = ["coverage", "pop_pct", "arp"]
    want = [f"{m}@{k}" for k in ks for m in first] + ["mrr"] + [f"{m}@{k}" for m in later for k in ks]
    return [x for x in want if x in names] + [x for x in names if x not in want]


# ---------------------------------------------------------------------------------------------
# Click prediction
# ---------------------------------------------------------------------------------------------


class _AucResampler:
    """AUC of a resample from unit counts, in O(rows) and without re-sorting.

    With negatives sorted by score and C the running sum of their weights, the AUC numerator
    is sum over positives of w_i * (C[#neg below s_i] + C[#neg <= s_i]) / 2, which counts ties
    as one half. `searchsorted` gives both positions once; each resample is then gathers,
    one cumulative sum and a dot product.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray, unit: np.ndarray) -> None:
        pos = np.flatnonzero(y)
        neg = np.flatnonzero(~y)
        neg = neg[np.argsort(s[neg], kind="stable")]
        neg_s = s[neg]
        self.k_lo = np.searchsorted(neg_s, s[pos], side="left")
        self.k_hi = np.searchsorted(neg_s, s[pos], side="right")
        self.ties = bool((self.k_lo != self.k_hi).any())
        self.pos_unit, self.neg_unit = unit[pos], unit[neg]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        wp = counts[:, self.pos_unit]
        wn = counts[:, self.neg_unit]
        cn = np.zeros((counts.shape[0], wn.shape[1] + 1), dtype=counts.dtype)
        np.cumsum(wn, axis=1, out=cn[:, 1:])
        num = np.einsum("ij,ij->i", wp, cn[:, self.k_lo]).astype(np.float64)
        if self.ties:
            num = 0.5 * (num + np.einsum("ij,ij->i", wp, cn[:, self.k_hi]))
        den = wp.sum(1).astype(np.float64) * cn[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / den, np.nan)


def _click_block(
    y: np.ndarray,
    s: np.ndarray,
    codes: np.ndarray | None,
    n_bootstrap: int,
    alpha: float,
    seed: int,
    eps: float,
    max_elems: int,
) -> dict[str, Any]:
    n = len(y)
    out: dict[str, Any] = {"n": int(n), "positive_rate": _num(float(y.mean())) if n else None}
    if n == 0:
        out.update(auc=None, gauc=None, logloss=None)
        return out
    has_both = bool(y.any() and not y.all())
    auc_val = float(_grouped_auc(y, s, np.zeros(n, dtype=np.int64), 1)[0][0]) if has_both else math.nan
    out["auc"] = _num(auc_val)

    is_prob = bool(s.min() >= 0.0 and s.max() <= 1.0)
    losses = logloss_per_row(y, s, eps) if is_prob else None
    if is_prob:
        assert losses is not None
        out["logloss"] = float(losses.mean())
    else:
        out["logloss"] = None
        out["logloss_skipped"] = "scores are not probabilities in [0, 1]"

    g_auc = g_w = None
    n_groups = 0
    if codes is not None:
        _, codes = np.unique(codes, return_inverse=True)
        codes = codes.reshape(-1)
        n_groups = int(codes.max()) + 1
        g_auc, _, g_w = _grouped_auc(y, s, codes, n_groups)
        used = ~np.isnan(g_auc)
        out["gauc"] = _num(float(np.average(g_auc[used], weights=g_w[used]))) if used.any() else None
        out["gauc_groups"] = n_groups
        out["gauc_groups_skipped"] = int((~used).sum())

    if n_bootstrap < 1:
        return out
    # Resample groups when given (rows of one user are not independent), else rows.
    units = n_groups if codes is not None else n
    unit = codes if codes is not None else np.arange(n)
    auc_of = _AucResampler(y, s, unit) if has_both else None
    if losses is not None:  # per-unit loss sums and sizes: a resample's mean is two dot products
        unit_loss = np.bincount(unit, weights=losses, minlength=units)
        unit_size = np.bincount(unit, minlength=units).astype(np.float64)
    if g_auc is not None and g_w is not None:
        used = ~np.isnan(g_auc)
        g_num = np.where(used, g_auc * g_w, 0.0)
        g_den = np.where(used, g_w, 0.0)
    chunk_elems = max(1, max_elems * units // n)  # bounds the (chunk, rows) weight gathers
    auc_bs, ll_bs, gauc_bs = [], [], []
    for idx in resample_indices(units, n_bootstrap, seed, chunk_elems):
        c = idx.shape[0]
        flat = (idx + (np.arange(c, dtype=np.int64) * units)[:, None]).reshape(-1)
        counts = np.bincount(flat, minlength=c * units).reshape(c, units)
        if auc_of is not None:
            auc_bs.append(auc_of(counts))
        with np.errstate(divide="ignore", invalid="ignore"):
            if losses is not None:
                ll_bs.append((counts @ unit_loss) / (counts @ unit_size))
            if g_auc is not None:
                gauc_bs.append((counts @ g_num) / (counts @ g_den))

    def ci(parts: list[np.ndarray]) -> list[float | None]:
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        if not len(v):
            return [None, None]
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        return [float(lo), float(hi)]

    if auc_bs:
        out["auc_ci"] = ci(auc_bs)
    if ll_bs:
        out["logloss_ci"] = ci(ll_bs)
    if gauc_bs and out.get("gauc") is not None:
        out["gauc_ci"] = ci(gauc_bs)
    out["ci_unit"] = "group" if codes is not None else "row"
    return out


def evaluate_click(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray | None = None,
    slices: Mapping[str, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    *,
    seed: int = 0,
    alpha: float = 0.05,
    eps: float = 1e-7,
    max_elems: int = DEFAULT_MAX_ELEMS,
) -> dict[str, Any]:
    """AUC, GAUC (with `groups`, e.g. user ids) and log loss, with bootstrap CIs.

    Log loss is reported only when every score lies in [0, 1]; otherwise "logloss" is None
    and "logloss_skipped" says why. With `groups`, CIs resample whole groups (a cluster
    bootstrap), because rows of one group are correlated; without, they resample rows.
    `slices` are boolean masks over rows; each gets the same fields. JSON-able output.
    """
    y = _binary_labels(y_true)
    s = _scores_1d(y_score, len(y))
    g = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must have shape {y.shape}, got {g.shape}")
    masks = _check_slices(slices, len(y))
    out = _click_block(y, s, g, n_bootstrap, alpha, seed, eps, max_elems)
    out["alpha"] = alpha
    out["n_bootstrap"] = n_bootstrap
    if masks:
        out["slices"] = {
            name: _click_block(
                y[m], s[m], None if g is None else g[m], n_bootstrap, alpha, seed + i + 1, eps, max_elems
            )
            for i, (name, m) in enumerate(masks.items())
        }
    return out


# ---------------------------------------------------------------------------------------------
# Search: rerank judged candidates
# ---------------------------------------------------------------------------------------------


def evaluate_search(
    scores: Sequence[np.ndarray],
    grades: Sequence[np.ndarray],
    ks: Sequence[int] = (5, 10),
    *,
    relevance_threshold: float | None = None,
    gain: GainKind = "exp",
    slices: Mapping[str, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """JSON-able `search_report(...).to_dict(per_user=True)`: metrics, CIs, slices, per-query.

    A dict like `evaluate_click`'s, so protocol code can treat both alike; judged query sets
    are small, so the per-query values ("per_query") are included.
    """
    rep = search_report(
        scores, grades, ks, relevance_threshold=relevance_threshold, gain=gain, slices=slices,
        n_bootstrap=n_bootstrap, seed=seed, alpha=alpha,
    )
    return rep.to_dict(per_user=True)


def search_report(
    scores: Sequence[np.ndarray],
    grades: Sequence[np.ndarray],
    ks: Sequence[int] = (5, 10),
    *,
    relevance_threshold: float | None = None,
    gain: GainKind = "exp",
    slices: Mapping[str, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> RankingReport:
    """Graded NDCG@k and MRR per query for a model's scores on judged candidates.

    Candidates are ranked by -score with ties in the given order. NDCG@k is undefined (NaN)
    for queries whose grades are all 0; MRR counts a candidate relevant if its grade is
    >= `relevance_threshold` (> 0 when None) and is NaN for queries with none. Queries with
    no positive grade are left out (n_skipped). Returns a report with unit="query".
    """
    kset = sorted({int(k) for k in ks})
    if not kset or kset[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    ranked = _pad_ranked_grades(scores, grades)
    n = ranked.shape[0]
    masks = _check_slices(slices, n)
    per_query: dict[str, np.ndarray] = {f"ndcg@{k}": _ndcg_from_ranked(ranked, k, gain) for k in kset}
    per_query["mrr"] = _mrr_from_ranked(ranked, relevance_threshold)
    valid = np.nan_to_num(ranked, nan=0.0).max(axis=1, initial=0.0) > 0
    metrics, ci, sl, sl_ci = _summarise(per_query, valid, masks, n_bootstrap, alpha, seed)
    return RankingReport(
        metrics=metrics,
        ci=ci,
        slices=sl,
        per_user=per_query,
        slice_ci=sl_ci,
        n_users=int(valid.sum()),
        n_skipped=int((~valid).sum()),
        unit="query",
        alpha=alpha,
        n_bootstrap=n_bootstrap,
    )

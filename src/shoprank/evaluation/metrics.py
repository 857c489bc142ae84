"""Vectorised offline metrics: click (AUC, GAUC, log loss), top-k ranking, catalog effects.

Ranking metrics return one value per user (or query) so that means, slices and bootstrap
confidence intervals are all computed from the same arrays. Conventions, stated once:

- `topk` is an int array (n_users, K) of item ids, best first; negative ids are padding
  (never a hit), so lists shorter than K can be stored in one matrix.
- `targets[i]` holds user i's relevant item ids. With `gains`, `gains[i][j]` is the graded
  relevance of `targets[i][j]`; items with gain <= 0 are not relevant. A repeated target
  counts once (with its largest gain).
- Users with no relevant item get NaN for every ranking metric: the metric is undefined for
  them, and NaN keeps them visible instead of silently pulling means towards 0.
- NDCG uses log2 discounts; graded gains default to the exponential form 2^g - 1
  (`gain="linear"` uses g itself, as scikit-learn's `ndcg_score` does). The ideal DCG comes
  from the user's own relevant set, truncated at k.
- Recall@k = |hits in top k| / |relevant| (not divided by min(|relevant|, k)), so a user
  with more than k relevant items cannot reach 1. MAP@k normalises AP by min(|relevant|, k).
  Precision@k divides by k even when fewer than k items were ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy.stats import rankdata

GainKind = Literal["exp", "linear"]
PopularityKind = Literal["percentile", "arp"]

# ---------------------------------------------------------------------------------------------
# Click / binary classification
# ---------------------------------------------------------------------------------------------


def _binary_labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0/1 (or booleans)")
    return y.astype(bool)


def _scores_1d(y_score: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def _grouped_auc(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC via the Mann-Whitney rank sum, ties counted as half (as sklearn does).

    One lexsort over (group, score) serves all groups at once. Returns (auc, n_pos, n_rows)
    per group; auc is NaN for groups with a single class.
    """
    n = len(y)
    order = np.lexsort((s, codes))
    g, ss, yy = codes[order], s[order], y[order]
    group_start = np.zeros(n_groups, dtype=np.int64)
    counts = np.bincount(g, minlength=n_groups)
    group_start[1:] = np.cumsum(counts)[:-1]
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (g[1:] != g[:-1]) | (ss[1:] != ss[:-1])
    block_id = np.cumsum(new_block) - 1
    starts = np.flatnonzero(new_block)
    ends = np.append(starts[1:], n)  # exclusive
    # average 1-based rank of each tie block, counted inside its own group
    mid = (starts + ends - 1) / 2.0
    rank = mid[block_id] - group_start[g] + 1.0
    n_pos = np.bincount(g, weights=yy.astype(np.float64), minlength=n_groups)
    rank_sum = np.bincount(g, weights=rank * yy, minlength=n_groups)
    n_neg = counts - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_g = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc_g[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc_g, n_pos, counts.astype(np.float64)


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC (ties count one half). Raises ValueError when only one class is present."""
    y = _binary_labels(y_true)
    s = _scores_1d(y_score, len(y))
    if y.all() or not y.any():
        raise ValueError("AUC is undefined when y_true has a single class")
    val, _, _ = _grouped_auc(y, s, np.zeros(len(y), dtype=np.int64), 1)
    return float(val[0])


class GaucDetail(NamedTuple):
    """GAUC with the bookkeeping needed to judge it: how many groups actually counted."""

    gauc: float
    n_groups: int
    n_skipped: int  # groups with only positives or only negatives
    group_auc: np.ndarray  # per group (in np.unique order of the group keys), NaN if skipped
    group_weight: np.ndarray  # rows per group (the GAUC weight)


def gauc_detail(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> GaucDetail:
    """Group AUC: per-group AUC averaged with weights = group size (rows in the group).

    Groups (typically users or sessions) that hold a single class have no AUC and are
    skipped; the result is NaN if every group is skipped.
    """
    y = _binary_labels(y_true)
    s = _scores_1d(y_score, len(y))
    grp = np.asarray(groups)
    if grp.shape != y.shape:
        raise ValueError(f"groups must have shape {y.shape}, got {grp.shape}")
    _, codes = np.unique(grp, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    if n_groups == 0:
        return GaucDetail(float("nan"), 0, 0, np.empty(0), np.empty(0))
    auc_g, _, size = _grouped_auc(y, s, codes, n_groups)
    ok = ~np.isnan(auc_g)
    value = float(np.average(auc_g[ok], weights=size[ok])) if ok.any() else float("nan")
    return GaucDetail(value, n_groups, int((~ok).sum()), auc_g, size)


def gauc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (see `gauc_detail` for the number of skipped single-class groups)."""
    return gauc_detail(y_true, y_score, groups).gauc


def logloss(y_true: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1-eps] so 0/1 stay finite."""
    return float(np.mean(logloss_per_row(y_true, p, eps)))


def logloss_per_row(y_true: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Per-row binary cross-entropy (for bootstrap CIs and slices)."""
    y = _binary_labels(y_true)
    q = np.clip(_scores_1d(p, len(y)), eps, 1.0 - eps)
    return -np.where(y, np.log(q), np.log1p(-q))


# ---------------------------------------------------------------------------------------------
# Top-k ranking metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matched:
    """Relevance of each ranked slot plus what the ideal ranking needs, computed once per batch."""

    gain: np.ndarray  # (n, K) transformed gain of the item in each slot (0 if not relevant)
    hit: np.ndarray  # (n, K) bool: slot holds a relevant item
    n_rel: np.ndarray  # (n,) number of distinct relevant items
    rel_rows: np.ndarray  # flattened relevant items: row of each
    rel_rank: np.ndarray  # position of each within its row when sorted by gain, best first
    rel_gain: np.ndarray  # transformed gain of each

    def idcg(self, k: int) -> np.ndarray:
        """Ideal DCG@k: the user's relevant items sorted by gain, truncated at k."""
        keep = self.rel_rank < k
        w = self.rel_gain[keep] * _discounts(k)[self.rel_rank[keep]]
        return np.bincount(self.rel_rows[keep], weights=w, minlength=len(self.n_rel))


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def _transform(g: np.ndarray, gain: GainKind) -> np.ndarray:
    if gain == "exp":
        return np.exp2(g) - 1.0
    if gain == "linear":
        return g
    raise ValueError(f"gain must be 'exp' or 'linear', got {gain!r}")


def _as_topk(topk: np.ndarray) -> np.ndarray:
    t = np.asarray(topk)
    if t.ndim != 2:
        raise ValueError(f"topk must be 2-D (n_users, K), got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"topk must hold integer item ids, got dtype {t.dtype}")
    return t.astype(np.int64, copy=False)


def match_topk(
    topk: np.ndarray,
    targets: Sequence[np.ndarray],
    gains: Sequence[np.ndarray] | None = None,
    gain: GainKind = "exp",
) -> Matched:
    """Look up every ranked item in its user's relevant set (one searchsorted for the batch)."""
    t = _as_topk(topk)
    n, width = t.shape
    if len(targets) != n:
        raise ValueError(f"got {len(targets)} target lists for {n} ranked rows")
    if gains is not None and len(gains) != n:
        raise ValueError(f"got {len(gains)} gain lists for {n} ranked rows")
    lens = np.fromiter((len(x) for x in targets), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    items = (
        np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in targets])
        if lens.sum()
        else np.empty(0, dtype=np.int64)
    )
    if items.size and items.min() < 0:
        raise ValueError("target item ids must be >= 0")
    if gains is None:
        g = np.ones(len(items), dtype=np.float64)
    else:
        glens = np.fromiter((len(x) for x in gains), dtype=np.int64, count=n)
        if not np.array_equal(glens, lens):
            raise ValueError("each gains[i] must have the same length as targets[i]")
        g = (
            np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in gains])
            if glens.sum()
            else np.empty(0, dtype=np.float64)
        )
        if np.isnan(g).any():
            raise ValueError("gains contain NaN")
        keep = g > 0
        rows, items, g = rows[keep], items[keep], g[keep]
    base = int(max(t.max(initial=-1), items.max(initial=-1))) + 1
    keys = rows * base + items
    # dedupe (row, item), keeping the largest gain; result sorted by key
    order = np.lexsort((-g, keys))
    keys, rows, g = keys[order], rows[order], g[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, rows, g = keys[first], rows[first], g[first]
    tg = _transform(g, gain)

    q = np.where(t >= 0, np.arange(n, dtype=np.int64)[:, None] * base + t, -1)
    if len(keys):
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        hit = (keys[pos] == q) & (q >= 0)
        slot_gain = np.where(hit, tg[pos], 0.0)
    else:
        hit = np.zeros((n, width), dtype=bool)
        slot_gain = np.zeros((n, width), dtype=np.float64)

    n_rel = np.bincount(rows, minlength=n)
    order = np.lexsort((-tg, rows))
    rows, tg = rows[order], tg[order]
    row_start = np.concatenate(([0], np.cumsum(n_rel)[:-1]))
    rank = np.arange(len(rows), dtype=np.int64) - row_start[rows]
    return Matched(slot_gain, hit, n_rel, rows, rank, tg)


def _check_k(k: int, width: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > width:
        raise ValueError(f"k={k} exceeds the {width} ranked items per row (pad topk with -1)")


def _undefined(values: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64, copy=False)
    out[n_rel == 0] = np.nan
    return out


def _ndcg(m: Matched, k: int) -> np.ndarray:
    dcg = m.gain[:, :k] @ _discounts(k)
    idcg = m.idcg(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined(dcg / idcg, m.n_rel)


def _recall(m: Matched, k: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return _undefined(m.hit[:, :k].sum(1) / m.n_rel, m.n_rel)


def _precision(m: Matched, k: int) -> np.ndarray:
    return _undefined(m.hit[:, :k].sum(1) / float(k), m.n_rel)


def _hr(m: Matched, k: int) -> np.ndarray:
    return _undefined(np.asarray(m.hit[:, :k].any(1), dtype=np.float64), m.n_rel)


def _mrr(m: Matched, k: int) -> np.ndarray:
    h = m.hit[:, :k]
    rr = np.where(h.any(1), 1.0 / (np.argmax(h, axis=1) + 1.0), 0.0)
    return _undefined(rr, m.n_rel)


def _map(m: Matched, k: int) -> np.ndarray:
    h = m.hit[:, :k]
    prec = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (prec * h).sum(1) / np.minimum(m.n_rel, k)
    return _undefined(ap, m.n_rel)


def ranking_metrics(
    topk: np.ndarray,
    targets: Sequence[np.ndarray],
    ks: Sequence[int] = (10,),
    gains: Sequence[np.ndarray] | None = None,
    gain: GainKind = "exp",
) -> dict[str, np.ndarray]:
    """All per-user ranking metrics from one lookup pass.

    Keys: "ndcg@k", "recall@k", "precision@k", "hr@k", "map@k" for each k, and "mrr"
    (first hit within the full width K of `topk`).
    """
    return metrics_from_matched(match_topk(topk, targets, gains, gain), ks)


def metrics_from_matched(m: Matched, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """`ranking_metrics` on an existing `match_topk` result (lets callers reuse the lookup)."""
    width = m.hit.shape[1]
    out: dict[str, np.ndarray] = {}
    for k in ks:
        _check_k(k, width)
        out[f"ndcg@{k}"] = _ndcg(m, k)
        out[f"recall@{k}"] = _recall(m, k)
        out[f"precision@{k}"] = _precision(m, k)
        out[f"hr@{k}"] = _hr(m, k)
        out[f"map@{k}"] = _map(m, k)
    out["mrr"] = _mrr(m, width) if width else _undefined(np.zeros(len(m.n_rel)), m.n_rel)
    return out


def ndcg_at_k(
    topk: np.ndarray,
    targets: Sequence[np.ndarray],
    k: int,
    gains: Sequence[np.ndarray] | None = None,
    gain: GainKind = "exp",
) -> np.ndarray:
    """Per-user NDCG@k; binary without `gains`, graded (2^g-1 or linear) with them."""
    m = match_topk(topk, targets, gains, gain)
    _check_k(k, m.hit.shape[1])
    return _ndcg(m, k)


def recall_at_k(topk: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-user |hits in top k| / |relevant|."""
    m = match_topk(topk, targets)
    _check_k(k, m.hit.shape[1])
    return _recall(m, k)


def precision_at_k(topk: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-user |hits in top k| / k."""
    m = match_topk(topk, targets)
    _check_k(k, m.hit.shape[1])
    return _precision(m, k)


def hit_rate_at_k(topk: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-user 1.0 if any relevant item is in the top k, else 0.0 (HR@k)."""
    m = match_topk(topk, targets)
    _check_k(k, m.hit.shape[1])
    return _hr(m, k)


def mrr(topk: np.ndarray, targets: Sequence[np.ndarray], k: int | None = None) -> np.ndarray:
    """Per-user reciprocal rank of the first hit within k (default: all of topk); 0 if none."""
    m = match_topk(topk, targets)
    width = m.hit.shape[1]
    kk = width if k is None else k
    _check_k(kk, width)
    return _mrr(m, kk)


def map_at_k(topk: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per-user average precision truncated at k, normalised by min(|relevant|, k)."""
    m = match_topk(topk, targets)
    _check_k(k, m.hit.shape[1])
    return _map(m, k)


# ---------------------------------------------------------------------------------------------
# Reranking judged candidates (search)
# ---------------------------------------------------------------------------------------------


def _pad_ranked_grades(scores: Sequence[np.ndarray], grades: Sequence[np.ndarray]) -> np.ndarray:
    """Grades of each query's candidates ordered by score, best first, padded with NaN.

    Ties keep the given candidate order (stable sort on -score): deterministic, and neither
    optimistic nor pessimistic unless the caller's candidate order is.
    """
    if len(scores) != len(grades):
        raise ValueError(f"got {len(scores)} score lists and {len(grades)} grade lists")
    n = len(scores)
    lens = np.fromiter((len(x) for x in scores), dtype=np.int64, count=n)
    glens = np.fromiter((len(x) for x in grades), dtype=np.int64, count=n)
    if not np.array_equal(lens, glens):
        raise ValueError("each scores[i] must have the same length as grades[i]")
    width = int(lens.max(initial=0))
    S = np.full((n, width), np.inf)  # sorted by -S: padding goes last
    G = np.full((n, width), np.nan)
    if n and width:
        mask = np.arange(width)[None, :] < lens[:, None]
        s_flat = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in scores])
        g_flat = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in grades])
        if np.isnan(s_flat).any() or np.isnan(g_flat).any():
            raise ValueError("scores and grades must not contain NaN")
        if (g_flat < 0).any():
            raise ValueError("grades must be >= 0")
        S[mask] = -s_flat
        G[mask] = g_flat
    order = np.argsort(S, axis=1, kind="stable")
    return np.take_along_axis(G, order, axis=1)


def _ndcg_from_ranked(ranked: np.ndarray, k: int, gain: GainKind) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    g = np.nan_to_num(_transform(ranked, gain), nan=0.0)
    kk = min(k, g.shape[1])
    disc = _discounts(kk)
    dcg = g[:, :kk] @ disc
    ideal = -np.sort(-g, axis=1)[:, :kk]
    idcg = ideal @ disc
    with np.errstate(divide="ignore", invalid="ignore"):
        out = dcg / idcg
    out[idcg <= 0] = np.nan
    return out


def ndcg_at_k_graded(
    scores: Sequence[np.ndarray],
    grades: Sequence[np.ndarray],
    k: int,
    gain: GainKind = "exp",
) -> np.ndarray:
    """Per-query NDCG@k of judged candidates reranked by `scores`.

    Ideal DCG is computed from the same candidates' grades. Ties in scores keep the given
    candidate order (stable sort by -score). Queries whose grades are all 0 get NaN.
    """
    return _ndcg_from_ranked(_pad_ranked_grades(scores, grades), k, gain)


def mrr_graded(
    scores: Sequence[np.ndarray], grades: Sequence[np.ndarray], threshold: float | None = None
) -> np.ndarray:
    """Per-query reciprocal rank of the first candidate with grade >= threshold (> 0 if None).

    NaN for queries without any such candidate (nothing to find).
    """
    ranked = _pad_ranked_grades(scores, grades)
    return _mrr_from_ranked(ranked, threshold)


def _mrr_from_ranked(ranked: np.ndarray, threshold: float | None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        rel = ranked > 0 if threshold is None else ranked >= threshold
    rel &= ~np.isnan(ranked)
    has = rel.any(1)
    return np.where(has, 1.0 / (np.argmax(rel, axis=1) + 1.0), np.nan)


# ---------------------------------------------------------------------------------------------
# Catalog-level effects
# ---------------------------------------------------------------------------------------------


def item_coverage(topk: np.ndarray, n_items: int) -> float:
    """Fraction of the catalog that appears in at least one user's list (padding ignored)."""
    t = _as_topk(topk)
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    ids = t[t >= 0]
    if ids.size and ids.max() >= n_items:
        raise ValueError(f"topk holds item id {int(ids.max())} >= n_items={n_items}")
    return float(np.unique(ids).size / n_items)


def popularity_percentiles(item_popularity: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each item's popularity in the catalog, in (0, 1).

    0.5 means median popularity, so a uniformly random recommender scores 0.5 on average.
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or pop.size == 0:
        raise ValueError("item_popularity must be a non-empty 1-D array")
    return (rankdata(pop, method="average") - 0.5) / pop.size


def recommendation_popularity(
    topk: np.ndarray,
    item_popularity: np.ndarray,
    kind: PopularityKind = "percentile",
    *,
    percentiles: np.ndarray | None = None,
) -> np.ndarray:
    """Per-user mean popularity of the recommended items (padding ignored).

    kind="percentile": mean popularity percentile (see `popularity_percentiles`); comparable
    across datasets. kind="arp": mean raw popularity (average recommendation popularity,
    Abdollahpouri et al.). Pass precomputed `percentiles` to avoid re-ranking the catalog.
    """
    t = _as_topk(topk)
    pop = np.asarray(item_popularity, dtype=np.float64)
    if kind == "percentile":
        table = popularity_percentiles(pop) if percentiles is None else percentiles
    elif kind == "arp":
        table = pop
    else:
        raise ValueError(f"kind must be 'percentile' or 'arp', got {kind!r}")
    valid = t >= 0
    if (t[valid] >= len(table)).any():
        raise ValueError("topk holds item ids beyond item_popularity")
    vals = np.where(valid, table[np.where(valid, t, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return vals.sum(1) / valid.sum(1)


def popularity_bias(
    topk: np.ndarray, item_popularity: np.ndarray, kind: PopularityKind = "percentile"
) -> float:
    """Mean over users of `recommendation_popularity`: 0.5 (percentile) means no bias."""
    return float(np.nanmean(recommendation_popularity(topk, item_popularity, kind)))

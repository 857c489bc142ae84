"""Percentile bootstrap over evaluation units (users, queries, groups), vectorised.

Resamples are drawn as index matrices in chunks, so memory stays bounded (about
`max_elems` indices at a time) however many units and resamples there are. For the mean,
the chunk is turned into a count matrix and multiplied with the values: one BLAS call gives
every resample's mean, for any number of metrics that share the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

NanPolicy = Literal["raise", "omit"]
Stat = Callable[..., Any]  # called as stat(x) and stat(matrix, axis=1)

DEFAULT_MAX_ELEMS = 1 << 22  # indices per chunk: 32 MiB as int64


def resample_indices(
    m: int, n: int, seed: int | np.random.Generator = 0, max_elems: int = DEFAULT_MAX_ELEMS
) -> Iterator[np.ndarray]:
    """Yield (chunk, m) index matrices, n rows in all: each row is one bootstrap resample."""
    rng = np.random.default_rng(seed)
    per = max(1, max_elems // max(m, 1))
    done = 0
    while done < n:
        c = min(per, n - done)
        yield rng.integers(0, m, size=(c, m))
        done += c


def resample_counts(
    m: int, n: int, seed: int | np.random.Generator = 0, max_elems: int = DEFAULT_MAX_ELEMS
) -> Iterator[np.ndarray]:
    """Same resamples as `resample_indices`, as (chunk, m) float counts (how often each unit)."""
    for idx in resample_indices(m, n, seed, max_elems):
        c = idx.shape[0]
        flat = (idx + (np.arange(c, dtype=np.int64) * m)[:, None]).reshape(-1)
        yield np.bincount(flat, minlength=c * m).reshape(c, m).astype(np.float64)


def _clean(values: np.ndarray, nan_policy: NanPolicy) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        if nan_policy == "raise":
            raise ValueError(f"{int(bad.sum())} non-finite values (use nan_policy='omit' to drop)")
        v = v[~bad]
    return v


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_stats(
    values: np.ndarray,
    n: int = 1000,
    seed: int | np.random.Generator = 0,
    stat: Stat = np.mean,
    max_elems: int = DEFAULT_MAX_ELEMS,
) -> np.ndarray:
    """The statistic on each of n resamples (values must be finite and 1-D).

    `stat` must accept `axis=1`; np.mean takes a faster count-matrix path with the same
    resamples.
    """
    v = np.asarray(values, dtype=np.float64)
    m = len(v)
    out = np.empty(n, dtype=np.float64)
    pos = 0
    if stat is np.mean:
        for counts in resample_counts(m, n, seed, max_elems):
            out[pos : pos + len(counts)] = counts @ v / m
            pos += len(counts)
    else:
        for idx in resample_indices(m, n, seed, max_elems):
            out[pos : pos + len(idx)] = np.asarray(stat(v[idx], axis=1), dtype=np.float64)
            pos += len(idx)
    return out


def bootstrap_ci(
    values: np.ndarray,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    stat: Stat = np.mean,
    *,
    nan_policy: NanPolicy = "raise",
    max_elems: int = DEFAULT_MAX_ELEMS,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of `stat` over the units in `values`.

    Returns (nan, nan) for no values or n < 1; a single value gives a zero-width interval.
    """
    v = _clean(values, nan_policy)
    if len(v) == 0 or n < 1:
        return float("nan"), float("nan")
    return _interval(bootstrap_stats(v, n, seed, stat, max_elems), alpha)


def bootstrap_mean_cis(
    columns: Mapping[str, np.ndarray],
    n: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    *,
    max_elems: int = DEFAULT_MAX_ELEMS,
) -> dict[str, tuple[float, float]]:
    """CIs of the mean of several metrics over the same units, from shared resamples.

    Sharing resamples keeps the intervals mutually consistent and costs one matrix product
    per chunk for all metrics. All columns must be finite and of equal length.
    """
    names = list(columns)
    if not names:
        return {}
    mat = np.column_stack([np.asarray(columns[k], dtype=np.float64) for k in names])
    if not np.isfinite(mat).all():
        raise ValueError("bootstrap_mean_cis needs finite values; filter units first")
    m = mat.shape[0]
    if m == 0 or n < 1:
        return {k: (float("nan"), float("nan")) for k in names}
    stats = np.empty((n, len(names)), dtype=np.float64)
    pos = 0
    for counts in resample_counts(m, n, seed, max_elems):
        stats[pos : pos + len(counts)] = counts @ mat / m
        pos += len(counts)
    return {k: _interval(stats[:, j], alpha) for j, k in enumerate(names)}


class PairedDiff(NamedTuple):
    """Difference stat(a - b) between two systems on the same units, with its uncertainty."""

    diff: float
    lo: float
    hi: float
    p_value: float  # two-sided, H0: no difference
    n: int


def paired_bootstrap_diff(
    a: np.ndarray,
    b: np.ndarray,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    stat: Stat = np.mean,
    *,
    nan_policy: NanPolicy = "raise",
    max_elems: int = DEFAULT_MAX_ELEMS,
) -> PairedDiff:
    """Compare two models unit by unit (paired), which is far tighter than two separate CIs.

    The CI is the percentile interval of stat(a - b) over resampled units. The p-value uses
    the null-shifted bootstrap: the fraction of resampled statistics, centred on the observed
    one, at least as far from 0 as the observed statistic, with +1 smoothing so it is never 0.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D of the same shape, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():
        if nan_policy == "raise":
            raise ValueError(f"{int((~ok).sum())} non-finite pairs (use nan_policy='omit')")
        x, y = x[ok], y[ok]
    d = x - y
    if len(d) == 0:
        nan = float("nan")
        return PairedDiff(nan, nan, nan, nan, 0)
    observed = float(np.asarray(stat(d)))
    if n < 1:
        return PairedDiff(observed, float("nan"), float("nan"), float("nan"), len(d))
    stats = bootstrap_stats(d, n, seed, stat, max_elems)
    lo, hi = _interval(stats, alpha)
    extreme = np.abs(stats - observed) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    p = (int(extreme.sum()) + 1) / (n + 1)
    return PairedDiff(observed, lo, hi, float(min(1.0, p)), len(d))

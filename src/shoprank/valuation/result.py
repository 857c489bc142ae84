"""`ValuationResult`: one value per data point or group, with its uncertainty.

Why a class and not an array: Monte Carlo methods give estimates, and a value is only useful
beside its standard error and the number of samples behind it; results from parallel
workers must merge exactly (Chan's pairwise mean/variance update), and users want names,
ranks, a DataFrame and a CSV, not positions in an array.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.errors import ShoprankError


class ValuationResult:
    """Values, standard errors and update counts of `n` players (points or groups).

    `values` are running means of the samples given to `update`; `variances` are the
    sample variances of those samples, so `stderr = sqrt(variance / count)`. Exact methods
    set `stderr` to 0 and counts to 1.
    """

    def __init__(
        self,
        values: np.ndarray,
        *,
        variances: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        names: Sequence[Any] | np.ndarray | None = None,
        algorithm: str = "",
        n_updates: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        n = len(v)
        self.values = v.copy()
        self.variances = np.zeros(n) if variances is None else np.asarray(variances, dtype=np.float64).copy()
        self.counts = (np.ones(n, dtype=np.int64) if counts is None
                       else np.asarray(counts, dtype=np.int64).copy())
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).copy()
        self.names = (self.indices.astype(object) if names is None
                      else np.asarray(list(names), dtype=object))
        if not (len(self.variances) == len(self.counts) == len(self.indices) == len(self.names) == n):
            raise ShoprankError("ValuationResult: values, variances, counts, indices and names differ in length")
        self.algorithm = algorithm
        self.n_updates = int(n_updates)  # total samples (permutations, subsets, bags) processed
        self.extra: dict[str, Any] = dict(extra or {})

    # -- construction ---------------------------------------------------------------
    @classmethod
    def zeros(cls, n: int, *, names: Sequence[Any] | np.ndarray | None = None, algorithm: str = "") -> ValuationResult:
        """An empty running estimate (counts 0) to be filled with `update`."""
        return cls(np.zeros(n), variances=np.zeros(n), counts=np.zeros(n, dtype=np.int64),
                   names=names, algorithm=algorithm)

    @classmethod
    def from_sums(cls, sums: np.ndarray, sq_sums: np.ndarray, counts: np.ndarray, *,
                  names: Sequence[Any] | np.ndarray | None = None, algorithm: str = "",
                  n_updates: int = 0) -> ValuationResult:
        """From per-player sum, sum of squares and count of samples (what workers return)."""
        c = np.asarray(counts, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(c > 0, sums / np.maximum(c, 1), 0.0)
            var = np.where(c > 1, (sq_sums - c * mean**2) / np.maximum(c - 1, 1), 0.0)
        return cls(mean, variances=np.maximum(var, 0.0), counts=np.asarray(counts, dtype=np.int64),
                   names=names, algorithm=algorithm, n_updates=n_updates)

    # -- running updates ------------------------------------------------------------
    def update(self, idx: int, value: float) -> None:
        """Welford update of player `idx` (a position, not a name) with one sample."""
        c = self.counts[idx] + 1
        delta = value - self.values[idx]
        mean = self.values[idx] + delta / c
        m2 = self.variances[idx] * max(c - 2, 0) + delta * (value - mean)
        self.values[idx] = mean
        self.variances[idx] = m2 / (c - 1) if c > 1 else 0.0
        self.counts[idx] = c

    def merge(self, other: ValuationResult) -> ValuationResult:
        """Pooled estimate of two independent runs over the same players (Chan et al.)."""
        if len(other) != len(self) or not np.array_equal(other.indices, self.indices):
            raise ShoprankError("cannot merge valuation results over different players")
        n1, n2 = self.counts.astype(np.float64), other.counts.astype(np.float64)
        n = n1 + n2
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = other.values - self.values
            mean = np.where(n > 0, self.values + delta * n2 / np.maximum(n, 1), 0.0)
            m2 = (self.variances * np.maximum(n1 - 1, 0) + other.variances * np.maximum(n2 - 1, 0)
                  + delta**2 * n1 * n2 / np.maximum(n, 1))
            var = np.where(n > 1, m2 / np.maximum(n - 1, 1), 0.0)
        out = self.copy()
        out.values, out.variances, out.counts = mean, var, n.astype(np.int64)
        out.n_updates = self.n_updates + other.n_updates
        return out

    def __add__(self, other: ValuationResult) -> ValuationResult:
        return self.merge(other)

    # -- access ---------------------------------------------------------------------
    @property
    def stderr(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.counts > 0, np.sqrt(self.variances / np.maximum(self.counts, 1)), np.inf)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"ValuationResult(algorithm={self.algorithm!r}, n={len(self)}, n_updates={self.n_updates})"

    def copy(self) -> ValuationResult:
        return ValuationResult(self.values, variances=self.variances, counts=self.counts, indices=self.indices,
                               names=self.names, algorithm=self.algorithm, n_updates=self.n_updates,
                               extra=self.extra)

    def value_of(self, name: Any) -> float:
        """The value of the player called `name`."""
        hit = np.flatnonzero(self.names == name)
        if not len(hit):
            raise KeyError(name)
        return float(self.values[hit[0]])

    def sort(self, *, reverse: bool = False, key: str = "value") -> ValuationResult:
        """A copy ordered by `value`, `stderr`, `count`, `index` or `name` (ascending unless
        `reverse`); ties keep index order, so sorting is deterministic."""
        keys = {"value": self.values, "stderr": self.stderr, "count": self.counts,
                "index": self.indices, "name": self.names.astype(str)}
        if key not in keys:
            raise ShoprankError(f"unknown sort key {key!r}; use one of {sorted(keys)}")
        k = keys[key]
        order = np.lexsort((self.indices, -k)) if reverse and key != "name" else np.lexsort((self.indices, k))
        if reverse and key == "name":
            order = order[::-1]
        return self.subset(order)

    def subset(self, positions: np.ndarray) -> ValuationResult:
        p = np.asarray(positions, dtype=np.int64)
        return ValuationResult(self.values[p], variances=self.variances[p], counts=self.counts[p],
                               indices=self.indices[p], names=self.names[p], algorithm=self.algorithm,
                               n_updates=self.n_updates, extra=self.extra)

    def ranks(self) -> np.ndarray:
        """Rank of each player by value, 0 = lowest (in position order)."""
        order = np.lexsort((self.indices, self.values))
        r = np.empty(len(self), dtype=np.int64)
        r[order] = np.arange(len(self))
        return r

    # -- export ---------------------------------------------------------------------
    def to_dataframe(self, column: str | None = None) -> pd.DataFrame:
        """Columns: index, name, value, stderr, count (value column renamed to `column`)."""
        vcol = column or "value"
        return pd.DataFrame({"index": self.indices, "name": self.names, vcol: self.values,
                             "stderr": self.stderr, "count": self.counts})

    def to_csv(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self.to_dataframe().to_csv(p, index=False)
        return p

    @classmethod
    def from_csv(cls, path: str | Path, *, algorithm: str = "") -> ValuationResult:
        df = pd.read_csv(path)
        missing = {"value", "stderr", "count"} - set(df.columns)
        if missing:
            raise ShoprankError(f"{path}: not a values CSV (missing columns {sorted(missing)})")
        counts = df["count"].to_numpy(dtype=np.int64)
        se = df["stderr"].to_numpy(dtype=np.float64)
        var = np.where(np.isfinite(se), se**2 * np.maximum(counts, 1), 0.0)
        return cls(df["value"].to_numpy(), variances=var, counts=counts,
                   indices=df["index"].to_numpy() if "index" in df else None,
                   names=df["name"].tolist() if "name" in df else None, algorithm=algorithm)

"""Utilities: what a coalition of training data is worth.

A utility maps a set of players (training points, or groups of points such as a source or a
labeler) to a score: train a fresh model on their data, score it on validation data. Every
Monte Carlo method needs thousands of such evaluations and meets the same coalitions again
(truncation, antithetic samples, leave-one-out), so evaluations are cached per coalition.

Models come from a factory (a scikit-learn estimator is cloned; any other callable is
called), so that each coalition trains from scratch and nothing leaks between coalitions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from shoprank.errors import ShoprankError

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _take(x: Any, idx: np.ndarray) -> Any:
    if isinstance(x, (pd.DataFrame, pd.Series)):
        return x.iloc[idx]
    if isinstance(x, list | tuple):
        return [x[i] for i in idx]
    return x[idx]


@dataclass
class ValuationData:
    """Training data to value and validation data to score on.

    `x_*` are arrays (n, d) or DataFrames; `y_*` labels, grades or None. `groups` (one label
    per training row) turns the players into groups; `qid_valid` holds query/user ids for
    ranking scorers (NDCG per query); `names` names each training row.
    """

    x_train: Any
    y_train: np.ndarray | None
    x_valid: Any
    y_valid: np.ndarray | None
    groups: np.ndarray | None = None
    names: np.ndarray | None = None
    qid_valid: np.ndarray | None = None
    qid_train: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x_train)
        for k in ("y_train", "groups", "names", "qid_train"):
            v = getattr(self, k)
            if v is not None:
                v = np.asarray(v)
                if len(v) != n:
                    raise ShoprankError(f"ValuationData.{k} has {len(v)} rows, x_train has {n}")
                setattr(self, k, v)
        for k in ("y_valid", "qid_valid"):
            v = getattr(self, k)
            if v is not None:
                v = np.asarray(v)
                if len(v) != len(self.x_valid):
                    raise ShoprankError(f"ValuationData.{k} has {len(v)} rows, x_valid has {len(self.x_valid)}")
                setattr(self, k, v)

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    def train_subset(self, idx: np.ndarray) -> tuple[Any, np.ndarray | None]:
        return _take(self.x_train, idx), None if self.y_train is None else self.y_train[idx]

    def with_groups(self, groups: Sequence[Any] | np.ndarray | None) -> ValuationData:
        return replace(self, groups=None if groups is None else np.asarray(groups))

    def with_train(self, idx: np.ndarray) -> ValuationData:
        """Same validation data, training rows `idx` only."""
        idx = np.asarray(idx, dtype=np.int64)
        sel = lambda a: None if a is None else a[idx]  # noqa: E731
        x, y = self.train_subset(idx)
        return replace(self, x_train=x, y_train=y, groups=sel(self.groups), names=sel(self.names),
                       qid_train=sel(self.qid_train))

    def point_names(self) -> np.ndarray:
        return np.arange(self.n_train) if self.names is None else np.asarray(self.names)

    def group_index(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(sorted unique group names, row indices of each group)."""
        if self.groups is None:
            raise ShoprankError("ValuationData has no groups; call with_groups first")
        codes, uniq = pd.factorize(pd.Series(self.groups, dtype=object), sort=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
        return np.asarray(uniq, dtype=object), [order[bounds[g]:bounds[g + 1]] for g in range(len(uniq))]


# ---------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------


ScoreFn = Callable[[Any, Any, "np.ndarray | None", "np.ndarray | None"], float]


@dataclass(frozen=True)
class Scorer:
    """`fn(model, x, y, qid) -> float`, higher is better; `default` is the score of a
    coalition without data (a model that knows nothing)."""

    name: str
    fn: ScoreFn
    default: float = 0.0

    def __call__(self, model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None = None) -> float:
        return float(self.fn(model, x, y, qid))


def _positive_scores(model: Any, x: Any) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        p = np.asarray(model.predict_proba(x))
        if p.ndim == 2:
            classes = list(getattr(model, "classes_", range(p.shape[1])))
            return p[:, classes.index(1)] if 1 in classes else np.zeros(len(p))
        return p
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(x), dtype=np.float64)
    return np.asarray(model.predict(x), dtype=np.float64)


def _accuracy(model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None) -> float:
    return float(np.mean(np.asarray(model.predict(x)) == np.asarray(y)))


def _auc(model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None) -> float:
    from shoprank.evaluation.metrics import auc

    return auc(np.asarray(y).astype(int), _positive_scores(model, x))


def _neg_mse(model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None) -> float:
    return -float(np.mean((np.asarray(model.predict(x), dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def ndcg_scorer(k: int = 10) -> Scorer:
    """Mean graded NDCG@k over validation queries (`qid_valid`) of the model's `predict` scores."""

    def fn(model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None) -> float:
        from shoprank.evaluation.metrics import ndcg_at_k_graded

        if qid is None:
            raise ShoprankError("an NDCG scorer needs qid_valid (the query of each validation row)")
        s = np.asarray(model.predict(x), dtype=np.float64)
        return _mean_ndcg(s, np.asarray(y, dtype=np.float64), qid, k, ndcg_at_k_graded)

    return Scorer(f"ndcg@{k}", fn, default=0.0)


def _mean_ndcg(s: np.ndarray, g: np.ndarray, qid: np.ndarray, k: int, f: Callable[..., np.ndarray]) -> float:
    order = np.argsort(qid, kind="stable")
    _, starts = np.unique(qid[order], return_index=True)
    parts = np.split(order, starts[1:])
    vals = f([s[p] for p in parts], [np.maximum(g[p], 0) for p in parts], k)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else 0.0


SCORERS: dict[str, Scorer] = {
    "accuracy": Scorer("accuracy", _accuracy, 0.0),
    "auc": Scorer("auc", _auc, 0.5),
    "neg_mse": Scorer("neg_mse", _neg_mse, 0.0),
}


def get_scorer(scorer: str | Scorer | ScoreFn) -> Scorer:
    """A scorer by name ("accuracy", "auc", "neg_mse", "ndcg@10"), object or plain function."""
    if isinstance(scorer, Scorer):
        return scorer
    if callable(scorer):
        return Scorer(getattr(scorer, "__name__", "custom"), scorer)
    if scorer in SCORERS:
        return SCORERS[scorer]
    if scorer.startswith("ndcg@"):
        return ndcg_scorer(int(scorer.split("@", 1)[1]))
    raise ShoprankError(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)} or ndcg@K")


# ---------------------------------------------------------------------------------------
# Utilities
# ---------------------------------------------------------------------------------------


def _key(subset: np.ndarray) -> bytes:
    return np.sort(np.asarray(subset, dtype=np.int64)).tobytes()


class Utility(ABC):
    """u(S) for coalitions S of `n_players` players, with a cache of coalition -> score.

    Subclasses implement `_evaluate`; callers use `u(subset)` (indices into the players).
    """

    def __init__(self, *, cache: bool = True) -> None:
        self.use_cache = cache
        self.cache: dict[bytes, float] = {}
        self.hits = 0
        self.misses = 0

    @property
    @abstractmethod
    def n_players(self) -> int: ...

    @property
    def names(self) -> np.ndarray:
        return np.arange(self.n_players)

    @abstractmethod
    def _evaluate(self, subset: np.ndarray) -> float: ...

    def __call__(self, subset: Sequence[int] | np.ndarray) -> float:
        s = np.asarray(subset, dtype=np.int64)
        if not self.use_cache:
            self.misses += 1
            return float(self._evaluate(s))
        k = _key(s)
        v = self.cache.get(k)
        if v is None:
            self.misses += 1
            v = float(self._evaluate(np.sort(s)))
            self.cache[k] = v
        else:
            self.hits += 1
        return v

    def update_cache(self, entries: dict[bytes, float]) -> None:
        """Merge coalition scores computed elsewhere (in parallel workers)."""
        if self.use_cache:
            self.cache.update(entries)


class FunctionUtility(Utility):
    """A utility given as a plain function of the coalition (toy games, tests, custom
    scores): `fn(subset)` gets a sorted int array of player indices."""

    def __init__(self, fn: Callable[[np.ndarray], float], n_players: int, *,
                 names: Sequence[Any] | None = None, cache: bool = True) -> None:
        super().__init__(cache=cache)
        self.fn, self._n = fn, int(n_players)
        self._names = np.arange(self._n) if names is None else np.asarray(list(names), dtype=object)

    @property
    def n_players(self) -> int:
        return self._n

    @property
    def names(self) -> np.ndarray:
        return self._names

    def _evaluate(self, subset: np.ndarray) -> float:
        return float(self.fn(subset))


class _ConstantClassifier:
    """What a classifier can learn from one class: always that class."""

    def __init__(self, label: Any) -> None:
        self.label = label
        self.classes_ = np.array([label])

    def predict(self, x: Any) -> np.ndarray:
        return np.full(len(x), self.label)

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.ones((len(x), 1))


def make_model(factory: Any) -> Any:
    """A fresh, unfitted model: clone a scikit-learn estimator, deep-copy another object
    with `fit`, or call a factory."""
    if hasattr(factory, "get_params") and hasattr(factory, "fit"):
        from sklearn.base import clone

        return clone(factory)
    if hasattr(factory, "fit"):  # any other unfitted model: a deep copy is a fresh one
        import copy

        return copy.deepcopy(factory)
    if callable(factory):
        return factory()
    raise ShoprankError(f"model must be an estimator with fit() or a callable returning one, got {factory!r}")


class ModelUtility(Utility):
    """Train `model` on the coalition's training rows, score on the validation data.

    Players are training points, or the groups of `data.groups` when it is set. A coalition
    without rows gets `default_score` (the scorer's default unless given); a coalition whose
    labels hold one class gets a constant classifier (scikit-learn refuses to fit one class);
    a model that fails to fit gets `default_score` when `catch_errors` is set.
    """

    def __init__(self, model: Any, data: ValuationData, scorer: str | Scorer | ScoreFn = "accuracy", *,
                 default_score: float | None = None, catch_errors: bool = True, cache: bool = True,
                 classification: bool | None = None) -> None:
        super().__init__(cache=cache)
        self.model, self.data = model, data
        self.scorer = get_scorer(scorer)
        self.default_score = self.scorer.default if default_score is None else float(default_score)
        self.catch_errors = catch_errors
        if classification is None:
            classification = self.scorer.name in ("accuracy", "auc")
        self.classification = classification
        self._members: list[np.ndarray] | None = None
        if data.groups is not None:
            self._names, self._members = data.group_index()
        else:
            self._names = data.point_names()

    @property
    def n_players(self) -> int:
        return len(self._names)

    @property
    def names(self) -> np.ndarray:
        return self._names

    def rows(self, subset: np.ndarray) -> np.ndarray:
        """Training row indices of a coalition of players."""
        s = np.asarray(subset, dtype=np.int64)
        if self._members is None:
            return s
        if not len(s):
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([self._members[g] for g in s]))

    def group_sizes(self) -> np.ndarray:
        if self._members is None:
            return np.ones(self.n_players, dtype=np.int64)
        return np.array([len(m) for m in self._members], dtype=np.int64)

    def fit_model(self, subset: np.ndarray) -> Any:
        """The model trained on a coalition (None if it has no rows)."""
        rows = self.rows(subset)
        if not len(rows):
            return None
        x, y = self.data.train_subset(rows)
        if self.classification and y is not None and len(np.unique(y)) == 1:
            return _ConstantClassifier(y[0])
        model = make_model(self.model)
        model.fit(x, y)
        return model

    def _evaluate(self, subset: np.ndarray) -> float:
        try:
            model = self.fit_model(subset)
            if model is None:
                return self.default_score
            v = self.scorer(model, self.data.x_valid, self.data.y_valid, self.data.qid_valid)
            return self.default_score if math.isnan(v) else v
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            if not self.catch_errors:
                raise
            return self.default_score

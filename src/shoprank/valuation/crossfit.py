"""Cross-fitted confidence: each record's label as predicted by models that never saw it.

Why: Data-OOB needs ~100 bootstrap fits, which is affordable for a ridge model on frozen
features and not for a fine-tuned encoder (minutes per fit here). Cross-fitting (as in
confident learning, Northcutt et al. 2021) needs K fits: split the records into K
stratified folds, train on K-1, and score the held-out fold. A mislabelled record is then
judged by a model that learnt the task from the other records and did not memorise it, so
the probability it gives the recorded label is low. With a fine-tuned text model the
judgement uses the text itself, not only a frozen embedding of it.

Value of record i: log p_{-fold(i)}(y_i | x_i), averaged over `n_repeats` random fold
assignments (the standard error comes from those repeats). Any estimator with
`fit(x, y)` and `predict_proba(x)` works (scikit-learn's, or
`shoprank.models.textclf.TextClassifier` on raw texts).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from tqdm.auto import tqdm

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import ValuationData, _take, make_model


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per row, each class spread evenly over the folds."""
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(len(rows)) + int(rng.integers(k))) % k
    return fold


def out_of_fold_log_proba(x: Any, y_fit: np.ndarray, y_score: np.ndarray, fold: np.ndarray, estimator: Any, *,
                          floor: float = 1e-6, on_fit: Any = None) -> np.ndarray:
    """log p(y_score | x) for every row, from the model fitted to `y_fit` on the other folds.

    `y_score` is one label set or a 2-D array with one per row, all judged by the same fits
    (the result has its shape). Cross-fit confidence scores the labels it fits; the
    clean-label ceiling fits the true labels and scores the observed ones. A class a fit never
    saw has probability 0 (then `floor`). `on_fit` is called after each fold's fit."""
    ys = np.asarray(y_score)
    obs = ys.reshape(1, -1) if ys.ndim == 1 else ys
    out = np.empty(obs.shape)
    for f in np.unique(fold):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        model = make_model(estimator).fit(_take(x, train), y_fit[train])
        proba = np.asarray(model.predict_proba(_take(x, test)), dtype=np.float64)
        col = {c: j for j, c in enumerate(np.asarray(model.classes_).tolist())}
        for r in range(len(obs)):
            p = np.array([proba[i, col[c]] if c in col else 0.0 for i, c in enumerate(obs[r, test].tolist())])
            out[r, test] = np.log(np.maximum(p, floor))
        if on_fit is not None:
            on_fit()
    return out[0] if ys.ndim == 1 else out


@register_method("cross-fit")
class CrossFitConfidence(Valuation):
    """Out-of-fold log-probability of each training record's own label.

    `estimator`: a scikit-learn style classifier or factory (default: logistic regression).
    `n_folds` >= 2; `n_repeats` fold assignments averaged. Validation data is not used.
    """

    additive = False

    def __init__(self, estimator: Any = None, *, n_folds: int = 2, n_repeats: int = 1, floor: float = 1e-6,
                 seed: int = 0, progress: bool = False) -> None:
        self.estimator, self.n_folds, self.n_repeats = estimator, n_folds, n_repeats
        self.floor, self.seed, self.progress = floor, seed, progress

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData) or data.y_train is None:
            raise ShoprankError("CrossFitConfidence.fit needs ValuationData with training labels")
        if self.n_folds < 2 or self.n_repeats < 1:
            raise ShoprankError(f"cross-fit needs n_folds >= 2 and n_repeats >= 1, got {self.n_folds}, {self.n_repeats}")
        y = np.asarray(data.y_train)
        if y.ndim != 1:
            raise ShoprankError("cross-fit values class labels (one per record); for vector targets such as "
                                "next-item embeddings use knn-shapley or data-oob with target='embedding'")
        if np.unique(y).size < 2:
            raise ShoprankError("cross-fit: the training labels have a single class")
        est = self.estimator
        if est is None:
            from sklearn.linear_model import LogisticRegression

            est = LogisticRegression(max_iter=1000)
        rng = np.random.default_rng(self.seed)
        runs = np.zeros((self.n_repeats, len(y)))
        with tqdm(total=self.n_repeats * self.n_folds, desc="cross-fit", unit="fit", disable=not self.progress) as bar:
            for r in range(self.n_repeats):
                fold = stratified_folds(y, self.n_folds, rng)
                runs[r] = out_of_fold_log_proba(data.x_train, y, y, fold, est, floor=self.floor,
                                                on_fit=lambda: bar.update(1))
        vals = runs.mean(0)
        var = runs.var(0, ddof=1) if self.n_repeats > 1 else np.zeros(len(y))
        self.result_ = ValuationResult(vals, variances=var, counts=np.full(len(y), self.n_repeats),
                                       algorithm=f"cross-fit({self.n_folds} folds x {self.n_repeats})",
                                       names=data.names)
        return self


__all__ = ["CrossFitConfidence", "out_of_fold_log_proba", "stratified_folds"]

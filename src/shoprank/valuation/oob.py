"""Data-OOB (Kwon and Zou 2023): how often bagged models that did not see a point get it right.

Why: it needs no validation set and no retraining per coalition, only B bootstrap fits, and
it is one of the strongest label-noise detectors in OpenDataVal. A point with a wrong label
is predicted "wrongly" by the models that never saw it, so its out-of-bag score is low.

Speed at 50k points comes from the default model: a ridge classifier (least squares on
one-hot targets) fitted in closed form on a PCA projection of the features (64 components),
weighted by the bootstrap counts, so one bag costs one small Gram matrix. Any scikit-learn
estimator can be given instead (then each bag is a real fit, parallel over the backend).
Each bag is seeded by its own index, so values do not depend on how bags are split over workers.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.parallel import Backend, get_backend
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import ValuationData, make_model


def pca_features(x: np.ndarray, n_components: int | None, seed: int = 0, max_fit_rows: int = 5_000) -> np.ndarray:
    """float32 centred, whitened projection on the top principal directions (fitted on a
    sample of at most `max_fit_rows` rows); None or >= dim: only centre and scale."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ShoprankError(f"features must be a 2-D array, got shape {x.shape}")
    mu = x.mean(0)
    if n_components is None or n_components >= x.shape[1]:
        xc = x - mu
        sd = xc.std(0)
        return xc / np.where(sd > 0, sd, 1.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(len(x), max_fit_rows), replace=False)
    _, _, vt = np.linalg.svd((x[rows] - mu).astype(np.float64), full_matrices=False)
    proj = vt[:n_components].T.astype(np.float32)
    z = x @ proj - (mu @ proj)[None, :]
    sd = z.std(0)
    return z / np.where(sd > 0, sd, 1.0).astype(np.float32)


def _bag_rng(seed: int, b: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b,)))


def _ridge_task(shared: tuple[np.ndarray, np.ndarray, np.ndarray, float, int, str, float],
                bags: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of OOB scores, their squares and OOB counts per point, for the given bags."""
    z, yidx, targets, alpha, seed, target, max_samples = shared
    n, d = z.shape
    zb = np.hstack([z, np.ones((n, 1), dtype=z.dtype)])
    s, sq, c = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    reg = alpha * np.eye(d + 1)
    reg[-1, -1] = 0.0  # intercept not penalised
    m = max(1, int(round(max_samples * n)))
    for b in bags:
        rng = _bag_rng(seed, b)
        w = np.bincount(rng.integers(0, n, size=m), minlength=n).astype(zb.dtype)
        oob = w == 0
        if not oob.any():
            continue
        zw = zb * w[:, None]
        gram = (zw.T @ zb).astype(np.float64)
        coef = np.linalg.solve(gram + reg, (zw.T @ targets).astype(np.float64))
        pred = zb[oob] @ coef
        if target == "classification":
            score = (np.argmax(pred, axis=1) == yidx[oob]).astype(np.float64)
        elif target == "embedding":  # cosine of the predicted and the true target vector
            t = targets[oob]
            score = (pred * t).sum(1) / np.maximum(np.linalg.norm(pred, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
        else:
            score = -((pred[:, 0] - targets[oob, 0]) ** 2)
        s[oob] += score
        sq[oob] += score * score
        c[oob] += 1
    return s, sq, c


def _model_task(shared: tuple[np.ndarray, np.ndarray, Any, int, bool, float],
                bags: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, estimator, seed, classify, max_samples = shared
    n = len(y)
    s, sq, c = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    m = max(1, int(round(max_samples * n)))
    for b in bags:
        rng = _bag_rng(seed, b)
        idx = rng.integers(0, n, size=m)
        oob = np.ones(n, dtype=bool)
        oob[idx] = False
        if not oob.any():
            continue
        model = make_model(estimator)
        if hasattr(model, "random_state"):
            model.set_params(random_state=int(rng.integers(2**31 - 1)))
        model.fit(x[idx], y[idx])
        pred = np.asarray(model.predict(x[oob]))
        score = (pred == y[oob]).astype(np.float64) if classify else -((pred.astype(np.float64) - y[oob]) ** 2)
        s[oob] += score
        sq[oob] += score * score
        c[oob] += 1
    return s, sq, c


@register_method("data-oob")
class DataOOB(Valuation):
    """Out-of-bag score of every training point over `n_estimators` bootstrap models.

    `estimator`: "ridge" (fast closed-form ridge classifier/regressor on PCA features) or a
    scikit-learn estimator (cloned per bag). `target`: "classification" (OOB accuracy),
    "regression" (minus the OOB squared error) or, with ridge, "embedding" (y are vectors such
    as next-item embeddings; OOB cosine of predicted and true vector). Validation data is not used.
    """

    additive = False

    def __init__(self, n_estimators: int = 100, estimator: Any = "ridge", *, target: str = "classification",
                 n_components: int | None = 64, alpha: float = 1.0, max_samples: float = 1.0, seed: int = 0,
                 backend: str | Backend | None = None, n_jobs: int = 1) -> None:
        self.n_estimators, self.estimator, self.target = n_estimators, estimator, target
        self.n_components, self.alpha, self.max_samples = n_components, alpha, max_samples
        self.seed, self.backend, self.n_jobs = seed, backend, n_jobs

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData):
            raise ShoprankError("DataOOB.fit needs ValuationData with features and labels")
        if data.y_train is None:
            raise ShoprankError("DataOOB needs training labels")
        if self.target not in ("classification", "regression", "embedding"):
            raise ShoprankError("DataOOB target must be classification, regression or embedding")
        classify = self.target == "classification"
        x = np.asarray(data.x_train)
        y = np.asarray(data.y_train)
        be = get_backend(self.backend, n_jobs=self.n_jobs)
        n_tasks = max(1, min(be.n_workers, self.n_estimators))
        tasks = [list(range(t, self.n_estimators, n_tasks)) for t in range(n_tasks)]
        if isinstance(self.estimator, str):
            if self.estimator != "ridge":
                raise ShoprankError(f"unknown DataOOB estimator {self.estimator!r}: 'ridge' or a scikit-learn estimator")
            z = pca_features(x, self.n_components, self.seed)
            if self.target == "embedding":
                if y.ndim != 2:
                    raise ShoprankError("DataOOB target 'embedding' needs y as vectors (n, d)")
                yidx = np.zeros(len(y), dtype=np.int64)
                targets = y.astype(np.float32)
            elif classify:
                classes, yidx = np.unique(y, return_inverse=True)
                targets = np.where(np.arange(len(classes))[None, :] == yidx[:, None], 1.0, -1.0).astype(np.float32)
            else:
                yidx = np.zeros(len(y), dtype=np.int64)
                targets = y.astype(np.float32)[:, None]
            parts = be.map(_ridge_task, tasks, shared=(z, yidx, targets, float(self.alpha) * len(y) / 100.0,
                                                       self.seed, self.target, self.max_samples))
        else:
            if self.target == "embedding":
                raise ShoprankError("DataOOB target 'embedding' needs estimator='ridge'")
            parts = be.map(_model_task, tasks, shared=(x, y, self.estimator, self.seed, classify, self.max_samples))
        n = len(y)
        s, sq, c = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        for ps, psq, pc in parts:
            s += ps
            sq += psq
            c += pc
        res = ValuationResult.from_sums(s, sq, c, names=data.point_names(), algorithm=self.name,
                                        n_updates=self.n_estimators)
        never = c == 0
        if never.any() and (~never).any():  # never out of bag: no evidence, give the average
            res.values[never] = float(res.values[~never].mean())
        self.result_ = res
        return self

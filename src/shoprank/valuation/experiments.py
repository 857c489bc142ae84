"""Experiments with the OpenDataVal protocol: noise detection, point removal and addition.

Why a fixed protocol: a value is only as good as what it lets one do. Inject label noise
into a known share of the training data and check whether low values find it (F1 of a
2-means clustering of the values, AUROC, precision at k = number of noisy points); remove
or add points in value order, retrain and watch the validation score. Every experiment runs
several seeds and always a random valuation beside the real methods, so a number is never
read without its chance level.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, get_method
from shoprank.valuation.baselines import RandomValuation
from shoprank.valuation.utility import ModelUtility, Scorer, ValuationData

MethodFactory = Callable[[int], Valuation]
CEILING = "ceiling: model of the clean labels (cross-fit; not a method)"  # noise_detection_experiment's row


def flip_labels(y: np.ndarray, frac: float, *, seed: int = 0, classes: Sequence[Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Give `round(frac * n)` random rows another class (uniform among the others).
    Returns (noisy labels, boolean mask of the flipped rows)."""
    y = np.asarray(y)
    if not 0 <= frac <= 1:
        raise ShoprankError("noise fraction must be in [0, 1]")
    cl = np.unique(y) if classes is None else np.asarray(classes)
    if len(cl) < 2:
        raise ShoprankError("flipping labels needs at least two classes")
    rng = np.random.default_rng(seed)
    n_noisy = int(round(frac * len(y)))
    idx = rng.choice(len(y), size=n_noisy, replace=False)
    pos = np.searchsorted(cl, y[idx])
    shift = rng.integers(1, len(cl), size=n_noisy)
    out = y.copy()
    out[idx] = cl[(pos + shift) % len(cl)]
    mask = np.zeros(len(y), dtype=bool)
    mask[idx] = True
    return out, mask


def add_feature_noise(x: np.ndarray, frac: float, *, scale: float = 1.0, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Add Gaussian noise (std `scale` times each feature's std) to a share of rows."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(x), dtype=bool)
    mask[rng.choice(len(x), size=int(round(frac * len(x))), replace=False)] = True
    out = x.copy()
    out[mask] += rng.standard_normal((int(mask.sum()), x.shape[1])) * scale * x.std(0)
    return out, mask


def kmeans_flags(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """OpenDataVal's detector: 2-means on the values; the cluster with the lower centre is
    flagged as noisy."""
    from sklearn.cluster import KMeans

    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if len(np.unique(v)) < 2:
        return np.zeros(len(v), dtype=bool)
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(v)
    low = int(np.argmin(km.cluster_centers_.ravel()))
    return np.asarray(km.labels_ == low)


CORRECTIONS = {"bonferroni": "Bonferroni", "holm": "Holm", "bh": "Benjamini-Hochberg"}  # name -> label


def adjust_p(p: np.ndarray, method: str = "bonferroni") -> np.ndarray:
    """Multiple-testing adjusted p-values (flag where adjusted p < alpha).

    Why a choice: Bonferroni and Holm bound the chance of flagging *any* good group (right
    when a flag deletes data nobody will look at again); Benjamini-Hochberg bounds the
    expected *share* of good groups among the flagged ones, and finds more of a click farm's
    products when it spreads over many."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if method not in CORRECTIONS:
        raise ShoprankError(f"unknown multiple-testing correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    if m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, kind="stable")
    ps = p[order]
    if method == "holm":  # step-down: running max of (m - i) p_(i)
        adj = np.maximum.accumulate(np.minimum(ps * (m - np.arange(m)), 1.0))
    else:  # BH step-up: running min from the largest of m p_(i) / i
        adj = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    out = np.empty(m)
    out[order] = adj
    return out


def low_value_groups(values: np.ndarray, groups: np.ndarray, *, alpha: float = 0.01, min_size: int = 5,
                     correction: str = "bonferroni") -> pd.DataFrame:
    """Groups whose records are worth significantly less than the average record.

    Why: a click farm spreads its events over a few products, each event looking only
    slightly worse than an unremarkable real one, so no single event stands out; as a group
    their mean value is far below the data's mean with hundreds of events behind it. One-sided
    Welch t-test of each group's mean against the mean of all other records; flagged when the
    p-value adjusted over the groups tested (`correction`: bonferroni, holm or bh, see
    `adjust_p`) is below alpha and the group has >= min_size records.
    Returns one row per group: n, mean, t, p, q (adjusted p; NaN where not tested), flagged
    (most significant first)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    if len(v) != len(g):
        raise ShoprankError(f"values ({len(v)}) and groups ({len(g)}) differ in length")
    keys, inv = np.unique(g, return_inverse=True)
    n = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    s = np.bincount(inv, weights=v, minlength=len(keys))
    sq = np.bincount(inv, weights=v * v, minlength=len(keys))
    mean = s / n
    var = np.where(n > 1, (sq - n * mean**2) / np.maximum(n - 1, 1), np.nan)
    n_rest = len(v) - n
    mean_rest = (v.sum() - s) / np.maximum(n_rest, 1)
    var_rest = ((v * v).sum() - sq - n_rest * mean_rest**2) / np.maximum(n_rest - 1, 1)
    se = np.sqrt(np.maximum(var, 0) / n + np.maximum(var_rest, 0) / np.maximum(n_rest, 1))
    t = np.where(se > 0, (mean - mean_rest) / np.where(se > 0, se, 1.0), 0.0)
    dof = np.maximum(n - 1, 1)
    p = stats.t.cdf(t, dof)
    tested = n >= min_size
    q = np.full(len(keys), np.nan)
    q[tested] = adjust_p(p[tested], correction)
    flagged = tested & (np.nan_to_num(q, nan=1.0) < alpha)
    out = pd.DataFrame({"group": keys, "n": n.astype(np.int64), "mean": mean, "t": t, "p": p, "q": q,
                        "flagged": flagged})
    return out.sort_values(["p", "t"]).reset_index(drop=True)


def best_threshold_f1(values: np.ndarray, noisy: np.ndarray) -> float:
    """The highest F1 any cut of the value ranking reaches (flag everything below a threshold).

    Why: the protocol's 2-means split is one threshold rule among many; this is what the best
    threshold, chosen knowing the answer, would give, so a method's F1 can be told apart from
    its ranking (the ceiling of any thresholding rule on those values). Tied values fall on the
    same side of every cut."""
    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(noisy, dtype=bool)
    if len(v) != len(m):
        raise ShoprankError("values and noise mask differ in length")
    if not m.any():
        return 0.0
    order = np.argsort(v, kind="stable")
    tp = np.cumsum(m[order])
    n_flag = np.arange(1, len(v) + 1)
    cut = np.r_[v[order][1:] != v[order][:-1], True]  # a cut only between different values
    return float((2 * tp[cut] / (n_flag[cut] + m.sum())).max())


def clean_label_ceiling(x: Any, y_clean: np.ndarray, y_observed: np.ndarray, *, estimator: Any = None,
                        n_folds: int = 5, seed: int = 0, floor: float = 1e-6) -> np.ndarray:
    """Detection scores of a model that learnt from the *clean* labels: each record's observed
    label as judged (log-probability) by a model fitted, on the other folds, to the true labels.

    Why: not a valuation method (nobody has the clean labels), but the natural ceiling of any
    detector that judges a label by what the features say about it: it knows the task as well
    as these features and this model class allow, without the noise spoiling the fit. When a
    method sits close to it, better detection needs better features, not a better valuation.
    `estimator`: scikit-learn style classifier (default logistic regression). `y_observed`: one
    label set, or a 2-D array with one per row (e.g. one per noise seed), scored by the same
    fits (they see only the clean labels); the result has the same shape."""
    from shoprank.valuation.crossfit import out_of_fold_log_proba, stratified_folds

    yc, yo = np.asarray(y_clean), np.asarray(y_observed)
    if yo.ndim not in (1, 2) or yo.shape[-1] != len(yc):
        raise ShoprankError(f"clean ({len(yc)}) and observed {yo.shape} labels differ in length")
    if n_folds < 2:
        raise ShoprankError(f"the clean-label ceiling needs n_folds >= 2, got {n_folds}")
    if estimator is None:
        from sklearn.linear_model import LogisticRegression

        estimator = LogisticRegression(max_iter=2000)
    fold = stratified_folds(yc, n_folds, np.random.default_rng(seed))
    return out_of_fold_log_proba(x, yc, yo, fold, estimator, floor=floor)


def detection_metrics(values: np.ndarray, noisy: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """F1 of the 2-means flags, F1 at the best threshold (`best_threshold_f1`), AUROC of
    -value for "noisy", precision at k = #noisy."""
    from sklearn.metrics import f1_score, roc_auc_score

    v = np.asarray(values, dtype=np.float64)
    m = np.asarray(noisy, dtype=bool)
    if len(v) != len(m):
        raise ShoprankError("values and noise mask differ in length")
    if not np.isfinite(v).all():
        raise ShoprankError(f"{int((~np.isfinite(v)).sum())} values are NaN or infinite (first at row "
                            f"{int(np.flatnonzero(~np.isfinite(v))[0])}); fill or drop them before scoring detection")
    flags = kmeans_flags(v, seed)
    k = int(m.sum())
    out = {"f1": float(f1_score(m, flags, zero_division=0.0)), "f1_best": best_threshold_f1(v, m)}
    out["auroc"] = float(roc_auc_score(m, -v)) if 0 < k < len(m) else float("nan")
    lowest = np.lexsort((np.arange(len(v)), v))[:k]
    out["precision_at_k"] = float(m[lowest].mean()) if k else float("nan")
    return out


def method_factory(name: str, **params: Any) -> MethodFactory:
    """A seed -> method factory from the registry; `seed` is passed where the method has one."""

    def make(seed: int) -> Valuation:
        m = get_method(name, **params)
        if hasattr(m, "seed"):
            setattr(m, "seed", seed)  # noqa: B010 - not every method has a seed
        return m

    return make


class _Fixed:
    """A factory that returns one given method whatever the seed."""

    def __init__(self, m: Valuation) -> None:
        self.m = m

    def __call__(self, seed: int) -> Valuation:
        return self.m


def _with_random(methods: Mapping[str, MethodFactory | Valuation]) -> dict[str, MethodFactory]:
    out: dict[str, MethodFactory] = {}
    for k, m in methods.items():
        if isinstance(m, Valuation):
            out[k] = _Fixed(m)
        else:
            out[k] = m
    out.setdefault("random", lambda seed: RandomValuation(seed=seed))
    return out


def noise_detection_experiment(
    data: ValuationData, methods: Mapping[str, MethodFactory | Valuation], *, noise_frac: float = 0.2,
    seeds: Sequence[int] = (0, 1, 2), classes: Sequence[Any] | None = None, ceiling: Any = None,
) -> pd.DataFrame:
    """Flip `noise_frac` of the training labels (per seed), value with every method and
    score the detection. One row per (method, seed): f1, f1_best, auroc, precision_at_k,
    seconds. `ceiling`: a classifier (or True for logistic regression) adds the row
    `CEILING` (`clean_label_ceiling`: what a model of the clean labels would detect)."""
    if data.y_train is None:
        raise ShoprankError("noise detection needs training labels")
    rows = []
    for seed in seeds:
        y_noisy, noisy = flip_labels(data.y_train, noise_frac, seed=seed, classes=classes)
        noisy_data = ValuationData(data.x_train, y_noisy, data.x_valid, data.y_valid, names=data.names,
                                   qid_valid=data.qid_valid)
        for name, make in _with_random(methods).items():
            t0 = time.perf_counter()
            vals = make(seed).fit(noisy_data).values
            secs = time.perf_counter() - t0
            rows.append({"method": name, "seed": seed, **detection_metrics(vals, noisy, seed=seed), "seconds": secs})
        if ceiling is not None and ceiling is not False:
            t0 = time.perf_counter()
            vals = clean_label_ceiling(data.x_train, data.y_train, y_noisy, seed=seed,
                                       estimator=None if ceiling is True else ceiling)
            rows.append({"method": CEILING, "seed": seed, **detection_metrics(vals, noisy, seed=seed),
                         "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, by: str | list[str] = "method") -> pd.DataFrame:
    """Mean and std over seeds of every numeric column."""
    num = [c for c in df.columns if c not in ("seed",) and pd.api.types.is_numeric_dtype(df[c])
           and c not in ([by] if isinstance(by, str) else by)]
    g = df.groupby(by, sort=False)[num]
    mean, std = g.mean(), g.std(ddof=0)
    out = mean.copy()
    for c in num:
        out[f"{c}_std"] = std[c]
    return out.reset_index()


def _curve(values: np.ndarray, utility: ModelUtility, fractions: np.ndarray, mode: str, high_first: bool) -> np.ndarray:
    n = utility.data.n_train
    key = np.asarray(values, dtype=np.float64)
    order = np.lexsort((np.arange(n), -key if high_first else key))
    out = np.zeros(len(fractions))
    for j, f in enumerate(fractions):
        m = int(round(f * n))
        keep = order[m:] if mode == "remove" else order[:m]
        out[j] = utility(keep)
    return out


def value_curves(
    values: Mapping[str, np.ndarray], data: ValuationData, model: Any, scorer: str | Scorer = "accuracy", *,
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), mode: str = "remove",
    random_seeds: Sequence[int] = (0, 1, 2),
) -> pd.DataFrame:
    """Retrain after removing (mode="remove") or keeping only (mode="add") the first
    fraction of points in value order, high-value first and low-value first, plus a random
    order per seed. Rows: method, order, seed, fraction, score."""
    if mode not in ("remove", "add"):
        raise ShoprankError("mode must be remove or add")
    if data.groups is not None:
        data = data.with_groups(None)
    u = ModelUtility(model, data, scorer)
    fr = np.asarray(fractions, dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for name, v in values.items():
        for high_first, label in ((True, "high-first"), (False, "low-first")):
            for f, s in zip(fr, _curve(v, u, fr, mode, high_first), strict=True):
                rows.append({"method": name, "order": label, "seed": -1, "fraction": f, "score": s})
    for seed in random_seeds:
        rv = np.random.default_rng(seed).random(data.n_train)
        for f, s in zip(fr, _curve(rv, u, fr, mode, True), strict=True):
            rows.append({"method": "random", "order": "random", "seed": seed, "fraction": f, "score": s})
    return pd.DataFrame(rows)


def plot_curves(df: pd.DataFrame, *, title: str = "", ylabel: str = "validation score") -> Any:
    """One line per (method, order), random averaged over seeds with a band; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (method, order), g in df.groupby(["method", "order"], sort=False):
        s = g.groupby("fraction")["score"]
        mean, std = s.mean(), s.std(ddof=0).fillna(0.0)
        style = {"color": "grey", "linestyle": "--"} if method == "random" else {}
        ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, label=f"{method} ({order})"
                if method != "random" else "random", **style)  # type: ignore[arg-type]
        if method == "random":
            ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), color="grey", alpha=0.2)
    ax.set_xlabel("fraction of training data " + ("removed" if "remove" in title.lower() else "in value order"))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

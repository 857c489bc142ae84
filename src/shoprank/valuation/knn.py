"""Exact KNN-Shapley (Jia et al. 2019), vectorised over test points and chunked.

For the K-nearest-neighbour utility u(S) = mean over test points of
(1/K) * sum of m(j, t) over the min(K, |S|) points j of S nearest to test point t, the exact
Shapley value of every training point follows from one sort per test point (Theorem 1):
with a_1..a_N the training points by distance,

    s(a_N) = m(a_N) * min(K, N) / (N K)
    s(a_i) = s(a_{i+1}) + (m(a_i) - m(a_{i+1})) / K * min(K, i) / i.

The recursion only uses that u is a sum of per-point terms over the top K, so it holds for
any match score m: 1[y_j = y_t] for labels, 1 - |y_j - y_t| / range for graded targets,
the cosine of target vectors for implicit next-item pairs (x: the history's embedding, y: the
next item's embedding; a neighbour is worth what its next item tells about this one's), and
`target="lists"`: 1[y_t in L_j], where L_j is a list of ids per training point, e.g. its next
item's M nearest catalog items (`nearest_item_lists`). Why lists: under the cosine match a
"hub" item, close to much of the catalog, earns credit from almost every validation target,
so click spam on a hub looks useful; every item's list holds exactly M items, so no item is
credited more often than another by construction.

Why chunked: a block of test points at a time (distances, one argsort per row, a reverse
cumulative sum, a bincount back to training order) keeps memory at about
`chunk_size * n_train` numbers, so 50k training x 10k test points never holds a dense
50k x 10k matrix; chunks are independent tasks for any backend.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.parallel import Backend, get_backend
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import FunctionUtility, ValuationData

METRICS = ("cosine", "euclidean")
TARGETS = ("classification", "graded", "embedding", "lists")
DEFAULT_BLOCK = 1 << 21  # elements of one (chunk x n_train) block: ~100 MB of working arrays


def _prepare_train(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norm, 1e-12)
        return x, np.zeros(len(x), np.float32)
    if metric == "euclidean":
        return x, np.einsum("ij,ij->i", x, x).astype(np.float32)
    raise ShoprankError(f"unknown metric {metric!r}: use one of {METRICS}")


def _distances(xtr: np.ndarray, sq: np.ndarray, xte: np.ndarray, metric: str) -> np.ndarray:
    """(n_test, n_train) distances up to a per-test-row constant (the order is what counts)."""
    xte = np.asarray(xte, dtype=np.float32)
    if metric == "cosine":
        xte = xte / np.maximum(np.linalg.norm(xte, axis=1, keepdims=True), 1e-12)
        return -(xte @ xtr.T)
    return sq[None, :] - 2.0 * (xte @ xtr.T)


def _match_matrix(ytr: np.ndarray, yte: np.ndarray, target: str, scale: float) -> np.ndarray:
    """m(j, t) as (n_test, N) in training order, from prepared targets (unit rows for
    "embedding", int ids for "lists"); never a (c, N, d) or (c, N, M) array."""
    if target == "embedding":  # cosine of target vectors (next items)
        return (yte @ ytr.T).astype(np.float64)
    if target == "lists":  # membership, one list column at a time
        return _in_lists(ytr, yte).astype(np.float64)
    return _match_labels(ytr[None, :], yte, target, scale)


def _match_labels(ytr: np.ndarray, yte: np.ndarray, target: str, scale: float) -> np.ndarray:
    """Labels and grades: `ytr` (1 or n_test, N) against each test row's label."""
    if target == "classification":
        return (ytr == yte[:, None]).astype(np.float64)
    return 1.0 - np.abs(ytr.astype(np.float64) - yte[:, None].astype(np.float64)) / scale


def _match_sorted(ytr: np.ndarray, order: np.ndarray, yte: np.ndarray, target: str, scale: float) -> np.ndarray:
    """m(j, t) for the training points in each test row's distance order (labels are gathered
    first, which is cheaper than gathering a float matrix)."""
    if target in ("embedding", "lists"):
        return np.take_along_axis(_match_matrix(ytr, yte, target, scale), order, axis=1)
    return _match_labels(ytr[order], yte, target, scale)


def _in_lists(lists: np.ndarray, yte: np.ndarray) -> np.ndarray:
    """(n_test, N): is test id t in training point j's list (one list column at a time)."""
    out = np.zeros((len(yte), len(lists)), dtype=bool)
    for c in range(lists.shape[1]):
        out |= lists[None, :, c] == yte[:, None]
    return out


def nearest_item_lists(item_vectors: np.ndarray, m: int, *, chunk: int = 2048) -> np.ndarray:
    """(n_items, m) int64: each item's m nearest catalog items by cosine, itself first.

    The `lists` target of KNN-Shapley for next-item pairs: y_train = lists[next item ids],
    y_test = the validation next item ids. Chunked, so a large catalog never needs the
    full item x item matrix."""
    v = np.asarray(item_vectors, dtype=np.float32)
    if v.ndim != 2 or not len(v):
        raise ShoprankError("item_vectors must be a non-empty (n_items, d) array")
    if not 1 <= m <= len(v):
        raise ShoprankError(f"list size m must be between 1 and the number of items ({len(v)}), got {m}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    out = np.empty((len(v), m), dtype=np.int64)
    for s in range(0, len(v), chunk):
        sim = v[s:s + chunk] @ v.T
        rows = np.arange(len(sim))
        sim[rows, s + rows] = np.inf  # itself first, even among exact duplicates
        top = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < len(v) else np.tile(np.arange(len(v)), (len(sim), 1))
        o = np.lexsort((top, -np.take_along_axis(sim, top, axis=1)), axis=1)  # by similarity, ties by id
        out[s:s + chunk] = np.take_along_axis(top, o, axis=1)
    return out


def _unit_rows(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def _chunk_values(shared: tuple[np.ndarray, np.ndarray, np.ndarray, int, str, str, float, int],
                  item: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    """Sum over the given test points of their exact KNN-Shapley values (training order).

    `item[2]` >= 0 means the test points are training rows from that offset on (self
    valuation): each is left out of its own game, i.e. sorted last and dropped."""
    xtr, sq, ytr, k, metric, target, scale, chunk = shared
    xte_all, yte_all, self_offset = item
    n = len(xtr)
    n_eff = n - 1 if self_offset >= 0 else n
    j = np.arange(1, n_eff, dtype=np.float64)  # 1-based positions 1..N-1
    coef = np.minimum(k, j) / (k * j)
    out = np.zeros(n, dtype=np.float64)
    if n_eff < 1:
        return out
    for s in range(0, len(xte_all), chunk):
        xte, yte = xte_all[s:s + chunk], yte_all[s:s + chunk]
        d = _distances(xtr, sq, xte, metric)
        if self_offset >= 0:
            d[np.arange(len(d)), self_offset + s + np.arange(len(d))] = np.inf
        order = np.argsort(d, axis=1)[:, :n_eff]
        m = _match_sorted(ytr, order, yte, target, scale)
        vals = np.empty_like(m)
        vals[:, -1] = m[:, -1] * min(k, n_eff) / (n_eff * k)
        if n_eff > 1:
            diff = (m[:, :-1] - m[:, 1:]) * coef
            vals[:, :-1] = vals[:, -1:] + np.cumsum(diff[:, ::-1], axis=1)[:, ::-1]
        out += np.bincount(order.ravel(), weights=vals.ravel(), minlength=n)
    return out


def knn_shapley_values(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None, *,
    k: int = 10, metric: str = "cosine", target: str = "classification", chunk_size: int | None = None,
    backend: str | Backend | None = None, n_jobs: int = 1,
) -> np.ndarray:
    """Exact KNN-Shapley value of every training point, averaged over the test points.

    `chunk_size` test points are processed at once (default: a block of about 2M numbers);
    the work is split into one task per worker of `backend` (see `get_backend`).
    With `x_test=None` every training point serves as a test point of the game played by
    the others (self valuation: no validation set needed, like Data-OOB).
    """
    self_mode = x_test is None and y_test is None
    if x_test is None or y_test is None:
        if not self_mode:
            raise ShoprankError("give both x_test and y_test, or neither (self valuation)")
        x_test, y_test = x_train, y_train
    if k < 1:
        raise ShoprankError("k must be >= 1")
    if target not in TARGETS:
        raise ShoprankError(f"unknown target {target!r}: use one of {TARGETS}")
    ytr, yte = np.asarray(y_train), np.asarray(y_test)
    if len(x_train) != len(ytr) or len(x_test) != len(yte):
        raise ShoprankError("x and y differ in length")
    if target == "embedding":
        if ytr.ndim != 2 or yte.ndim != 2:
            raise ShoprankError("target 'embedding' needs y as vectors (n, d), e.g. next-item embeddings")
        ytr, yte = _unit_rows(ytr), _unit_rows(yte)
    if target == "lists":
        if ytr.ndim != 2 or yte.ndim != 1:
            raise ShoprankError("target 'lists' needs y_train as (n, M) id lists and y_test as (n,) ids "
                                "(see nearest_item_lists)")
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    n, n_test = len(ytr), len(yte)
    if n == 0 or n_test == 0:
        return np.zeros(n)
    scale = 1.0
    if target == "graded":
        both = np.concatenate([ytr.astype(np.float64), yte.astype(np.float64)])
        scale = float(both.max() - both.min()) or 1.0
    xtr, sq = _prepare_train(np.asarray(x_train), metric)
    chunk = int(chunk_size) if chunk_size else max(1, DEFAULT_BLOCK // n)
    be = get_backend(backend, n_jobs=n_jobs)
    n_tasks = min(max(1, be.n_workers), -(-n_test // chunk))
    bounds = np.linspace(0, n_test, n_tasks + 1).astype(int)
    # task boundaries on chunk multiples: the arithmetic is the same for any worker count
    bounds = np.unique(np.minimum(n_test, (bounds // chunk) * chunk).tolist() + [n_test])
    xte = np.asarray(x_test)
    items = [(xte[a:b], yte[a:b], int(a) if self_mode else -1)
             for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    parts = be.map(_chunk_values, items, shared=(xtr, sq, ytr, int(k), metric, target, scale, chunk))
    total = np.zeros(n)
    for p in parts:  # fixed order: same float sums on every backend
        total += p
    return total / n_test


def knn_utility(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                k: int = 10, metric: str = "cosine", target: str = "classification") -> FunctionUtility:
    """The KNN utility itself, u(S) for any coalition (brute force; for tests on tiny games)."""
    xtr, sq = _prepare_train(np.asarray(x_train), metric)
    ytr, yte = np.asarray(y_train), np.asarray(y_test)
    scale = 1.0
    if target == "graded":
        both = np.concatenate([ytr.astype(np.float64), yte.astype(np.float64)])
        scale = float(both.max() - both.min()) or 1.0
    d = _distances(xtr, sq, np.asarray(x_test), metric)
    rank = np.argsort(np.argsort(d, axis=1), axis=1)  # rank of each train point per test point
    if target == "embedding":
        ytr, yte = _unit_rows(ytr), _unit_rows(yte)
    elif target == "lists":
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    m = _match_matrix(ytr, yte, target, scale)

    def u(s: np.ndarray) -> float:
        if not len(s):
            return 0.0
        r = rank[:, s]
        top = np.argsort(r, axis=1)[:, :k]
        return float(np.mean(np.take_along_axis(m[:, s], top, axis=1).sum(1) / k))

    return FunctionUtility(u, len(ytr))


@register_method("knn-shapley")
class KNNShapley(Valuation):
    """Exact KNN-Shapley on feature vectors (embeddings): labels, graded targets, target
    vectors (`target="embedding"`, implicit next-item pairs) or id lists (`target="lists"`:
    a neighbour matches when the test id is in its list, see `nearest_item_lists`).

    `fit(data)` values `data.x_train` against `data.x_valid`; values are per training row.
    `self_valuation=True` uses the training points themselves as test points (each left out
    of its own game) when there is no clean validation set.
    """

    def __init__(self, k: int = 10, metric: str = "cosine", target: str = "classification",
                 chunk_size: int | None = None, backend: str | Backend | None = None, n_jobs: int = 1,
                 self_valuation: bool = False) -> None:
        self.k, self.metric, self.target = k, metric, target
        self.chunk_size, self.backend, self.n_jobs = chunk_size, backend, n_jobs
        self.self_valuation = self_valuation

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData):
            raise ShoprankError("KNNShapley.fit needs ValuationData with feature arrays")
        if data.y_train is None or (data.y_valid is None and not self.self_valuation):
            raise ShoprankError("KNNShapley needs labels (y_train and y_valid)")
        xv, yv = (None, None) if self.self_valuation else (np.asarray(data.x_valid), data.y_valid)
        v = knn_shapley_values(np.asarray(data.x_train), data.y_train, xv, yv,
                               k=self.k, metric=self.metric, target=self.target, chunk_size=self.chunk_size,
                               backend=self.backend, n_jobs=self.n_jobs)
        self.result_ = ValuationResult(v, names=data.point_names(), algorithm=self.name,
                                       n_updates=data.n_train if yv is None else len(yv))
        return self


def knn_attribution(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, y_query: Any, *,
                    k: int = 10, metric: str = "cosine", target: str = "classification", top: int = 10,
                    names: np.ndarray | None = None) -> ValuationResult:
    """The training records that pushed one prediction (a recommended pair, a search hit)
    towards `y_query` most: exact KNN-Shapley in the game of that single test point, the
    `top` largest first (negative values pulled it the other way)."""
    xq = np.asarray(x_query, dtype=np.float32).reshape(1, -1)
    v = knn_shapley_values(x_train, y_train, xq, np.asarray([y_query]), k=k, metric=metric, target=target)
    res = ValuationResult(v, names=names, algorithm="knn-attribution", n_updates=1)
    return res.sort(reverse=True).subset(np.arange(min(top, len(v))))

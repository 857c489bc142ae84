"""Classical baselines behind the `Ranker` interface.

Every language-model ranker has to beat these on the same split, so they are built to be
strong and cheap rather than clever: popularity, item-KNN, a first-order transition model,
ALS / BPR matrix factorisation (`implicit`), BM25 search (`bm25s`) and a LightGBM click model.

Conventions shared by the history-based recommenders:
- a user is scored from the history in the `UserBatch` (never from a stored user id), so
  users unseen in training are handled the same way as known ones;
- history items whose explicit label is <= 0.5 (disliked) are ignored;
- `tie_eps * normalised popularity` is added to the scores, which breaks ties (and ranks
  users with an empty history) by popularity without changing any other order.
State is saved as numpy / scipy sparse `.npz`, LightGBM model text and JSON; never pickle.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import (
    LIKED,
    click_rows,
    histories_for,
    interaction_matrix,
    item_popularity,
    positive_mask,
    positive_weight_matrix,
    record_weights,
    trainable,
    user_sequences_weighted,
)
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, UserBatch, register, top_k

RECOMMEND = frozenset({"recommend", "click"})  # click comes free through `Ranker.score`


# -- shared helpers ---------------------------------------------------------------------


def _binary_positives(ds: Dataset, *, weighted: bool = False) -> sp.csr_matrix:
    """User x item 0/1 matrix of positive feedback (row order: sorted user ids).

    Binary, because the histories we score from carry no event strengths: training and
    scoring then see the same kind of input. `weighted`: each entry is the pair's training
    weight instead of 1 (`positive_weight_matrix`; weight 0 leaves the pair out)."""
    if weighted:
        return positive_weight_matrix(ds)[0]
    m, _ = interaction_matrix(ds)
    m = m.tocsr()
    m.data[:] = 1.0
    return m


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    top = float(v.max()) if v.size else 0.0
    return (v / top if top > 0 else np.zeros_like(v)).astype(np.float32)


def _history_matrix(
    users: UserBatch,
    n_items: int,
    *,
    window: int | None = None,
    decay: float | None = None,
    binary: bool = True,
) -> sp.csr_matrix:
    """Users x items weights from the batch histories (float32 CSR).

    Disliked items are dropped; `window` keeps the last n liked items; `decay` weighs the
    item d steps before the last one by decay**d. With `binary`, repeated items count once
    (their most recent weight); otherwise repeats add up."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    for r, hist in enumerate(users.histories):
        h = np.asarray(hist, dtype=np.int64)
        if users.labels is not None:
            h = h[~(np.asarray(users.labels[r], dtype=np.float64) <= LIKED)]
        h = h[(h >= 0) & (h < n_items)]
        if window is not None:
            h = h[len(h) - window :] if len(h) > window else h
        n = len(h)
        w = decay ** np.arange(n - 1, -1, -1, dtype=np.float64) if decay is not None else np.ones(n)
        rows.append(np.full(n, r, dtype=np.int64))
        cols.append(h)
        wts.append(w)
    r_all = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c_all = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    w_all = np.concatenate(wts) if wts else np.zeros(0)
    shape = (len(users), n_items)
    if binary and len(r_all):
        key = r_all * n_items + c_all
        order = np.lexsort((w_all, key))  # by key, then weight: the last of a key is its max
        key, w_all = key[order], w_all[order]
        last = np.r_[key[1:] != key[:-1], True]
        key, w_all = key[last], w_all[last]
        r_all, c_all = key // n_items, key % n_items
    m = sp.csr_matrix((w_all.astype(np.float32), (r_all, c_all)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    return m


def _dense(m: Any) -> np.ndarray:
    """Sparse or dense product result -> dense float32 array."""
    return np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float32)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# -- popularity ----------------------------------------------------------------------------


@register("popularity")
class PopularityRanker(Ranker):
    """Most-popular items for everyone: the floor every personalised model must clear.

    `half_life_days` weighs each positive event by 0.5**(age / half_life), age measured from
    the last training event, so recent popularity counts more; None gives plain counts."""

    tasks: ClassVar[frozenset[str]] = RECOMMEND
    supports_weights: ClassVar[bool] = True  # each event counts its `weight`

    def __init__(self, *, half_life_days: float | None = None) -> None:
        super().__init__(half_life_days=half_life_days)
        self.half_life_days = half_life_days
        self.item_scores_: np.ndarray = np.zeros(0, np.float32)

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        inter = trainable(train.interactions)
        inter = inter[positive_mask(inter)]
        items = train.item_map.to_internal(inter[Col.ITEM_ID])
        w = record_weights(inter).astype(np.float64)
        if self.half_life_days is not None and len(inter):
            if self.half_life_days <= 0:
                raise ShoprankError("popularity: half_life_days must be positive")
            secs = inter[Col.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
            w = w * 0.5 ** ((secs.max() - secs) / (self.half_life_days * 86400.0))
        self.item_scores_ = np.bincount(items, weights=w, minlength=train.n_items).astype(np.float32)
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        return np.tile(self.item_scores_, (len(users), 1))

    def _save_state(self, path: Path) -> None:
        np.savez(path / "popularity.npz", item_scores=self.item_scores_)

    def _load_state(self, path: Path) -> None:
        self.item_scores_ = _load_npz(path / "popularity.npz")["item_scores"].astype(np.float32)


# -- item-KNN --------------------------------------------------------------------------------


def _top_k_per_row(m: sp.coo_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries (ties: lower column first), fully vectorised."""
    order = np.lexsort((m.col, -m.data, m.row))
    row, col, val = m.row[order], m.col[order], m.data[order]
    starts = np.searchsorted(row, row, side="left")
    keep = (np.arange(len(row)) - starts) < k
    return sp.csr_matrix((val[keep], (row[keep], col[keep])), shape=m.shape, dtype=np.float32)


@register("itemknn")
class ItemKNNRanker(Ranker):
    """Item-item cosine neighbours of the history items (classic item-based CF).

    Similarity: cosine between item columns of the binary user x item positive matrix,
    co / (sqrt(n_i n_j) + shrink), self-similarity removed, top `k_neighbors` per item kept.
    A user's score for item j is the sum over history items i of w_i * sim(i, j), where
    w_i = recency_decay**(steps before the last item) or 1 when `recency_decay` is None.
    Training weights scale each (user, item) entry of the matrix (weight 0 leaves it out)."""

    tasks: ClassVar[frozenset[str]] = RECOMMEND
    supports_weights: ClassVar[bool] = True

    def __init__(
        self,
        *,
        k_neighbors: int = 100,
        shrink: float = 0.0,
        recency_decay: float | None = None,
        max_history: int | None = None,
        tie_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            k_neighbors=k_neighbors,
            shrink=shrink,
            recency_decay=recency_decay,
            max_history=max_history,
            tie_eps=tie_eps,
        )
        self.k_neighbors = k_neighbors
        self.shrink = shrink
        self.recency_decay = recency_decay
        self.max_history = max_history
        self.tie_eps = tie_eps
        self.sim_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.pop_: np.ndarray = np.zeros(0, np.float32)

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        x = _binary_positives(train, weighted=True)  # weighted co-occurrence cosine
        co = (x.T @ x).tocoo()
        n = np.asarray(x.sum(axis=0)).ravel()
        off = co.row != co.col
        row, col, c = co.row[off], co.col[off], co.data[off]
        val = c / (np.sqrt(n[row] * n[col]) + self.shrink)
        cos = sp.coo_matrix((val.astype(np.float32), (row, col)), shape=co.shape)
        self.sim_ = _top_k_per_row(cos, self.k_neighbors)
        self.pop_ = _normalised(n)
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        w = _history_matrix(users, self.n_items_, window=self.max_history, decay=self.recency_decay)
        return _dense(w @ self.sim_) + self.tie_eps * self.pop_

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "similarity.npz", self.sim_.tocsr())
        np.savez(path / "popularity.npz", pop=self.pop_)

    def _load_state(self, path: Path) -> None:
        self.sim_ = sp.load_npz(path / "similarity.npz").tocsr().astype(np.float32)
        self.pop_ = _load_npz(path / "popularity.npz")["pop"]


# -- first-order transitions -------------------------------------------------------------------


@register("transition")
class TransitionRanker(Ranker):
    """First-order item-to-item transitions: "what do people take right after item a".

    Counts of a followed by b in each user's time-ordered positive sequence, rows normalised
    to probabilities (`normalize`). Score = sum over the last `window` history items of
    decay**d * P[item d steps before the last], plus tie_eps * normalised popularity as the
    back-off. A strong baseline on next-item data (amazon-industrial: HR@10 ~ 0.11).
    Training weights: a transition counts the weight of the event it leads to."""

    tasks: ClassVar[frozenset[str]] = RECOMMEND
    supports_weights: ClassVar[bool] = True

    def __init__(
        self,
        *,
        window: int = 3,
        decay: float = 0.5,
        normalize: bool = True,
        tie_eps: float = 1e-6,
    ) -> None:
        super().__init__(window=window, decay=decay, normalize=normalize, tie_eps=tie_eps)
        self.window = window
        self.decay = decay
        self.normalize = normalize
        self.tie_eps = tie_eps
        self.trans_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.pop_: np.ndarray = np.zeros(0, np.float32)

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        n = train.n_items
        seqs = [(s, w) for s, w in user_sequences_weighted(train).values() if len(s) > 1]
        prev = np.concatenate([s[:-1] for s, _ in seqs]) if seqs else np.zeros(0, np.int64)
        nxt = np.concatenate([s[1:] for s, _ in seqs]) if seqs else np.zeros(0, np.int64)
        # a transition counts the weight of the event it leads to; a weight-0 event is never a
        # target but stays the "previous item" of the next one, as in the LM ranker
        wt = np.concatenate([w[1:] for _, w in seqs]).astype(np.float32) if seqs else np.zeros(0, np.float32)
        t = sp.csr_matrix((wt, (prev, nxt)), shape=(n, n), dtype=np.float32)
        t.sum_duplicates()
        t.eliminate_zeros()
        if self.normalize:
            out = np.asarray(t.sum(axis=1)).ravel()
            t = sp.csr_matrix(sp.diags(np.where(out > 0, 1.0 / np.maximum(out, 1e-12), 0.0)) @ t)
        self.trans_ = t.astype(np.float32)
        pop = item_popularity(train, weighted=True)  # trainable rows only: context rows never teach
        self.pop_ = _normalised(pop)
        self.n_items_ = n
        self.fitted_ = True
        return self

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        w = _history_matrix(users, self.n_items_, window=self.window, decay=self.decay, binary=False)
        return _dense(w @ self.trans_) + self.tie_eps * self.pop_

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "transitions.npz", self.trans_.tocsr())
        np.savez(path / "popularity.npz", pop=self.pop_)

    def _load_state(self, path: Path) -> None:
        self.trans_ = sp.load_npz(path / "transitions.npz").tocsr().astype(np.float32)
        self.pop_ = _load_npz(path / "popularity.npz")["pop"]


# -- matrix factorisation (implicit) -------------------------------------------------------------


class _FactorRanker(Ranker):
    """Shared parts of ALS and BPR: item factors, a history fold-in, scores = U @ V.T."""

    tasks: ClassVar[frozenset[str]] = RECOMMEND

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.tie_eps: float = float(params.get("tie_eps", 1e-6))
        self.item_factors_: np.ndarray = np.zeros((0, 0), np.float32)
        self.pop_: np.ndarray = np.zeros(0, np.float32)

    def _implicit_model(self) -> Any:
        raise NotImplementedError

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        from threadpoolctl import threadpool_limits

        x = _binary_positives(train, weighted=self.supports_weights)
        # implicit parallelises itself; a BLAS thread pool on top only oversubscribes
        with threadpool_limits(1, "blas"):
            model = self._implicit_model()
            if x.nnz:
                model.fit(x, show_progress=False)
                factors = np.asarray(model.item_factors, dtype=np.float32)
            else:  # nothing to learn from: zero factors, scores fall back to popularity
                factors = np.zeros((train.n_items, self._width()), np.float32)
        self.item_factors_ = factors
        self.pop_ = _normalised(np.asarray(x.sum(axis=0)).ravel())
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def _width(self) -> int:
        return int(self.params.get("factors", 64))

    def user_factors(self, users: UserBatch) -> np.ndarray:
        raise NotImplementedError

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        u = self.user_factors(users)
        return (u @ self.item_factors_.T).astype(np.float32) + self.tie_eps * self.pop_

    def _save_state(self, path: Path) -> None:
        np.savez(path / "factors.npz", item_factors=self.item_factors_, pop=self.pop_)

    def _load_state(self, path: Path) -> None:
        z = _load_npz(path / "factors.npz")
        self.item_factors_, self.pop_ = z["item_factors"], z["pop"]


@register("als")
class ALSRanker(_FactorRanker):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via `implicit`, CPU.

    Training data: the binary positive matrix, confidence = alpha for every positive (times
    the pair's training weight when the data has one; weight 0 leaves the pair out).
    Every user (known or not) is folded in from the batch history by the exact ALS user
    step with the learned item factors Y, as `implicit`'s `recalculate_user` does:
    u = (YtY + reg I + sum_i (c_i - 1) y_i y_i^T)^-1 sum_i c_i y_i, with c_i = alpha,
    solved for the whole batch at once."""

    supports_weights: ClassVar[bool] = True

    def __init__(
        self,
        *,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        random_state: int | None = 0,
        num_threads: int = 0,
        tie_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=random_state,
            num_threads=num_threads,
            tie_eps=tie_eps,
        )
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def _implicit_model(self) -> Any:
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            use_gpu=False,
        )

    def user_factors(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        y = self.item_factors_.astype(np.float64)
        f = y.shape[1]
        base = y.T @ y + self.regularization * np.eye(f)
        out = np.zeros((len(users), f), np.float32)
        bs = 256
        for s in range(0, len(users), bs):
            w = _history_matrix(users.slice(s, s + bs), self.n_items_)
            lens = np.diff(w.indptr)
            b, width = len(lens), int(lens.max(initial=0))
            if width == 0:
                continue  # empty histories: u = 0
            row = np.repeat(np.arange(b), lens)
            pos = np.arange(w.nnz) - w.indptr[row]
            idx = np.zeros((b, width), np.int64)
            conf = np.zeros((b, width))
            mask = np.zeros((b, width))
            idx[row, pos] = w.indices
            conf[row, pos] = self.alpha * w.data
            mask[row, pos] = 1.0
            yh = y[idx]  # (b, width, f)
            a = base + np.einsum("bl,blf,blg->bfg", (conf - 1.0) * mask, yh, yh)
            rhs = np.einsum("bl,blf->bf", conf, yh)
            out[s : s + b] = np.linalg.solve(a, rhs[..., None])[..., 0]
        return out


@register("bpr")
class BPRRanker(_FactorRanker):
    """Bayesian Personalised Ranking (Rendle et al. 2009) via `implicit`, CPU.

    BPR has no closed-form user step, so a user is folded in as the mean of the factors of
    their (distinct, liked) history items; `implicit` stores an item bias as the last factor
    column, which the user vector picks up with a constant 1 (empty history: bias only)."""

    def __init__(
        self,
        *,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int | None = 0,
        num_threads: int = 0,
        tie_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            factors=factors,
            learning_rate=learning_rate,
            regularization=regularization,
            iterations=iterations,
            random_state=random_state,
            num_threads=num_threads,
            tie_eps=tie_eps,
        )
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def _width(self) -> int:
        return self.factors + 1

    def _implicit_model(self) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            use_gpu=False,
        )

    def user_factors(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        w = _history_matrix(users, self.n_items_)
        w.data[:] = 1.0
        lens = np.asarray(w.sum(axis=1)).ravel()
        mean = _dense(w @ self.item_factors_) / np.maximum(lens, 1.0)[:, None]
        mean[:, -1] = 1.0
        return mean.astype(np.float32)


# -- BM25 search -----------------------------------------------------------------------------------

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff"
)
_CJK_RUN = re.compile(f"[{_CJK}]+")
_TOKEN = re.compile(f"[{_CJK}]+|[^\\W{_CJK}]+")
_WORD = re.compile(r"(?u)\b\w\w+\b")


def cjk_fraction(texts: Sequence[str]) -> float:
    """Share of CJK characters among all word characters of the texts."""
    n_cjk = sum(len(m) for t in texts for m in _CJK_RUN.findall(t))
    n_word = sum(1 for t in texts for ch in t if ch.isalnum())
    return n_cjk / n_word if n_word else 0.0


def tokenize(text: str, mode: str) -> list[str]:
    """`word`: lower-cased words of 2+ word characters (bm25s' default pattern).
    `cjk_bigram`: CJK runs become overlapping character bigrams (a lone character stays a
    unigram), since Chinese has no spaces between words; other runs are words as above."""
    text = unicodedata.normalize("NFKC", text).lower()
    if mode == "word":
        return _WORD.findall(text)
    if mode != "cjk_bigram":
        raise ShoprankError(f"unknown tokenizer {mode!r}: auto, word or cjk_bigram")
    out: list[str] = []
    for run in _TOKEN.findall(text):
        if _CJK_RUN.fullmatch(run):
            out.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        elif len(run) >= 2:
            out.append(run)
    return out


def item_texts(items: pd.DataFrame, max_description_chars: int = 500) -> list[str]:
    """Title, brand, category and the start of the description, as one string per item."""
    parts = []
    for col in (Col.TITLE, Col.BRAND, Col.CATEGORY):
        if col in items.columns:
            parts.append(items[col].fillna("").astype(str))
    if Col.DESCRIPTION in items.columns and max_description_chars > 0:
        parts.append(items[Col.DESCRIPTION].fillna("").astype(str).str.slice(0, max_description_chars))
    if not parts:
        return [""] * len(items)
    joined = parts[0]
    for p in parts[1:]:
        joined = joined + " " + p
    return [" ".join(t.split()) for t in joined.tolist()]


@register("bm25")
class BM25Ranker(Ranker):
    """BM25 over item text, with `bm25s` building the index.

    `tokenizer="auto"` picks `cjk_bigram` when at least `cjk_threshold` of the catalog's word
    characters are CJK, else `word`. The index (documents x vocabulary BM25 weights) is kept
    as a sparse matrix, so a query's scores are one sparse product; each distinct query
    term counts once."""

    tasks: ClassVar[frozenset[str]] = frozenset({"search"})

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        tokenizer: str = "auto",
        cjk_threshold: float = 0.3,
        max_description_chars: int = 500,
    ) -> None:
        super().__init__(
            k1=k1,
            b=b,
            method=method,
            tokenizer=tokenizer,
            cjk_threshold=cjk_threshold,
            max_description_chars=max_description_chars,
        )
        self.k1 = k1
        self.b = b
        self.method = method
        self.tokenizer = tokenizer
        self.cjk_threshold = cjk_threshold
        self.max_description_chars = max_description_chars
        self.mode_: str = tokenizer
        self.vocab_: dict[str, int] = {}
        self.doc_term_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        import bm25s

        if self.tokenizer not in ("auto", "word", "cjk_bigram"):
            raise ShoprankError(f"unknown tokenizer {self.tokenizer!r}: auto, word or cjk_bigram")
        if self.method not in ("robertson", "lucene", "atire"):
            raise ShoprankError(f"bm25 method {self.method!r} not supported: robertson, lucene or atire")
        texts = item_texts(train.items, self.max_description_chars)
        self.mode_ = self.tokenizer
        if self.mode_ == "auto":
            self.mode_ = "cjk_bigram" if cjk_fraction(texts) >= self.cjk_threshold else "word"
        tokens = [tokenize(t, self.mode_) for t in texts]
        if not any(tokens):
            raise ShoprankError(f"bm25: the catalog of {train.name!r} has no indexable text")
        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        index.index(tokens, show_progress=False)
        sc = index.scores
        n_vocab = len(sc["indptr"]) - 1
        csc = sp.csc_matrix(
            (sc["data"], sc["indices"], sc["indptr"]), shape=(int(sc["num_docs"]), n_vocab)
        )
        self.doc_term_ = csc.tocsr().astype(np.float32)
        self.vocab_ = {t: int(i) for t, i in index.vocab_dict.items() if t and int(i) < n_vocab}
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def _query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        rows, cols = [], []
        for r, q in enumerate(queries):
            ids = sorted({self.vocab_[t] for t in tokenize(str(q), self.mode_) if t in self.vocab_})
            rows.extend([r] * len(ids))
            cols.extend(ids)
        return sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)),
            shape=(len(queries), self.doc_term_.shape[1]),
            dtype=np.float32,
        )

    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_fitted()
        q = self._query_matrix(queries)
        out = []
        for r, cand in enumerate(candidates):
            c = np.asarray(cand, dtype=np.int64)
            out.append(_dense(self.doc_term_[c] @ q[r].T).ravel())
        return out

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        ids, scores = [], []
        bs = max(1, 2_000_000 // max(self.n_items_, 1))
        for s in range(0, len(queries), bs):
            q = self._query_matrix(queries[s : s + bs])
            i, v = top_k(_dense(q @ self.doc_term_.T), k)
            ids.append(i)
            scores.append(v)
        if not ids:
            kk = min(k, self.n_items_)
            return np.zeros((0, kk), np.int64), np.zeros((0, kk), np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "bm25_index.npz", self.doc_term_)
        _write_json(path / "bm25_vocab.json", {"tokenizer": self.mode_, "vocab": self.vocab_})

    def _load_state(self, path: Path) -> None:
        self.doc_term_ = sp.load_npz(path / "bm25_index.npz").tocsr().astype(np.float32)
        meta = _read_json(path / "bm25_vocab.json")
        self.mode_ = str(meta["tokenizer"])
        self.vocab_ = {str(k): int(v) for k, v in meta["vocab"].items()}


# -- LightGBM click model ----------------------------------------------------------------------------

FEATURES = [
    "item_log_pop",  # positive events of the item
    "item_pos_rate",  # smoothed share of the item's exposures that were positive
    "item_log_exposures",
    "item_log_price",
    "hist_log_len",
    "hist_mean_label",  # how often the user likes things at all (explicit ratings)
    "hist_cat_frac",  # share of the history in the item's category
    "hist_liked_cat_frac",
    "hist_disliked_cat_frac",
    "hist_brand_frac",
    "sim_liked_mean",  # co-occurrence cosine of the item to the liked history items
    "sim_liked_max",
    "sim_disliked_mean",
    "sim_last",  # ... and to the last history item
    "hist_item_frac",  # the item itself already in the history (repeat consumption)
    "price_vs_hist",  # log price minus the history's mean log price
]


@dataclass
class _ItemStats:
    """Item statistics the features read; in training computed without the row's own user."""

    pos: np.ndarray  # positive events (binary user-item pairs) per item
    exposures: np.ndarray  # click rows per item
    exposure_pos: np.ndarray  # positive click rows per item
    cooc_keys: np.ndarray  # sorted keys i * n_items + j of the co-occurrence matrix
    cooc_vals: np.ndarray
    scale: float  # full user count / user count behind these stats


def _stats(x: sp.csr_matrix, rows_items: np.ndarray, rows_labels: np.ndarray, n_items: int, scale: float,
           rows_weights: np.ndarray) -> _ItemStats:
    """Item counts for the features; exposures count by record weight (a down-weighted click
    also counts less in its item's click rate)."""
    w = np.asarray(rows_weights, np.float64)
    co = (x.T @ x).tocoo()
    keys = co.row.astype(np.int64) * n_items + co.col.astype(np.int64)
    order = np.argsort(keys)
    return _ItemStats(
        pos=np.asarray(x.sum(axis=0)).ravel().astype(np.float64),
        exposures=np.bincount(rows_items, weights=w, minlength=n_items).astype(np.float64),
        exposure_pos=np.bincount(rows_items, weights=rows_labels * w, minlength=n_items),
        cooc_keys=keys[order],
        cooc_vals=co.data[order].astype(np.float64),
        scale=scale,
    )


def _lookup(keys: np.ndarray, vals: np.ndarray, q: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    hit = (keys[pos] == q) if len(keys) else np.zeros(len(q), bool)
    return np.where(hit, vals[pos] if len(keys) else 0.0, 0.0)


def _group_mean(row: np.ndarray, v: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    cnt = np.bincount(row[mask], minlength=n).astype(np.float64)
    tot = np.bincount(row[mask], weights=v[mask], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


@register("lightgbm")
class LightGBMRanker(Ranker):
    """Gradient-boosted click/like classifier on tabular (history, item) features.

    Features: see `FEATURES`. Item statistics (popularity, positive rate, co-occurrence) for
    a training row are computed out-of-fold by user (`n_folds`), so a row never sees its
    own label through them, as a test row would not; at scoring time they use all training
    users. Early stopping on `valid` rows when given (their histories from train+valid)."""

    tasks: ClassVar[frozenset[str]] = frozenset({"click"})
    probabilistic: ClassVar[bool] = True
    supports_weights: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int = 30,
        n_folds: int = 5,
        max_history: int = 50,
        prior_strength: float = 5.0,
        num_threads: int = 0,
        random_state: int = 0,
    ) -> None:
        super().__init__(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            min_child_samples=min_child_samples,
            subsample=subsample,
            colsample_bytree=colsample_bytree,
            reg_lambda=reg_lambda,
            early_stopping_rounds=early_stopping_rounds,
            n_folds=n_folds,
            max_history=max_history,
            prior_strength=prior_strength,
            num_threads=num_threads,
            random_state=random_state,
        )
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.n_folds = n_folds
        self.max_history = max_history
        self.prior_strength = prior_strength
        self.num_threads = num_threads
        self.random_state = random_state
        self.booster_: Any = None
        self.best_iteration_: int = 0
        self.prior_: float = 0.0
        self.item_cat_ = np.zeros(0, np.int64)
        self.item_brand_ = np.zeros(0, np.int64)
        self.item_log_price_ = np.zeros(0, np.float64)
        self.stats_: _ItemStats | None = None

    # -- features ----------------------------------------------------------------------------
    def _catalog(self, items: pd.DataFrame) -> None:
        n = len(items)

        def codes(col: str) -> np.ndarray:
            if col not in items.columns:
                return np.full(n, -1, np.int64)
            return pd.factorize(items[col].astype("object"), use_na_sentinel=True)[0].astype(np.int64)

        self.item_cat_ = codes(Col.CATEGORY)
        self.item_brand_ = codes(Col.BRAND)
        price = (
            pd.to_numeric(items[Col.PRICE], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if Col.PRICE in items.columns
            else np.full(n, np.nan)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            self.item_log_price_ = np.where(price >= 0, np.log1p(price), np.nan)

    def _features(
        self,
        stats: _ItemStats,
        histories: Sequence[np.ndarray],
        labels: Sequence[np.ndarray] | None,
        items: np.ndarray,
    ) -> np.ndarray:
        n_items = self.n_items_
        r = len(items)
        items = np.asarray(items, dtype=np.int64)
        hs = [np.asarray(h, dtype=np.int64)[-self.max_history :] for h in histories]
        ls = [
            np.ones(len(h), np.float64)
            if labels is None
            else np.asarray(labels[i], dtype=np.float64)[-self.max_history :]
            for i, h in enumerate(hs)
        ]
        lens = np.array([len(h) for h in hs], dtype=np.int64)
        row = np.repeat(np.arange(r), lens)
        hist = np.concatenate(hs) if r else np.zeros(0, np.int64)
        lab = np.concatenate(ls) if r else np.zeros(0)
        hist = np.clip(hist, 0, max(n_items - 1, 0))
        tgt = items[row]
        liked = ~(lab <= LIKED)
        every = np.ones(len(row), bool)

        f = np.full((r, len(FEATURES)), np.nan, dtype=np.float64)
        s = stats
        f[:, 0] = np.log1p(s.pos[items] * s.scale)
        f[:, 1] = (s.exposure_pos[items] + self.prior_strength * self.prior_) / (
            s.exposures[items] + self.prior_strength
        )
        f[:, 2] = np.log1p(s.exposures[items] * s.scale)
        f[:, 3] = self.item_log_price_[items]
        f[:, 4] = np.log1p(lens)
        f[:, 5] = _group_mean(row, np.nan_to_num(lab, nan=1.0), every, r)

        cat_t, cat_h = self.item_cat_[tgt], self.item_cat_[hist]
        same_cat = ((cat_t == cat_h) & (cat_t >= 0)).astype(np.float64)
        has_cat = self.item_cat_[items] >= 0
        f[:, 6] = np.where(has_cat, _group_mean(row, same_cat, every, r), np.nan)
        f[:, 7] = np.where(has_cat, _group_mean(row, same_cat, liked, r), np.nan)
        f[:, 8] = np.where(has_cat, _group_mean(row, same_cat, ~liked, r), np.nan)
        br_t = self.item_brand_[tgt]
        same_br = ((br_t == self.item_brand_[hist]) & (br_t >= 0)).astype(np.float64)
        f[:, 9] = np.where(self.item_brand_[items] >= 0, _group_mean(row, same_br, every, r), np.nan)

        co = _lookup(s.cooc_keys, s.cooc_vals, tgt * n_items + hist)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(co > 0, co / np.sqrt(s.pos[tgt] * s.pos[hist]), 0.0)
        sim = np.where(tgt == hist, 0.0, sim)
        f[:, 10] = _group_mean(row, sim, liked, r)
        mx = np.full(r, -np.inf)
        np.maximum.at(mx, row[liked], sim[liked])
        f[:, 11] = np.where(np.isfinite(mx), mx, np.nan)
        f[:, 12] = _group_mean(row, sim, ~liked, r)
        last = np.zeros(len(row), bool)
        ends = np.cumsum(lens) - 1
        last[ends[lens > 0]] = True
        f[:, 13] = _group_mean(row, sim, last, r)
        f[:, 14] = _group_mean(row, (tgt == hist).astype(np.float64), every, r)
        hp = self.item_log_price_[hist]
        ok = ~np.isnan(hp)
        f[:, 15] = self.item_log_price_[items] - _group_mean(row, np.nan_to_num(hp), ok, r)
        return f.astype(np.float32)

    # -- learning ------------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        import lightgbm as lgb

        n = train.n_items
        self.n_items_ = n
        self._catalog(train.items)
        rows = click_rows(train)
        if not len(rows):
            raise ShoprankError(f"lightgbm: {train.name!r} has no click/rating rows to learn from")
        r_items = train.item_map.to_internal(rows[Col.ITEM_ID])
        r_labels = rows["label"].to_numpy(dtype=np.float64)
        r_w = rows[Col.WEIGHT].to_numpy(dtype=np.float64)  # value-aware retraining (1 without the column)
        if not r_w.sum() > 0:
            raise ShoprankError(f"lightgbm: every click/rating row of {train.name!r} has weight 0")
        r_users = rows[Col.USER_ID].astype(str).to_numpy()
        self.prior_ = float(np.average(r_labels, weights=r_w))
        hist = histories_for(train, rows, max_len=self.max_history)

        x, uidx = interaction_matrix(train)
        x = x.tocsr()
        x.data[:] = 1.0
        all_users = pd.Index(sorted(set(train.interactions[Col.USER_ID].astype(str)) | set(r_users)))
        rng = np.random.default_rng(self.random_state)
        k = max(2, min(self.n_folds, len(all_users)))
        fold_of = pd.Series(rng.permutation(len(all_users)) % k, index=all_users)
        x_fold = fold_of.reindex(uidx).to_numpy()
        row_fold = fold_of.reindex(pd.Index(r_users)).to_numpy()
        self.stats_ = _stats(x, r_items, r_labels, n, 1.0, r_w)

        feats = np.zeros((len(rows), len(FEATURES)), np.float32)
        for fo in range(k):
            out_x = x[np.flatnonzero(x_fold != fo)]
            out_r = row_fold != fo
            n_out = int((fold_of != fo).sum())
            st = _stats(out_x, r_items[out_r], r_labels[out_r], n, len(all_users) / max(n_out, 1), r_w[out_r])
            sel = np.flatnonzero(~out_r)
            feats[sel] = self._features(
                st, [hist.items[i] for i in sel], [hist.labels[i] for i in sel], r_items[sel]
            )

        params = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0,
            "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.num_threads,
            "seed": self.random_state,
            "deterministic": True,
            "verbose": -1,
        }
        dtrain = lgb.Dataset(feats, r_labels, weight=r_w, feature_name=FEATURES, free_raw_data=True)
        valid_sets: list[Any] = []
        callbacks: list[Any] = []
        if valid is not None:
            vrows = click_rows(valid)
            if len(vrows) and vrows["label"].nunique() > 1:
                ctx = train.with_tables(interactions=pd.concat([train.interactions, valid.interactions]))
                vh = histories_for(ctx, vrows, max_len=self.max_history)
                v_items = train.item_map.to_internal(vrows[Col.ITEM_ID])
                vf = self._features(self.stats_, vh.items, vh.labels, v_items)
                valid_sets.append(lgb.Dataset(vf, vrows["label"].to_numpy(np.float64), reference=dtrain))
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(
            params, dtrain, num_boost_round=self.n_estimators, valid_sets=valid_sets, callbacks=callbacks
        )
        self.best_iteration_ = int(booster.best_iteration or 0) if valid_sets else 0
        self.booster_ = booster
        self.fitted_ = True
        return self

    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        """Probability that each (user history, item) row is a click / like."""
        self._check_fitted()
        assert self.stats_ is not None
        if len(users) == 0:
            return np.zeros(0, np.float32)
        f = self._features(self.stats_, users.histories, users.labels, np.asarray(items))
        it = self.best_iteration_ if self.best_iteration_ > 0 else None
        return np.asarray(self.booster_.predict(f, num_iteration=it), dtype=np.float32)

    # -- persistence -----------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        assert self.stats_ is not None
        it = self.best_iteration_ if self.best_iteration_ > 0 else -1
        self.booster_.save_model(str(path / "lightgbm.txt"), num_iteration=it)
        s = self.stats_
        np.savez(
            path / "lightgbm_stats.npz",
            pos=s.pos,
            exposures=s.exposures,
            exposure_pos=s.exposure_pos,
            cooc_keys=s.cooc_keys,
            cooc_vals=s.cooc_vals,
            item_cat=self.item_cat_,
            item_brand=self.item_brand_,
            item_log_price=self.item_log_price_,
        )
        _write_json(
            path / "lightgbm_meta.json",
            {"features": FEATURES, "prior": self.prior_, "best_iteration": self.best_iteration_},
        )

    def _load_state(self, path: Path) -> None:
        import lightgbm as lgb

        meta = _read_json(path / "lightgbm_meta.json")
        if meta["features"] != FEATURES:
            raise ShoprankError(f"{path}: saved with other features {meta['features']}")
        self.prior_ = float(meta["prior"])
        self.best_iteration_ = int(meta["best_iteration"])
        self.booster_ = lgb.Booster(model_file=str(path / "lightgbm.txt"))
        z = _load_npz(path / "lightgbm_stats.npz")
        self.stats_ = _ItemStats(
            z["pos"], z["exposures"], z["exposure_pos"], z["cooc_keys"], z["cooc_vals"], 1.0
        )
        self.item_cat_, self.item_brand_ = z["item_cat"], z["item_brand"]
        self.item_log_price_ = z["item_log_price"]


__all__ = [
    "FEATURES",
    "ALSRanker",
    "BM25Ranker",
    "BPRRanker",
    "ItemKNNRanker",
    "LightGBMRanker",
    "PopularityRanker",
    "TransitionRanker",
    "cjk_fraction",
    "item_texts",
    "tokenize",
]


# -- random -----------------------------------------------------------------------------------


@register("random")
class RandomRanker(Ranker):
    """Seeded random scores for every task: the chance level each metric is read against.

    Scores are a hash of (seed, user, item) or (seed, query, item), so they are the same for
    the same pair in any batch or order, and saving needs nothing but the seed."""

    tasks: ClassVar[frozenset[str]] = frozenset({"recommend", "click", "search"})

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.seed = seed

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def _rand(self, key: str, items: np.ndarray) -> np.ndarray:
        import zlib

        h = zlib.crc32(f"{self.seed}\x00{key}".encode())
        x = (np.asarray(items, dtype=np.uint64) + np.uint64(h)) * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(29)
        return (x >> np.uint64(40)).astype(np.float32) / np.float32(2**24)

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        all_items = np.arange(self.n_items_)
        if not len(users):
            return np.zeros((0, self.n_items_), np.float32)
        return np.stack([self._rand(u, all_items) for u in users.user_ids])

    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.array([self._rand(u, np.array([i]))[0] for u, i in zip(users.user_ids, items, strict=True)],
                        dtype=np.float32)

    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_fitted()
        return [self._rand(q, c) for q, c in zip(queries, candidates, strict=True)]

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        scores = np.stack([self._rand(q, np.arange(self.n_items_)) for q in queries])
        return top_k(scores, k)

    def _save_state(self, path: Path) -> None:
        pass  # the seed in config.json is the whole state

    def _load_state(self, path: Path) -> None:
        pass

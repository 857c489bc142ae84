"""Hybrid retrieval and re-ranking: a dense (LM) model beside BM25 and behaviour features.

Search: candidates are the union of BM25's and the dense model's top `n_candidates`; the two
rankings are fused by reciprocal rank fusion (`fusion="rrf"`, Cormack et al. 2009: score =
sum over rankers of 1 / (rrf_k + rank)) or by a learnt LightGBM LambdaRank re-ranker
(`fusion="ltr"`) on [dense score, BM25 score, their ranks, RRF, popularity, price, query
length, query-title word overlap].

Recommendation: the dense model retrieves `n_candidates` items per user; the re-ranker
orders them by [LM score and rank, item popularity, recency of the item's last event, price,
BM25 of the user's history titles against the item, in-history flag, how often the item
followed the user's last item in training sequences, and its co-occurrence with the whole
history]. With `fusion="rrf"`
the LM ranking is fused with popularity by RRF instead.

The re-ranker learns on the validation data given to `fit` (held-out queries / later
events), never on the rows the dense model trained on: scores on its own training rows
are over-confident and would teach the re-ranker to trust the LM too much.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import histories_for, item_popularity, positive_mask, user_sequences
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, UserBatch, get_model_class, load_model, register, top_k
from shoprank.models.baselines import BM25Ranker, tokenize
from shoprank.text.render import render_query

SEARCH_FEATURES = ["dense", "bm25", "dense_rank", "bm25_rank", "rrf", "bm25_zero", "log_pop",
                   "log_price", "query_len", "title_overlap"]
REC_FEATURES = ["dense", "dense_rank", "log_pop", "log_age", "log_price", "bm25_hist", "in_history",
                "trans_last", "cooc_hist"]
FUSIONS = ("rrf", "ltr")
LTR_FILE = "reranker.txt"
STATS_FILE = "item_stats.npz"


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of every entry (best = 0), ties broken by position."""
    order = np.argsort(-scores, kind="stable")
    r = np.empty(len(scores), np.float64)
    r[order] = np.arange(len(scores))
    return r


@register("hybrid")
class HybridRanker(Ranker):
    """Dense model + BM25 + behaviour features, fused by RRF or a LambdaRank re-ranker."""

    tasks: ClassVar[frozenset[str]] = frozenset({"search", "recommend"})

    def __init__(
        self,
        *,
        dense: str = "lm",
        dense_params: dict[str, Any] | None = None,
        bm25_params: dict[str, Any] | None = None,
        fusion: str = "ltr",
        rrf_k: int = 60,
        n_candidates: int = 100,
        ltr_params: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if fusion not in FUSIONS:
            raise ShoprankError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        super().__init__(dense=dense, dense_params=dict(dense_params or {}), bm25_params=dict(bm25_params or {}),
                         fusion=fusion, rrf_k=int(rrf_k), n_candidates=int(n_candidates),
                         ltr_params=dict(ltr_params or {}), seed=int(seed))
        self.dense_: Ranker | None = None
        self.bm25_: BM25Ranker | None = None
        self.ltr_: Any = None  # lightgbm Booster, per task
        self.rec_ltr_: Any = None
        self.log_pop_: np.ndarray = np.zeros(0)
        self.log_age_: np.ndarray = np.zeros(0)
        self.log_price_: np.ndarray = np.zeros(0)
        self.titles_: list[set[str]] = []
        self.trans_: sp.csr_matrix = sp.csr_matrix((0, 0))  # item -> next item counts in training
        self.cooc_: sp.csr_matrix = sp.csr_matrix((0, 0))  # items in the same user's history

    # -- fitting ----------------------------------------------------------------------------
    @classmethod
    def from_models(cls, dense: Ranker, bm25: BM25Ranker, train: Dataset, valid: Dataset | None = None,
                    **params: Any) -> HybridRanker:
        """A hybrid over already fitted models (only the fusion is learnt): lets a benchmark
        reuse one fine-tuned model for several fusions."""
        m = cls(dense=dense.name, dense_params=dict(dense.params), **params)
        m.dense_, m.bm25_ = dense, bm25
        m._fit_fusion(train, valid)
        return m

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        p = self.params
        self.dense_ = get_model_class(p["dense"])(**p["dense_params"]).fit(train, valid)
        self.bm25_ = BM25Ranker(**p["bm25_params"]).fit(train)
        self._fit_fusion(train, valid)
        return self

    def _fit_fusion(self, train: Dataset, valid: Dataset | None) -> None:
        self.n_items_ = train.n_items
        self._item_stats(train)
        self.fitted_ = True
        if self.params["fusion"] != "ltr" or valid is None:
            self.ltr_ = self.rec_ltr_ = None
            return
        if len(valid.judgments) and "search" in self.dense.tasks:
            self.ltr_ = self._fit_search_ltr(train, valid)
        if len(valid.interactions) and "recommend" in self.dense.tasks:
            self.rec_ltr_ = self._fit_rec_ltr(train, valid)

    @property
    def dense(self) -> Ranker:
        self._check_fitted()
        assert self.dense_ is not None
        return self.dense_

    @property
    def bm25(self) -> BM25Ranker:
        self._check_fitted()
        assert self.bm25_ is not None
        return self.bm25_

    def _item_stats(self, train: Dataset) -> None:
        n = train.n_items
        inter = train.interactions
        self.log_pop_ = np.log1p(item_popularity(train)) if len(inter) else np.zeros(n)
        age = np.full(n, np.nan)
        if len(inter) and Col.TIMESTAMP in inter:
            ts = pd.to_datetime(inter[Col.TIMESTAMP], errors="coerce", utc=True)
            secs = (ts - ts.min()).dt.total_seconds().to_numpy(np.float64)
            last = pd.Series(secs).groupby(train.item_idx(inter)).max()
            age[last.index.to_numpy()] = np.nanmax(secs) - last.to_numpy()
        self.log_age_ = np.log1p(np.nan_to_num(age / 86400.0, nan=1e4))
        price = train.items[Col.PRICE].to_numpy(np.float64) if Col.PRICE in train.items else np.full(n, np.nan)
        self.log_price_ = np.log1p(np.nan_to_num(np.clip(price, 0, None), nan=0.0))
        rows, cols, crow, ccol = [], [], [], []
        if len(inter):
            for seq in user_sequences(train).values():
                rows.append(seq[:-1])
                cols.append(seq[1:])
                u = np.unique(seq[-50:])  # the recent 50: co-occurrence stays O(users x 2,500)
                crow.append(np.repeat(u, len(u)))
                ccol.append(np.tile(u, len(u)))

        def counts(r: list[np.ndarray], c: list[np.ndarray]) -> sp.csr_matrix:
            if not r:
                return sp.csr_matrix((n, n), dtype=np.float32)
            rr, cc = np.concatenate(r), np.concatenate(c)
            m = sp.csr_matrix((np.ones(len(rr), np.float32), (rr, cc)), shape=(n, n))
            m.sum_duplicates()
            return m

        self.trans_ = counts(rows, cols)
        self.cooc_ = counts(crow, ccol)
        self.cooc_.setdiag(0)
        self.cooc_.eliminate_zeros()
        titles = train.items[Col.TITLE].astype(str).tolist() if Col.TITLE in train.items else [""] * n
        mode = self.bm25_.mode_ if self.bm25_ is not None else "word"
        self.titles_ = [set(tokenize(t, mode)) for t in titles]

    # -- search -----------------------------------------------------------------------------
    def _search_features(self, query: str, cand: np.ndarray, dense: np.ndarray, bm: np.ndarray) -> np.ndarray:
        k = float(self.params["rrf_k"])
        dr, br = _ranks(dense), _ranks(bm)
        rrf = 1.0 / (k + dr + 1) + 1.0 / (k + br + 1)
        qtok = set(tokenize(query, self.bm25.mode_))
        overlap = np.array([len(qtok & self.titles_[int(c)]) / max(len(qtok), 1) for c in cand])
        return np.column_stack([dense, bm, dr, br, rrf, (bm <= 0).astype(float), self.log_pop_[cand],
                                self.log_price_[cand], np.full(len(cand), len(qtok)), overlap])

    def _fuse_search(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        dense = self.dense.score_query_items(queries, candidates)
        bm = self.bm25.score_query_items([render_query(q) for q in queries], candidates)
        out = []
        for q, c, d, b in zip(queries, candidates, dense, bm, strict=True):
            c = np.asarray(c, dtype=np.int64)
            if not len(c):
                out.append(np.zeros(0, np.float32))
                continue
            x = self._search_features(render_query(q), c, np.asarray(d, np.float64), np.asarray(b, np.float64))
            sc = self.ltr_.predict(x) if self.ltr_ is not None else x[:, SEARCH_FEATURES.index("rrf")]
            out.append(np.asarray(sc, np.float32))
        return out

    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._fuse_search(queries, candidates)

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        n = min(int(self.params["n_candidates"]), self.n_items_)
        di, _ = self.dense.search(queries, n)
        bi, bv = self.bm25.search([render_query(q) for q in queries], n)
        cands = []
        for r in range(len(queries)):
            b = bi[r][bv[r] > 0]  # BM25 hits only: zero-score items are arbitrary
            cands.append(np.array(list(dict.fromkeys([*di[r].tolist(), *b.tolist()])), np.int64))
        scores = self._fuse_search(queries, cands)
        kk = min(k, self.n_items_)
        ids = np.zeros((len(queries), kk), np.int64)
        vals = np.full((len(queries), kk), -np.inf, np.float32)
        for r, (c, s) in enumerate(zip(cands, scores, strict=True)):
            order = np.argsort(-s, kind="stable")[:kk]
            ids[r, : len(order)], vals[r, : len(order)] = c[order], s[order]
        return ids, vals

    def _fit_search_ltr(self, train: Dataset, valid: Dataset) -> Any:
        j = valid.judgments
        gmin = float(valid.meta.get("grade_min", train.meta.get("grade_min", 0.0)))
        g = j.groupby(Col.QUERY, sort=True)
        queries = [str(x) for x in g.groups]
        cands = [train.item_map.to_internal(g.get_group(x)[Col.ITEM_ID]) for x in queries]
        grades = [g.get_group(x)[Col.GRADE].to_numpy(np.float64) - gmin for x in queries]
        dense = self.dense.score_query_items(queries, cands)
        bm = self.bm25.score_query_items([render_query(q) for q in queries], cands)
        xs, ys, groups = [], [], []
        for q, c, d, b, gr in zip(queries, cands, dense, bm, grades, strict=True):
            if len(c) < 2 or np.ptp(gr) == 0:
                continue  # a list with one grade teaches a ranker nothing
            xs.append(self._search_features(render_query(q), c, np.asarray(d, np.float64), np.asarray(b, np.float64)))
            ys.append(np.clip(np.rint(gr * 3), 0, None).astype(int))  # thirds of a grade
            groups.append(len(c))
        if not groups:
            return None
        y = np.concatenate(ys)
        gains = [float(2 ** (lv / 3.0) - 1) for lv in range(int(y.max()) + 1)]  # gain 2^grade - 1
        return self._train_ltr(np.vstack(xs), y, groups, gains, SEARCH_FEATURES)

    def _train_ltr(self, x: np.ndarray, y: np.ndarray, groups: list[int], gains: list[float] | None,
                   names: list[str]) -> Any:
        import lightgbm as lgb

        params: dict[str, Any] = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
                  "feature_fraction": 0.9, "lambdarank_truncation_level": 20, "verbosity": -1,
                  "seed": int(self.params["seed"]), "num_threads": 1, "deterministic": True}
        if gains is not None:
            params["label_gain"] = gains
        params |= self.params["ltr_params"]
        rounds = int(params.pop("num_boost_round", 200))
        data = lgb.Dataset(x, y, group=groups, feature_name=names, free_raw_data=True)
        return lgb.train(params, data, num_boost_round=rounds)

    # -- recommendation -------------------------------------------------------------------------
    def _rec_candidates(self, users: UserBatch) -> tuple[np.ndarray, np.ndarray]:
        n = min(int(self.params["n_candidates"]), self.n_items_)
        return top_k(self.dense.score_users(users), n)

    def _rec_features(self, users: UserBatch, cand: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """(len(users) * n, features) rows, user-major."""
        n = cand.shape[1]
        titles = [self.dense_history_text(h) for h in users.histories]
        bm = self.bm25.score_query_items(titles, list(cand))
        rank = np.tile(np.arange(n, dtype=np.float64), len(users))
        in_hist = np.concatenate([np.isin(c, np.asarray(h, np.int64)) for c, h in zip(cand, users.histories, strict=True)])
        flat = cand.ravel()
        trans = np.zeros(cand.shape)
        cooc = np.zeros(cand.shape)
        for r, h in enumerate(users.histories):
            h = np.asarray(h, np.int64)
            h = h[(h >= 0) & (h < self.n_items_)]
            if len(h):
                trans[r] = self.trans_[int(h[-1])].toarray().ravel()[cand[r]]
                cooc[r] = np.asarray(self.cooc_[h[-20:]].sum(axis=0)).ravel()[cand[r]]
        return np.column_stack([dense.ravel(), rank, self.log_pop_[flat], self.log_age_[flat], self.log_price_[flat],
                                np.concatenate(bm), in_hist.astype(float), np.log1p(trans.ravel()),
                                np.log1p(cooc.ravel())])

    def dense_history_text(self, history: np.ndarray) -> str:
        """The user's last ten history titles, as the BM25 query of the `bm25_hist` feature."""
        h = np.asarray(history, np.int64)[-10:]
        return " ".join(" ".join(sorted(self.titles_[int(i)])) for i in h if 0 <= i < len(self.titles_))

    def score_users(self, users: UserBatch) -> np.ndarray:
        full = self.dense.score_users(users).astype(np.float32)
        n = min(int(self.params["n_candidates"]), self.n_items_)
        cand, dense = top_k(full, n)
        if self.rec_ltr_ is not None:
            sc = np.asarray(self.rec_ltr_.predict(self._rec_features(users, cand, dense)), np.float64).reshape(cand.shape)
        else:  # RRF of the LM ranking with popularity among the candidates
            k = float(self.params["rrf_k"])
            pop_rank = np.argsort(np.argsort(-self.log_pop_[cand], axis=1, kind="stable"), axis=1)
            sc = 1.0 / (k + np.arange(n)[None, :] + 1) + 1.0 / (k + pop_rank + 1)
        # candidates above every other item, in re-ranked order; the rest keep the LM order
        out = full - (np.abs(full).max() + 2.0 * float(np.abs(sc).max()) + 10.0)
        np.put_along_axis(out, cand, sc.astype(np.float32), axis=1)
        return out.astype(np.float32)

    def _fit_rec_ltr(self, train: Dataset, valid: Dataset) -> Any:
        vi = valid.interactions
        rows = vi[positive_mask(vi)]
        if not len(rows):
            return None
        rng = np.random.default_rng(int(self.params["seed"]))
        if len(rows) > 3000:
            rows = rows.iloc[np.sort(rng.choice(len(rows), 3000, replace=False))]
        ctx = train.with_tables(interactions=pd.concat([train.interactions, vi]))
        h = histories_for(ctx, rows, positives_only=True)
        users = UserBatch(rows[Col.USER_ID].astype(str).tolist(), h.items, h.labels)
        targets = train.item_map.to_internal(rows[Col.ITEM_ID], missing=-1)
        cand, dense = self._rec_candidates(users)
        hit = (cand == targets[:, None]).any(1)
        if hit.sum() < 5:
            return None
        keep = np.flatnonzero(hit)
        sub = UserBatch([users.user_ids[i] for i in keep], [users.histories[i] for i in keep],
                        None if users.labels is None else [users.labels[i] for i in keep])
        x = self._rec_features(sub, cand[keep], dense[keep])
        y = (cand[keep] == targets[keep][:, None]).astype(int).ravel()
        return self._train_ltr(x, y, [cand.shape[1]] * len(keep), None, REC_FEATURES)

    # -- persistence ----------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        self.dense.save(path / "dense")
        self.bm25.save(path / "bm25")
        for name, b in (("search", self.ltr_), ("recommend", self.rec_ltr_)):
            f = path / f"{name}_{LTR_FILE}"
            if b is not None:
                b.save_model(str(f))
            elif f.exists():
                f.unlink()
        np.savez(path / STATS_FILE, log_pop=self.log_pop_, log_age=self.log_age_, log_price=self.log_price_)
        sp.save_npz(path / "transitions.npz", self.trans_.tocsr())
        sp.save_npz(path / "cooccurrence.npz", self.cooc_.tocsr())
        (path / "titles.json").write_text(json.dumps([sorted(t) for t in self.titles_], ensure_ascii=False))

    def _load_state(self, path: Path) -> None:
        import lightgbm as lgb

        self.dense_ = load_model(path / "dense")
        bm = load_model(path / "bm25")
        assert isinstance(bm, BM25Ranker)
        self.bm25_ = bm
        for name in ("search", "recommend"):
            f = path / f"{name}_{LTR_FILE}"
            b = lgb.Booster(model_file=str(f)) if f.exists() else None
            if name == "search":
                self.ltr_ = b
            else:
                self.rec_ltr_ = b
        st = np.load(path / STATS_FILE)
        self.log_pop_, self.log_age_, self.log_price_ = st["log_pop"], st["log_age"], st["log_price"]
        self.titles_ = [set(t) for t in json.loads((path / "titles.json").read_text())]
        self.trans_ = sp.load_npz(path / "transitions.npz").tocsr()
        self.cooc_ = sp.load_npz(path / "cooccurrence.npz").tocsr()


__all__ = ["REC_FEATURES", "SEARCH_FEATURES", "HybridRanker"]

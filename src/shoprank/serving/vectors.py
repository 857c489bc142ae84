"""Item and query vectors from a saved model, and the faiss index over them.

`VectorSpace` adapts whatever the model offers to two calls the service needs: vectors for
catalog rows and a vector for a query. The `dense` and `lm` rankers bring their own item
vectors (`item_emb_`, reused as saved when the catalog matches) and query towers; any other
model (popularity, bm25, ...) gets the frozen text encoder named in the settings, so search and
"similar items" still work. `VectorIndex` is exact inner product (`IndexFlatIP`) up to a
threshold and HNSW beyond; items posted while serving go to a small brute-force delta, merged
by a background rebuild, so the main index is never mutated while it is being searched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from shoprank.models.base import Ranker
from shoprank.text.cache import EmbeddingCache
from shoprank.text.encoder import EncoderConfig, TextEncoder
from shoprank.text.render import render_items, render_query

faiss.omp_set_num_threads(1)  # requests already run in parallel threads


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


class _Pending:
    __slots__ = ("key", "done", "value", "error", "lead")

    def __init__(self, key: str) -> None:
        self.key = key
        self.done = threading.Event()
        self.value: np.ndarray | None = None
        self.error: BaseException | None = None
        self.lead = False  # woken to take over the batching, not with a result


class VectorSpace:
    """Encodes catalog rows and queries into one unit-vector space.

    Queries that arrive together are encoded together (dynamic batching): one thread leads and
    encodes every query waiting at that moment in one forward pass, the others wait for their
    row. On this CPU a batch of 16 short queries costs ~4.6 ms per query against ~20 ms alone,
    and the encoder is used by one thread at a time, as Hugging Face fast tokenizers require
    ("Already borrowed" otherwise). Repeated queries are served from an LRU cache."""

    def __init__(self, name: str, encode_items: Callable[[list[str]], np.ndarray],
                 encode_queries: Callable[[list[str]], np.ndarray], *, max_description_chars: int = 200,
                 query_cache: int = 4096, max_batch: int = 32) -> None:
        self.name = name
        self._encode_items = encode_items
        self._encode_queries = encode_queries
        self.max_description_chars = max_description_chars
        self.max_batch = max_batch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = query_cache
        self._lock = threading.Lock()
        self._enc_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leading = False
        self.stats = {"queries": 0, "cache_hits": 0, "batches": 0, "encoded": 0}

    def counters(self) -> dict[str, int]:
        """Queries asked, answered from the cache, encoder batches run and texts they encoded."""
        with self._lock:
            return dict(self.stats)

    def item_vectors(self, items: pd.DataFrame) -> np.ndarray:
        texts = render_items(items, max_description_chars=self.max_description_chars)
        if not texts:
            return np.zeros((0, 0), np.float32)
        with self._enc_lock:
            return _unit(self._encode_items(texts))

    def query_vector(self, q: str) -> np.ndarray:
        """One query's vector: from the cache, or encoded in a batch with the queries waiting now."""
        key = render_query(q)
        with self._lock:
            self.stats["queries"] += 1
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return hit
            me = _Pending(key)
            self._pending.append(me)
            lead = not self._leading
            self._leading = self._leading or lead
        if not lead:
            me.done.wait()
            if not me.lead:
                return self._result(me)
        self._lead(me)
        return self._result(me)

    def _encode_batch(self, keys: list[str]) -> tuple[dict[str, np.ndarray], dict[str, BaseException]]:
        """Vectors by key; if the batch fails, each query alone, so one bad query fails only itself."""
        def run(ks: list[str]) -> dict[str, np.ndarray]:
            with self._enc_lock:
                vecs = _unit(np.asarray(self._encode_queries(ks), np.float32).reshape(len(ks), -1))
            return dict(zip(ks, vecs, strict=True))

        try:
            return run(keys), {}
        except Exception as e:
            if len(keys) == 1:
                return {}, {keys[0]: e}
        got: dict[str, np.ndarray] = {}
        errs: dict[str, BaseException] = {}
        for k in keys:
            try:
                got.update(run([k]))
            except Exception as e:  # noqa: PERF203  (isolating the failing query is the point)
                errs[k] = e
        return got, errs

    @staticmethod
    def _result(p: _Pending) -> np.ndarray:
        if p.error is not None:
            raise p.error
        assert p.value is not None
        return p.value

    def _lead(self, me: _Pending) -> None:
        """Encode waiting queries in batches until `me` has its vector, then hand the lead on."""
        while True:
            with self._lock:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            keys = list(dict.fromkeys(p.key for p in batch))
            got, errs = self._encode_batch(keys)
            with self._lock:
                self.stats["batches"] += 1
                self.stats["encoded"] += len(keys)
                for k, v in got.items():
                    self._cache[k] = v
                    self._cache.move_to_end(k)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                for p in batch:
                    p.value, p.error, p.lead = got.get(p.key), errs.get(p.key), False
                mine = any(p is me for p in batch)
                if mine:
                    if self._pending:  # wake the oldest waiter to lead the next batch
                        nxt = self._pending[0]
                        nxt.lead = True
                        nxt.done.set()
                    else:
                        self._leading = False
            for p in batch:
                if p is not me:
                    p.done.set()
            if mine:
                return


class CachedEncoder:
    """A cache-less `TextEncoder` plus the on-disk embedding cache, opened per call.

    `EmbeddingCache` holds one SQLite connection, usable only from the thread that opened it,
    and serving encodes from many threads; so the cache is opened in the calling thread each
    time. Same file layout and keys as `TextEncoder`'s own cache, so hits are shared with training."""

    def __init__(self, encoder: TextEncoder, cache_dir: Path | None) -> None:
        self.encoder, self.cache_dir = encoder, cache_dir

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.cache_dir is None:
            return self.encoder.encode(texts)
        fp = self.encoder.fingerprint
        cache = EmbeddingCache(Path(self.cache_dir) / f"{fp}.sqlite", fp)
        try:
            got, found = cache.get(texts, self.encoder.dim)
            miss = np.flatnonzero(~found)
            if len(miss):
                todo = [texts[i] for i in miss]
                new = self.encoder.encode(todo)
                cache.put(todo, new)
                got[miss] = new
            return got
        finally:
            cache.close()


def make_space(model: Ranker, encoder: str, cache_dir: Path | None) -> VectorSpace | None:
    """The vector space for a model: its own towers where it has them, else a frozen encoder."""
    mdc = int(model.params.get("max_description_chars", 200))
    if model.name == "dense":
        # the ranker's own encoder settings, in a cache-less instance (see CachedEncoder);
        # queries exactly as DenseRanker.query_vectors embeds them
        enc = TextEncoder(model.encoder_cfg)  # type: ignore[attr-defined]
        return VectorSpace("dense", CachedEncoder(enc, cache_dir), lambda qs: enc.encode([render_query(q) for q in qs]),
                           max_description_chars=mdc)
    if model.name == "lm":
        bs = int(model.params.get("embed_batch_size", 128))
        return VectorSpace("lm", lambda texts: model.tower.embed(list(texts), bs),  # type: ignore[attr-defined]
                           lambda qs: model.query_vectors(qs),  # type: ignore[attr-defined]
                           max_description_chars=mdc)
    if encoder == "none":
        return None
    te = TextEncoder(EncoderConfig(model=encoder))
    return VectorSpace(encoder, CachedEncoder(te, cache_dir), lambda qs: te.encode(qs))


def model_item_vectors(model: Ranker, n_items: int) -> np.ndarray | None:
    """The model's saved catalog vectors when they cover exactly this catalog."""
    emb = getattr(model, "item_emb_", None)
    if isinstance(emb, np.ndarray) and emb.ndim == 2 and emb.shape[0] == n_items and n_items:
        return _unit(emb)
    return None


@dataclass(frozen=True)
class VectorIndex:
    """Slots [0, n_main) in a faiss index, slots [n_main, n_main + len(delta)) brute force."""

    main: Any  # faiss index
    main_vectors: np.ndarray
    delta: np.ndarray
    kind: str  # "flat" | "hnsw"

    @classmethod
    def build(cls, vectors: np.ndarray, *, hnsw_threshold: int, hnsw_m: int = 32, ef_search: int = 128,
              cache_dir: Path | None = None, build_threads: int | None = None) -> VectorIndex:
        """Exact up to `hnsw_threshold` vectors, HNSW beyond. An HNSW graph costs minutes to build
        (100k x 384: ~200 s on one core), so with a `cache_dir` it is saved there under the hash of
        the vectors and parameters, and the next start (or the other workers) load it; a file lock
        makes concurrent workers build it once."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        d = vectors.shape[1]
        if len(vectors) > hnsw_threshold:
            idx: Any = _hnsw(vectors, hnsw_m, cache_dir, build_threads)
            idx.hnsw.efSearch = ef_search
            return cls(idx, vectors, np.zeros((0, d), np.float32), "hnsw")
        else:
            idx = faiss.IndexFlatIP(d)
            kind = "flat"
        if len(vectors):
            idx.add(vectors)
        return cls(idx, vectors, np.zeros((0, d), np.float32), kind)

    def recall(self, queries: np.ndarray, k: int = 10) -> float:
        """Share of the exact top-k that this index returns (1.0 for the exact index)."""
        q = np.ascontiguousarray(queries, np.float32)
        exact = np.argsort(-(q @ self.main_vectors.T), axis=1)[:, :k]
        _, got = self.main.search(q, k)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.tolist(), got.tolist(), strict=True)]))

    @property
    def dim(self) -> int:
        return int(self.main_vectors.shape[1])

    @property
    def n(self) -> int:
        return len(self.main_vectors) + len(self.delta)

    def with_added(self, vectors: np.ndarray) -> VectorIndex:
        """A new version with `vectors` appended (copy-on-write of the small delta only)."""
        return VectorIndex(self.main, self.main_vectors, np.vstack([self.delta, _unit(vectors)]), self.kind)

    def all_vectors(self) -> np.ndarray:
        return np.vstack([self.main_vectors, self.delta]) if len(self.delta) else self.main_vectors

    def vectors(self, slots: Sequence[int] | np.ndarray) -> np.ndarray:
        s = np.asarray(slots, np.int64)
        nm = len(self.main_vectors)
        out = np.empty((len(s), self.dim), np.float32)
        m = s < nm
        out[m] = self.main_vectors[s[m]]
        out[~m] = self.delta[s[~m] - nm]
        return out

    def search(self, q: np.ndarray, n: int, allowed: np.ndarray | None = None,
               exact_below: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
        """Top-n slots by inner product among `allowed` (bool mask over slots, None = all)."""
        q = np.asarray(q, np.float32).reshape(1, -1)
        total = self.n
        n = min(n, total)
        if n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None and int(allowed.sum()) <= exact_below:
            cand = np.flatnonzero(allowed[:total])
            sc = self.vectors(cand) @ q[0]
            return _top(cand, sc, n)
        want = n if allowed is None else min(total, n * 4 + 64)
        nm = len(self.main_vectors)
        slots: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        if nm:
            d, i = self.main.search(q, min(want, nm))
            ok = i[0] >= 0
            slots.append(i[0][ok].astype(np.int64))
            scores.append(d[0][ok])
        if len(self.delta):
            slots.append(np.arange(nm, total, dtype=np.int64))
            scores.append(self.delta @ q[0])
        cand, sc = np.concatenate(slots), np.concatenate(scores).astype(np.float32)
        if allowed is not None:
            keep = allowed[cand]
            cand, sc = cand[keep], sc[keep]
        return _top(cand, sc, n)


def _hnsw(vectors: np.ndarray, m: int, cache_dir: Path | None, threads: int | None) -> Any:
    import fcntl
    import hashlib
    import os

    def build() -> Any:
        idx = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 80
        faiss.omp_set_num_threads(threads or os.cpu_count() or 1)  # start-up: nothing else runs yet
        try:
            idx.add(vectors)
        finally:
            faiss.omp_set_num_threads(1)
        return idx

    if cache_dir is None:
        return build()
    h = hashlib.sha1(vectors.tobytes())
    h.update(f"hnsw-flat-ip m={m} efc=80 faiss={faiss.__version__}".encode())
    path = Path(cache_dir) / f"hnsw-{h.hexdigest()[:20]}.faiss"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait here and then load the file
        try:
            if path.exists():
                return faiss.read_index(str(path))
            idx = build()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            faiss.write_index(idx, str(tmp))
            os.replace(tmp, path)
            return idx
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _top(slots: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(slots) > n:
        part = np.argpartition(-scores, n - 1)[:n]
        slots, scores = slots[part], scores[part]
    order = np.argsort(-scores, kind="stable")
    return slots[order], scores[order].astype(np.float32)

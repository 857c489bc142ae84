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


class VectorSpace:
    """Encodes catalog rows and queries into one unit-vector space.

    Encoder calls are serialised by a lock: Hugging Face fast tokenizers fail ("Already
    borrowed") when one instance is used from several threads at once. Repeated queries are
    served from an LRU cache instead."""

    def __init__(self, name: str, encode_items: Callable[[list[str]], np.ndarray],
                 encode_query: Callable[[str], np.ndarray], *, max_description_chars: int = 200,
                 query_cache: int = 4096) -> None:
        self.name = name
        self._encode_items = encode_items
        self._encode_query = encode_query
        self.max_description_chars = max_description_chars
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = query_cache
        self._lock = threading.Lock()
        self._enc_lock = threading.Lock()

    def item_vectors(self, items: pd.DataFrame) -> np.ndarray:
        texts = render_items(items, max_description_chars=self.max_description_chars)
        if not texts:
            return np.zeros((0, 0), np.float32)
        with self._enc_lock:
            return _unit(self._encode_items(texts))

    def query_vector(self, q: str) -> np.ndarray:
        """One query's vector; an LRU cache spares the encoder repeated queries."""
        key = render_query(q)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with self._enc_lock:
            v = _unit(np.asarray(self._encode_query(key), np.float32).reshape(-1))
        with self._lock:
            self._cache[key] = v
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return v


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
        return VectorSpace("dense", CachedEncoder(enc, cache_dir), lambda q: enc.encode([render_query(q)])[0],
                           max_description_chars=mdc)
    if model.name == "lm":
        bs = int(model.params.get("embed_batch_size", 128))
        return VectorSpace("lm", lambda texts: model.tower.embed(list(texts), bs),  # type: ignore[attr-defined]
                           lambda q: model.query_vectors([q])[0],  # type: ignore[attr-defined]
                           max_description_chars=mdc)
    if encoder == "none":
        return None
    te = TextEncoder(EncoderConfig(model=encoder))
    return VectorSpace(encoder, CachedEncoder(te, cache_dir), lambda q: te.encode([q])[0])


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
    def build(cls, vectors: np.ndarray, *, hnsw_threshold: int, hnsw_m: int = 32, ef_search: int = 128
              ) -> VectorIndex:
        vectors = np.ascontiguousarray(vectors, np.float32)
        d = vectors.shape[1]
        if len(vectors) > hnsw_threshold:
            idx: Any = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = 80
            idx.hnsw.efSearch = ef_search
            kind = "hnsw"
        else:
            idx = faiss.IndexFlatIP(d)
            kind = "flat"
        if len(vectors):
            idx.add(vectors)
        return cls(idx, vectors, np.zeros((0, d), np.float32), kind)

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


def _top(slots: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(slots) > n:
        part = np.argpartition(-scores, n - 1)[:n]
        slots, scores = slots[part], scores[part]
    order = np.argsort(-scores, kind="stable")
    return slots[order], scores[order].astype(np.float32)

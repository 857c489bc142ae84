"""Incremental BM25 (Lucene variant, as `bm25s` method="lucene") with typo correction.

`bm25s` builds a static index; a shop adds products all day. So the index is kept as
segments of raw term frequencies (a large base segment built once, a small delta segment
rebuilt on every item post) and BM25 weights are computed at query time from the *global*
document frequencies and average length, so scores across segments are exactly comparable
and equal `bm25s`'s on the same documents (tested). `TextIndex` objects are immutable: an add
returns a new one sharing the base segment, so readers never see a half-built index.

Typo tolerance: a query token missing from the vocabulary is replaced by the closest word of
the vocabulary (Levenshtein distance <= 1 for words up to 4 characters, <= 2 beyond), found
through a character-trigram index, ties going to the more frequent word.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from shoprank.models.baselines import cjk_fraction, tokenize


@dataclass(frozen=True)
class Segment:
    """Term frequencies of a contiguous run of slots [start, start + n_docs)."""

    start: int
    tf: sp.csc_matrix  # docs x terms known when the segment was built
    lengths: np.ndarray  # tokens per doc

    @property
    def n_docs(self) -> int:
        return int(self.tf.shape[0])


class Vocabulary:
    """Word -> id and a trigram index over the words, shared by every index version.

    It only grows, and ids never change, so an older `TextIndex` stays valid: it ignores ids at
    or beyond its own `n_terms`. Writes take a lock; reads rely on dict/list reads being atomic.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: list[str] = []
        self.grams: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, words: Sequence[str]) -> list[int]:
        out = []
        with self._lock:
            for w in words:
                i = self.ids.get(w)
                if i is None:
                    i = len(self.words)
                    self.words.append(w)
                    for g in _grams(w):
                        self.grams.setdefault(g, []).append(i)
                    self.ids[w] = i
                out.append(i)
        return out


def _grams(word: str) -> set[str]:
    w = f"^{word}$"
    return {w[i : i + 3] for i in range(len(w) - 2)}


def levenshtein(a: str, b: str, max_dist: int) -> int:
    """Edit distance, or max_dist + 1 as soon as it must exceed max_dist."""
    if abs(len(a) - len(b)) > max_dist:
        return max_dist + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        if min(cur) > max_dist:
            return max_dist + 1
        prev = cur
    return prev[-1]


class TextIndex:
    """One immutable version of the BM25 index over slots 0..n_docs-1."""

    def __init__(self, vocab: Vocabulary, mode: str, segments: tuple[Segment, ...], df: np.ndarray,
                 total_len: float, *, k1: float = 1.5, b: float = 0.75) -> None:
        self.vocab, self.mode, self.segments, self.df = vocab, mode, segments, df
        self.total_len, self.k1, self.b = total_len, k1, b
        self.n_docs = sum(s.n_docs for s in segments)
        self.n_terms = len(df)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Sequence[str], *, mode: str = "auto", k1: float = 1.5, b: float = 0.75) -> TextIndex:
        if mode == "auto":
            mode = "cjk_bigram" if cjk_fraction(texts) >= 0.3 else "word"
        vocab = Vocabulary()
        seg, df, total = cls._segment(vocab, texts, 0, mode)
        return cls(vocab, mode, (seg,), df, total, k1=k1, b=b)

    @staticmethod
    def _segment(vocab: Vocabulary, texts: Sequence[str], start: int, mode: str = "word"
                 ) -> tuple[Segment, np.ndarray, float]:
        rows: list[int] = []
        cols: list[int] = []
        lengths = np.zeros(len(texts), np.float32)
        for r, t in enumerate(texts):
            toks = tokenize(t, mode)
            lengths[r] = len(toks)
            ids = vocab.add(toks)
            rows.extend([r] * len(ids))
            cols.extend(ids)
        n_terms = len(vocab.words)
        tf = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), n_terms))
        tf.sum_duplicates()
        df = np.bincount(tf.indices, minlength=n_terms).astype(np.float64)
        return Segment(start, tf.tocsc(), lengths), df, float(lengths.sum())

    def add(self, texts: Sequence[str]) -> TextIndex:
        """A new version with `texts` as slots n_docs.. (appended to the delta segment)."""
        if not texts:
            return self
        base, delta = self.segments[0], self.segments[1:]
        old = delta[0] if delta else None
        seg, df_new, total_new = self._segment(self.vocab, texts, self.n_docs, self.mode)
        n_terms = max(len(self.vocab.words), seg.tf.shape[1])
        df = np.zeros(n_terms, np.float64)
        df[: len(self.df)] = self.df
        df[: len(df_new)] += df_new
        if old is not None:  # one delta segment, kept small by compaction
            merged = sp.vstack([_pad_cols(old.tf, n_terms), _pad_cols(seg.tf, n_terms)]).tocsc()
            seg = Segment(old.start, merged, np.concatenate([old.lengths, seg.lengths]))
        return TextIndex(self.vocab, self.mode, (base, seg), df, self.total_len + total_new, k1=self.k1, b=self.b)

    def compacted(self) -> TextIndex:
        """Base and delta merged into one segment (same scores, faster queries)."""
        if len(self.segments) == 1:
            return self
        n_terms = len(self.df)
        tf = sp.vstack([_pad_cols(s.tf, n_terms) for s in self.segments]).tocsc()
        seg = Segment(0, tf, np.concatenate([s.lengths for s in self.segments]))
        return TextIndex(self.vocab, self.mode, (seg,), self.df, self.total_len, k1=self.k1, b=self.b)

    # -- querying ------------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        return tokenize(text, self.mode)

    def correct(self, tokens: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Tokens with out-of-vocabulary words replaced by their nearest vocabulary word."""
        out, fixes = [], {}
        for t in tokens:
            if self.term_id(t) is not None or self.mode != "word" or len(t) < 3 or not t.isalpha():
                out.append(t)
                continue
            best = self.nearest(t)
            if best is None:
                out.append(t)
            else:
                out.append(best)
                fixes[t] = best
        return out, fixes

    def nearest(self, word: str, pool: int = 40) -> str | None:
        max_dist = 1 if len(word) <= 4 else 2
        shared: dict[int, int] = {}
        for g in _grams(word):
            for i in self.vocab.grams.get(g, ()):
                if i < self.n_terms:
                    shared[i] = shared.get(i, 0) + 1
        if not shared:
            return None
        cands = sorted(shared, key=lambda i: -shared[i])[:pool]
        best: tuple[int, float, str] | None = None
        for i in cands:
            w = self.vocab.words[i]
            d = levenshtein(word, w, max_dist)
            if d <= max_dist:
                key = (d, -float(self.df[i]), w)
                if best is None or key < best:
                    best = key
        return None if best is None else best[2]

    def term_id(self, word: str) -> int | None:
        i = self.vocab.ids.get(word)
        return i if i is not None and i < self.n_terms and self.df[i] > 0 else None

    def idf(self, ids: np.ndarray) -> np.ndarray:
        df = self.df[ids]
        return np.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))

    def _weight(self, idf: np.ndarray, tf: np.ndarray, dl: np.ndarray, avgdl: float) -> np.ndarray:
        """BM25 term weight: idf x saturated, length-normalised term frequency."""
        return idf * tf / (tf + self.k1 * (1 - self.b + self.b * dl / avgdl))

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every slot for the distinct known tokens (float32, n_docs)."""
        out = np.zeros(self.n_docs, np.float32)
        ids = np.array(sorted({i for t in tokens if (i := self.term_id(t)) is not None}), np.int64)
        if not len(ids) or not self.n_docs:
            return out
        idf = self.idf(ids)
        avgdl = self.total_len / max(self.n_docs, 1)
        for seg in self.segments:
            ok = ids < seg.tf.shape[1]
            if not ok.any():
                continue
            sub = seg.tf[:, ids[ok]].tocoo()
            w = self._weight(idf[ok][sub.col], sub.data.astype(np.float64),
                             seg.lengths[sub.row].astype(np.float64), avgdl)
            out[seg.start : seg.start + seg.n_docs] += np.bincount(sub.row, weights=w, minlength=seg.n_docs) \
                .astype(np.float32)
        return out

    def _doc_row(self, slot: int) -> tuple[sp.csr_matrix, float] | None:
        """One slot's term counts (1 x n_terms) and its length."""
        for seg in self.segments:
            if seg.start <= slot < seg.start + seg.n_docs:
                return sp.csr_matrix(seg.tf[slot - seg.start, :]), float(seg.lengths[slot - seg.start])
        return None

    def doc_terms(self, slot: int) -> set[str]:
        got = self._doc_row(slot)
        return set() if got is None else {self.vocab.words[i] for i in got[0].indices}

    def term_scores(self, tokens: Sequence[str], slot: int) -> dict[str, float]:
        """Each known token's BM25 contribution to one slot (what `scores([t])[slot]` gives,
        without scoring the whole catalog once per term); tokens absent from the slot are left out."""
        got = self._doc_row(slot)
        if got is None:
            return {}
        row, dl = got
        counts = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        hit = {t: i for t in dict.fromkeys(tokens) if (i := self.term_id(t)) is not None and i in counts}
        if not hit:
            return {}
        ids = np.array(list(hit.values()), np.int64)
        w = self._weight(self.idf(ids), np.array([counts[i] for i in ids], np.float64),
                         np.full(len(ids), dl), self.total_len / max(self.n_docs, 1))
        return dict(zip(hit, w.astype(float).tolist(), strict=True))


def _pad_cols(m: sp.spmatrix, n: int) -> sp.csr_matrix:
    m = sp.csr_matrix(m)
    if m.shape[1] == n:
        return m
    return sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], n))

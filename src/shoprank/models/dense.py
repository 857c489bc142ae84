"""Frozen-encoder dense ranker: the pretrained language model with no fine-tuning.

Every catalog item is embedded from its text at fit time, so items that never occur in the
training interactions are ranked like any other (cold start). Users are the recency-weighted
mean of the items they liked (minus `dislike_weight` times those they disliked), queries are
embedded as they come. It is the zero-training reference the fine-tuned rankers must beat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shoprank.data.dataset import Dataset
from shoprank.data.splits import LIKED
from shoprank.models.base import Ranker, UserBatch, register, top_k
from shoprank.text.encoder import EncoderConfig, TextEncoder
from shoprank.text.render import render_items, render_query


@register("dense")
class DenseRanker(Ranker):
    tasks: ClassVar[frozenset[str]] = frozenset({"recommend", "click", "search"})

    def __init__(
        self,
        *,
        encoder: str = "minilm",
        max_length: int = 64,
        batch_size: int = 64,
        history_len: int = 20,
        decay: float = 0.8,
        dislike_weight: float = 0.5,
        max_description_chars: int = 200,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(encoder=encoder, max_length=max_length, batch_size=batch_size, history_len=history_len,
                         decay=decay, dislike_weight=dislike_weight, max_description_chars=max_description_chars,
                         cache_dir=cache_dir)
        self.encoder_cfg = EncoderConfig(model=encoder, max_length=max_length, batch_size=batch_size)
        self.history_len, self.decay, self.dislike_weight = history_len, decay, dislike_weight
        self.max_description_chars = max_description_chars
        self.cache_dir = cache_dir
        self.item_emb_: np.ndarray = np.zeros((0, 0), np.float32)
        self._encoder: TextEncoder | None = None

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.encoder_cfg, cache_dir=self.cache_dir)
        return self._encoder

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        texts = render_items(train.items, max_description_chars=self.max_description_chars)
        self.item_emb_ = self.encoder.encode(texts, progress=True)
        self.n_items_ = train.n_items
        self.fitted_ = True
        return self

    def user_vectors(self, users: UserBatch) -> tuple[np.ndarray, np.ndarray]:
        """(liked, disliked) profile vectors, recency-weighted means of history items."""
        d = self.item_emb_.shape[1]
        liked = np.zeros((len(users), d), np.float32)
        disliked = np.zeros((len(users), d), np.float32)
        for i, h in enumerate(users.histories):
            h = np.asarray(h, dtype=np.int64)[-self.history_len :]
            if not len(h):
                continue
            lab = (np.asarray(users.labels[i], dtype=np.float32)[-self.history_len :]
                   if users.labels is not None else np.ones(len(h), np.float32))
            w = self.decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float32)
            good, bad = lab > LIKED, lab <= LIKED
            if good.any():
                liked[i] = (w[good, None] * self.item_emb_[h[good]]).sum(0) / w[good].sum()
            if bad.any():
                disliked[i] = (w[bad, None] * self.item_emb_[h[bad]]).sum(0) / w[bad].sum()
        return liked, disliked

    def score_users(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        liked, disliked = self.user_vectors(users)
        u = liked - self.dislike_weight * disliked
        return (u @ self.item_emb_.T).astype(np.float32)

    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        liked, disliked = self.user_vectors(users)
        e = self.item_emb_[np.asarray(items, dtype=np.int64)]
        return ((liked * e).sum(1) - self.dislike_weight * (disliked * e).sum(1)).astype(np.float32)

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode([render_query(q) for q in queries])

    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        self._check_fitted()
        q = self.query_vectors(queries)
        return [(self.item_emb_[np.asarray(c, dtype=np.int64)] @ q[i]).astype(np.float32)
                for i, c in enumerate(candidates)]

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        return top_k((self.query_vectors(queries) @ self.item_emb_.T).astype(np.float32), k)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg["params"]["cache_dir"] = None  # a cache is a local speed-up, not part of the model
        return cfg

    def _save_state(self, path: Path) -> None:
        np.save(path / "item_embeddings.npy", self.item_emb_)
        (path / "encoder.json").write_text(json.dumps({"model": self.encoder_cfg.model,
                                                       "path": str(self.encoder.path)}) + "\n")

    def _load_state(self, path: Path) -> None:
        self.item_emb_ = np.load(path / "item_embeddings.npy")

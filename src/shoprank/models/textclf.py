"""A fine-tuned text classifier with the scikit-learn interface (fit / predict_proba).

Why: valuation methods that refit a model on parts of the data (cross-fitting, bagging)
take any estimator with `fit(x, y)` and `predict_proba(x)`; this one is the encoder itself,
fine-tuned with cross-entropy by any strategy of the tuning registry (top_k by default,
whose frozen bottom runs once per text), so those methods can use what the pretrained
model knows about the text instead of frozen features. `x` is a sequence of strings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from shoprank.errors import NotFittedError, ShoprankError
from shoprank.models.tuning import TextTower, get_tuning, load_backbone


class TextClassifier:
    """Encoder (tuning strategy) -> pooled vector -> dropout -> linear layer -> softmax.

    Settings only in the constructor; `fit` returns self; use before `fit` raises.
    `lr=None` takes the strategy's default; `head_lr` is the linear layer's rate.
    """

    def __init__(self, encoder: str = "minilm", *, tuning: str = "top_k",
                 tuning_config: Mapping[str, Any] | None = None, epochs: int = 2, batch_size: int = 32,
                 lr: float | None = None, head_lr: float = 1e-3, weight_decay: float = 0.01,
                 dropout: float = 0.1, max_length: int = 128, seed: int = 0, num_threads: int | None = None,
                 progress: bool = False) -> None:
        self.encoder, self.tuning, self.tuning_config = encoder, tuning, tuning_config
        self.epochs, self.batch_size, self.lr, self.head_lr = epochs, batch_size, lr, head_lr
        self.weight_decay, self.dropout, self.max_length, self.seed = weight_decay, dropout, max_length, seed
        self.num_threads, self.progress = num_threads, progress

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        keys = ("encoder", "tuning", "tuning_config", "epochs", "batch_size", "lr", "head_lr", "weight_decay",
                "dropout", "max_length", "seed", "num_threads", "progress")
        return {k: getattr(self, k) for k in keys}

    def set_params(self, **params: Any) -> Self:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, x: Sequence[str], y: Sequence[Any] | np.ndarray) -> Self:
        texts = [str(t) for t in x]
        y = np.asarray(y)
        if len(texts) != len(y):
            raise ShoprankError(f"TextClassifier.fit: {len(texts)} texts but {len(y)} labels")
        self.classes_, yi = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ShoprankError("TextClassifier.fit: the labels have a single class")
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        strategy = get_tuning(self.tuning, dict(self.tuning_config or {}))
        backbone, tok = load_backbone(self.encoder, dropout=self.dropout)
        tower: TextTower = strategy.build(backbone, tok, max_length=self.max_length)
        head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(tower.hidden_size, len(self.classes_)))
        lr = float(self.lr if self.lr is not None else strategy.default_lr)
        tparams = [p for p in tower.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": list(head.parameters()), "lr": self.head_lr},
                                 {"params": tparams, "lr": lr}], weight_decay=self.weight_decay)
        target = torch.from_numpy(yi.astype(np.int64))
        tower.set_caching(True)
        self.history_: list[dict[str, float]] = []
        for epoch in range(1, int(self.epochs) + 1):
            tower.train()
            head.train()
            order = rng.permutation(len(texts))
            total, t0 = 0.0, time.perf_counter()
            with tqdm(total=len(order), desc=f"text-clf ep{epoch}", unit="text", disable=not self.progress,
                      leave=False) as bar:
                for s in range(0, len(order), self.batch_size):
                    idx = order[s : s + self.batch_size]
                    logits = head(tower.pooled([texts[i] for i in idx]))
                    loss = F.cross_entropy(logits, target[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.item()) * len(idx)
                    bar.update(len(idx))
            self.history_.append({"epoch": epoch, "loss": total / len(texts), "seconds": time.perf_counter() - t0})
        tower.set_caching(False)  # predictions use the model's own forward; the cache is freed
        tower.clear_cache()
        tower.eval()
        head.eval()
        self.tower_, self.head_ = tower, head
        return self

    @torch.no_grad()
    def predict_proba(self, x: Sequence[str]) -> np.ndarray:
        """(n, n_classes) probabilities, columns in `classes_` order; texts deduplicated and
        length-sorted so padding costs little."""
        if not hasattr(self, "tower_"):
            raise NotFittedError("TextClassifier is not fitted; call fit(texts, labels) first")
        texts = [str(t) for t in x]
        uniq = list(dict.fromkeys(texts))
        order = np.argsort([-len(t) for t in uniq], kind="stable")
        out = np.zeros((len(uniq), len(self.classes_)), np.float64)
        for s in range(0, len(order), 128):
            idx = order[s : s + 128]
            out[idx] = torch.softmax(self.head_(self.tower_.pooled([uniq[i] for i in idx])), -1).double().numpy()
        pos = {t: i for i, t in enumerate(uniq)}
        return out[[pos[t] for t in texts]] if texts else out

    def predict(self, x: Sequence[str]) -> np.ndarray:
        return np.asarray(self.classes_[self.predict_proba(x).argmax(1)])


__all__ = ["TextClassifier"]

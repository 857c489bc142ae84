"""Click / like prediction with a fine-tuned text encoder: P(like | user history, item).

The core formulation of TALLRec-style preference prediction on our encoders, trained with
binary cross-entropy and early-stopped on validation AUC. Two user representations
(`user_repr`):

- `text` (cross-encoder, TALLRec-style): one text per row, "target: X | liked: A; B |
  disliked: C", encoded by the tower -> unit vector -> small MLP -> logit. The target comes
  first so that truncation at `max_length` drops the oldest history, never the target.
- `pooled` (bi-encoder): the tower embeds each item's catalog text; a row is its target
  vector t, the mean vector l of its liked history and d of its disliked history (zero when
  empty). Features [t, l, d, t*l, t*d] -> MLP -> logit, plus a learnt linear term on
  cos(t, l) and cos(t, d). That term starts as the frozen `dense` ranker's score and the
  MLP's last layer starts at zero, so training starts from the zero-training baseline.

What trains in the encoder is a strategy from the tuning registry (head, top_k, lora,
full; `shoprank.models.tuning`); `lr=0` freezes the tower and trains only the click head.
Overfitting controls: weight_decay, dropout (click head and trainable encoder layers),
patience (epochs without a better validation AUC). The best validation weights are kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import LIKED, click_rows, histories_for
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, UserBatch, register
from shoprank.models.tuning import (
    EMB_FILE,
    WEIGHTS_FILE,
    TextTower,
    Tuning,
    TuningConfig,
    get_tuning,
    load_backbone,
    tuning_name,
)
from shoprank.text.render import render_items

TEXTS_FILE = "texts.json"
REPRS = ("pooled", "text")

DEFAULTS: dict[str, Any] = {
    "encoder": "minilm",
    "user_repr": "pooled",  # pooled (bi-encoder) | text (cross-encoder)
    "tuning": "head",  # a registered strategy name, or a TuningConfig instance
    "tuning_config": {},
    "lr": None,  # encoder lr; None: the strategy's default; 0: frozen encoder
    "head_lr": 1e-3,  # the click MLP's lr
    "weight_decay": 0.01,
    "dropout": 0.1,
    "patience": 5,
    "epochs": 30,
    "batch_size": 16,
    "hidden": 64,
    "history_len": 10,  # most recent history events used (TALLRec: 10)
    "max_length": None,  # None: 32 tokens per item (pooled), 160 per row text (text)
    "pooling": "mean",
    "max_grad_norm": 1.0,
    "valid_max": 1000,  # validation rows used for early stopping
    "max_description_chars": 200,
    "embed_batch_size": 128,
    "seed": 0,
    "device": "cpu",
    "num_threads": None,
    "verbose": True,
}


@dataclass
class ClickRows:
    """Rows to score: target item, liked and disliked history items (newest first)."""

    target: np.ndarray
    liked: list[np.ndarray]
    disliked: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> ClickRows:
        return ClickRows(
            self.target[idx], [self.liked[i] for i in idx], [self.disliked[i] for i in idx]
        )

    @staticmethod
    def from_users(
        users: UserBatch, items: np.ndarray, history_len: int, n_items: int
    ) -> ClickRows:
        """The last `history_len` known events of each history, split by label (none: liked)."""
        liked, disliked = [], []
        for i, h in enumerate(users.histories):
            h = np.asarray(h, dtype=np.int64)
            lab = (
                np.ones(len(h), np.float32)
                if users.labels is None
                else np.asarray(users.labels[i], np.float32)
            )
            ok = (h >= 0) & (h < n_items)
            h, lab = h[ok][-history_len:][::-1], lab[ok][-history_len:][::-1]
            liked.append(h[lab > LIKED].copy())
            disliked.append(h[~(lab > LIKED)].copy())
        return ClickRows(np.asarray(items, dtype=np.int64), liked, disliked)


class ClickHead(nn.Module):
    """MLP on the row features; last layer zero-initialised so it starts as a no-op.

    With `prior`, a linear term on (cos(t, l), cos(t, d)) starts as the dense ranker's
    liked-minus-half-disliked similarity, scaled so logits are not all near zero.
    """

    def __init__(self, n_in: int, hidden: int, dropout: float, *, prior: bool) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(n_in, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.prior: nn.Linear | None = None
        if prior:
            self.prior = nn.Linear(2, 1)
            with torch.no_grad():
                self.prior.weight.copy_(torch.tensor([[5.0, -2.5]]))
                self.prior.bias.zero_()

    def forward(self, x: torch.Tensor, sims: torch.Tensor | None = None) -> torch.Tensor:
        out = self.mlp(x).squeeze(-1)
        if self.prior is not None and sims is not None:
            out = out + self.prior(sims).squeeze(-1)
        return out


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


@register("lm-click")
class LMClickRanker(Ranker):
    """P(like | history, item) from a fine-tuned encoder + MLP (parameters: see `DEFAULTS`)."""

    tasks: ClassVar[frozenset[str]] = frozenset({"click"})
    probabilistic: ClassVar[bool] = True
    supports_weights: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ShoprankError(
                f"unknown LMClickRanker parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
            )
        p = DEFAULTS | params
        if isinstance(p["tuning"], TuningConfig):
            p["tuning"], p["tuning_config"] = (
                tuning_name(p["tuning"]),
                dataclasses.asdict(p["tuning"]),
            )
        p["tuning_config"] = get_tuning(p["tuning"], p["tuning_config"] or {}).config_dict()
        if p["user_repr"] not in REPRS:
            raise ShoprankError(f"user_repr must be one of {REPRS}, got {p['user_repr']!r}")
        super().__init__(**p)
        self.tower_: TextTower | None = None
        self.head_: ClickHead | None = None
        self.item_emb_: np.ndarray = np.zeros((0, 0), np.float32)
        self.texts_: list[str] = []  # per item: catalog text (pooled) or title (text)
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int = 0
        self.best_valid_auc_: float = float("nan")
        self.train_seconds_: float = 0.0
        self.n_trainable_: int = 0

    # -- building --------------------------------------------------------------------------
    @property
    def strategy(self) -> Tuning:
        return get_tuning(self.params["tuning"], self.params["tuning_config"])

    @property
    def lr(self) -> float:
        lr = self.params["lr"]
        return float(self.strategy.default_lr if lr is None else lr)

    @property
    def max_length(self) -> int:
        m = self.params["max_length"]
        return int(m) if m is not None else (160 if self.params["user_repr"] == "text" else 32)

    def _build(self) -> tuple[TextTower, ClickHead]:
        p = self.params
        backbone, tok = load_backbone(p["encoder"], dropout=p["dropout"])
        tower = self.strategy.build(backbone, tok, max_length=self.max_length, pooling=p["pooling"])
        pooled = p["user_repr"] == "pooled"
        head = ClickHead(
            tower.dim * (5 if pooled else 1), int(p["hidden"]), float(p["dropout"]), prior=pooled
        )
        dev = torch.device(p["device"])
        return tower.to(dev), head.to(dev)

    @property
    def tower(self) -> TextTower:
        self._check_fitted()
        assert self.tower_ is not None
        return self.tower_

    @property
    def head(self) -> ClickHead:
        self._check_fitted()
        assert self.head_ is not None
        return self.head_

    # -- features --------------------------------------------------------------------------
    def row_texts(self, rows: ClickRows) -> list[str]:
        """TALLRec-style prompt per row; target first so truncation cuts old history only."""
        t, sep = self.texts_, "; "
        return [
            f"target: {t[int(x)]} | liked: {sep.join(t[int(i)] for i in lk)} | "
            f"disliked: {sep.join(t[int(i)] for i in dk)}"
            for x, lk, dk in zip(rows.target, rows.liked, rows.disliked, strict=True)
        ]

    def _pooled_logits(
        self, emb: torch.Tensor, rows: ClickRows, index: np.ndarray | None = None
    ) -> torch.Tensor:
        """Logits from item vectors `emb`; `index` maps item id -> row of emb (None: identity)."""
        dev = emb.device

        def mean_of(lists: list[np.ndarray]) -> torch.Tensor:
            w = np.zeros((len(lists), emb.shape[0]), np.float32)
            for r, lst in enumerate(lists):
                if len(lst):
                    np.add.at(w[r], lst if index is None else index[lst], 1.0 / len(lst))
            return torch.from_numpy(w).to(dev) @ emb

        t = emb[torch.from_numpy(rows.target if index is None else index[rows.target]).to(dev)]
        lv, dv = mean_of(rows.liked), mean_of(rows.disliked)
        dim = emb.shape[1]
        s = math.sqrt(dim)  # unit vectors have ~1/sqrt(dim) entries: rescale to ~1
        x = torch.cat([t * s, lv * s, dv * s, t * lv * dim, t * dv * dim], dim=1)
        sims = torch.stack([(t * lv).sum(1), (t * dv).sum(1)], dim=1)
        return self.head_(x, sims)  # type: ignore[misc]

    def _train_logits(self, rows: ClickRows) -> torch.Tensor:
        tower = self.tower
        if self.params["user_repr"] == "text":
            z = tower(self.row_texts(rows))
            return self.head(z * math.sqrt(z.shape[1]))
        uniq = np.unique(np.concatenate([rows.target, *rows.liked, *rows.disliked]))
        index = np.zeros(self.n_items_, np.int64)
        index[uniq] = np.arange(len(uniq))
        emb = tower([self.texts_[int(i)] for i in uniq])
        return self._pooled_logits(emb, rows, index)

    @torch.no_grad()
    def _predict_logits(self, rows: ClickRows) -> np.ndarray:
        self.head.eval()
        dev = torch.device(self.params["device"])
        if self.params["user_repr"] == "text":
            z = torch.from_numpy(
                self.tower.embed(self.row_texts(rows), int(self.params["embed_batch_size"]))
            ).to(dev)
            return self.head(z * math.sqrt(z.shape[1])).cpu().numpy().astype(np.float64)
        emb = torch.from_numpy(self.item_emb_).to(dev)
        out = [
            self._pooled_logits(emb, rows.subset(np.arange(s, min(s + 1024, len(rows)))))
            for s in range(0, len(rows), 1024)
        ]
        return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)

    def _embed_catalog(self) -> None:
        if self.params["user_repr"] == "pooled":
            self.item_emb_ = self.tower.embed(self.texts_, int(self.params["embed_batch_size"]))

    # -- learning --------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        """Train on `click_rows(train)` (history from `train`); early-stop on `valid` AUC.

        Without validation rows with both labels it trains `epochs` epochs, keeps the last.
        """
        prev = torch.get_num_threads()
        if self.params["num_threads"]:
            torch.set_num_threads(int(self.params["num_threads"]))
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG alone
                self._fit(train, valid)
        finally:
            torch.set_num_threads(prev)
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def _rows(self, context: Dataset, frame: pd.DataFrame) -> ClickRows:
        hl = int(self.params["history_len"])
        h = histories_for(context, frame, max_len=hl)
        users = UserBatch(frame[Col.USER_ID].astype(str).tolist(), h.items, h.labels)
        return ClickRows.from_users(
            users, context.item_map.to_internal(frame[Col.ITEM_ID]), hl, self.n_items_
        )

    def _fit(self, train: Dataset, valid: Dataset | None) -> None:
        p = self.params
        seed = int(p["seed"])
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.n_items_ = train.n_items
        if p["user_repr"] == "text":
            self.texts_ = render_items(train.items, fields=(Col.TITLE,))
        else:
            self.texts_ = render_items(
                train.items, max_description_chars=int(p["max_description_chars"])
            )
        frame = click_rows(train)
        frame = frame[frame[Col.WEIGHT] > 0].reset_index(drop=True)  # weight 0: not a target (still history), never encoded
        if not len(frame):
            raise ShoprankError("LMClickRanker found no click/rating rows (of weight > 0) in the training data")
        rows, y = self._rows(train, frame), frame["label"].to_numpy(np.float32)
        w = frame[Col.WEIGHT].to_numpy(np.float32)  # value-aware retraining: scales each row's loss
        vrows, vy = None, None
        if valid is not None and len(vf := click_rows(valid)):
            if p["valid_max"] is not None and len(vf) > int(p["valid_max"]):
                vf = vf.iloc[np.sort(rng.choice(len(vf), int(p["valid_max"]), replace=False))]
            ctx = train.with_tables(
                interactions=pd.concat([train.interactions, valid.interactions])
            )
            vrows, vy = self._rows(ctx, vf), vf["label"].to_numpy(np.float32)
            if not 0 < vy.sum() < len(vy):
                vrows = vy = None

        tower, head = self._build()
        self.tower_, self.head_ = tower, head
        self.n_trainable_ = tower.n_trainable() + sum(x.numel() for x in head.parameters())
        tower.set_caching(True)
        self.fitted_ = True  # scoring is used for validation below
        frozen = self.lr == 0
        tparams = [] if frozen else [x for x in tower.parameters() if x.requires_grad]
        hparams = list(head.parameters())
        groups = [{"params": hparams, "lr": float(p["head_lr"])}]
        if tparams:
            groups.append({"params": tparams, "lr": self.lr})
        opt = torch.optim.AdamW(groups, weight_decay=float(p["weight_decay"]))

        def validate() -> float:
            assert vrows is not None and vy is not None
            self._embed_catalog()
            return _auc(vy, self._predict_logits(vrows))

        self.history_ = []
        best, bad, best_state = -1.0, 0, None
        if vrows is not None:
            best = validate()
            self.history_.append({"epoch": 0, "valid_auc": best})
            best_state = self._state()
        bs = int(p["batch_size"])
        for epoch in range(1, int(p["epochs"]) + 1):
            tower.train(not frozen)
            head.train()
            order = rng.permutation(len(rows))
            bar = tqdm(
                total=len(order),
                desc=f"lm-click[{p['user_repr']},{p['tuning']}] ep{epoch}",
                unit="row",
                disable=not p["verbose"],
                leave=False,
            )
            loss_sum, t0 = 0.0, time.perf_counter()
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                logits = self._train_logits(rows.subset(idx))
                loss = (F.binary_cross_entropy_with_logits(
                    logits, torch.from_numpy(y[idx]).to(logits.device), reduction="none"
                ) * torch.from_numpy(w[idx]).to(logits.device)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(hparams + tparams, float(p["max_grad_norm"]))
                opt.step()
                loss_sum += float(loss.item()) * len(idx)
                bar.update(len(idx))
                bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
            tower.eval()
            head.eval()
            rec: dict[str, float] = {
                "epoch": epoch,
                "loss": loss_sum / len(rows),
                "seconds": time.perf_counter() - t0,
            }
            if vrows is not None:
                auc = rec["valid_auc"] = validate()
                if auc > best:
                    best, bad, self.best_epoch_, best_state = auc, 0, epoch, self._state()
                else:
                    bad += 1
            self.history_.append(rec)
            if p["verbose"]:
                tqdm.write(
                    f"lm-click epoch {epoch}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch")
                )
            if vrows is not None and bad >= int(p["patience"]):
                break
        if best_state is not None:
            self._load_trainable(best_state)
            self.best_valid_auc_ = best
        else:
            self.best_epoch_ = len(self.history_)
        tower.set_caching(False)  # serving uses the model's own forward
        tower.clear_cache()
        tower.eval()
        head.eval()
        self._embed_catalog()

    # -- scoring ---------------------------------------------------------------------------
    def predict_logits(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._predict_logits(
            ClickRows.from_users(users, items, int(self.params["history_len"]), self.n_items_)
        )

    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        """P(like) per (history, item) row, float32 in [0, 1]."""
        z = self.predict_logits(users, items)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    # -- persistence -----------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        """Trainable tower weights + click head, with prefixes (what a saved model stores)."""
        st = {f"tower.{k}": v for k, v in self.tower.trainable_state().items()}
        st |= {f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()}
        return st

    def _load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        assert self.tower_ is not None and self.head_ is not None
        self.tower_.load_trainable_state(
            {k[6:]: v for k, v in state.items() if k.startswith("tower.")}
        )
        self.head_.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self._state().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"tuning": str(self.params["tuning"])})
        np.save(path / EMB_FILE, self.item_emb_)
        (path / TEXTS_FILE).write_text(json.dumps(self.texts_, ensure_ascii=False) + "\n")

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.tower_, self.head_ = self._build()
        self._load_trainable(load_file(str(path / WEIGHTS_FILE)))
        self.tower_.set_caching(False)
        self.tower_.eval()
        self.head_.eval()
        self.item_emb_ = np.load(path / EMB_FILE)
        self.texts_ = list(json.loads((path / TEXTS_FILE).read_text()))


__all__ = ["DEFAULTS", "ClickHead", "ClickRows", "LMClickRanker"]

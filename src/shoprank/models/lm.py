"""Fine-tuned language-model two-tower ranker: one shared text encoder for queries and items.

The item tower reads the catalog text (`render_items`); the query tower reads a search query
or, for recommendation, the user's recent history as text (titles of the last `history_len`
liked items, newest first, joined by " ; "). Both end in the same `TextTower`, so a score
is the dot product of two unit vectors. Items never seen in training are embedded from their
text like any other (cold start), exactly as in the frozen `dense` ranker, which this model
equals before its first training step (the projection starts as the identity).

Training is contrastive: in-batch softmax (InfoNCE) with a temperature over the batch's
distinct target items, plus optional sampled negatives (mined from the frozen encoder's
nearest non-positive items, or uniform / popularity draws). A row's other known positives
are masked out of its softmax. Pairs are (history prefix, next item) from each training
user's positive sequence, and (query, item) from judgments graded above the dataset's
`meta["grade_min"]` + `search_grade_margin`, weighted by grade - grade_min.

What trains is a tuning strategy (`shoprank.models.tuning`): head, top_k, lora or full.
Validation NDCG@10 is measured before training and after every epoch; the best weights are
kept, so a run never ends worse (on validation) than the frozen encoder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import (
    LIKED,
    histories_for,
    item_popularity,
    positive_mask,
    record_weights,
    sample_negatives,
    user_sequences_weighted,
)
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, UserBatch, register, top_k
from shoprank.models.engine import (
    Checkpointer,
    Distributed,
    MetricLogger,
    backward_with_fgm,
    graded_ndcg,
    rng_state,
    set_rng_state,
)
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
from shoprank.text.render import render_items, render_query, shuffle_fields

FALLBACK_FILE = "fallback.npy"
TITLES_FILE = "titles.json"

DEFAULTS: dict[str, Any] = {
    "encoder": "minilm",
    "tuning": "top_k",  # a registered strategy name, or a TuningConfig instance
    "tuning_config": {},  # that strategy's settings (see its config dataclass)
    "lr": None,  # None: the strategy's default (head 1e-3, top_k 1e-4, lora 5e-4, full 3e-5)
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,  # linear warm-up over this share of the steps, then linear decay
    "max_grad_norm": 1.0,
    "epochs": 3,
    "patience": 2,  # epochs without a better validation NDCG@10 before stopping
    "batch_size": 32,
    "grad_accum": 1,  # micro-batches per optimiser step (the softmax still sees one batch)
    "max_length": 64,
    "pooling": "mean",
    "temperature": 0.05,
    "dropout": 0.1,  # dropout of the encoder layers that train (frozen ones run in eval mode)
    "n_negatives": 0,  # sampled negatives per pair, added to the in-batch ones
    "negatives": "hard",  # hard (frozen-encoder neighbours) | uniform | popularity
    "hard_pool": 50,  # hard negatives are drawn from this many nearest non-positives
    "history_len": 10,
    "history_sep": " ; ",
    "max_description_chars": 200,
    "search_grade_margin": 0.0,
    "max_train_pairs": None,  # random subset of the pairs (None: all)
    "valid_max": 2000,  # validation rows (recommend) used for early stopping
    "embed_batch_size": 128,
    "seed": 0,
    "device": "cpu",
    "num_threads": None,
    "verbose": True,
    # overfitting controls beyond weight decay, dropout and early stopping
    "token_dropout": 0.0,  # share of tokens masked out of each training text (augmentation)
    "field_shuffle": 0.0,  # probability that a training item text has its fields shuffled
    "fgm_epsilon": 0.0,  # FGM adversarial training: perturbation norm (0: off)
    # training engine
    "checkpoint_dir": None,  # save the full training state here after every epoch
    "checkpoint_steps": 0,  # ... and every this many optimiser steps (0: epochs only)
    "checkpoint_keep_epochs": False,  # keep epoch-N.pt for every epoch (TracIn over checkpoints)
    "resume": True,  # continue from checkpoint_dir's checkpoint when one exists
    "init_from": None,  # a saved lm model directory: start from its fine-tuned weights (same tuning)
    "log_dir": None,  # TensorBoard event files (loss, lr, validation NDCG@10)
}


@dataclass
class Pairs:
    """Training pairs: query text -> target item, with a loss weight and the item ids that
    must never act as that pair's negatives (all its known positives)."""

    query: list[str]
    item: np.ndarray
    weight: np.ndarray
    positives: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.query)

    def subset(self, idx: np.ndarray) -> Pairs:
        return Pairs([self.query[i] for i in idx], self.item[idx], self.weight[idx],
                     [self.positives[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence[Pairs]) -> Pairs:
        return Pairs(
            [q for p in parts for q in p.query],
            np.concatenate([p.item for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.weight for p in parts]) if parts else np.zeros(0, np.float32),
            [x for p in parts for x in p.positives],
        )


@dataclass
class _RecValid:
    texts: list[str]
    targets: np.ndarray


@dataclass
class _SearchValid:
    queries: list[str]
    cands: list[np.ndarray]
    grades: list[np.ndarray]


class _ShuffledTexts:
    """Item texts where each item's fields are shuffled with probability `p` (augmentation);
    one draw per item per batch, so a second (FGM) pass sees the same texts."""

    def __init__(self, texts: list[str], p: float, rnd: random.Random) -> None:
        self.texts, self.p, self.rnd = texts, p, rnd
        self._drawn: dict[int, str] = {}

    def __getitem__(self, i: int) -> str:
        if i not in self._drawn:
            t = self.texts[i]
            self._drawn[i] = shuffle_fields(t, self.rnd) if self.rnd.random() < self.p else t
        return self._drawn[i]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class _Run:
    """Everything one training run threads through its epochs (and its checkpoints)."""

    tower: TextTower
    strategy: Tuning
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    params: list[torch.nn.Parameter]
    rng: np.random.Generator
    ddp: Distributed
    ckpt: Checkpointer
    log: MetricLogger
    item_texts: list[str]
    pairs: Pairs
    hard: np.ndarray | None
    pop: np.ndarray | None
    global_step: int = 0
    best: float = -1.0
    bad: int = 0
    best_state: dict[str, torch.Tensor] | None = None


def history_text(titles: Sequence[str], history: np.ndarray, sep: str = " ; ") -> str:
    """Titles of a history (oldest first in, newest first out): truncation keeps the recent."""
    return sep.join(titles[int(i)] for i in np.asarray(history)[::-1])


@register("lm")
class LMRanker(Ranker):
    """Two-tower ranker on a fine-tuned text encoder (parameters: see `DEFAULTS`)."""

    tasks: ClassVar[frozenset[str]] = frozenset({"recommend", "search", "click"})
    supports_weights: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ShoprankError(f"unknown LMRanker parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        p = DEFAULTS | params
        tuning = p["tuning"]
        if isinstance(tuning, TuningConfig):  # LMRanker(tuning=LoraTuningConfig(r=4))
            p["tuning"], p["tuning_config"] = tuning_name(tuning), dataclasses.asdict(tuning)
        # validated (and completed with defaults) now, so a typo fails before any training
        p["tuning_config"] = get_tuning(p["tuning"], p["tuning_config"] or {}).config_dict()
        if p["negatives"] not in ("hard", "uniform", "popularity"):
            raise ShoprankError(f"negatives must be hard, uniform or popularity, got {p['negatives']!r}")
        super().__init__(**p)
        self.tower_: TextTower | None = None
        self.item_emb_: np.ndarray = np.zeros((0, 0), np.float32)
        self.fallback_: np.ndarray = np.zeros(0, np.float32)
        self.titles_: list[str] = []
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int = 0
        self.best_valid_ndcg_: float = float("nan")
        self.train_seconds_: float = 0.0
        self.n_trainable_: int = 0
        self._target_counts: np.ndarray | None = None  # training targets per item (centroid weights)

    # -- building --------------------------------------------------------------------------
    @property
    def strategy(self) -> Tuning:
        return get_tuning(self.params["tuning"], self.params["tuning_config"])

    @property
    def lr(self) -> float:
        lr = self.params["lr"]
        return float(self.strategy.default_lr if lr is None else lr)

    def _build(self, total_steps: int | None = None) -> TextTower:
        p = self.params
        backbone, tok = load_backbone(p["encoder"], dropout=p["dropout"])
        tower = self.strategy.build(backbone, tok, max_length=int(p["max_length"]), pooling=p["pooling"],
                                    total_steps=total_steps)
        return tower.to(torch.device(p["device"]))

    @property
    def tower(self) -> TextTower:
        self._check_fitted()
        assert self.tower_ is not None
        return self.tower_

    # -- training data ---------------------------------------------------------------------
    def rec_pairs(self, train: Dataset) -> Pairs:
        """(history prefix text, next item) for every position of every user's sequence."""
        hl, sep = int(self.params["history_len"]), self.params["history_sep"]
        q: list[str] = []
        items: list[int] = []
        weights: list[float] = []
        pos: list[np.ndarray] = []
        if not len(train.interactions):
            return Pairs.concat([])
        for seq, w in user_sequences_weighted(train).values():
            known = np.unique(seq)
            for t in range(1, len(seq)):
                if w[t] <= 0:  # weight 0: the event stays in later histories but is never a target
                    continue
                q.append(history_text(self.titles_, seq[max(0, t - hl) : t], sep))
                items.append(int(seq[t]))
                weights.append(float(w[t]))
                pos.append(known)
        return Pairs(q, np.asarray(items, np.int64), np.asarray(weights, np.float32), pos)

    def search_pairs(self, train: Dataset) -> Pairs:
        """(query, item) for judgments graded above grade_min + margin, weighted by gain."""
        j = train.judgments
        if not len(j):
            return Pairs.concat([])
        gmin = float(train.meta.get("grade_min", 0.0))
        grade = j[Col.GRADE].to_numpy(dtype=np.float64)
        rw = record_weights(j)
        keep = (grade > gmin + float(self.params["search_grade_margin"])) & (rw > 0)
        j, grade, rw = j[keep], grade[keep], rw[keep]
        qs = [render_query(x) for x in j[Col.QUERY].astype(str)]
        items = train.item_map.to_internal(j[Col.ITEM_ID])
        by_q = pd.Series(items).groupby(np.asarray(qs, dtype=object)).unique()
        known = {str(k): np.sort(np.asarray(v, np.int64)) for k, v in by_q.items()}
        return Pairs(qs, items, ((grade - gmin) * rw).astype(np.float32), [known[x] for x in qs])

    def _valid_sets(self, train: Dataset, valid: Dataset | None, rng: np.random.Generator) -> tuple[_RecValid | None, _SearchValid | None]:
        rec: _RecValid | None = None
        srch: _SearchValid | None = None
        if valid is None:
            return rec, srch
        vi = valid.interactions
        rows = vi[positive_mask(vi)] if len(vi) else vi
        if len(rows):
            vmax = self.params["valid_max"]
            if vmax is not None and len(rows) > int(vmax):
                rows = rows.iloc[np.sort(rng.choice(len(rows), int(vmax), replace=False))]
            ctx = train.with_tables(interactions=pd.concat([train.interactions, vi]))
            h = histories_for(ctx, rows, max_len=int(self.params["history_len"]), positives_only=True)
            users = UserBatch(rows[Col.USER_ID].astype(str).tolist(), h.items, h.labels)
            rec = _RecValid(self.user_texts(users), train.item_map.to_internal(rows[Col.ITEM_ID]))
        j = valid.judgments
        if len(j):
            gmin = float(valid.meta.get("grade_min", train.meta.get("grade_min", 0.0)))
            g = j.groupby(Col.QUERY, sort=True)
            queries = [str(x) for x in g.groups]
            cands = [train.item_map.to_internal(g.get_group(x)[Col.ITEM_ID]) for x in queries]
            grades = [np.clip(g.get_group(x)[Col.GRADE].to_numpy(np.float64) - gmin, 0, None) for x in queries]
            srch = _SearchValid(queries, cands, grades)
        return rec, srch

    # -- learning --------------------------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        """Fine-tune on `train`'s sequences and judgments; early-stop on `valid` NDCG@10.

        Without usable validation rows it trains `epochs` epochs and keeps the last weights.
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

    def _fit(self, train: Dataset, valid: Dataset | None) -> None:
        p = self.params
        seed = int(p["seed"])
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        ddp = Distributed.from_env()
        self.n_items_ = train.n_items
        self.titles_ = render_items(train.items, fields=(Col.TITLE,))
        item_texts = render_items(train.items, max_description_chars=int(p["max_description_chars"]))
        pairs = Pairs.concat([x for x in (self.rec_pairs(train), self.search_pairs(train)) if len(x)])
        if not len(pairs):
            raise ShoprankError("LMRanker found no training pairs: it needs users with two or more positive "
                                "events, or judgments graded above the dataset's grade_min")
        if p["max_train_pairs"] is not None and len(pairs) > int(p["max_train_pairs"]):
            pairs = pairs.subset(np.sort(rng.choice(len(pairs), int(p["max_train_pairs"]), replace=False)))
        self._target_counts = np.bincount(pairs.item, minlength=self.n_items_).astype(np.float64)

        bs, accum, epochs = int(p["batch_size"]), max(1, int(p["grad_accum"])), int(p["epochs"])
        n_batches = math.ceil(len(pairs) / bs) // ddp.world_size if ddp.enabled else math.ceil(len(pairs) / bs)
        steps_per_epoch = math.ceil(max(1, n_batches) / accum)
        total = max(1, steps_per_epoch * epochs)
        strategy = self.strategy
        tower = self.tower_ = self._build(total_steps=total)
        if p["init_from"]:
            self._warm_start(tower, Path(p["init_from"]))
        tower.token_dropout = float(p["token_dropout"])
        self.n_trainable_ = tower.n_trainable()
        tower.set_caching(True)
        self.fitted_ = True  # scoring is used for validation below
        rec_v, srch_v = self._valid_sets(train, valid, rng)
        has_valid = rec_v is not None or srch_v is not None
        self._embed_catalog(item_texts)

        hard = self._mine(pairs) if int(p["n_negatives"]) and p["negatives"] == "hard" else None
        pop = item_popularity(train) if p["negatives"] == "popularity" and len(train.interactions) else None

        params = [x for x in tower.parameters() if x.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=float(p["weight_decay"]))
        warm = int(float(p["warmup_ratio"]) * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / (warm + 1) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
        ckpt = Checkpointer(p["checkpoint_dir"], every_steps=int(p["checkpoint_steps"]), enabled=ddp.is_main,
                            keep_epochs=bool(p["checkpoint_keep_epochs"]))
        log = MetricLogger(p["log_dir"], enabled=ddp.is_main)
        run = _Run(tower=tower, strategy=strategy, opt=opt, sched=sched, params=params, rng=rng, ddp=ddp,
                   ckpt=ckpt, log=log, item_texts=item_texts, pairs=pairs, hard=hard, pop=pop)

        self.history_ = []
        start_epoch, start_step, resume_state = 1, 0, None
        ck = Checkpointer(p["checkpoint_dir"]).load() if p["checkpoint_dir"] and p["resume"] else None
        if ck is not None:
            self._restore(run, ck)
            start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
            resume_state = ck if start_step > 0 else None
            if start_step == 0:
                start_epoch += 1
            if p["verbose"] and ddp.is_main:
                tqdm.write(f"lm[{p['tuning']}] resumed from {ckpt.path or p['checkpoint_dir']} at epoch "
                           f"{start_epoch}, step {start_step}")
        elif has_valid:
            run.best = self._validate(rec_v, srch_v)
            self.history_.append({"epoch": 0, "valid_ndcg10": run.best})
            log.scalars({"valid_ndcg10": run.best}, 0, "epoch/")
            if math.isfinite(run.best):
                run.best_state, self.best_epoch_ = tower.trainable_state(), 0
            else:  # nothing measurable (e.g. no positive grade): train without early stopping
                has_valid, run.best = False, -1.0
        if ck is not None and not math.isfinite(run.best):
            has_valid = False
        stopped = ck is not None and bool(ck.get("stopped"))
        for epoch in range(start_epoch, epochs + 1):
            if stopped:
                break
            rec = self._train_epoch(run, epoch, start_step if epoch == start_epoch else 0,
                                    resume_state if epoch == start_epoch else None)
            if has_valid:
                self._embed_catalog(item_texts)
                ndcg = self._validate(rec_v, srch_v)
                rec["valid_ndcg10"] = ndcg
                if ndcg > run.best:
                    run.best, run.bad, self.best_epoch_ = ndcg, 0, epoch
                    run.best_state = tower.trainable_state()
                else:
                    run.bad += 1
            self.history_.append(rec)
            log.scalars({k: v for k, v in rec.items() if k != "epoch"}, epoch, "epoch/")
            if p["verbose"] and ddp.is_main:
                tqdm.write(f"lm[{p['tuning']}] epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch"))
            stopped = has_valid and run.bad >= int(p["patience"])
            ckpt.save(self._checkpoint(run, epoch, 0, stopped=stopped))
        log.close()
        if run.best_state is not None:
            tower.load_trainable_state(run.best_state)
            self.best_valid_ndcg_ = run.best
        else:
            self.best_epoch_ = epochs
        self._embed_catalog(item_texts)
        tower.set_caching(False)  # serving encodes new queries with the model's own forward
        tower.clear_cache()
        tower.eval()

    def _checkpoint(self, run: _Run, epoch: int, step: int, *, stopped: bool = False,
                    epoch_rng: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "epoch": epoch, "step": step, "stopped": stopped, "global_step": run.global_step,
            "trainable": run.tower.trainable_state(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(), "rng": rng_state(run.rng), "epoch_rng": epoch_rng,
            "history": list(self.history_), "best": run.best, "bad": run.bad, "best_state": run.best_state,
            "best_epoch": self.best_epoch_, "params": {k: v for k, v in self.params.items() if k != "tuning_config"},
        }

    def _restore(self, run: _Run, ck: dict[str, Any]) -> None:
        keep = ("tuning", "encoder", "batch_size", "grad_accum", "epochs", "seed", "max_train_pairs")
        old = ck.get("params", {})
        diff = {k: (old.get(k), self.params[k]) for k in keep if k in old and old.get(k) != self.params[k]}
        if diff:
            raise ShoprankError(f"checkpoint in {self.params['checkpoint_dir']} was written with other settings "
                                f"{diff}; delete it or pass resume=False")
        run.tower.load_trainable_state(ck["trainable"])
        run.opt.load_state_dict(ck["optimizer"])
        run.sched.load_state_dict(ck["scheduler"])
        set_rng_state(run.rng, ck["rng"])
        run.global_step = int(ck["global_step"])
        run.best, run.bad, run.best_state = float(ck["best"]), int(ck["bad"]), ck["best_state"]
        self.history_ = list(ck["history"])
        self.best_epoch_ = int(ck["best_epoch"])

    def _train_epoch(self, run: _Run, epoch: int, start_step: int = 0,
                     resume: dict[str, Any] | None = None) -> dict[str, float]:
        p = self.params
        tower, pairs, rng = run.tower, run.pairs, run.rng
        bs, accum, n_neg = int(p["batch_size"]), max(1, int(p["grad_accum"])), int(p["n_negatives"])
        if resume is not None:  # replay this epoch's draws, then continue where the kill hit
            rng.bit_generator.state = resume["epoch_rng"]
        epoch_rng = dict(rng.bit_generator.state)
        negs = self._negatives(pairs, rng, epoch, run.hard, run.pop) if n_neg else None
        order = rng.permutation(len(pairs))
        batches = run.ddp.shard([order[s : s + bs] for s in range(0, len(order), bs)])
        if resume is not None:
            set_rng_state(rng, resume["rng"])
        tower.train()
        n_rows = sum(len(b) for b in batches)
        bar = tqdm(total=n_rows, desc=f"lm[{p['tuning']}] ep{epoch}", unit="pair",
                   disable=not (p["verbose"] and run.ddp.is_main), leave=False)
        bar.update(sum(len(b) for b in batches[:start_step]))
        loss_sum, done, t0 = 0.0, 0, time.perf_counter()
        fgm, shuffle = float(p["fgm_epsilon"]), float(p["field_shuffle"])
        run.opt.zero_grad(set_to_none=True)
        for step in range(start_step, len(batches)):
            idx = batches[step]
            texts: Any = run.item_texts
            if shuffle > 0:
                texts = _ShuffledTexts(run.item_texts, shuffle, random.Random(int(rng.integers(2**31))))
            batch_negs = None if negs is None else negs[idx]
            loss = backward_with_fgm(tower, functools.partial(self._batch_loss, tower, pairs, idx, texts, batch_negs),
                                     epsilon=fgm, scale=1.0 / accum)
            if (step + 1) % accum == 0 or step == len(batches) - 1:
                run.ddp.average_gradients(run.params)
                if p["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(run.params, float(p["max_grad_norm"]))
                run.opt.step()
                run.sched.step()
                run.strategy.after_step(tower, run.global_step)
                run.opt.zero_grad(set_to_none=True)
                run.log.scalars({"loss": float(loss.item()), "lr": float(run.sched.get_last_lr()[0])},
                                run.global_step, "train/")
                run.global_step += 1
                if run.ckpt.every_steps and run.global_step % run.ckpt.every_steps == 0 and step + 1 < len(batches):
                    run.ckpt.save(self._checkpoint(run, epoch, step + 1, epoch_rng=epoch_rng))
            loss_sum += float(loss.item()) * len(idx)
            done += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        secs = time.perf_counter() - t0
        tower.eval()
        return {"epoch": epoch, "loss": loss_sum / max(1, done), "seconds": secs,
                "pairs_per_s": done / max(secs, 1e-9)}

    def _batch_loss(
        self, tower: TextTower, pairs: Pairs, idx: np.ndarray, item_texts: Any, negs: np.ndarray | None
    ) -> torch.Tensor:
        """Weighted InfoNCE over the batch's distinct targets (+ sampled negatives); a row's
        other known positives are masked out of its softmax."""
        targets = pairs.item[idx]
        extra = negs[negs >= 0] if negs is not None else np.zeros(0, np.int64)
        cols = np.unique(np.concatenate([targets, extra]))
        q = tower([pairs.query[i] for i in idx])
        e = tower([item_texts[c] for c in cols])
        logits = q @ e.T / float(self.params["temperature"])
        tgt = np.searchsorted(cols, targets)
        mask = np.zeros(logits.shape, dtype=bool)
        for r, i in enumerate(idx):
            mask[r] = np.isin(cols, pairs.positives[i])
        mask[np.arange(len(idx)), tgt] = False
        dev = logits.device
        logits = logits.masked_fill(torch.from_numpy(mask).to(dev), float("-inf"))
        ce = F.cross_entropy(logits, torch.from_numpy(tgt).to(dev), reduction="none")
        w = torch.from_numpy(pairs.weight[idx]).to(dev, ce.dtype)
        return (ce * w).sum() / w.sum().clamp(min=1e-12)

    @torch.no_grad()
    def _mine(self, pairs: Pairs) -> np.ndarray:
        """(n_pairs, hard_pool) nearest non-positive items by the frozen encoder; -1 pads."""
        pool = int(min(int(self.params["hard_pool"]), self.n_items_))
        uniq = list(dict.fromkeys(pairs.query))
        qpos = {t: i for i, t in enumerate(uniq)}
        qv = self.tower.embed(uniq, int(self.params["embed_batch_size"]))
        qi = np.array([qpos[t] for t in pairs.query])
        out = np.full((len(pairs), pool), -1, np.int64)
        for s in range(0, len(pairs), 1024):
            sc = qv[qi[s : s + 1024]] @ self.item_emb_.T
            for r in range(sc.shape[0]):
                sc[r, pairs.positives[s + r]] = -np.inf
            top, val = top_k(sc, pool)
            out[s : s + len(top)] = np.where(np.isfinite(val), top, -1)
        return out

    def _negatives(
        self, pairs: Pairs, rng: np.random.Generator, epoch: int, hard: np.ndarray | None, pop: np.ndarray | None
    ) -> np.ndarray:
        """(n_pairs, n_negatives) sampled negatives for one epoch; -1 where none exists."""
        n_neg = int(self.params["n_negatives"])
        if hard is not None:
            n_ok = (hard >= 0).sum(1)
            pick = np.floor(rng.random((len(pairs), n_neg)) * np.maximum(n_ok, 1)[:, None]).astype(np.int64)
            out = np.take_along_axis(hard, pick, axis=1)
            out[n_ok == 0] = -1
            return out
        strategy = "popularity" if pop is not None else "uniform"
        return sample_negatives(self.n_items_, pairs.positives, n_neg, strategy=strategy, popularity=pop,
                                seed=int(self.params["seed"]) * 1000 + epoch)

    def _embed_catalog(self, item_texts: list[str]) -> None:
        """Catalog vectors with the current weights, and the vector for empty histories
        (the training-popularity-weighted centroid of the items)."""
        self.item_emb_ = self.tower.embed(item_texts, int(self.params["embed_batch_size"]))
        w = self._target_counts
        w = np.ones(self.n_items_) if w is None or not w.sum() else w
        c = (w[:, None] * self.item_emb_).sum(0)
        self.fallback_ = (c / max(float(np.linalg.norm(c)), 1e-12)).astype(np.float32)

    def _validate(self, rec: _RecValid | None, srch: _SearchValid | None) -> float:
        """NDCG@10: full ranking of valid targets and/or reranking of judged candidates
        (the mean of the two when both exist)."""
        vals: list[float] = []
        if rec is not None:
            u = self._text_vectors(rec.texts)
            total = 0.0
            for s in range(0, len(u), 1024):
                sc = u[s : s + 1024] @ self.item_emb_.T
                t = rec.targets[s : s + 1024]
                rank = (sc > sc[np.arange(len(t)), t][:, None]).sum(1)
                total += float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).sum())
            vals.append(total / max(len(u), 1))
        if srch is not None:
            sc = self.score_query_items(srch.queries, srch.cands)
            m = graded_ndcg(sc, srch.grades, k=10)
            if math.isfinite(m):
                vals.append(float(m))
        return float(np.mean(vals)) if vals else float("nan")

    # -- scoring ---------------------------------------------------------------------------
    def user_texts(self, users: UserBatch) -> list[str]:
        """Each user's liked history as text, newest first ("" when there is none)."""
        out = []
        hl = int(self.params["history_len"])
        for i, h in enumerate(users.histories):
            h = np.asarray(h, dtype=np.int64)
            keep = (h >= 0) & (h < len(self.titles_))
            if users.labels is not None:
                keep &= np.asarray(users.labels[i], dtype=np.float32) > LIKED
            out.append(history_text(self.titles_, h[keep][-hl:], self.params["history_sep"]))
        return out

    def _text_vectors(self, texts: list[str]) -> np.ndarray:
        """Query-tower vectors; empty texts (no usable history) get the fallback vector."""
        out = np.tile(self.fallback_, (len(texts), 1)).astype(np.float32)
        nz = [i for i, t in enumerate(texts) if t]
        if nz:
            out[nz] = self.tower.embed([texts[i] for i in nz], int(self.params["embed_batch_size"]))
        return out

    def user_vectors(self, users: UserBatch) -> np.ndarray:
        self._check_fitted()
        return self._text_vectors(self.user_texts(users))

    def score_users(self, users: UserBatch) -> np.ndarray:
        return (self.user_vectors(users) @ self.item_emb_.T).astype(np.float32)

    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        u = self.user_vectors(users)
        return (u * self.item_emb_[np.asarray(items, dtype=np.int64)]).sum(1).astype(np.float32)

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        return self.tower.embed([render_query(q) for q in queries], int(self.params["embed_batch_size"]))

    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        q = self.query_vectors(queries)
        return [(self.item_emb_[np.asarray(c, dtype=np.int64)] @ q[i]).astype(np.float32)
                for i, c in enumerate(candidates)]

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        return top_k((self.query_vectors(queries) @ self.item_emb_.T).astype(np.float32), k)

    # -- persistence -----------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.tower.trainable_state().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"tuning": str(self.params["tuning"])})
        np.save(path / EMB_FILE, self.item_emb_)
        np.save(path / FALLBACK_FILE, self.fallback_)
        (path / TITLES_FILE).write_text(json.dumps(self.titles_, ensure_ascii=False) + "\n")

    def _warm_start(self, tower: TextTower, src: Path) -> None:
        """Continue from a saved model's trainable weights (`shoprank train --since`)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        f = src / WEIGHTS_FILE
        if not f.exists():
            raise ShoprankError(f"init_from {src}: no {WEIGHTS_FILE}; it is not a saved lm model")
        with safe_open(str(f), framework="pt") as fh:
            was = (fh.metadata() or {}).get("tuning")
        if was is not None and was != str(self.params["tuning"]):
            raise ShoprankError(f"init_from {src}: it was tuned with {was!r}, this model uses "
                                f"{self.params['tuning']!r}; continue with the same strategy")
        tower.load_trainable_state(load_file(str(f)))

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        tower = self._build()
        tower.load_trainable_state(load_file(str(path / WEIGHTS_FILE)))
        tower.set_caching(False)
        tower.eval()
        self.tower_ = tower
        self.n_trainable_ = tower.n_trainable()
        self.item_emb_ = np.load(path / EMB_FILE)
        self.fallback_ = np.load(path / FALLBACK_FILE)
        self.titles_ = list(json.loads((path / TITLES_FILE).read_text()))


__all__ = ["DEFAULTS", "LMRanker", "Pairs", "history_text"]

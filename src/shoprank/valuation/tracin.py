"""TracIn (Pruthi et al. 2020): influence traced through the checkpoints of one training run.

Why: influence functions assume a converged, (near-)convex objective; a fine-tuned encoder
is neither. TracIn needs only what training leaves behind: at each saved checkpoint t with
learning rate lr_t, a training point's contribution to the validation loss reduction is
about lr_t * grad_val(theta_t) . grad_i(theta_t) (the first-order effect of an SGD step on
it), summed over checkpoints (TracInCP). Its self-influence (lr_t * ||grad_i||^2) flags
points the model keeps struggling to fit, which is where mislabelled records end up.

Checkpoints come as state dicts or files written by `shoprank.models.engine.Checkpointer`
(keys "trainable", "optimizer", "scheduler", "epoch", "step"). The Checkpointer keeps one
file per directory, so a run whose checkpoints should all count writes each epoch to its
own folder (or copies checkpoint.pt away); `load_checkpoints` finds them all under a root.
Models trained with Adam get plain gradient dot products, as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.influence import LossModel, _batches, head_problem, mean_gradient
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import ValuationData


@dataclass
class Checkpoint:
    """Trainable weights at one point of training and the learning rate in force there."""

    state: dict[str, torch.Tensor]
    lr: float | None = None
    epoch: int | None = None
    step: int | None = None
    source: str = ""
    global_step: int | None = None  # optimiser steps taken before this checkpoint


def _lr_of(ck: Mapping[str, Any]) -> float | None:
    """The learning rate a Checkpointer file records: the scheduler's last lr, else the
    optimiser's (one value; several groups with different rates are ambiguous -> None)."""
    sched = ck.get("scheduler")
    lrs: list[float] = []
    if isinstance(sched, Mapping) and sched.get("_last_lr"):
        lrs = [float(x) for x in sched["_last_lr"]]
    else:
        opt = ck.get("optimizer")
        if isinstance(opt, Mapping) and opt.get("param_groups"):
            lrs = [float(g["lr"]) for g in opt["param_groups"] if "lr" in g]
    if not lrs or max(lrs) != min(lrs):
        return None
    return lrs[0]


def as_checkpoint(obj: Mapping[str, Any] | Checkpoint, source: str = "") -> Checkpoint:
    """A Checkpointer dict (with "trainable") or a bare state dict of tensors."""
    if isinstance(obj, Checkpoint):
        return obj
    if "trainable" in obj:
        ep, st, gs = obj.get("epoch"), obj.get("step"), obj.get("global_step")
        return Checkpoint({k: v for k, v in obj["trainable"].items()}, _lr_of(obj),
                          None if ep is None else int(ep), None if st is None else int(st), source,
                          None if gs is None else int(gs))
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(dict(obj), None, source=source)
    raise ShoprankError(f"{source or 'checkpoint'}: neither a Checkpointer file (no 'trainable') nor a state dict")


def load_checkpoints(source: str | Path | Sequence[str | Path | Mapping[str, Any] | Checkpoint]) -> list[Checkpoint]:
    """Checkpoints from a folder (every checkpoint.pt and *.pt below it), a list of files,
    or a list of state dicts. Files from a folder are ordered by training progress when they
    record it (global_step; else epoch, where a Checkpointer's step 0 means "epoch done"
    and comes after that epoch's mid-epoch saves), else by path. A list keeps its order."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted({p for p in root.rglob("*.pt")})
        else:
            raise ShoprankError(f"{root}: no such checkpoint file or folder")
        if not files:
            raise ShoprankError(f"{root}: no checkpoint files (*.pt) found")
        items: list[Any] = list(files)
    else:
        items = list(source)
    cks: list[Checkpoint] = []
    for it in items:
        if isinstance(it, (str, Path)):
            obj = torch.load(Path(it), map_location="cpu", weights_only=False)
            cks.append(as_checkpoint(obj, str(it)))
        else:
            cks.append(as_checkpoint(it))
    if isinstance(source, (str, Path)):
        if all(c.global_step is not None for c in cks):
            cks.sort(key=lambda c: (c.global_step or 0, c.source))
        elif all(c.epoch is not None for c in cks):
            cks.sort(key=lambda c: (c.epoch or 0, c.step or float("inf"), c.source))
    return cks


def tracin_values(train: LossModel, valid: LossModel | None, checkpoints: Sequence[Checkpoint | Mapping[str, Any]],
                  lrs: Sequence[float] | float | None = None, *, batches: Sequence[np.ndarray] | None = None,
                  self_influence: bool = False, batch_size: int = 256) -> np.ndarray:
    """TracInCP: sum over checkpoints of lr_t * grad_val(theta_t) . grad_i(theta_t).

    Positive values: training on the point lowered the mean validation loss. `lrs` (one per
    checkpoint, or one for all) overrides the rates recorded in the checkpoints.
    `batches[t]`, when given, are the rows of the SGD step taken from checkpoint t
    (TracInIdeal): only those rows get that step's term, scaled by lr_t / |batch| as the
    step itself was, so the values add up to the first-order change of validation loss.
    `self_influence`: lr_t * ||grad_i||^2 instead (no validation data needed).
    `train` and `valid` must share their parameter tensors; they are restored afterwards.
    """
    cks = [as_checkpoint(c) for c in checkpoints]
    if not cks:
        raise ShoprankError("TracIn needs at least one checkpoint")
    if lrs is None:
        if any(c.lr is None for c in cks):
            raise ShoprankError("a checkpoint records no single learning rate: pass lrs")
        rates = [float(c.lr or 0.0) for c in cks]
    else:
        rates = [float(lrs)] * len(cks) if isinstance(lrs, (int, float)) else [float(x) for x in lrs]
    if len(rates) != len(cks):
        raise ShoprankError(f"{len(rates)} learning rates for {len(cks)} checkpoints")
    if batches is not None and len(batches) != len(cks):
        raise ShoprankError(f"{len(batches)} batches for {len(cks)} checkpoints")
    if valid is None and not self_influence:
        raise ShoprankError("TracIn needs validation data (or self_influence=True)")
    keep = train.state()
    separate = valid is not None and (valid.params.keys() != train.params.keys()
                                      or any(valid.params[k] is not p for k, p in train.params.items()))
    vkeep = valid.state() if separate and valid is not None else {}
    out = np.zeros(train.n)
    try:
        for t, (ck, lr) in enumerate(zip(cks, rates, strict=True)):
            train.load(ck.state)
            if separate and valid is not None:
                valid.load(ck.state)
            v = None if self_influence or valid is None else mean_gradient(valid, batch_size=batch_size)
            if batches is not None:
                rows = np.asarray(batches[t], dtype=np.int64)
                parts = [(rows, lr / max(len(rows), 1))]
            else:
                parts = [(idx, lr) for idx in _batches(train.n, batch_size)]
            for idx, scale in parts:
                g = train.grads(idx)
                term = (g * g).sum(1) if v is None else g @ v
                np.add.at(out, idx, scale * term.double().numpy())
    finally:
        train.load(keep)
        if separate and valid is not None:
            valid.load(vkeep)
    return out


@register_method("tracin")
class TracIn(Valuation):
    """TracInCP for a linear head on the feature vectors (embeddings): the head is trained
    by minibatch SGD for `epochs` epochs, keeping the weights at the end of every epoch in
    memory, and the values sum lr * grad_val . grad_i over those checkpoints.

    `self_influence=True` values by minus the self-influence instead (high self-influence,
    i.e. likely mislabelled, ranks low), which needs no validation labels.
    """

    def __init__(self, target: str = "classification", *, epochs: int = 5, lr: float = 0.1, batch_size: int = 32,
                 l2: float = 1e-3, self_influence: bool = False, seed: int = 0) -> None:
        self.target, self.epochs, self.lr, self.batch_size = target, epochs, lr, batch_size
        self.l2, self.self_influence, self.seed = l2, self_influence, seed

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData):
            raise ShoprankError("TracIn.fit needs ValuationData with feature arrays and labels")
        prob = head_problem(data, self.target, seed=self.seed)
        params = [p for p in prob.module.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=self.lr, weight_decay=self.l2)
        rng = np.random.default_rng(self.seed)
        n, cks = len(prob.x_train), []
        for epoch in range(1, int(self.epochs) + 1):
            for idx in np.array_split(rng.permutation(n), max(1, -(-n // int(self.batch_size)))):
                i = torch.from_numpy(idx)
                opt.zero_grad()
                prob.loss(prob.module(prob.x_train[i]), prob.y_train[i]).mean().backward()
                opt.step()
            cks.append(Checkpoint({k: p.detach().clone() for k, p in prob.module.named_parameters()}, self.lr, epoch))
        train = prob.train_model()
        v = tracin_values(train, None if self.self_influence else prob.valid_model(), cks,
                          self_influence=self.self_influence)
        self.result_ = ValuationResult(-v if self.self_influence else v, names=data.point_names(),
                                       algorithm=self.name, n_updates=len(cks),
                                       extra={"checkpoints": len(cks), "self_influence": self.self_influence})
        return self


__all__ = ["Checkpoint", "TracIn", "as_checkpoint", "load_checkpoints", "tracin_values"]

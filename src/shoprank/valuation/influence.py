"""Influence functions (Koh and Liang 2017) for the part of a model that trains.

Why: retraining per point (leave-one-out) is unaffordable beyond toy sizes, while a model
whose trainable part is a small head on frozen features (a logistic/linear head on
embeddings, the click head of lm-click over a frozen tower) has a Hessian small enough to
form exactly or to invert by conjugate gradient. The influence of up-weighting training
point i on the validation loss is -grad_val^T H^{-1} grad_i (H: Hessian of the training
objective, damped); we report its negative, the *reduction* of validation loss, so helpful
points are positive and harmful ones (e.g. flipped labels) negative, like every other value.

Heads that are not convex or not at their optimum (lm-click's MLP, early-stopped) have an
indefinite Hessian, on which CG breaks down: `curvature="fisher"` uses the empirical
Fisher instead, as DataInf does. `click_head_models` builds the loss models of a fitted
lm-click ranker's head. The gradient machinery here (`LossModel`, per-sample gradients,
Hessian-vector products) is shared with TracIn (`tracin.py`) and DataInf (`datainf.py`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoprank.errors import ShoprankError, ShoprankWarning
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import ValuationData

LossFn = Callable[[np.ndarray], torch.Tensor]  # row indices -> per-sample losses (len(idx),)
ElementLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> per-sample

# ---------------------------------------------------------------------------------------
# A differentiable loss over rows, as a function of named trainable tensors
# ---------------------------------------------------------------------------------------


def _batches(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for s in range(0, n, max(1, int(batch_size))):
        yield np.arange(s, min(s + max(1, int(batch_size)), n), dtype=np.int64)


class LossModel:
    """Per-sample losses of `n` rows as a function of the named tensors in `params`.

    `loss(idx)` must compute the losses of rows `idx` with those very tensors (leaf tensors
    with requires_grad, usually a module's trainable parameters), so autograd reaches them.
    `l2` is a weight decay that is part of the *training* objective
    (mean loss + l2/2 ||theta||^2): it adds l2 to the Hessian, not to per-sample gradients.

    Per-sample gradients default to one backward pass per row (works for any model,
    e.g. a peft text tower); `ModuleLoss` vectorises them with torch.func.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], loss: LossFn, n: int, *, l2: float = 0.0) -> None:
        if not params:
            raise ShoprankError("LossModel needs at least one trainable tensor")
        self.params = dict(params)
        self.loss_fn, self.n, self.l2 = loss, int(n), float(l2)

    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    def slices(self) -> dict[str, slice]:
        """Where each named tensor sits in the flattened parameter vector."""
        out, s = {}, 0
        for k, p in self.params.items():
            out[k] = slice(s, s + p.numel())
            s += p.numel()
        return out

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params.values()])

    def losses(self, idx: np.ndarray) -> torch.Tensor:
        return self.loss_fn(np.asarray(idx, dtype=np.int64))

    def _flat_grad(self, scalar: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        ps = list(self.params.values())
        gs = torch.autograd.grad(scalar, ps, create_graph=create_graph, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, ps, strict=True)])

    def grads(self, idx: np.ndarray) -> torch.Tensor:
        """Per-sample gradients (len(idx), dim), one backward pass per row."""
        rows = [self._flat_grad(self.losses(np.array([i])).sum()).detach() for i in np.asarray(idx)]
        return torch.stack(rows) if rows else torch.zeros(0, self.dim, dtype=self.dtype)

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy the tensors named in `state` into the parameters (checkpoints for TracIn)."""
        missing = set(self.params) - set(state)
        if missing:
            raise ShoprankError(f"checkpoint lacks trainable tensors {sorted(missing)[:3]}")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state[k].to(p.device, p.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}


class ModuleLoss(LossModel):
    """`loss(module(x[idx]), y[idx])` over tensors, with per-sample gradients by
    torch.func (vmap of grad): one vectorised call per batch instead of a loop. The module
    should be in eval mode (vmap refuses random ops such as active dropout)."""

    def __init__(self, module: nn.Module, loss: ElementLoss, x: torch.Tensor, y: torch.Tensor, *,
                 l2: float = 0.0, select: Callable[[str], bool] | None = None) -> None:
        params = {k: p for k, p in module.named_parameters() if p.requires_grad and (select is None or select(k))}
        self.module, self.element_loss, self.x, self.y = module, loss, x, y
        super().__init__(params, self._rows_loss, len(x), l2=l2)

    def _rows_loss(self, idx: np.ndarray) -> torch.Tensor:
        i = torch.from_numpy(idx)
        return self.element_loss(self.module(self.x[i]), self.y[i])

    def grads(self, idx: np.ndarray) -> torch.Tensor:
        from torch.func import functional_call, grad, vmap

        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        detached = {k: p.detach() for k, p in self.params.items()}

        def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.module, p, (xi.unsqueeze(0),))
            return self.element_loss(out, yi.unsqueeze(0)).sum()

        g = vmap(grad(one), in_dims=(None, 0, 0))(detached, self.x[i], self.y[i])
        return torch.cat([g[k].reshape(len(i), -1) for k in self.params], dim=1)


# ---------------------------------------------------------------------------------------
# Gradients, Hessian, solvers
# ---------------------------------------------------------------------------------------


def mean_gradient(model: LossModel, *, batch_size: int = 1024) -> torch.Tensor:
    """Gradient of the mean loss over all rows (without the l2 term)."""
    total = torch.zeros(model.dim, dtype=model.dtype)
    for idx in _batches(model.n, batch_size):
        total += model._flat_grad(model.losses(idx).sum()).detach()
    return total / max(model.n, 1)


def hvp(model: LossModel, v: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """(H + l2 I) v for the training objective mean loss + l2/2 ||theta||^2, by
    double backward, batch by batch (the Hessian is never formed)."""
    ps = list(model.params.values())
    out = torch.zeros_like(v)
    for idx in _batches(model.n, batch_size):
        g = model._flat_grad(model.losses(idx).sum() / model.n, create_graph=True)
        hv = torch.autograd.grad(g @ v, ps, allow_unused=True)
        out += torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for h, p in zip(hv, ps, strict=True)])
    return out + model.l2 * v


def hessian(model: LossModel, *, batch_size: int = 1024) -> torch.Tensor:
    """The explicit (dim, dim) Hessian of the training objective (small heads only)."""
    ps, d = list(model.params.values()), model.dim
    eye = torch.eye(d, dtype=model.dtype)
    h = torch.zeros(d, d, dtype=model.dtype)
    for idx in _batches(model.n, batch_size):
        g = model._flat_grad(model.losses(idx).sum() / model.n, create_graph=True)
        try:  # all dim rows at once (vmap over grad_outputs)
            rows = torch.autograd.grad(g, ps, eye, retain_graph=True, is_grads_batched=True, allow_unused=True)
            h += torch.cat([(torch.zeros(d, *p.shape, dtype=p.dtype) if r is None else r).reshape(d, -1)
                            for r, p in zip(rows, ps, strict=True)], dim=1)
        except RuntimeError:  # an op without a batching rule: one row at a time
            for j in range(d):
                r = torch.autograd.grad(g[j], ps, retain_graph=True, allow_unused=True)
                h[j] += torch.cat([(torch.zeros_like(p) if x is None else x).reshape(-1)
                                   for x, p in zip(r, ps, strict=True)])
    h = 0.5 * (h + h.T)  # symmetric up to rounding
    return h + model.l2 * eye


@dataclass
class CGInfo:
    iterations: int
    residual: float  # ||b - A x|| / ||b||


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *,
                       tol: float | None = None, max_iter: int | None = None) -> tuple[torch.Tensor, CGInfo]:
    """Solve A x = b for symmetric positive definite A given only products A v.

    tol: relative residual (default 1e-10 in float64, 1e-5 in float32); max_iter: default
    min(2 dim, 1000) (exact arithmetic needs at most dim steps).

    Raises when A shows non-positive curvature (a non-convex head at a saddle, or too
    little damping): CG would then return nonsense silently."""
    if tol is None:
        tol = 1e-10 if b.dtype == torch.float64 else 1e-5
    bnorm = float(b.norm())
    x = torch.zeros_like(b)
    if bnorm == 0:
        return x, CGInfo(0, 0.0)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    it = 0
    for it in range(1, (max_iter or min(2 * len(b), 1000)) + 1):  # noqa: B007 (reported after the loop)
        ap = matvec(p)
        curv = float(p @ ap)
        if curv <= 0:
            raise ShoprankError("conjugate gradient met non-positive curvature: the Hessian is not positive "
                                "definite here; raise damping (or use solver='exact')")
        alpha = rs / curv
        x += alpha * p
        r -= alpha * ap
        rs_new = float(r @ r)
        if rs_new**0.5 <= tol * bnorm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, CGInfo(it, rs**0.5 / bnorm)


class _Fisher:
    """The empirical Fisher (1/n) sum_i g_i g_i^T + l2 I of the training objective: a
    positive semi-definite stand-in for the Hessian where that is indefinite (a non-convex
    head away from its optimum, e.g. early-stopped). Per-sample gradients are kept when
    they fit in `cache_mb`, else recomputed for every product."""

    def __init__(self, model: LossModel, batch_size: int, cache_mb: float = 512.0) -> None:
        self.model, self.batch_size = model, batch_size
        fits = model.n * model.dim * torch.finfo(model.dtype).bits / 8 / 2**20 <= cache_mb
        self.cache = [model.grads(i) for i in _batches(model.n, batch_size)] if fits else None

    def chunks(self) -> Iterator[torch.Tensor]:
        if self.cache is not None:
            yield from self.cache
        else:
            for idx in _batches(self.model.n, self.batch_size):
                yield self.model.grads(idx)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self.model.l2 * v
        for g in self.chunks():
            out = out + g.T @ (g @ v) / self.model.n
        return out

    def matrix(self) -> torch.Tensor:
        out = self.model.l2 * torch.eye(self.model.dim, dtype=self.model.dtype)
        for g in self.chunks():
            out = out + g.T @ g / self.model.n
        return out


def inverse_hvp(model: LossModel, v: torch.Tensor, *, solver: str = "auto", damping: float = 0.0,
                curvature: str = "hessian", batch_size: int = 1024, cg_tol: float | None = None,
                cg_max_iter: int | None = None, max_exact_dim: int = 256) -> tuple[torch.Tensor, dict[str, Any]]:
    """(H + damping I)^{-1} v with H the Hessian of the training objective.

    solver: "exact" (form H, solve by Cholesky, LU when H is indefinite), "cg" (conjugate
    gradient on Hessian-vector products) or "auto" (exact up to `max_exact_dim` parameters:
    forming H costs dim vectorised backward passes per batch, while CG on a standardised
    convex head converges in a few dozen products).
    curvature: "hessian" (exact second derivatives) or "fisher" (empirical Fisher, always
    positive semi-definite: for non-convex heads, where CG on the Hessian breaks down).
    """
    if curvature not in ("hessian", "fisher"):
        raise ShoprankError(f"unknown curvature {curvature!r}; use hessian or fisher")
    if solver == "auto":
        solver = "exact" if model.dim <= max_exact_dim else "cg"
    fisher = _Fisher(model, batch_size) if curvature == "fisher" else None
    if solver == "exact":
        h = hessian(model, batch_size=batch_size) if fisher is None else fisher.matrix()
        h = h + damping * torch.eye(model.dim, dtype=model.dtype)
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            x = torch.cholesky_solve(v.unsqueeze(1), chol).squeeze(1)
        else:
            x = torch.linalg.solve(h, v)
        return x, {"solver": "exact", "curvature": curvature, "positive_definite": int(info) == 0}
    if solver == "cg":
        tol = cg_tol if cg_tol is not None else 1e-10 if v.dtype == torch.float64 else 1e-5
        mv: Callable[[torch.Tensor], torch.Tensor] = (
            (lambda u: hvp(model, u, batch_size=batch_size)) if fisher is None else fisher.matvec)
        x, ci = conjugate_gradient(lambda u: mv(u) + damping * u, v, tol=tol, max_iter=cg_max_iter)
        if ci.residual > tol:
            warnings.warn(f"conjugate gradient stopped after {ci.iterations} steps at relative residual "
                          f"{ci.residual:.2g} (> {tol:.2g}): raise damping or cg_max_iter", ShoprankWarning,
                          stacklevel=2)
        return x, {"solver": "cg", "curvature": curvature, "cg_iterations": ci.iterations,
                   "cg_residual": ci.residual}
    raise ShoprankError(f"unknown influence solver {solver!r}; use exact, cg or auto")


def influence_values(train: LossModel, valid: LossModel, *, solver: str = "auto", damping: float = 0.0,
                     curvature: str = "hessian", batch_size: int = 1024, cg_tol: float | None = None,
                     cg_max_iter: int | None = None, max_exact_dim: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """grad_val^T (H + damping I)^{-1} grad_i for every training row i: the first-order
    reduction of the mean validation loss per unit up-weight of row i (Koh and Liang's
    -I_up,loss). Removing row i from a mean over n rows changes the validation loss by
    about value_i / n. One inverse-HVP (for the validation gradient) serves all rows.
    `train` and `valid` must share their parameter tensors."""
    v = mean_gradient(valid, batch_size=batch_size)
    s, info = inverse_hvp(train, v, solver=solver, damping=damping, curvature=curvature, batch_size=batch_size,
                          cg_tol=cg_tol, cg_max_iter=cg_max_iter, max_exact_dim=max_exact_dim)
    out = np.concatenate([(train.grads(idx) @ s).double().numpy() for idx in _batches(train.n, batch_size)]
                         or [np.zeros(0)])
    return out, info


# ---------------------------------------------------------------------------------------
# Heads on fixed features (what `shoprank value --method influence|tracin|datainf` trains)
# ---------------------------------------------------------------------------------------


def head_loss(kind: str) -> ElementLoss:
    """Per-sample loss of a head: "logistic" (one logit, 0/1 targets), "softmax" (class
    indices) or "squared" (regression, 1/2 squared error)."""
    if kind == "logistic":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y, reduction="none")
    if kind == "softmax":
        return lambda out, y: F.cross_entropy(out, y, reduction="none")
    if kind == "squared":
        return lambda out, y: 0.5 * (out.squeeze(-1) - y) ** 2
    raise ShoprankError(f"unknown head loss {kind!r}; use logistic, softmax or squared")


def fit_head(module: nn.Module, loss: ElementLoss, x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3,
             sample_weight: torch.Tensor | None = None, max_iter: int = 500, tol: float = 1e-12) -> nn.Module:
    """Minimise sum_i w_i loss_i / n + l2/2 ||theta||^2 by full-batch L-BFGS, in place.

    Full batch and a tight tolerance because influence functions assume the gradient of the
    training objective is zero at the weights they differentiate around."""
    params = [p for p in module.parameters() if p.requires_grad]
    w = torch.ones(len(x), dtype=x.dtype) if sample_weight is None else sample_weight.to(x.dtype)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        obj = (w * loss(module(x), y)).sum() / len(x) + 0.5 * l2 * sum((p * p).sum() for p in params)
        obj.backward()
        return obj

    opt.step(closure)
    return module


@dataclass
class HeadProblem:
    """A linear head on standardised features with its loss, train and validation tensors."""

    module: nn.Module
    kind: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor

    @property
    def loss(self) -> ElementLoss:
        return head_loss(self.kind)

    def train_model(self, l2: float = 0.0) -> ModuleLoss:
        return ModuleLoss(self.module, self.loss, self.x_train, self.y_train, l2=l2)

    def valid_model(self) -> ModuleLoss:
        return ModuleLoss(self.module, self.loss, self.x_valid, self.y_valid)


def head_problem(data: ValuationData, target: str = "classification", *, dtype: torch.dtype = torch.float64,
                 seed: int = 0) -> HeadProblem:
    """A fresh linear head for `data`: logistic for two classes, softmax for more,
    squared error for `target` "regression"/"graded". Features are standardised with the
    training mean and scale (conditioning: CG and SGD converge faster); validation rows
    whose class never occurs in training are dropped (their loss has no parameters)."""
    if data.y_train is None or data.y_valid is None:
        raise ShoprankError("influence-type methods need labels (y_train and y_valid)")
    xtr, xva = np.asarray(data.x_train, dtype=np.float64), np.asarray(data.x_valid, dtype=np.float64)
    if xtr.ndim != 2 or xva.ndim != 2:
        raise ShoprankError("influence-type methods need 2-D feature arrays (embeddings)")
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    ytr, yva = np.asarray(data.y_train), np.asarray(data.y_valid)
    if target in ("regression", "graded"):
        kind, out = "squared", 1
        t_tr = torch.tensor(ytr.astype(np.float64), dtype=dtype)
        t_va = torch.tensor(yva.astype(np.float64), dtype=dtype)
    elif target == "classification":
        classes = np.unique(ytr)
        keep = np.isin(yva, classes)
        xva, yva = xva[keep], yva[keep]
        codes_tr, codes_va = np.searchsorted(classes, ytr), np.searchsorted(classes, yva)
        if len(classes) <= 2:
            kind, out = "logistic", 1
            pos = len(classes) - 1  # one class only: all targets 0
            t_tr = torch.tensor((codes_tr == pos) & (pos > 0), dtype=dtype)
            t_va = torch.tensor((codes_va == pos) & (pos > 0), dtype=dtype)
        else:
            kind, out = "softmax", len(classes)
            t_tr, t_va = torch.tensor(codes_tr, dtype=torch.int64), torch.tensor(codes_va, dtype=torch.int64)
    else:
        raise ShoprankError(f"unknown target {target!r}; use classification or regression")
    gen = torch.Generator().manual_seed(int(seed))
    module = nn.Linear(xtr.shape[1], out).to(dtype)
    with torch.no_grad():
        module.weight.normal_(0.0, 0.01, generator=gen)
        module.bias.zero_()
    return HeadProblem(module, kind, torch.tensor(xtr, dtype=dtype), t_tr, torch.tensor(xva, dtype=dtype), t_va)


def click_head_models(ranker: Any, train: Any, valid: Any = None, *,
                      l2: float = 0.0) -> tuple[LossModel, LossModel | None]:
    """Loss models of a fitted `lm-click` ranker's click head, the tower frozen: per-row
    binary cross-entropy of its click rows as a function of the head's weights only.

    Rows are built as the ranker's own `fit` builds them (`click_rows`; validation
    histories see train + valid events). Item vectors (pooled) or row-text vectors (text)
    come from the frozen tower once, so every loss evaluation is a pass through the head.
    The head is put in eval mode (no dropout). lm-click trains with AdamW, whose decoupled
    weight decay is no L2 term of the loss: leave `l2` at 0 and use `damping` instead.
    """
    import pandas as pd

    from shoprank.data.splits import click_rows

    head: nn.Module = ranker.head
    head.eval()
    params = {k: p for k, p in head.named_parameters() if p.requires_grad}

    def build(context: Any, frame: pd.DataFrame) -> LossModel:
        rows = ranker._rows(context, frame)
        y = torch.tensor(frame["label"].to_numpy(np.float32))
        if ranker.params["user_repr"] == "text":
            z = torch.from_numpy(ranker.tower.embed(ranker.row_texts(rows)))
            z = z * math.sqrt(z.shape[1])

            def loss(idx: np.ndarray) -> torch.Tensor:
                return F.binary_cross_entropy_with_logits(head(z[torch.from_numpy(idx)]), y[torch.from_numpy(idx)],
                                                          reduction="none")
        else:
            emb = torch.from_numpy(ranker.item_emb_)

            def loss(idx: np.ndarray) -> torch.Tensor:
                logits = ranker._pooled_logits(emb, rows.subset(idx))
                return F.binary_cross_entropy_with_logits(logits, y[torch.from_numpy(idx)], reduction="none")

        return LossModel(params, loss, len(rows), l2=l2)

    tr = build(train, click_rows(train))
    if valid is None:
        return tr, None
    ctx = train.with_tables(interactions=pd.concat([train.interactions, valid.interactions]))
    return tr, build(ctx, click_rows(valid))


@register_method("influence")
class InfluenceFunction(Valuation):
    """Influence of every training row on the validation loss of a linear head (logistic,
    softmax or least squares) trained on the feature vectors (embeddings) to the optimum.

    solver: "exact" (explicit Hessian), "cg" (conjugate gradient on Hessian-vector
    products) or "auto" (exact up to `max_exact_dim` parameters). `l2` is the head's weight
    decay (it keeps the Hessian positive definite); `damping` is added on top.
    """

    def __init__(self, target: str = "classification", solver: str = "auto", *, l2: float = 1e-3,
                 damping: float = 0.0, batch_size: int = 1024, cg_tol: float = 1e-10, max_exact_dim: int = 256,
                 max_iter: int = 500) -> None:
        self.target, self.solver, self.l2, self.damping = target, solver, l2, damping
        self.batch_size, self.cg_tol, self.max_exact_dim, self.max_iter = batch_size, cg_tol, max_exact_dim, max_iter

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData):
            raise ShoprankError("InfluenceFunction.fit needs ValuationData with feature arrays and labels")
        prob = head_problem(data, self.target)
        fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=self.l2, max_iter=self.max_iter)
        v, info = influence_values(prob.train_model(self.l2), prob.valid_model(), solver=self.solver,
                                   damping=self.damping, batch_size=self.batch_size, cg_tol=self.cg_tol,
                                   max_exact_dim=self.max_exact_dim)
        self.result_ = ValuationResult(v, names=data.point_names(), algorithm=self.name,
                                       n_updates=len(prob.y_valid), extra=info)
        return self


__all__ = ["CGInfo", "HeadProblem", "InfluenceFunction", "LossModel", "ModuleLoss", "click_head_models",
           "conjugate_gradient",
           "fit_head", "head_loss", "head_problem", "hessian", "hvp", "influence_values", "inverse_hvp",
           "mean_gradient"]

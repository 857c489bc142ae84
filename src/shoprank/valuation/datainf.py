"""DataInf (Kwon et al. 2024): closed-form influence for LoRA-tuned encoders.

Why: the Hessian of even a LoRA-tuned encoder is too large to form, and conjugate gradient
over a transformer costs many passes over the data. DataInf makes two approximations that
leave a closed form: the Hessian is block-diagonal over layers l (here: each LoRA tensor,
as in the authors' code, or each adapted module), and each block is the damped Fisher
(1/n) sum_j g_jl g_jl^T + lambda_l I with the inverse of the sum swapped for the sum of
inverses, which Sherman-Morrison solves exactly:

    H_l^{-1} v ~ (1/lambda_l) (v - (1/n) sum_j  (v . g_jl) / (lambda_l + ||g_jl||^2)  g_jl)

with lambda_l = 0.1 * (n d_l)^{-1} sum_j ||g_jl||^2 (d_l: the block's size). The value of
training row i is sum_l (H_l^{-1} v_l) . g_il for v the mean validation gradient: the
reduction of validation loss per unit up-weight, as in `influence.py` (Kwon et al. report
its negative). The approximation error grows with d_l, which is why LoRA's small blocks
suit it. Cost: O(n sum_l d_l) time and O(sum_l d_l) memory besides the gradients.

Per-sample gradients of a peft text tower come from `TowerLoss` (one backward per row,
tower in eval mode so LoRA dropout does not randomise them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.influence import LossModel, _batches, fit_head, head_problem, mean_gradient
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import ValuationData

LORA_MARKERS = ("lora_A", "lora_B")


def is_lora(name: str) -> bool:
    return any(m in name for m in LORA_MARKERS)


def _module_key(name: str) -> str:
    """The adapted module a parameter belongs to: "...query.lora_A.default.weight" -> "...query"."""
    for m in LORA_MARKERS:
        if f".{m}" in name:
            return name.split(f".{m}", 1)[0]
    return name.rsplit(".", 1)[0] if "." in name else name


def datainf_blocks(model: LossModel, *, by: str = "parameter",
                   select: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Block name -> column indices into the flattened gradient.

    by: "parameter" (each tensor its own block, as the authors' code: lora_A and lora_B
    apart) or "module" (A and B of one adapted module together). select: which tensors
    count; default: the LoRA tensors when there are any, else every trainable tensor.
    """
    if by not in ("parameter", "module"):
        raise ShoprankError(f"DataInf blocks must be 'parameter' or 'module', got {by!r}")
    if select is None:
        select = is_lora if any(is_lora(k) for k in model.names) else (lambda _k: True)
    groups: dict[str, list[torch.Tensor]] = {}
    for k, sl in model.slices().items():
        if select(k):
            groups.setdefault(k if by == "parameter" else _module_key(k), []).append(torch.arange(sl.start, sl.stop))
    if not groups:
        raise ShoprankError("DataInf: no trainable tensor selected (no LoRA parameters?)")
    return {k: torch.cat(v) for k, v in groups.items()}


def datainf_values(train: LossModel, valid: LossModel, *, blocks: str | dict[str, torch.Tensor] = "parameter",
                   select: Callable[[str], bool] | None = None, lambda_scale: float = 0.1, batch_size: int = 64,
                   cache_mb: float = 512.0) -> tuple[np.ndarray, dict[str, Any]]:
    """DataInf value of every training row (see the module docstring), vectorised per block.

    Per-sample gradients are computed once and kept when they fit in `cache_mb`, else
    recomputed on each of the three passes (norms and projections; the Sherman-Morrison
    correction; the final products), so memory stays O(batch x parameters).
    """
    bl = blocks if isinstance(blocks, dict) else datainf_blocks(train, by=blocks, select=select)
    cols = torch.cat(list(bl.values()))
    pos, offsets = 0, {}
    for k, c in bl.items():  # where each block sits inside the selected columns
        offsets[k] = slice(pos, pos + len(c))
        pos += len(c)
    n = train.n
    if n == 0:
        return np.zeros(0), {"lambda": {}}
    v_all = mean_gradient(valid, batch_size=batch_size)[cols]
    cache: list[torch.Tensor] | None = [] if n * len(cols) * 8 / 2**20 <= cache_mb else None

    def chunks() -> Any:
        if cache is not None and len(cache):
            yield from zip(_batches(n, batch_size), cache, strict=True)
            return
        for idx in _batches(n, batch_size):
            g = train.grads(idx)[:, cols].to(v_all.dtype)
            if cache is not None:
                cache.append(g)
            yield idx, g

    norms = {k: np.zeros(n) for k in bl}
    proj = {k: np.zeros(n) for k in bl}
    for idx, g in chunks():
        for k, sl in offsets.items():
            gl = g[:, sl]
            norms[k][idx] = (gl * gl).sum(1).double().numpy()
            proj[k][idx] = (gl @ v_all[sl]).double().numpy()
    lam = {k: lambda_scale * float(norms[k].mean()) / max(len(bl[k]), 1) for k in bl}
    live = [k for k in bl if lam[k] > 0]  # a block with no gradient at all carries no influence
    coef = {k: torch.from_numpy(proj[k] / (lam[k] + norms[k])).to(v_all.dtype) for k in live}
    u = {k: torch.zeros(len(bl[k]), dtype=v_all.dtype) for k in live}
    for idx, g in chunks():
        i = torch.from_numpy(idx)
        for k in live:
            u[k] += coef[k][i] @ g[:, offsets[k]]
    hv = {k: (v_all[offsets[k]] - u[k] / n) / lam[k] for k in live}
    out = np.zeros(n)
    for idx, g in chunks():
        for k in live:
            out[idx] += (g[:, offsets[k]] @ hv[k]).double().numpy()
    return out, {"lambda": lam, "blocks": {k: len(c) for k, c in bl.items()}}


class TowerLoss(LossModel):
    """Per-sample losses of a text tower (e.g. `get_tuning("lora").build(...)`) through a
    callback `loss(tower, idx) -> per-sample losses`, differentiated w.r.t. its LoRA
    tensors (or those `select` picks among the trainable ones).

    Gradients are taken one row at a time with the tower in eval mode (LoRA dropout and
    token dropout off), so they are the deterministic gradients DataInf assumes.
    """

    def __init__(self, tower: nn.Module, loss: Callable[[Any, np.ndarray], torch.Tensor], n: int, *,
                 select: Callable[[str], bool] | None = None) -> None:
        sel = select or is_lora
        params = {k: p for k, p in tower.named_parameters() if p.requires_grad and sel(k)}
        if not params:
            raise ShoprankError("TowerLoss: the tower has no trainable LoRA tensors (build it with tuning 'lora')")
        self.tower = tower
        super().__init__(params, lambda idx: loss(tower, idx), n)

    @contextmanager
    def _eval(self) -> Iterator[None]:
        """Gradients and losses without dropout, then the tower's mode as it was."""
        was = self.tower.training
        self.tower.eval()
        try:
            yield
        finally:
            self.tower.train(was)

    def grads(self, idx: np.ndarray) -> torch.Tensor:
        with self._eval():
            return super().grads(idx)

    def losses(self, idx: np.ndarray) -> torch.Tensor:
        with self._eval():
            return super().losses(idx)


def lora_datainf(tower: nn.Module, train_loss: Callable[[Any, np.ndarray], torch.Tensor], n_train: int,
                 valid_loss: Callable[[Any, np.ndarray], torch.Tensor], n_valid: int,
                 **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """DataInf values of `n_train` training rows of a LoRA-tuned tower: `train_loss(tower,
    idx)` / `valid_loss(tower, idx)` give per-sample losses of those rows."""
    return datainf_values(TowerLoss(tower, train_loss, n_train), TowerLoss(tower, valid_loss, n_valid), **kwargs)


@register_method("datainf")
class DataInf(Valuation):
    """DataInf on a linear head trained to the optimum on the feature vectors (embeddings),
    one block per parameter tensor (weight, bias). For a LoRA-tuned encoder itself use
    `lora_datainf` with a loss callback: the job only sees feature vectors."""

    def __init__(self, target: str = "classification", *, l2: float = 1e-3, lambda_scale: float = 0.1,
                 batch_size: int = 1024, max_iter: int = 500) -> None:
        self.target, self.l2, self.lambda_scale = target, l2, lambda_scale
        self.batch_size, self.max_iter = batch_size, max_iter

    def fit(self, data: Any) -> Self:
        if not isinstance(data, ValuationData):
            raise ShoprankError("DataInf.fit needs ValuationData with feature arrays and labels")
        prob = head_problem(data, self.target)
        fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=self.l2, max_iter=self.max_iter)
        v, info = datainf_values(prob.train_model(), prob.valid_model(), lambda_scale=self.lambda_scale,
                                 batch_size=self.batch_size)
        self.result_ = ValuationResult(v, names=data.point_names(), algorithm=self.name,
                                       n_updates=len(prob.y_valid), extra=info)
        return self


__all__ = ["LORA_MARKERS", "DataInf", "TowerLoss", "datainf_blocks", "datainf_values", "is_lora", "lora_datainf"]

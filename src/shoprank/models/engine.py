"""Pieces every fine-tuning loop shares: checkpoints that survive a kill, metric logging,
data-parallel gradient averaging and FGM adversarial steps.

Kept in the model layer (not `training/`) because the models' own `fit` uses them; the
training layer above only orchestrates runs (runner, hyperparameter search, torchrun).

Distributed training uses torch.distributed as it is: when the process was started by
`torchrun` (WORLD_SIZE > 1), `Distributed.from_env()` joins the gloo process group, every
rank trains on its own share of each epoch's batches, and gradients are averaged with
all-reduce before each optimiser step, so all ranks hold the same weights at every step.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


# -- distributed --------------------------------------------------------------------------------


@dataclass
class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the process group torchrun set up (gloo: CPU); single process otherwise."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def shard(self, batches: list[Any]) -> list[Any]:
        """This rank's batches: every world_size-th, and the same count on every rank (the
        remainder is dropped), so collective calls stay in step."""
        if not self.enabled:
            return batches
        n = len(batches) // self.world_size
        return batches[self.rank :: self.world_size][:n]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world_size

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


# -- checkpoints ----------------------------------------------------------------------------------


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


class Checkpointer:
    """Writes the whole training state (weights that train, optimiser, scheduler, random
    generators, position, early-stopping bookkeeping) to `dir/checkpoint.pt`.

    The file is written to a temporary name and renamed, so a kill mid-write leaves the
    previous checkpoint intact. `every_steps` > 0 also saves inside an epoch.
    """

    def __init__(self, directory: str | Path | None, *, every_steps: int = 0, enabled: bool = True,
                 keep_epochs: bool = False) -> None:
        self.dir = Path(directory) if directory else None
        self.every_steps = int(every_steps)
        self.enabled = bool(enabled) and self.dir is not None
        self.keep_epochs = bool(keep_epochs)  # also keep epoch-N.pt per finished epoch (TracIn reads them)

    @property
    def path(self) -> Path | None:
        return self.dir / CHECKPOINT_FILE if self.dir is not None else None

    def save(self, state: Mapping[str, Any]) -> None:
        if not self.enabled or self.path is None:
            return
        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(dict(state), tmp)
        os.replace(tmp, self.path)
        if self.keep_epochs and int(state.get("step", 0)) == 0 and "epoch" in state:
            keep = self.dir / f"epoch-{int(state['epoch'])}.pt"
            tmp2 = keep.with_suffix(".tmp")
            torch.save(dict(state), tmp2)
            os.replace(tmp2, keep)

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        out: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=False)
        return out

    def clear(self) -> None:
        if self.enabled and self.path is not None and self.path.exists():
            self.path.unlink()


# -- metric logging -------------------------------------------------------------------------------


class MetricLogger:
    """Scalars to TensorBoard event files under `log_dir` (nothing when log_dir is None)."""

    def __init__(self, log_dir: str | Path | None, *, enabled: bool = True) -> None:
        self.writer: Any = None
        if log_dir and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, int | float) and np.isfinite(v):
                self.writer.add_scalar(f"{prefix}{k}", float(v), int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


# -- validation metric ---------------------------------------------------------------------------


def graded_ndcg(scores: list[np.ndarray], grades: list[np.ndarray], k: int = 10) -> float:
    """Mean NDCG@k (gain 2^grade - 1) over lists with a positive grade: the early-stopping
    signal of search fine-tuning. The evaluation layer's reports are the reference numbers;
    this lighter copy keeps the model layer free of imports from the layers above it."""
    vals = []
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for s, g in zip(scores, grades, strict=True):
        g = np.asarray(g, np.float64)
        if not len(g) or g.max() <= 0:
            continue
        top = np.asarray(g)[np.argsort(-np.asarray(s), kind="stable")][:k]
        ideal = np.sort(g)[::-1][:k]
        vals.append(float(((2**top - 1) * disc[: len(top)]).sum() / ((2**ideal - 1) * disc[: len(ideal)]).sum()))
    return float(np.mean(vals)) if vals else float("nan")


# -- adversarial steps ----------------------------------------------------------------------------


def backward_with_fgm(tower: Any, loss_fn: Callable[[], torch.Tensor], *, epsilon: float, scale: float = 1.0) -> torch.Tensor:
    """Backward of loss_fn() and, when epsilon > 0, of the same loss under the FGM
    perturbation of the tower's trainable inputs (gradients add up). Returns the clean loss."""
    if epsilon <= 0:
        loss = loss_fn()
        (loss * scale).backward()
        return loss
    tower.adversarial_capture()
    try:
        loss = loss_fn()
        (loss * scale).backward()
        if tower.adversarial_apply(epsilon):
            adv = loss_fn()
            (adv * scale).backward()
    finally:
        tower.adversarial_off()
    return loss


__all__ = ["Checkpointer", "Distributed", "MetricLogger", "backward_with_fgm", "graded_ndcg", "rng_state",
           "set_rng_state"]

"""Fit a model for a task and save it with what is needed to evaluate it later."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.splits import DataSplit, split_dataset
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, get_model_class
from shoprank.training.card import write_card

TRAINING_FILE = "training.json"


@dataclass
class TrainResult:
    model: Ranker
    split: DataSplit
    seconds: float


def train_model(
    data: Dataset,
    task: str,
    model_name: str,
    *,
    params: dict[str, Any] | None = None,
    split: DataSplit | None = None,
    split_how: str = "auto",
    out: Path | None = None,
) -> TrainResult:
    cls = get_model_class(model_name)
    if task not in cls.tasks:
        raise ShoprankError(f"model {model_name!r} does not support task {task!r}; it supports {sorted(cls.tasks)}")
    sp = split if split is not None else split_dataset(data, split_how)
    try:
        model = cls(**(params or {}))
    except TypeError as e:  # an unknown keyword: say which settings exist
        import inspect

        known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
        raise ShoprankError(f"model {model_name!r}: {e}; its settings: {known or 'see its docs'}") from None
    t0 = time.perf_counter()
    model.fit(sp.train, sp.valid)
    secs = time.perf_counter() - t0
    if out is not None:
        model.save(out)
        info = {
            "task": task,
            "model": model_name,
            "dataset": data.name,
            "split": sp.kind,
            "split_sizes": sp.summary(),
            "fit_seconds": round(secs, 3),
            "data_summary": data.describe(),
            "catalog_hash": data.catalog_hash(),
        }
        (Path(out) / TRAINING_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        write_card(Path(out))
    return TrainResult(model, sp, secs)


def training_info(model_dir: Path) -> dict[str, Any]:
    f = Path(model_dir) / TRAINING_FILE
    if not f.exists():
        return {}
    info: dict[str, Any] = json.loads(f.read_text())
    return info

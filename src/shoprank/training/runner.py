"""Fit a model for a task and save it with what is needed to evaluate it later."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import DataSplit, has_predefined_split, record_weights, split_dataset
from shoprank.errors import ShoprankError, ShoprankWarning
from shoprank.models.base import Ranker, get_model_class, load_model
from shoprank.training.card import write_card

TRAINING_FILE = "training.json"


@dataclass
class TrainResult:
    model: Ranker
    split: DataSplit
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # what training.json holds (when saved)


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
    return _fit_and_save(model, data, sp, task, model_name, out)


def _fit_and_save(model: Ranker, data: Dataset, sp: DataSplit, task: str, model_name: str, out: Path | None,
                  extra: dict[str, Any] | None = None) -> TrainResult:
    n_weighted = weighted_records(sp.train)
    if n_weighted and not model.supports_weights:
        warnings.warn(f"model {model_name!r} ignores the `weight` column ({n_weighted:,} training records have a "
                      f"weight other than 1); models that honour it: {', '.join(weighted_models())}. To drop "
                      "records with it, remove their rows instead.", ShoprankWarning, stacklevel=2)
    t0 = time.perf_counter()
    model.fit(sp.train, sp.valid)
    secs = time.perf_counter() - t0
    info: dict[str, Any] = {}
    if out is not None:
        model.save(out)
        ts = data.interactions[Col.TIMESTAMP] if len(data.interactions) else None
        info = {
            "task": task,
            "model": model_name,
            "dataset": data.name,
            "split": sp.kind,
            "split_sizes": sp.summary(),
            "fit_seconds": round(secs, 3),
            "data_summary": data.describe(),
            "catalog_hash": data.catalog_hash(),
            # the newest event this model has seen: where `shoprank train --since last` starts
            "trained_until": None if ts is None else pd.Timestamp(ts.max()).isoformat(),
            **(extra or {}),
        }
        (Path(out) / TRAINING_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        write_card(Path(out))
    return TrainResult(model, sp, secs, info)


def weighted_records(data: Dataset) -> int:
    """How many events and judgments carry a training weight other than 1."""
    return sum(int((record_weights(t) != 1).sum()) for t in (data.interactions, data.judgments) if len(t))


def weighted_models() -> list[str]:
    """Registered models whose `fit` honours the `weight` column (imports every built-in model)."""
    from shoprank.models.base import BUILTIN_MODULES, MODEL_REGISTRY, _import_builtin_models

    _import_builtin_models(BUILTIN_MODULES)
    return sorted(name for name, cls in MODEL_REGISTRY.items() if cls.supports_weights)


# settings of the previous run that must not carry over into a continued one
_NOT_CARRIED = ("checkpoint_dir", "resume", "log_dir", "init_from", "epochs")


def continue_training(data: Dataset, previous: Path, *, since: str | pd.Timestamp = "last", out: Path,
                      params: dict[str, Any] | None = None, split_how: str = "auto") -> TrainResult:
    """Fine-tune a saved model further on the events logged after `since` ("last": the newest event
    the previous model saw, from its training.json).

    Older events stay in the users' histories (weight 0: context, never a target) and judgments are
    replayed, so search quality is not traded away for the new behaviour. A model that cannot
    warm-start (no `init_from` setting: the classical baselines, which are cheap) is refitted on
    all the data instead, and the result says so."""
    info = training_info(previous)
    if not info:
        raise ShoprankError(f"{previous}: no {TRAINING_FILE}; --since continues a model saved by `shoprank train`")
    task, name = str(info["task"]), str(info["model"])
    if isinstance(since, str) and since == "last":
        if not info.get("trained_until"):
            raise ShoprankError(f"{previous}/{TRAINING_FILE} has no trained_until; give --since a timestamp")
        cutoff = pd.Timestamp(info["trained_until"])
    else:
        try:
            cutoff = pd.Timestamp(since)
        except ValueError:
            raise ShoprankError(f"--since: not a timestamp or 'last': {since!r}") from None
    if cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize("UTC")
    prev = load_model(previous)
    if split_how == "auto" and not has_predefined_split(data):
        split_how = "leave_last_out"  # a time split would hold out exactly the new events
    sp = split_dataset(data, split_how)
    inter = sp.train.interactions
    new = (inter[Col.TIMESTAMP] > cutoff).to_numpy() if len(inter) else np.zeros(0, bool)
    n_new = int(new.sum())
    if n_new == 0:
        raise ShoprankError(f"no training events after {cutoff.isoformat()} in {data.name}; nothing to continue on")
    base = {k: v for k, v in prev.params.items() if k not in _NOT_CARRIED}
    if "tuning" in (params or {}) and (params or {})["tuning"] != base.get("tuning"):
        base.pop("tuning_config", None)  # the old strategy's settings do not fit the new one
    warm = "init_from" in prev.params
    if warm:
        w = record_weights(inter) * new
        train = sp.train.with_tables(interactions=inter.assign(**{Col.WEIGHT: w}))
        sp = replace(sp, train=train)
        kw = {**base, "epochs": 1, **(params or {}), "init_from": str(previous)}
    else:
        kw = {**base, **(params or {})}
    model = get_model_class(name)(**kw)
    extra = {"continued_from": str(previous), "since": cutoff.isoformat(), "new_events": n_new,
             "warm_start": warm}
    return _fit_and_save(model, data, sp, task, name, out, extra)


def training_info(model_dir: Path) -> dict[str, Any]:
    f = Path(model_dir) / TRAINING_FILE
    if not f.exists():
        return {}
    info: dict[str, Any] = json.loads(f.read_text())
    return info

"""Hyperparameter search with Optuna within a time budget.

The objective fits a model on the split's train part and asks `scorer` for a validation
number (higher is better). The scorer is passed in (the CLI hands over the evaluation
layer's validation NDCG / AUC), which keeps this module below the evaluation layer.

The default search space for the LM rankers covers what matters most on CPU: learning rate,
tuning strategy, the number of top layers (`top_k`) and the LoRA rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from shoprank.data.splits import DataSplit
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, get_model_class

Space = Mapping[str, Any]
Scorer = Callable[[Ranker, DataSplit], float]

# name -> ("float", low, high, log) | ("int", low, high) | ("cat", [choices]);
# keys "tuning_config.X" set a strategy setting, "X@strategy" only when that strategy is drawn
LM_SPACE: dict[str, tuple[Any, ...]] = {
    "lr": ("float", 1e-5, 3e-3, True),
    "tuning": ("cat", ["head", "top_k", "lora"]),
    "tuning_config.k@top_k": ("int", 1, 3),
    "tuning_config.r@lora": ("cat", [4, 8, 16]),
}


@dataclass
class TuneResult:
    """Best settings, their validation score, and every trial (a DataFrame)."""

    best_params: dict[str, Any]
    best_value: float
    trials: pd.DataFrame
    seconds: float
    study: Any = field(repr=False, default=None)


def _suggest(trial: Any, space: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    cond: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for key, spec in space.items():
        if "@" in key:
            cond[key] = (key.split("@", 1)[1], spec)
            continue
        params[key] = _draw(trial, key, spec)
    for key, (strategy, spec) in cond.items():
        if params.get("tuning") == strategy:
            params[key.split("@", 1)[0]] = _draw(trial, key, spec)
    out: dict[str, Any] = {}
    for key, v in params.items():  # "tuning_config.k" -> {"tuning_config": {"k": v}}
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = v
        else:
            out[key] = v
    return out


def _draw(trial: Any, name: str, spec: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=bool(spec[3]) if len(spec) > 3 else False)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "cat":
        return trial.suggest_categorical(name, list(spec[1]))
    raise ShoprankError(f"search space entry {name!r}: kind must be float, int or cat, got {kind!r}")


def tune(
    model_name: str,
    split: DataSplit,
    scorer: Scorer,
    *,
    space: Mapping[str, tuple[Any, ...]] | None = None,
    fixed: Mapping[str, Any] | None = None,
    n_trials: int | None = 20,
    timeout_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Search `space` (default: LM_SPACE for lm models) with TPE; stop after `n_trials` or
    `timeout_s` seconds, whichever comes first. A trial whose fit raises is recorded as
    failed (with its error) and the search goes on."""
    import optuna

    cls = get_model_class(model_name)
    if space is None:
        if model_name not in ("lm", "lm-click"):
            raise ShoprankError(f"no default search space for model {model_name!r}: pass space=")
        space = LM_SPACE
    if n_trials is None and timeout_s is None:
        raise ShoprankError("tune needs n_trials or timeout_s, or it would never stop")
    base = dict(fixed or {})

    def objective(trial: Any) -> float:
        params = base | _suggest(trial, space)
        trial.set_user_attr("params", params)
        model = cls(**params).fit(split.train, split.valid)
        return float(scorer(model, split))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=(ShoprankError, ValueError, RuntimeError),
                   show_progress_bar=progress)
    secs = time.perf_counter() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ShoprankError(f"no trial of {model_name!r} finished within the budget ({len(study.trials)} started)")
    rows = [{"trial": t.number, "state": t.state.name, "value": t.value,
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None,
             **{k: v for k, v in t.params.items()}} for t in study.trials]
    best = study.best_trial
    return TuneResult(dict(best.user_attrs["params"]), float(best.value or 0.0), pd.DataFrame(rows), secs, study)


__all__ = ["LM_SPACE", "TuneResult", "tune"]

"""Optuna hyperparameter search: conditional space, budget, failed trials, best settings."""

from __future__ import annotations

import optuna
import pytest

from shoprank.data.splits import DataSplit, split_dataset
from shoprank.data.synth import SynthConfig, synthesize
from shoprank.errors import ShoprankError
from shoprank.evaluation.protocol import evaluate_model
from shoprank.models.base import Ranker
from shoprank.models.lm import LMRanker
from shoprank.training.search import LM_SPACE, _suggest, tune


@pytest.fixture(scope="module")
def split() -> DataSplit:
    ds, _ = synthesize(SynthConfig.preset("tiny", seed=1))
    return split_dataset(ds, "time")


def _valid_ndcg(model: Ranker, split: DataSplit) -> float:
    return float(evaluate_model(model, split, "search", which="valid", n_bootstrap=0, progress=False)
                 ["metrics"]["ndcg@10"])


def test_lm_space_draws_strategy_settings_only_for_their_strategy() -> None:
    a = _suggest(optuna.trial.FixedTrial({"lr": 1e-4, "tuning": "top_k", "tuning_config.k@top_k": 2}), LM_SPACE)
    assert a == {"lr": 1e-4, "tuning": "top_k", "tuning_config": {"k": 2}}
    b = _suggest(optuna.trial.FixedTrial({"lr": 1e-3, "tuning": "head"}), LM_SPACE)
    assert b == {"lr": 1e-3, "tuning": "head"}
    LMRanker(**a), LMRanker(**b)  # valid settings for the model


def test_tune_finds_the_best_trial_and_records_all(split: DataSplit) -> None:
    space = {"k1": ("float", 0.3, 3.0, False), "b": ("float", 0.0, 1.0, False), "method": ("cat", ["lucene", "bad"])}
    res = tune("bm25", split, _valid_ndcg, space=space, n_trials=8, seed=0, progress=False)
    assert len(res.trials) == 8
    ok = res.trials[res.trials.state == "COMPLETE"]
    failed = res.trials[res.trials.state == "FAIL"]
    assert len(failed) and (res.trials.loc[failed.index, "params_method" if "params_method" in res.trials else "method"]
                            == "bad").all()
    assert res.best_value == pytest.approx(ok.value.max())
    assert res.best_params["method"] == "lucene" and 0.3 <= res.best_params["k1"] <= 3.0


def test_tune_needs_a_budget_and_a_space(split: DataSplit) -> None:
    with pytest.raises(ShoprankError, match="budget|never stop"):
        tune("lm", split, _valid_ndcg, n_trials=None, timeout_s=None)
    with pytest.raises(ShoprankError, match="search space"):
        tune("bm25", split, _valid_ndcg, n_trials=1)

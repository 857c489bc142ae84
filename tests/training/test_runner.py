"""The training runner: weighted data meets models that ignore weights."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.training.runner import train_model, weighted_models, weighted_records


def _shop(weights: list[float] | None) -> Dataset:
    items = pd.DataFrame({"item_id": list("abcd"), "title": ["red shoe", "blue shoe", "green hat", "black hat"]})
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2", "u3", "u3"], "item_id": list("abcdab"),
                          "event": "click", "timestamp": [1, 2, 3, 4, 5, 6]})
    if weights is not None:
        inter["weight"] = weights
    return Dataset.from_frames("w", items, inter)


def test_a_model_that_ignores_weights_says_so() -> None:
    ds = _shop([0.0, 1.0, 0.5, 1.0, 1.0, 1.0])  # the first events: training rows under leave-last-out
    assert weighted_records(ds) == 2
    with pytest.warns(UserWarning, match=r"'bpr' ignores the `weight` column \(2 training records"):
        train_model(ds, "recommend", "bpr", split_how="leave_last_out", params={"iterations": 5})
    assert {"lm", "lm-click", "lightgbm", "popularity", "itemknn", "transition", "als"} <= set(weighted_models())
    assert "bpr" not in weighted_models()


def test_unit_weights_and_no_weights_stay_quiet() -> None:
    for ds in (_shop(None), _shop([1.0] * 6)):
        assert weighted_records(ds) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            train_model(ds, "recommend", "popularity", split_how="leave_last_out")

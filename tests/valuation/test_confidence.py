"""Model confidence: a trained recommender's log-probability of each training event."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.errors import ShoprankError
from shoprank.models.base import get_model_class
from shoprank.valuation import model_confidence


def _shop() -> tuple[Dataset, int]:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": [f"t{i}" for i in range(6)]})
    rows = []
    for u in range(20):  # everyone goes i0 -> i1 -> i2, except one noisy click i0 -> i5
        seq = (0, 1, 2) if u else (0, 5, 2)
        for t, it in enumerate(seq):
            rows.append({"user_id": f"u{u}", "item_id": f"i{it}", "event": "click", "timestamp": 100 * u + t})
    ds = Dataset.from_frames("c", items, pd.DataFrame(rows))
    noisy = int(np.flatnonzero((ds.interactions["user_id"] == "u0") & (ds.interactions["item_id"] == "i5"))[0])
    return ds, noisy


def test_the_surprising_event_gets_the_lowest_value() -> None:
    ds, noisy = _shop()
    m = get_model_class("transition")().fit(ds)
    r = model_confidence(m, ds, progress=False)
    assert len(r.values) == len(ds.interactions) and np.isfinite(r.values).all()
    assert int(np.argmin(r.values)) == noisy
    first = ds.interactions.groupby("user_id").cumcount().to_numpy() == 0
    assert set(r.extra["no_history"].tolist()) == set(np.flatnonzero(first).tolist())
    np.testing.assert_allclose(r.values[first], np.median(r.values[~first]))
    # a softmax log-probability: never positive
    assert (r.values <= 1e-9).all()


def test_needs_a_fitted_model() -> None:
    ds, _ = _shop()
    with pytest.raises(ShoprankError, match="fitted"):
        model_confidence(get_model_class("transition")(), ds)

"""Model confidence: how surprising each training event is to a trained recommender.

The value of an interaction is the trained model's log-probability of its item given the
user's earlier events (a softmax over the catalog). Random or bot clicks are, by
construction, unlike what the rest of the data teaches, so a model trained for a short while
(before it memorises them: the "early-learning" / small-loss effect used by co-teaching and
confident learning) gives them low probability. It costs one scoring pass over the training
events and no retraining, which is what makes it affordable for the fine-tuned LM, where one
retraining takes minutes and Shapley-style methods would need thousands.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from tqdm.auto import tqdm

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import histories_for
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, UserBatch
from shoprank.valuation.result import ValuationResult


def model_confidence(model: Ranker, ds: Dataset, *, temperature: float | None = None, batch: int = 2048,
                     max_len: int = 50, progress: bool = True) -> ValuationResult:
    """One value per row of `ds.interactions` (same order): log p(item | earlier events).

    Rows without any earlier event get the median value (nothing to judge them by); they are
    listed in `extra["no_history"]`. `temperature` defaults to the model's own (1 if none)."""
    if not getattr(model, "fitted_", False):
        raise ShoprankError("model_confidence needs a fitted model")
    inter = ds.interactions
    if not len(inter):
        raise ShoprankError("model_confidence: the dataset has no interactions")
    t = float(temperature if temperature is not None else model.params.get("temperature", 1.0) or 1.0)
    h = histories_for(ds, inter, max_len=max_len, positives_only=True)
    items = ds.item_map.to_internal(inter[Col.ITEM_ID])
    has = np.array([len(x) > 0 for x in h.items])
    vals = np.full(len(inter), np.nan)
    rows = np.flatnonzero(has)
    if not rows.size:
        raise ShoprankError("model_confidence: no interaction has an earlier event to condition on")
    users = inter[Col.USER_ID].astype(str).to_numpy()
    for s in tqdm(range(0, len(rows), batch), desc="confidence", disable=not progress, unit="batch"):
        r = rows[s : s + batch]
        ub = UserBatch(users[r].tolist(), [h.items[i] for i in r], [h.labels[i] for i in r])
        sc = np.asarray(model.score_users(ub), dtype=np.float64) / t
        vals[r] = sc[np.arange(len(r)), items[r]] - logsumexp(sc, axis=1)
    vals[~has] = float(np.median(vals[has]))
    return ValuationResult(vals, algorithm="model-confidence",
                           extra={"no_history": np.flatnonzero(~has), "temperature": t})


__all__ = ["model_confidence"]

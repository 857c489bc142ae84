"""Evaluation protocols: turn a split into test inputs for each task and score a model.

- recommend, `next_item`: every positive test row is a target; its history is the user's
  context events strictly before it (the protocol of sequential datasets such as
  amazon-industrial, where earlier test events are legitimate input).
- recommend, `user_set`: one row per test user; history = their events before the test
  period, targets = the distinct items they engaged with during it (global time split).
- click: the test split's click rows (ratings or first exposures), history strictly before.
- search: graded NDCG over each held-out query's judged products.
A `cold_start` slice marks targets whose item never occurs in the training interactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.schema import Col
from shoprank.data.splits import (
    DataSplit,
    click_rows,
    cold_start_mask,
    histories_for,
    item_popularity,
    positive_mask,
)
from shoprank.errors import ShoprankError
from shoprank.evaluation.ranking import evaluate_click, evaluate_full_ranking, evaluate_search
from shoprank.models.base import Ranker, UserBatch

TASKS = ("recommend", "click", "search")


@dataclass
class RecTestSet:
    users: UserBatch
    targets: list[np.ndarray]
    slices: dict[str, np.ndarray] = field(default_factory=dict)
    protocol: str = "next_item"


def rec_testset(split: DataSplit, which: str = "test", protocol: str = "auto", max_len: int = 50) -> RecTestSet:
    part = getattr(split, which)
    inter = part.interactions[positive_mask(part.interactions)]
    if not len(inter):
        raise ShoprankError(f"the {which} split has no positive interactions to recommend")
    if protocol == "auto":
        protocol = "next_item" if split.kind in ("predefined", "leave_last_out") else "user_set"
    ctx = split.context
    if protocol == "next_item":
        h = histories_for(ctx, inter, max_len=max_len, positives_only=True)
        targets = [np.array([i]) for i in part.item_map.to_internal(inter[Col.ITEM_ID])]
        cold = cold_start_mask(split.train, inter)
        users = UserBatch(inter[Col.USER_ID].astype(str).tolist(), h.items, h.labels, h.times)
    elif protocol == "user_set":
        first = inter.sort_values(Col.TIMESTAMP, kind="stable").groupby(Col.USER_ID, sort=True).head(1)
        period_start = part.interactions[Col.TIMESTAMP].min()
        starts = first.assign(**{Col.TIMESTAMP: period_start})
        h = histories_for(ctx, starts, max_len=max_len, positives_only=True)
        item_idx = part.item_map.to_internal(inter[Col.ITEM_ID])
        grouped = pd.Series(item_idx, index=inter[Col.USER_ID].astype(str).to_numpy()).groupby(level=0)
        tmap = {u: np.unique(v.to_numpy()) for u, v in grouped}
        uids = starts[Col.USER_ID].astype(str).tolist()
        targets = [tmap[u] for u in uids]
        seen = set(split.train.item_map.to_internal(split.train.interactions[Col.ITEM_ID]).tolist())
        cold = np.array([any(int(t) not in seen for t in ts) for ts in targets])
        users = UserBatch(uids, h.items, h.labels, h.times)
    else:
        raise ShoprankError(f"unknown protocol {protocol!r}: next_item or user_set")
    return RecTestSet(users, targets, {"cold_start": cold, "warm": ~cold}, protocol)


def click_testset(split: DataSplit, which: str = "test", max_len: int = 50) -> tuple[UserBatch, np.ndarray, np.ndarray, np.ndarray]:
    part = getattr(split, which)
    rows = click_rows(part)
    if not len(rows):
        raise ShoprankError(f"the {which} split has no click/rating rows")
    h = histories_for(split.context, rows, max_len=max_len)
    users = UserBatch(rows[Col.USER_ID].astype(str).tolist(), h.items, h.labels, h.times)
    items = part.item_map.to_internal(rows[Col.ITEM_ID])
    return users, items, rows["label"].to_numpy(dtype=np.float32), cold_start_mask(split.train, rows)


def evaluate_model(
    model: Ranker,
    split: DataSplit,
    task: str,
    *,
    which: str = "test",
    ks: tuple[int, ...] = (10, 20),
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics dict (JSON-able) for one model on one task; same inputs for every model."""
    if task == "recommend":
        ts = rec_testset(split, which)
        rep = evaluate_full_ranking(
            model, ts.users, ts.targets, ks=ks, slices=ts.slices,
            item_popularity=item_popularity(split.train), n_bootstrap=n_bootstrap, progress=progress,
        )
        out = rep.to_dict()
        out["protocol"] = ts.protocol
        return out
    if task == "click":
        users, items, y, cold = click_testset(split, which)
        scores = model.score(users, items)
        groups = np.asarray(users.user_ids)
        res = evaluate_click(y, scores, groups=groups, slices={"cold_start": cold, "warm": ~cold}, n_bootstrap=n_bootstrap)
        if not getattr(model, "probabilistic", False):
            # scores in [0, 1] are not necessarily probabilities (a cosine, a popularity share)
            for block in (res, *res.get("slices", {}).values()):
                block["logloss"] = None
                block.pop("logloss_ci", None)
                block["logloss_skipped"] = f"model {model.name!r} does not output probabilities"
        res["n"] = len(y)
        return res
    if task == "search":
        j = getattr(split, which).judgments
        if not len(j):
            raise ShoprankError(f"the {which} split has no search judgments")
        g = j.groupby(Col.QUERY, sort=True)
        queries = list(g.groups)
        imap = split.context.item_map
        # judged products in a seeded random order, so that score ties are not broken by the
        # order of the judgments file (which may follow product ids or grades)
        rng = np.random.default_rng(0)
        judged = [g.get_group(q) for q in queries]
        judged = [x.iloc[rng.permutation(len(x))] for x in judged]
        cands = [imap.to_internal(x[Col.ITEM_ID]) for x in judged]
        # a dataset whose lowest grade means "irrelevant" (Home Depot: 1..3) says so in
        # meta["grade_min"]; gains start at zero there, so irrelevant results earn nothing
        gmin = float(split.context.meta.get("grade_min", 0.0))
        grades = [x[Col.GRADE].to_numpy(dtype=np.float64) - gmin for x in judged]
        qscores = model.score_query_items([str(q) for q in queries], cands)
        res = evaluate_search(qscores, grades, ks=ks, n_bootstrap=n_bootstrap)
        res.pop("per_query", None)
        res.setdefault("n", len(queries))
        return res
    raise ShoprankError(f"unknown task {task!r}: {', '.join(TASKS)}")


__all__ = ["TASKS", "RecTestSet", "click_testset", "evaluate_model", "rec_testset"]

"""Values -> training weights: the step between `shoprank value` and retraining.

Why: a values.csv is only useful once the low-value records stop steering the model. This
turns a values table (per record, or per group) and a rule into the dataset's optional
`weight` column, which the models that honour weights (see `shoprank.training.runner.
weighted_models`) read; nothing is deleted, so the same folder can be re-valued or re-weighed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import record_weights
from shoprank.errors import ShoprankError

# values.csv columns that describe the valuation, not the record
_RESULT_COLUMNS = ("index", "name", "value", "stderr", "count", "significantly_low")
FLAG = "significantly_low"  # groups.csv: the group's records are worth significantly less than the rest
# how a valued record is found again: judgments by (query, item), events by their own columns;
# plus the labeler / source where values.csv has them (several labelers judge the same pair)
_KEYS = {"judgments": [Col.QUERY, Col.ITEM_ID], "interactions": [Col.USER_ID, Col.ITEM_ID, Col.TIMESTAMP, Col.EVENT]}
_OPTIONAL_KEYS = {"judgments": [Col.LABELER], "interactions": [Col.SOURCE]}


@dataclass
class Weighing:
    """What `apply_values` did: the table it weighted, how many records and which groups."""

    table: str
    n_selected: int  # values rows the rule picked
    n_records: int  # records whose weight changed
    weight: float
    groups: list[str]


def _select(values: pd.DataFrame, drop_lowest: float | None, drop_below: float | None,
            drop_flagged: bool = False) -> np.ndarray:
    if (drop_lowest is not None) + (drop_below is not None) + bool(drop_flagged) != 1:
        raise ShoprankError("give exactly one rule: drop_lowest (a fraction), drop_below (a value) or "
                            "drop_flagged (the significantly low groups of a groups.csv)")
    if drop_flagged:
        if FLAG not in values.columns:
            raise ShoprankError(f"values: no {FLAG!r} column; drop_flagged needs the groups.csv of a point method "
                                "valued with --group-by")
        f = values[FLAG].astype(str).str.lower()
        bad = ~f.isin(["true", "false"])
        if bad.any():
            raise ShoprankError(f"values line {int(np.flatnonzero(bad)[0]) + 2}, field {FLAG!r}: not true or false")
        return (f == "true").to_numpy()
    v = pd.to_numeric(values["value"], errors="coerce").to_numpy(np.float64)
    if np.isnan(v).any():
        line = int(np.flatnonzero(np.isnan(v))[0]) + 2  # header is line 1
        raise ShoprankError(f"values line {line}, field 'value': not a number")
    if drop_below is not None:
        return v < drop_below
    assert drop_lowest is not None
    if not 0 < drop_lowest < 1:
        raise ShoprankError(f"drop_lowest must be a fraction in (0, 1), got {drop_lowest}")
    k = int(round(drop_lowest * len(v)))
    sel = np.zeros(len(v), bool)
    sel[np.argsort(v, kind="stable")[:k]] = True
    return sel


def apply_values(ds: Dataset, values: pd.DataFrame, *, drop_lowest: float | None = None,
                 drop_below: float | None = None, drop_flagged: bool = False, group_by: str | None = None,
                 weight: float = 0.0, table: str | None = None) -> tuple[Dataset, Weighing]:
    """A copy of `ds` in which the records the rule selects carry `weight` (0: drop as a target).

    `values` is a `shoprank value` values.csv: one row per record (with the record's columns:
    events are matched on user, item, timestamp and event; judgments on query and item) or one
    row per group (a column named after the grouping, e.g. `source`, `labeler` or an item column
    such as `category`; every record of the group gets the weight; `table` picks events or
    judgments where both could apply, by default the events). Rules: the `drop_lowest` fraction of rows by value, or every row
    valued below `drop_below`, or (`drop_flagged`, with a groups.csv and the `group_by` column it
    was valued by) every group flagged `significantly_low`. A selected row that matches no
    record is an error, never skipped. Existing weights are kept where they are lower."""
    if "value" not in values.columns:
        raise ShoprankError("values: no 'value' column; is this a `shoprank value` values.csv?")
    if "group" in values.columns and FLAG in values.columns:  # a groups.csv: name its grouping column
        if not group_by:
            raise ShoprankError("values look like a groups.csv: say which column the groups are of (group_by, "
                                "e.g. item_id or source)")
        values = values[["group", "value", FLAG]].rename(columns={"group": group_by})
    if weight < 0 or not np.isfinite(weight):
        raise ShoprankError(f"weight must be finite and >= 0, got {weight}")
    sel = _select(values, drop_lowest, drop_below, drop_flagged)
    rest = [c for c in values.columns if c not in _RESULT_COLUMNS]
    if table not in (None, "interactions", "judgments"):
        raise ShoprankError(f"table must be 'interactions' or 'judgments', got {table!r}")
    if len(rest) == 1:  # one row per group: the grouping column and the result columns
        col = rest[0]
        where = [t for t in ("interactions", "judgments") if col in getattr(ds, t).columns
                 and getattr(ds, t)[col].notna().any()]
        on_items = not where and col in ds.items.columns  # category, brand, ...: through each record's item
        if on_items:
            where = [t for t in ("interactions", "judgments") if len(getattr(ds, t))]
        if table is None:
            if not where:
                raise ShoprankError(f"values are per {col!r}, which is not a column of the events, judgments or "
                                    "items (time windows cannot be weighed from group values; value the records)")
            table = where[0]
        frame = getattr(ds, table)
        if table not in where:
            raise ShoprankError(f"values are per {col!r}, which the {table} do not have")
        labels = (ds.items[col].astype(str).to_numpy()[ds.item_map.to_internal(frame[Col.ITEM_ID])] if on_items
                  else frame[col].astype(str).to_numpy())
        groups = sorted(values.loc[sel, col].astype(str).unique().tolist())
        hit = np.isin(labels, groups)
    else:
        found_in = "judgments" if Col.QUERY in values.columns and "grade" in values.columns else "interactions"
        if table not in (None, found_in):
            raise ShoprankError(f"values are per {found_in} record; they cannot weigh the {table}")
        table = found_in
        keys = _KEYS[table]
        missing = [k for k in keys if k not in values.columns]
        if missing:
            raise ShoprankError(f"values have no {', '.join(missing)} column(s): cannot find the valued records")
        frame, groups = getattr(ds, table), []
        keys = keys + [k for k in _OPTIONAL_KEYS[table] if k in values.columns and k in frame.columns]
        want = values.loc[sel, keys].copy()
        have = frame[keys].copy()
        if Col.TIMESTAMP in keys:
            want[Col.TIMESTAMP] = pd.to_datetime(want[Col.TIMESTAMP], utc=True)
        for k in keys:
            if k != Col.TIMESTAMP:
                want[k], have[k] = want[k].fillna("").astype(str), have[k].fillna("").astype(str)
        found = pd.MultiIndex.from_frame(want).isin(pd.MultiIndex.from_frame(have))
        if not found.all():
            line = int(np.flatnonzero(sel)[np.flatnonzero(~found)[0]]) + 2
            raise ShoprankError(f"values line {line}: no {table} record with "
                                + ", ".join(f"{k}={values.iloc[line - 2][k]}" for k in keys)
                                + " in this dataset (values from another dataset or split?)")
        hit = pd.MultiIndex.from_frame(have).isin(pd.MultiIndex.from_frame(want))
    w = record_weights(frame)
    changed = hit & (w > weight)
    w = np.where(hit, np.minimum(w, np.float32(weight)), w)
    out = ds.with_tables(**{table: frame.assign(**{Col.WEIGHT: w})})
    return out, Weighing(table, int(sel.sum()), int(changed.sum()), float(weight), groups)

"""One valuation job on a dataset folder: what `shoprank value` and the demo run.

Why a function apart from the CLI: the demo, the CLI and notebooks want the same steps
(records, method, group table with costs, acquisition projection, removal curves) and the
same outputs (values.csv, groups.csv, report.html), with the CLI only parsing arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.splits import DataSplit
from shoprank.errors import ShoprankError
from shoprank.valuation.acquisition import AcquisitionPlanner, aggregate, group_table
from shoprank.valuation.base import get_method
from shoprank.valuation.experiments import CORRECTIONS, low_value_groups, value_curves
from shoprank.valuation.features import (
    NEXT_ITEM_METHODS,
    Records,
    build_records,
    interaction_records,
)
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.stopping import MaxTime, MaxUpdates, RelativeStandardError
from shoprank.valuation.utility import ModelUtility

MAX_EXACT_JOB = 14  # exact methods: at most 2^14 retrainings in a job
MAX_CURVE_ROWS = 20_000  # removal curves retrain ~30 times: skipped above this


@dataclass
class ValuationJob:
    """Everything a valuation run produced (see `run_valuation`)."""

    method: str
    task: str
    records: Records
    result: ValuationResult  # per record, or per group for group methods
    group_by: str | None = None
    groups: pd.DataFrame | None = None  # group table (value, cost, value per cost, projection)
    curves: pd.DataFrame | None = None  # removal curves
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def _grouped(self) -> bool:
        return self.group_by is not None and len(self.result) != len(self.records.frame)

    def values_frame(self) -> pd.DataFrame:
        """values.csv: one row per valued record (with its columns) or per group."""
        df = self.result.to_dataframe()
        if self._grouped:
            return df.rename(columns={"name": self.group_by or "group"})
        show = self.records.frame.reset_index(drop=True)
        cols = [c for c in show.columns if c not in df.columns]
        return pd.concat([df, show[cols].iloc[df["index"].to_numpy()].reset_index(drop=True)], axis=1)

    def save(self, out: Path) -> dict[str, Path]:
        from shoprank.reports.valuation import write_report

        out.mkdir(parents=True, exist_ok=True)
        files = {"values": out / "values.csv"}
        self.values_frame().to_csv(files["values"], index=False)
        if self.groups is not None:
            files["groups"] = out / "groups.csv"
            self.groups.to_csv(files["groups"], index=False)
        if self.curves is not None:
            files["curves"] = out / "removal_curves.csv"
            self.curves.to_csv(files["curves"], index=False)
        files["report"] = write_report(self, out / "report.html")
        return files


def retrain_without(ds: Dataset, split: DataSplit, job: ValuationJob, *, below: float = 0.0) -> dict[str, Any]:
    """Close the loop for interaction groups: retrain the light recommender without the groups
    valued below `below` and compare NDCG@10 on the test period (which the values never saw)."""
    if job.task != "interactions" or job.group_by is None or job.groups is None:
        raise ShoprankError("retrain_without needs a grouped valuation of interaction records")
    rec = interaction_records(ds, split, targets="test")
    u = ModelUtility(rec.model, rec.data, rec.scorer)
    labels = job.records.group_labels(job.group_by)
    drop = [g for g, v in zip(job.groups["group"], job.groups["value"], strict=True) if v < below]
    keep = np.flatnonzero(~np.isin(labels, drop))
    return {"dropped": drop, "n_dropped": int(len(labels) - len(keep)),
            "test_all": u(np.arange(len(labels))), "test_kept": u(keep), "metric": rec.scorer.name
            if hasattr(rec.scorer, "name") else str(rec.scorer)}


def _group_costs(records: Records, labels: np.ndarray) -> dict[Any, float]:
    if Col.COST not in records.frame.columns:
        return {}
    c = pd.Series(records.frame[Col.COST].to_numpy(dtype=np.float64), index=labels)
    c = c.groupby(level=0).mean().dropna()
    return {k: float(v) for k, v in c.items()}


def run_valuation(
    ds: Dataset, method: str, *, task: str = "auto", group_by: str | None = None, model_dir: Path | None = None,
    params: dict[str, Any] | None = None, split: DataSplit | None = None, cache_dir: Path | None = None,
    costs: dict[Any, float] | None = None, max_rows: int | None = None, curves: bool = True,
    acquisition: bool = True, n_more: int = 1000, seed: int = 0, records: Records | None = None,
    group_test: str = "bonferroni",
) -> ValuationJob:
    """Value the records of `ds` with a registered method; with `group_by`, value groups
    (retraining methods value the groups directly; point methods are summed per group, and each
    group's records are t-tested against the rest, corrected over groups by `group_test`)."""
    t0 = time.perf_counter()
    if group_test not in CORRECTIONS:
        raise ShoprankError(f"unknown --group-test {group_test!r}; choose one of {', '.join(CORRECTIONS)}")
    params = dict(params or {})
    m = get_method(method, **params)
    rec = records if records is not None else build_records(ds, task, split=split, model_dir=model_dir,
                                                            cache_dir=cache_dir, max_rows=max_rows, seed=seed)
    notes: list[str] = list(rec.notes)
    if rec.task == "next-item" and method not in NEXT_ITEM_METHODS:
        raise ShoprankError(f"method {method!r} cannot value next-item records (their targets are lists of "
                            f"item ids); use one of {NEXT_ITEM_METHODS}")
    labels = rec.group_labels(group_by) if group_by else None
    low: pd.DataFrame | None = None  # point methods: the per-group test of record values
    if m.level == "points":
        if rec.task == "interactions" and method != "random":
            raise ShoprankError(f"method {method!r} values feature vectors: use --task click or --task search "
                                "(interaction records are valued by retraining methods, e.g. tmc-shapley)")
        if "target" not in params and hasattr(m, "target"):
            m.target = ("classification" if rec.task == "click" else "lists" if rec.task == "next-item"
                        else "graded" if method == "knn-shapley" else "regression")
        if hasattr(m, "seed") and "seed" not in params:
            m.seed = seed
        point = m.fit(rec.data).result
        result = point
        group_res = None
        if labels is not None:
            group_res = aggregate(point, labels, centre=not m.additive)
            if not m.additive:
                notes.append(f"{method} values are scores, not contributions: a group's value is the sum of its "
                             "records' values minus the mean record value")
            low = low_value_groups(point.values, labels, correction=group_test).rename(  # worth less than the rest?
                columns={"t": "low_t", "p": "low_p", "q": "low_q", "flagged": "significantly_low"})[
                ["group", "low_t", "low_p", "low_q", "significantly_low"]]
    else:
        data = rec.data.with_groups(labels)
        u = ModelUtility(rec.model, data, rec.scorer)
        if method.startswith("exact") and u.n_players > MAX_EXACT_JOB:
            raise ShoprankError(f"{method} retrains on all 2^{u.n_players} coalitions; use tmc-shapley, "
                                f"beta-shapley or msr-banzhaf for more than {MAX_EXACT_JOB} groups")
        if labels is None and u.n_players > 500:
            notes.append(f"{u.n_players} records valued one by one by retraining: consider --group-by")
        if hasattr(m, "stopping") and "stopping" not in params:
            m.stopping = RelativeStandardError(0.05) | MaxUpdates(max(100, 10 * u.n_players)) \
                | MaxTime(600)
        if hasattr(m, "seed") and "seed" not in params:
            m.seed = seed
        result = m.fit(u).result
        group_res = result if labels is not None else None
    job = ValuationJob(method, rec.task, rec, result, group_by, notes=notes)
    if group_res is not None and labels is not None:
        names, members = rec.data.with_groups(labels).group_index()
        sizes = {g: len(mm) for g, mm in zip(names, members, strict=True)}
        cost = {**_group_costs(rec, labels), **(costs or {})}
        table = group_table(group_res, sizes, cost)
        if acquisition and len(names) <= 50 and rec.model is not None:  # no model to retrain: no projection
            plan = AcquisitionPlanner(rec.model, rec.scorer, costs=cost, n_more=n_more, seeds=(seed,))
            table = plan.fit(rec.data.with_groups(labels), group_res).table_
        if low is not None:
            table = table.merge(low, on="group", how="left")
            n_low = int(table["significantly_low"].sum())
            if n_low:
                notes.append(f"{n_low} {group_by} group(s) worth significantly less per record than the rest "
                             f"(one-sided t-test, {CORRECTIONS[group_test]}-adjusted p < 0.01): "
                             "column significantly_low")
        job.groups = table
    if curves and m.level == "points" and rec.task != "interactions" and rec.model is not None:
        if len(rec.frame) <= MAX_CURVE_ROWS:
            job.curves = value_curves({method: result.values}, rec.data, rec.model, rec.scorer,
                                      random_seeds=(seed, seed + 1, seed + 2))
        else:
            notes.append(f"removal curves skipped: {len(rec.frame)} records > {MAX_CURVE_ROWS}")
    job.seconds = time.perf_counter() - t0
    return job

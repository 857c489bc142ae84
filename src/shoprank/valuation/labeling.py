"""Which unlabelled (query, product) pairs to send to annotators next.

Why: judgments cost money per pair. `next_to_label` fits a relevance model on the judgments
the shop already has and asks `ActiveLabeler` for the `k` pairs of a candidate pool whose
labels would teach that model the most. The features are the ones the homedepot benchmark
measured the strategies on (`benchmarks/valuation.py --only active --active-features
learned`): the elementwise product of the query's and the product's vectors, so the model
learns from the labels which dimensions of the encoder matter for relevance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.errors import DataError, ShoprankError
from shoprank.valuation.acquisition import ActiveLabeler
from shoprank.valuation.features import Embedder


@dataclass
class LabelBatch:
    """The pairs to label, best first, and what was left out of the pool and why."""

    pairs: pd.DataFrame
    strategy: str
    n_pool: int
    n_labelled: int
    relevant_from: float
    notes: list[str] = field(default_factory=list)

    def to_csv(self, path: str | Path) -> Path:
        """A sheet for annotators: fill `grade` (and `labeler`), then append it to judgments.csv."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        out = self.pairs.assign(**{Col.GRADE: "", Col.LABELER: ""})
        out.to_csv(p, index=False)
        return p


def read_pool(path: str | Path, ds: Dataset) -> pd.DataFrame:
    """Candidate pairs from a CSV with `query` and `item_id` columns; every bad row is an error."""
    p = Path(path)
    if not p.exists():
        raise ShoprankError(f"{p}: no such file")
    frame = pd.read_csv(p, dtype={Col.QUERY: str, Col.ITEM_ID: str}, keep_default_na=False)
    for col in (Col.QUERY, Col.ITEM_ID):
        if col not in frame.columns:
            raise DataError(f"missing column (have: {', '.join(map(str, frame.columns))})", file=str(p), line=1,
                            column=col)
    for col in (Col.QUERY, Col.ITEM_ID):
        empty = np.flatnonzero(frame[col].astype(str).str.strip() == "")
        if len(empty):
            raise DataError("empty value", file=str(p), line=int(empty[0]) + 2, column=col)
    unknown = np.flatnonzero(ds.item_map.to_internal(frame[Col.ITEM_ID], missing=-1) < 0)
    if len(unknown):
        raise DataError(f"{frame[Col.ITEM_ID].iloc[unknown[0]]!r} is not in the catalog "
                        f"({len(unknown)} such rows)", file=str(p), line=int(unknown[0]) + 2, column=Col.ITEM_ID)
    return frame[[Col.QUERY, Col.ITEM_ID]].assign(**{"line": np.arange(len(frame)) + 2})


def next_to_label(ds: Dataset, pool: pd.DataFrame, k: int, *, strategy: str = "fisher",
                  relevant_from: float | None = None, embedder: Embedder | None = None,
                  seed: int = 0) -> LabelBatch:
    """The `k` pool pairs to label next, best first, given the dataset's judgments.

    A pair counts as relevant at `grade >= relevant_from` (default: the middle of the grades
    seen). Pool pairs that are already judged, and repeats within the pool, are not asked
    again; the batch's notes say how many there were.
    """
    from sklearn.linear_model import LogisticRegression

    if k < 1:
        raise ShoprankError(f"k must be >= 1, got {k}")
    missing = [c for c in (Col.QUERY, Col.ITEM_ID) if c not in pool.columns]
    if missing:
        raise ShoprankError(f"the pool needs columns {Col.QUERY!r} and {Col.ITEM_ID!r}; missing: {', '.join(missing)}")
    if "line" not in pool.columns:  # a frame built in code: number its rows as a CSV would
        pool = pool.assign(line=np.arange(len(pool)) + 2)
    pool = pool.reset_index(drop=True)
    judged = ds.judgments
    if not len(judged):
        raise ShoprankError(f"dataset {ds.name!r} has no judgments to learn relevance from; label a random "
                            "sample of the pool first")
    grades = judged[Col.GRADE].to_numpy(dtype=np.float64)
    cut = float(relevant_from) if relevant_from is not None else float((grades.min() + grades.max()) / 2)
    notes = []
    key = pool[Col.QUERY].astype(str) + "\x00" + pool[Col.ITEM_ID].astype(str)
    done = set(judged[Col.QUERY].astype(str) + "\x00" + judged[Col.ITEM_ID].astype(str))
    seen = key.isin(done)
    rep = key.duplicated() & ~seen
    if seen.any():
        notes.append(f"{int(seen.sum())} pool pairs are already judged (first at line {int(pool['line'][seen].iloc[0])})"
                     " and were not considered")
    if rep.any():
        notes.append(f"{int(rep.sum())} pool pairs repeat an earlier pool row (first at line "
                     f"{int(pool['line'][rep].iloc[0])}) and were considered once")
    cand = pool[~seen & ~rep].reset_index(drop=True)
    if not len(cand):
        raise ShoprankError("no pool pair is left to label: every one is already judged")

    emb = embedder or Embedder(ds)
    item_emb = emb.items()
    qs = sorted(set(judged[Col.QUERY].astype(str)) | set(cand[Col.QUERY].astype(str)))
    qv = dict(zip(qs, emb.queries(qs), strict=True))

    def feats(frame: pd.DataFrame) -> np.ndarray:
        q = np.stack([qv[s] for s in frame[Col.QUERY].astype(str)])
        return (q * item_emb[ds.item_map.to_internal(frame[Col.ITEM_ID])]).astype(np.float64)

    y = (grades >= cut).astype(int)
    al = ActiveLabeler(LogisticRegression(max_iter=1000), strategy=strategy, seed=seed).fit(feats(judged), y)
    xc = feats(cand)
    pick = al.select(xc, min(k, len(cand)))
    p = np.asarray(al.model_.predict_proba(xc[pick]), dtype=np.float64)
    out = cand.iloc[pick].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["p_relevant"] = p[:, -1] if p.shape[1] > 1 else float(y[0])
    if Col.TITLE in ds.items.columns:
        out[Col.TITLE] = ds.items[Col.TITLE].to_numpy()[ds.item_map.to_internal(out[Col.ITEM_ID])]
    out = out.rename(columns={"line": "pool_line"})
    if len(np.unique(y)) < 2:
        notes.append(f"every judgment is on one side of grade {cut:g}: the model cannot tell relevant from not yet, "
                     "so the batch only spreads over the pool")
    return LabelBatch(out, strategy, len(pool), len(judged), cut, notes)

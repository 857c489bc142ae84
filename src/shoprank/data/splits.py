"""Leak-free splits, user histories and negative sampling.

Rules that keep the answer out of the inputs:
- a global time split puts all rows with one timestamp on the same side of each boundary;
- a history used as model input holds only events strictly before the predicted one, in
  (timestamp, tie-break) order, where the tie-break is a seeded random key, never the label;
- predefined splits that datasets ship with (the `split` column) are respected, and
  `history` rows are model input only, never training rows or targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoprank.data.dataset import Dataset
from shoprank.data.schema import EVENT_STRENGTH, Col, Split
from shoprank.errors import ShoprankError

ORDER = "_order"  # tie-break key column added by `ordered`


@dataclass
class DataSplit:
    """Train/valid/test Datasets sharing one catalog, plus the full event log as context."""

    train: Dataset
    valid: Dataset
    test: Dataset
    context: Dataset  # every event (all splits), for building histories at prediction time
    kind: str

    def summary(self) -> dict[str, int]:
        return {
            "train": len(self.train.interactions),
            "valid": len(self.valid.interactions),
            "test": len(self.test.interactions),
        }


def ordered(inter: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Interactions sorted by (timestamp, seeded random tie-break); adds column `_order`."""
    rng = np.random.default_rng(seed)
    out = inter.copy()
    out[ORDER] = rng.permutation(len(out)) if len(out) else np.array([], dtype=np.int64)
    return out.sort_values([Col.TIMESTAMP, ORDER], kind="stable").reset_index(drop=True)


def _sub(ds: Dataset, inter: pd.DataFrame, judg: pd.DataFrame | None = None) -> Dataset:
    return ds.with_tables(
        interactions=inter.drop(columns=[ORDER], errors="ignore").reset_index(drop=True),
        judgments=ds.judgments.iloc[0:0] if judg is None else judg.reset_index(drop=True),
    )


def has_predefined_split(ds: Dataset) -> bool:
    return Col.SPLIT in ds.interactions.columns and bool(ds.interactions[Col.SPLIT].notna().any())


def predefined_split(ds: Dataset) -> DataSplit:
    """Use the `split` column shipped with the data. Without valid rows, the last
    training event of each user becomes validation (for early stopping)."""
    inter = ds.interactions
    s = inter[Col.SPLIT].fillna(Split.TRAIN).astype(str)
    train, valid, test = inter[s == Split.TRAIN], inter[s == Split.VALID], inter[s == Split.TEST]
    if not len(test):
        raise ShoprankError(f"dataset {ds.name!r}: predefined split has no test rows")
    if not len(valid):
        tr, va = _last_per_user(train, seed=0)
        train, valid = tr, va
    return DataSplit(_sub(ds, train), _sub(ds, valid), _sub(ds, test), ds, "predefined")


def time_split(ds: Dataset, valid_frac: float = 0.1, test_frac: float = 0.1) -> DataSplit:
    """Global time split by quantiles of the timestamp; equal timestamps never straddle a
    boundary. Predefined `history` rows stay out of every split (context only)."""
    if not 0 <= valid_frac < 1 or not 0 < test_frac < 1 or valid_frac + test_frac >= 1:
        raise ShoprankError("valid_frac and test_frac must be in [0,1) and sum below 1")
    inter = ds.interactions
    usable = inter
    if Col.SPLIT in inter.columns:
        usable = inter[inter[Col.SPLIT].fillna("") != Split.HISTORY]
    ts = usable[Col.TIMESTAMP]
    t_test = ts.quantile(1 - test_frac, interpolation="higher")
    t_valid = ts.quantile(1 - test_frac - valid_frac, interpolation="higher") if valid_frac else t_test
    train = usable[ts < t_valid]
    valid = usable[(ts >= t_valid) & (ts < t_test)]
    test = usable[ts >= t_test]
    return DataSplit(_sub(ds, train), _sub(ds, valid), _sub(ds, test), ds, "time")


def _last_per_user(inter: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    o = ordered(inter, seed)
    last = o.groupby(Col.USER_ID, sort=False).tail(1)
    n_per_user = o.groupby(Col.USER_ID, sort=False)[Col.USER_ID].transform("size")
    # users with a single event stay in training: they have no history to predict from
    held = last[n_per_user.loc[last.index] > 1]
    rest = o.drop(index=held.index)
    return rest, held


def leave_last_out(ds: Dataset, seed: int = 0, with_valid: bool = True) -> DataSplit:
    """Per user: last event -> test, the one before -> valid (if `with_valid`), rest -> train.
    Ties on the last timestamp are broken by a seeded random key, not by row order."""
    inter = ds.interactions
    if Col.SPLIT in inter.columns:
        inter = inter[inter[Col.SPLIT].fillna("") != Split.HISTORY]
    rest, test = _last_per_user(inter, seed)
    if with_valid:
        rest, valid = _last_per_user(rest, seed + 1)
    else:
        valid = rest.iloc[0:0]
    return DataSplit(_sub(ds, rest), _sub(ds, valid), _sub(ds, test), ds, "leave_last_out")


def split_dataset(ds: Dataset, how: str = "auto", **kw: float) -> DataSplit:
    """`auto`: the data's predefined split if it has one, else a global time split."""
    if how == "auto":
        how = "predefined" if has_predefined_split(ds) else "time"
    if not len(ds.interactions):
        # judgments only (a search dataset): the catalog is shared, queries are split
        out = DataSplit(_sub(ds, ds.interactions), _sub(ds, ds.interactions), _sub(ds, ds.interactions), ds, "query")
    elif how == "predefined":
        out = predefined_split(ds)
    elif how == "time":
        out = time_split(ds, **kw)
    elif how in ("leave_last_out", "loo"):
        out = leave_last_out(ds)
    else:
        raise ShoprankError(f"unknown split {how!r}: use auto, predefined, time or leave_last_out")
    if len(ds.judgments):
        jt, jv, jte = query_split(ds)
        out.train = out.train.with_tables(judgments=jt)
        out.valid = out.valid.with_tables(judgments=jv)
        out.test = out.test.with_tables(judgments=jte)
    return out


# -- positives, matrices and sequences -------------------------------------------


def trainable(inter: pd.DataFrame) -> pd.DataFrame:
    """Rows a model may learn from: everything except predefined `history` (context) rows."""
    if Col.SPLIT in inter.columns:
        return inter[inter[Col.SPLIT].fillna("") != Split.HISTORY]
    return inter


# explicit labels at or below this are dislikes (TALLRec-style binary ratings: 1 like, 0 dislike)
LIKED = 0.5


def positive_mask(inter: pd.DataFrame, min_event: str = "click", label_threshold: float = LIKED) -> pd.Series:
    """Which rows are positive feedback: events at or above `min_event` in the funnel, or
    explicit labels above the threshold."""
    strength = inter[Col.EVENT].map(EVENT_STRENGTH).astype("float64")
    is_rating = inter[Col.EVENT] == "rating"
    lab = inter[Col.LABEL] if Col.LABEL in inter.columns else pd.Series(np.nan, index=inter.index)
    pos_event = ~is_rating & (strength >= EVENT_STRENGTH[min_event])
    pos_label = is_rating & (lab.astype("float64") > label_threshold)
    return (pos_event | pos_label).fillna(False).astype(bool)


def _matrix_rows(ds: Dataset, users: pd.Index | None, positives_only: bool
                 ) -> tuple[pd.DataFrame, pd.Index, np.ndarray, np.ndarray]:
    """The trainable events that land in a user x item matrix: (events, user index, rows, cols)."""
    inter = trainable(ds.interactions)
    if positives_only:
        inter = inter[positive_mask(inter)]
    uidx = pd.Index(sorted(inter[Col.USER_ID].astype(str).unique())) if users is None else users
    rows = uidx.get_indexer(pd.Index(inter[Col.USER_ID].astype(str)))
    inter, rows = inter[rows >= 0], rows[rows >= 0]
    return inter, uidx, rows, ds.item_map.to_internal(inter[Col.ITEM_ID].to_numpy())


def interaction_matrix(ds: Dataset, *, users: pd.Index | None = None, positives_only: bool = True) -> tuple[sp.csr_matrix, pd.Index]:
    """User x item matrix of summed event strengths (explicit ratings count 1 if positive).

    Returns the CSR matrix (float32) and the user index (external ids, row order)."""
    inter, uidx, rows, cols = _matrix_rows(ds, users, positives_only)
    w = inter[Col.EVENT].map(EVENT_STRENGTH).fillna(1.0).to_numpy(dtype=np.float32)
    m = sp.csr_matrix((w, (rows, cols)), shape=(len(uidx), ds.n_items), dtype=np.float32)
    m.sum_duplicates()
    return m, uidx


def positive_weight_matrix(ds: Dataset, *, users: pd.Index | None = None) -> tuple[sp.csr_matrix, pd.Index]:
    """User x item matrix of each positive pair's training weight: the largest `weight` among
    the pair's positive events (1 without the column); pairs whose events all weigh 0 are absent.

    Why the largest: a pair is a positive because of its events, so it is as trustworthy as
    the most trustworthy one (a bot click beside a real purchase does not discredit it).
    Same rows as `interaction_matrix` (users with only weight-0 events keep an empty row)."""
    inter, uidx, rows, cols = _matrix_rows(ds, users, True)
    best = pd.Series(record_weights(inter)).groupby([rows, cols], sort=True).max()
    r, c = (best.index.get_level_values(i).to_numpy() for i in (0, 1))
    v = best.to_numpy(dtype=np.float32)
    keep = v > 0
    m = sp.csr_matrix((v[keep], (r[keep], c[keep])), shape=(len(uidx), ds.n_items), dtype=np.float32)
    return m, uidx


def user_sequences(ds: Dataset, *, positives_only: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Each user's items (internal ids) in time order: the input of sequential models."""
    return {u: idx for u, (idx, _) in user_sequences_weighted(ds, positives_only=positives_only, seed=seed).items()}


def user_sequences_weighted(ds: Dataset, *, positives_only: bool = True, seed: int = 0
                            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`user_sequences` plus each event's training weight (the optional `weight` column, 1 where
    absent), in the same order: how value-aware retraining down-weights individual events."""
    inter = trainable(ds.interactions)
    if positives_only:
        inter = inter[positive_mask(inter)]
    o = ordered(inter, seed)
    idx = ds.item_map.to_internal(o[Col.ITEM_ID])
    w = record_weights(o)
    users = o[Col.USER_ID].astype(str).to_numpy()
    order = np.argsort(users, kind="stable")
    us, starts = np.unique(users[order], return_index=True)
    parts = np.split(idx[order], starts[1:])
    wparts = np.split(w[order], starts[1:])
    return dict(zip(us.tolist(), zip(parts, wparts, strict=True), strict=True))


def record_weights(frame: pd.DataFrame) -> np.ndarray:
    """The `weight` column as float32 (missing column or NaN = 1); negative weights are an error."""
    if Col.WEIGHT not in frame.columns:
        return np.ones(len(frame), np.float32)
    w = pd.to_numeric(frame[Col.WEIGHT], errors="coerce").fillna(1.0).to_numpy(dtype=np.float32)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ShoprankError(f"column {Col.WEIGHT!r}: weights must be finite and >= 0 "
                            f"(row {int(np.flatnonzero((w < 0) | ~np.isfinite(w))[0])})")
    return w


def item_popularity(ds: Dataset, *, weighted: bool = False) -> np.ndarray:
    """Positive-interaction counts per catalog item (0 for items never seen); `weighted` sums
    the events' training weights instead of counting them."""
    inter = trainable(ds.interactions)
    inter = inter[positive_mask(inter)]
    w = record_weights(inter).astype(np.float64) if weighted else None
    return np.bincount(ds.item_map.to_internal(inter[Col.ITEM_ID]), weights=w, minlength=ds.n_items).astype(np.float64)


# -- histories at prediction time --------------------------------------------------


@dataclass
class Histories:
    """History (internal ids, oldest first), labels and times for each target row."""

    items: list[np.ndarray]
    labels: list[np.ndarray]
    times: list[np.ndarray]


def histories_for(
    context: Dataset,
    targets: pd.DataFrame,
    *,
    max_len: int = 50,
    positives_only: bool = False,
    seed: int = 0,
) -> Histories:
    """For each target row (user_id, timestamp), the user's context events strictly before it.

    Events at the very same timestamp as the target are excluded (they could reveal the
    answer, e.g. a purchase logged in the same second). Explicit ratings keep their label.
    """
    inter = context.interactions
    if positives_only:
        inter = inter[positive_mask(inter)]
    o = ordered(inter, seed)
    users = o[Col.USER_ID].astype(str).to_numpy()
    order = np.argsort(users, kind="stable")  # stable: keeps time order inside each user
    us, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    items = context.item_map.to_internal(o[Col.ITEM_ID].to_numpy()[order])
    ts = o[Col.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64)[order]
    lab_src = o[Col.LABEL] if Col.LABEL in o.columns else pd.Series(np.nan, index=o.index)
    is_rating = (o[Col.EVENT] == "rating").to_numpy()[order]
    labels = np.where(is_rating, lab_src.to_numpy(dtype=np.float64, na_value=np.nan)[order], 1.0).astype(np.float32)
    pos = {u: (s, c) for u, s, c in zip(us.tolist(), starts.tolist(), counts.tolist(), strict=True)}

    t_users = targets[Col.USER_ID].astype(str).tolist()
    t_ts = targets[Col.TIMESTAMP].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    out_i: list[np.ndarray] = []
    out_l: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for u, t in zip(t_users, t_ts, strict=True):
        if u not in pos:
            out_i.append(empty_i)
            out_l.append(empty_f)
            out_t.append(np.zeros(0, np.int64))
            continue
        s, c = pos[u]
        end = s + int(np.searchsorted(ts[s : s + c], t, side="left"))
        start = max(s, end - max_len)
        out_i.append(items[start:end])
        out_l.append(labels[start:end])
        out_t.append(ts[start:end] // 1_000_000_000)
    return Histories(out_i, out_l, out_t)


# -- negative sampling ------------------------------------------------------------


def sample_negatives(
    n_items: int,
    positives: Sequence[np.ndarray],
    n_neg: int,
    *,
    strategy: str = "uniform",
    popularity: np.ndarray | None = None,
    alpha: float = 0.75,
    seed: int = 0,
) -> np.ndarray:
    """`n_neg` negatives per user, never one of that user's positives.

    `popularity` strategy draws in proportion to count**alpha (word2vec-style smoothing).
    Vectorised: draw all at once, redraw only the collisions.
    """
    rng = np.random.default_rng(seed)
    if strategy == "uniform":
        p = None
    elif strategy == "popularity":
        if popularity is None:
            raise ShoprankError("popularity sampling needs item popularity counts")
        w = np.asarray(popularity, dtype=np.float64) ** alpha + 1e-12
        p = w / w.sum()
    else:
        raise ShoprankError(f"unknown negative sampling strategy {strategy!r}: uniform or popularity")
    n = len(positives)
    out = rng.choice(n_items, size=(n, n_neg), p=p)
    for i, pos in enumerate(positives):
        if len(pos) >= n_items:
            raise ShoprankError("a user has interacted with every item: no negatives to sample")
        pos_set = np.asarray(pos)
        bad = np.isin(out[i], pos_set)
        while bad.any():
            out[i, bad] = rng.choice(n_items, size=int(bad.sum()), p=p)
            bad = np.isin(out[i], pos_set)
    return out


def cold_start_mask(train: Dataset, frame: pd.DataFrame) -> np.ndarray:
    """True for rows whose item never occurs in the training interactions."""
    seen = set(train.interactions[Col.ITEM_ID].astype(str))
    return ~frame[Col.ITEM_ID].astype(str).isin(seen).to_numpy()


# -- click / purchase prediction rows ------------------------------------------------


def click_rows(ds: Dataset) -> pd.DataFrame:
    """Rows for binary click/like prediction: user_id, item_id, timestamp, label (0/1), weight
    and source (where the events have the column).

    Explicit ratings give their label directly (label > 0.5 -> 1). Otherwise each
    (user, item) exposure is the first view of the pair, labelled 1 if the user went on to
    click, cart or buy that item, else 0. Predefined `history` rows are never targets.
    `weight` is the smallest `weight` of the pair's events (1 where the column is absent): a
    down-weighted record, e.g. a bot's click flagged by valuation, down-weights the label it
    produced. `source` is the source of the event that decided the label (the first engagement
    for a 1, the first exposure for a 0), so group valuation by source works on click rows too.
    """
    inter = trainable(ds.interactions)
    cols = [Col.USER_ID, Col.ITEM_ID, Col.TIMESTAMP]
    has_source = Col.SOURCE in inter.columns
    rated = inter[inter[Col.EVENT] == "rating"]
    if len(rated):
        out = rated[cols].copy()
        out["label"] = (rated[Col.LABEL].astype("float64") > 0.5).astype(np.float32).to_numpy()
        out[Col.WEIGHT] = record_weights(rated)
        if has_source:
            out[Col.SOURCE] = rated[Col.SOURCE].to_numpy()
        return out.reset_index(drop=True)
    o = ordered(inter)
    o[Col.WEIGHT] = record_weights(o)
    pair = [Col.USER_ID, Col.ITEM_ID]
    first = o.groupby(pair, sort=False).head(1)
    pos = positive_mask(o)
    engaged = o[pos].groupby(pair, sort=False).head(1).set_index(pair)
    key = pd.MultiIndex.from_frame(first[pair])
    out = first[cols].copy()
    label = key.isin(engaged.index)
    out["label"] = label.astype(np.float32)
    out[Col.WEIGHT] = o.groupby(pair, sort=False)[Col.WEIGHT].min().reindex(key).to_numpy(np.float32)
    if has_source:
        src = first[Col.SOURCE].to_numpy(dtype=object).copy()
        src[label] = engaged[Col.SOURCE].reindex(key[label]).to_numpy(dtype=object)
        out[Col.SOURCE] = src
    return out.reset_index(drop=True)


def query_split(
    ds: Dataset, valid_frac: float = 0.1, test_frac: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split search judgments by query, so no test query is ever seen in training."""
    j = ds.judgments
    if not len(j):
        raise ShoprankError(f"dataset {ds.name!r} has no search judgments")
    queries = np.array(sorted(j[Col.QUERY].astype(str).unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(queries)
    n_test = max(1, int(round(len(queries) * test_frac)))
    n_valid = int(round(len(queries) * valid_frac))
    test_q = set(queries[:n_test])
    valid_q = set(queries[n_test : n_test + n_valid])
    q = j[Col.QUERY].astype(str)
    is_test, is_valid = q.isin(test_q), q.isin(valid_q)
    return (
        j[~is_test & ~is_valid].reset_index(drop=True),
        j[is_valid].reset_index(drop=True),
        j[is_test].reset_index(drop=True),
    )

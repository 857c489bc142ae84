"""From a shoprank dataset to records to value: features, labels, groups and a utility.

Why here: valuation methods work on arrays (or frames) of training records with a
validation set; a shop has interactions, judgments and a catalog. Three record kinds:

- `interactions`: every training event is a record; the utility trains a light
  recommender (category taste x in-category popularity, `TastePopularity`) on a coalition's
  positive events and scores NDCG@10 of the validation period's carts and purchases. It is
  fast enough to retrain per coalition, which group valuation (by source, event, time
  window) needs; bot clicks never reach the validation targets.
- `click`: each first exposure of a (user, item) pair is a record labelled 1 if the user
  engaged; features are the item's text embedding beside the user's mean exposure embedding.
- `search`: each judgment is a record with its grade; features are the query and item
  embeddings side by side; validation is NDCG@10 over held-out queries.
- `next-item`: each positive training event with at least one earlier positive event of the
  same shopper is a record (history -> next item); x is the mean embedding of the last 10
  history items, y the next item's list of its `list_size` nearest catalog items, and the
  validation period's events are the test points (KNN-Shapley `target="lists"`). This is
  how click spam concentrated on a few products is found (`--group-by item_id`).

Embeddings come from the frozen encoder (cached on disk) or from a trained `dense`/`lm`
model directory (`item_embeddings.npy`, and its query encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import EVENT_STRENGTH, Col
from shoprank.data.splits import (
    DataSplit,
    histories_for,
    ordered,
    positive_mask,
    split_dataset,
    trainable,
)
from shoprank.errors import ShoprankError
from shoprank.valuation.utility import Scorer, ValuationData

TASKS = ("interactions", "click", "search", "next-item")
NEXT_ITEM_METHODS = ("knn-shapley", "random")  # point methods that take id-list targets
TIME_GROUPS = {"day": "D", "week": "W", "month": "M"}


@dataclass
class Records:
    """Records to value (`frame`, one row per training record), their `data`, and the
    model and scorer that retraining methods use."""

    task: str
    frame: pd.DataFrame
    data: ValuationData
    model: Any
    scorer: str | Scorer
    items: pd.DataFrame | None = None  # the catalog, to group by an item column (category, brand)
    notes: list[str] = field(default_factory=list)  # what the records leave out, said in the job's notes

    def group_labels(self, column: str) -> np.ndarray:
        """Group of each record: a column of `frame`, a catalog column of its item (category,
        brand), or the day/week/month of its timestamp."""
        if column in TIME_GROUPS and Col.TIMESTAMP in self.frame.columns:
            ts = pd.to_datetime(self.frame[Col.TIMESTAMP], utc=True).dt.tz_localize(None)
            return ts.dt.to_period(TIME_GROUPS[column]).astype(str).to_numpy(dtype=object)
        if (column not in self.frame.columns and self.items is not None and column in self.items.columns
                and Col.ITEM_ID in self.frame.columns):
            lookup = self.items.set_index(Col.ITEM_ID)[column]
            vals = self.frame[Col.ITEM_ID].map(lookup)
            return vals.astype(object).where(vals.notna(), "(none)").astype(str).to_numpy(dtype=object)
        if column not in self.frame.columns:
            extra = [] if self.items is None else [c for c in self.items.columns if c != Col.ITEM_ID]
            raise ShoprankError(f"cannot group by {column!r}: the {self.task} records have columns "
                                f"{sorted(self.frame.columns)}, item columns {extra} and day/week/month")
        return self.frame[column].astype(object).fillna("(none)").astype(str).to_numpy(dtype=object)


# ---------------------------------------------------------------------------------------
# A recommender light enough to retrain per coalition
# ---------------------------------------------------------------------------------------


class TastePopularity:
    """score(u, i) = P(category(i) | u) * P(i | category(i)), both smoothed counts of the
    training events (weighted by event strength). Input frame columns: u, i, c, w."""

    def __init__(self, n_users: int, n_items: int, item_cat: np.ndarray, n_cats: int, alpha: float = 1.0) -> None:
        self.n_users, self.n_items, self.n_cats = n_users, n_items, n_cats
        self.item_cat, self.alpha = item_cat, alpha

    def fit(self, x: pd.DataFrame, y: Any = None) -> Self:
        u, i, c, w = (x[k].to_numpy() for k in ("u", "i", "c", "w"))
        pop = np.bincount(i, weights=w, minlength=self.n_items) + 0.1
        cat_tot = np.bincount(self.item_cat, weights=pop, minlength=self.n_cats)
        self.p_item_ = pop / cat_tot[self.item_cat]
        taste = np.zeros((self.n_users, self.n_cats))
        np.add.at(taste, (u, c), w)
        prior = np.bincount(c, weights=w, minlength=self.n_cats) + 1.0
        prior /= prior.sum()
        self.taste_ = (taste + self.alpha * prior) / (taste.sum(1, keepdims=True) + self.alpha)
        return self

    def predict(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores."""
        return self.taste_[users][:, self.item_cat] * self.p_item_[None, :]


def _topk_ndcg(k: int = 10) -> Scorer:
    def fn(model: Any, x: Any, y: np.ndarray | None, qid: np.ndarray | None) -> float:
        users, targets = x["users"], x["targets"]
        s = model.predict(users)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable"), 1)
        from shoprank.evaluation.metrics import ndcg_at_k

        return float(np.nanmean(ndcg_at_k(top, targets, k)))

    return Scorer(f"ndcg@{k}", fn, default=0.0)


class _ValidTargets:
    """Validation users and their target items: indexable like a frame of len = #users."""

    def __init__(self, users: np.ndarray, targets: list[np.ndarray]) -> None:
        self.users, self.targets = users, targets

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key: str) -> Any:
        return {"users": self.users, "targets": self.targets}[key]


def interaction_records(ds: Dataset, split: DataSplit, *, min_target: str = "cart", targets: str = "valid") -> Records:
    """Every training event is a record; validation targets are the valid period's events at
    or above `min_target` in the funnel, for users seen in training (`targets="test"`: the
    test period's, to measure a retraining decision on data the values never saw)."""
    tr = trainable(split.train.interactions).reset_index(drop=True)
    if not len(tr):
        raise ShoprankError(f"dataset {ds.name!r} has no training interactions to value")
    users = pd.Index(sorted(tr[Col.USER_ID].astype(str).unique()))
    cats = ds.items[Col.CATEGORY].astype(object).fillna("(none)").astype(str) if Col.CATEGORY in ds.items \
        else pd.Series(["(none)"] * ds.n_items)
    cat_codes, cat_names = pd.factorize(cats, sort=True)
    item = ds.item_map.to_internal(tr[Col.ITEM_ID])
    frame = pd.DataFrame({
        "u": users.get_indexer(tr[Col.USER_ID].astype(str)), "i": item, "c": cat_codes[item],
        "w": tr[Col.EVENT].map(EVENT_STRENGTH).fillna(1.0).to_numpy(dtype=np.float64)
        * positive_mask(tr).to_numpy(),
    })
    if targets not in ("valid", "test"):
        raise ShoprankError("targets must be valid or test")
    va = trainable((split.valid if targets == "valid" else split.test).interactions)
    va = va[positive_mask(va, min_event=min_target)]
    vu = users.get_indexer(va[Col.USER_ID].astype(str))
    keep = vu >= 0
    vi = ds.item_map.to_internal(va[Col.ITEM_ID].to_numpy()[keep])
    vdf = pd.DataFrame({"u": vu[keep], "i": vi})
    g = vdf.groupby("u")["i"].unique()
    if not len(g):
        raise ShoprankError("no validation targets for users seen in training (check the split)")
    valid = _ValidTargets(g.index.to_numpy(dtype=np.int64), [np.asarray(t, dtype=np.int64) for t in g.to_numpy()])
    model = TastePopularity(len(users), ds.n_items, cat_codes.astype(np.int64), len(cat_names))
    show = tr.drop(columns=[c for c in ("_order",) if c in tr.columns])
    data = ValuationData(frame, None, valid, None, names=np.arange(len(frame)))
    return Records("interactions", show, data, model, _topk_ndcg(10))


# ---------------------------------------------------------------------------------------
# Embedding features
# ---------------------------------------------------------------------------------------


class Embedder:
    """Item and query vectors from the frozen encoder (disk-cached) or a trained model dir."""

    def __init__(self, ds: Dataset, *, model_dir: Path | None = None, cache_dir: Path | None = None,
                 encoder: str = "minilm") -> None:
        self.ds, self.model_dir, self.cache_dir, self.encoder = ds, model_dir, cache_dir, encoder
        self._model: Any = None
        self._enc: Any = None

    def _load_model(self) -> Any:
        if self._model is None and self.model_dir is not None:
            from shoprank.models.base import load_model
            from shoprank.training.runner import training_info

            want = training_info(self.model_dir).get("catalog_hash")
            if want and want != self.ds.catalog_hash():
                raise ShoprankError(f"{self.model_dir} was trained on another catalog; its embeddings do not match")
            self._model = load_model(self.model_dir)
            if not hasattr(self._model, "item_emb_"):
                raise ShoprankError(f"{self.model_dir}: model has no item embeddings (use a dense or lm model)")
        return self._model

    def _text_encoder(self) -> Any:
        if self._enc is None:
            from shoprank.text import EncoderConfig, TextEncoder

            self._enc = TextEncoder(EncoderConfig(model=self.encoder), cache_dir=self.cache_dir)
        return self._enc

    def items(self) -> np.ndarray:
        m = self._load_model()
        if m is not None:
            return np.asarray(m.item_emb_, dtype=np.float32)
        from shoprank.text import render_items

        return self._text_encoder().encode(render_items(self.ds.items))

    def queries(self, queries: list[str]) -> np.ndarray:
        m = self._load_model()
        if m is not None and hasattr(m, "query_vectors"):
            return np.asarray(m.query_vectors(queries), dtype=np.float32)
        from shoprank.text import render_query

        return self._text_encoder().encode([render_query(q) for q in queries])


def _exposures(inter: pd.DataFrame) -> pd.DataFrame:
    """First exposure of each (user, item) pair with its columns, labelled 1 if the user
    clicked, carted or bought the item (the click task's rows, keeping source and cost)."""
    o = ordered(trainable(inter))
    pos = positive_mask(o)
    first = o.groupby([Col.USER_ID, Col.ITEM_ID], sort=False).head(1)
    engaged = o[pos].groupby([Col.USER_ID, Col.ITEM_ID], sort=False).size()
    key = pd.MultiIndex.from_frame(first[[Col.USER_ID, Col.ITEM_ID]])
    out = first.drop(columns=["_order"]).copy()
    rated = out[Col.EVENT] == "rating"
    lab = out[Col.LABEL].astype("float64") > 0.5 if Col.LABEL in out else pd.Series(False, index=out.index)
    out["label"] = np.where(rated, lab, key.isin(engaged.index)).astype(np.int64)
    return out.reset_index(drop=True)


def _user_profiles(frame: pd.DataFrame, item_idx: np.ndarray, emb: np.ndarray) -> dict[str, np.ndarray]:
    users = frame[Col.USER_ID].astype(str).to_numpy()
    codes, uniq = pd.factorize(users)
    sums = np.zeros((len(uniq), emb.shape[1]), np.float64)
    np.add.at(sums, codes, emb[item_idx])
    cnt = np.bincount(codes, minlength=len(uniq))[:, None]
    prof = (sums / np.maximum(cnt, 1)).astype(np.float32)
    return dict(zip(uniq.tolist(), prof, strict=True))


def click_records(ds: Dataset, split: DataSplit, emb: Embedder, *, max_rows: int | None = None,
                  seed: int = 0) -> Records:
    from sklearn.linear_model import LogisticRegression

    item_emb = emb.items()
    tr = _exposures(split.train.interactions)
    va = _exposures(split.valid.interactions)
    if max_rows is not None and len(tr) > max_rows:
        tr = tr.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)
    if not len(tr) or not len(va) or tr["label"].nunique() < 2 or va["label"].nunique() < 2:
        raise ShoprankError("click valuation needs both labels in the training and validation rows")
    ti, vi = ds.item_map.to_internal(tr[Col.ITEM_ID]), ds.item_map.to_internal(va[Col.ITEM_ID])
    prof = _user_profiles(tr, ti, item_emb)
    zero = np.zeros(item_emb.shape[1], np.float32)

    def feats(frame: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        p = np.stack([prof.get(u, zero) for u in frame[Col.USER_ID].astype(str)]) if len(frame) else zero[None, :0]
        return np.hstack([item_emb[idx], p]).astype(np.float32)

    data = ValuationData(feats(tr, ti), tr["label"].to_numpy(), feats(va, vi), va["label"].to_numpy(),
                         names=np.arange(len(tr)))
    return Records("click", tr, data, LogisticRegression(max_iter=300), "auc")


def search_records(ds: Dataset, split: DataSplit, emb: Embedder) -> Records:
    from sklearn.linear_model import Ridge

    tr, va = split.train.judgments.reset_index(drop=True), split.valid.judgments.reset_index(drop=True)
    if not len(tr) or not len(va):
        raise ShoprankError(f"dataset {ds.name!r}: search valuation needs judgments in train and valid queries")
    item_emb = emb.items()
    qs = sorted(set(tr[Col.QUERY].astype(str)) | set(va[Col.QUERY].astype(str)))
    qv = dict(zip(qs, emb.queries(qs), strict=True))

    def feats(frame: pd.DataFrame) -> np.ndarray:
        q = np.stack([qv[s] for s in frame[Col.QUERY].astype(str)])
        i = item_emb[ds.item_map.to_internal(frame[Col.ITEM_ID])]
        return np.hstack([q, i, q * i]).astype(np.float32)

    data = ValuationData(feats(tr), tr[Col.GRADE].to_numpy(dtype=np.float64), feats(va),
                         va[Col.GRADE].to_numpy(dtype=np.float64), names=np.arange(len(tr)),
                         qid_valid=va[Col.QUERY].astype(str).to_numpy(dtype=object))
    return Records("search", tr, data, Ridge(alpha=10.0), "ndcg@10")


def next_item_records(ds: Dataset, split: DataSplit, emb: Embedder, *, list_size: int = 20,
                      history_len: int = 10) -> Records:
    """History -> next-item records for KNN-Shapley's list match (see the module docstring).

    Point methods only: there is no light model to retrain per coalition, so `model` is None
    (the job refuses retraining methods and skips curves and the acquisition projection)."""
    from shoprank.valuation.knn import nearest_item_lists

    item_emb = emb.items()
    lists = nearest_item_lists(item_emb, min(list_size, len(item_emb)))
    tr = trainable(split.train.interactions)
    tr = tr[positive_mask(tr)].reset_index(drop=True)
    va = trainable(split.valid.interactions)
    va = va[positive_mask(va)].reset_index(drop=True)
    if not len(tr) or not len(va):
        raise ShoprankError(f"dataset {ds.name!r}: next-item valuation needs positive events in train and valid")

    def pairs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        # every earlier event is history, as at prediction time: also predefined `history` rows
        # (context only) and, for validation events, the earlier training and validation events
        h = histories_for(split.context, frame, max_len=history_len, positives_only=True)
        has = np.array([len(x) > 0 for x in h.items], dtype=bool)
        x = np.zeros((len(frame), item_emb.shape[1]), np.float32)
        for i in np.flatnonzero(has):
            x[i] = item_emb[h.items[i]].mean(0)
        return x, has

    xtr, has = pairs(tr)
    xva, hva = pairs(va)
    if not has.any() or not hva.any():
        raise ShoprankError("next-item valuation: no event has an earlier event of the same shopper "
                            "(in training or in validation)")
    frame = tr[has].reset_index(drop=True)
    data = ValuationData(xtr[has], lists[ds.item_map.to_internal(frame[Col.ITEM_ID])], xva[hva],
                         ds.item_map.to_internal(va.loc[hva, Col.ITEM_ID]), names=np.arange(len(frame)))
    notes = [f"{int((~has).sum())} positive training events have no earlier event of their shopper and are "
             f"not valued (nothing to predict them from); {len(frame)} are"] if (~has).any() else []
    return Records("next-item", frame, data, None, "knn", notes=notes)


def build_records(ds: Dataset, task: str = "auto", *, split: DataSplit | None = None, model_dir: Path | None = None,
                  cache_dir: Path | None = None, max_rows: int | None = None, seed: int = 0) -> Records:
    """Records for a task ("auto": interactions if the data has any, else search)."""
    if task == "auto":
        task = "interactions" if len(ds.interactions) else "search"
    if task not in TASKS:
        raise ShoprankError(f"unknown valuation task {task!r}: use one of {TASKS}")
    sp = split if split is not None else split_dataset(ds, "auto")
    if task == "interactions":
        rec = interaction_records(ds, sp)
    else:
        emb = Embedder(ds, model_dir=model_dir, cache_dir=cache_dir)
        rec = (click_records(ds, sp, emb, max_rows=max_rows, seed=seed) if task == "click"
               else next_item_records(ds, sp, emb) if task == "next-item" else search_records(ds, sp, emb))
    rec.items = ds.items
    return rec

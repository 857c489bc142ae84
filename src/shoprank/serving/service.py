"""The serving core, free of HTTP: catalog, indexes, user profiles, and the queries on them.

Reads never lock: a request takes the current `Snapshot` (model, vector space, catalog, BM25
and vector indexes, version) from the `IndexHolder` once and uses only that, while writers
(item posts, model reloads, background compaction) build a new snapshot and swap the reference
under a lock. A model reload therefore fails no request in flight: old requests finish on the
old snapshot, new ones start on the new.

Events are written to the store first (committed) and only then applied to the in-memory user
profiles and counters; a poller applies what other worker processes wrote, so with several
uvicorn workers a user's latest events count within `poll_seconds` whichever worker answers.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import EVENT_STRENGTH, Col
from shoprank.data.splits import positive_mask
from shoprank.errors import ShoprankError
from shoprank.models.base import Ranker, load_model
from shoprank.models.baselines import item_texts
from shoprank.serving.settings import Settings
from shoprank.serving.store import EventStore, epoch_seconds
from shoprank.serving.textindex import TextIndex
from shoprank.serving.vectors import VectorIndex, VectorSpace, make_space, model_item_vectors

log = logging.getLogger("shoprank.serving")

FACET_DEPTH = 50  # fused results that facet counts are taken from
ITEM_FIELDS = (Col.ITEM_ID, Col.TITLE, Col.DESCRIPTION, Col.BRAND, Col.CATEGORY, Col.PRICE, Col.ATTRIBUTES)


class RowError(ShoprankError):
    """A bad row in a posted batch: names the field and the row (becomes a 422)."""

    def __init__(self, field_name: str, row: int, message: str) -> None:
        self.field, self.row, self.message = field_name, row, message
        super().__init__(f"{field_name}: {message}")


class NotFound(ShoprankError):
    """An unknown item or user where one is required (becomes a 404)."""


# -- catalog -------------------------------------------------------------------------------


def _bid_of(attrs: Any) -> float:
    if isinstance(attrs, str) and attrs:
        try:
            attrs = json.loads(attrs)
        except ValueError:
            return 0.0
    if isinstance(attrs, dict):
        try:
            b = float(attrs.get("bid", 0.0) or 0.0)
            return b if math.isfinite(b) and b > 0 else 0.0
        except (TypeError, ValueError):
            return 0.0
    return 0.0


@dataclass(frozen=True)
class Catalog:
    """Per-slot item metadata. A slot is never reused: an updated item gets a new slot and its
    old slot is marked dead, so every index stays append-only."""

    item_ids: np.ndarray
    titles: np.ndarray
    brands: np.ndarray
    categories: np.ndarray
    prices: np.ndarray
    bids: np.ndarray
    cat_lc: np.ndarray  # lower-cased category / brand, for case-insensitive filters
    brand_lc: np.ndarray
    alive: np.ndarray
    slot_of: dict[str, int]

    @classmethod
    def from_frame(cls, items: pd.DataFrame) -> Catalog:
        c = cls._arrays(items)
        ids = c["item_ids"]
        return cls(**c, alive=np.ones(len(ids), bool), slot_of={str(i): s for s, i in enumerate(ids)})

    def slot(self, item_id: str) -> int:
        """The slot of a known item; NotFound (a 404) otherwise."""
        sl = self.slot_of.get(item_id)
        if sl is None:
            raise NotFound(f"unknown item {item_id!r}")
        return sl

    @staticmethod
    def _arrays(items: pd.DataFrame) -> dict[str, np.ndarray]:
        def col(name: str) -> np.ndarray:
            if name not in items.columns:
                return np.array([None] * len(items), dtype=object)
            return items[name].astype(object).where(items[name].notna(), None).to_numpy(dtype=object)

        price = pd.to_numeric(items[Col.PRICE], errors="coerce") if Col.PRICE in items.columns \
            else pd.Series(np.nan, index=items.index)
        if "bid" in items.columns:
            bids = pd.to_numeric(items["bid"], errors="coerce").fillna(0.0).clip(lower=0).to_numpy(np.float64)
        else:
            attrs = items[Col.ATTRIBUTES] if Col.ATTRIBUTES in items.columns else pd.Series([None] * len(items))
            bids = np.array([_bid_of(a) for a in attrs], np.float64)
        brands, cats = col(Col.BRAND), col(Col.CATEGORY)
        return {
            "item_ids": items[Col.ITEM_ID].astype(str).to_numpy(dtype=object),
            "titles": col(Col.TITLE), "brands": brands, "categories": cats,
            "prices": price.to_numpy(np.float64), "bids": bids,
            "cat_lc": np.array([None if c is None else str(c).lower() for c in cats], dtype=object),
            "brand_lc": np.array([None if b is None else str(b).lower() for b in brands], dtype=object),
        }

    @property
    def n(self) -> int:
        return len(self.item_ids)

    def with_items(self, items: pd.DataFrame) -> Catalog:
        """Append rows as new slots; earlier slots of the same ids die."""
        c = self._arrays(items)
        alive = np.concatenate([self.alive, np.ones(len(items), bool)])
        slot_of = dict(self.slot_of)
        for k, iid in enumerate(c["item_ids"]):
            old = slot_of.get(iid)
            if old is not None:
                alive[old] = False
            slot_of[iid] = self.n + k
        return Catalog(
            **{k: np.concatenate([getattr(self, k), v]) for k, v in c.items()}, alive=alive, slot_of=slot_of,
        )

    def item(self, s: int) -> dict[str, Any]:
        p = self.prices[s]
        return {"item_id": self.item_ids[s], "title": self.titles[s], "brand": self.brands[s],
                "category": self.categories[s], "price": None if not np.isfinite(p) else float(p),
                **({"bid": float(self.bids[s])} if self.bids[s] > 0 else {})}

    def mask(self, category: str | None = None, brand: str | None = None, price_min: float | None = None,
             price_max: float | None = None) -> np.ndarray:
        m = self.alive.copy()
        if category:
            m &= self.cat_lc == category.lower()
        if brand:
            m &= self.brand_lc == brand.lower()
        if price_min is not None:
            m &= np.nan_to_num(self.prices, nan=-np.inf) >= price_min
        if price_max is not None:
            m &= np.nan_to_num(self.prices, nan=np.inf) <= price_max
        return m


@dataclass(frozen=True)
class Snapshot:
    """Everything one request reads, consistent with itself."""

    version: int
    model_dir: str
    model: Ranker
    space: VectorSpace | None
    catalog: Catalog
    text: TextIndex
    vindex: VectorIndex | None
    loaded_at: float = field(default_factory=time.time)


class IndexHolder:
    """The current snapshot; swapped atomically, read without locks."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap
        self._lock = threading.Lock()
        self.write_lock = threading.RLock()  # serialises writers (item posts, reloads, compaction)

    @property
    def current(self) -> Snapshot:
        return self._snap

    def swap(self, new: Snapshot) -> Snapshot:
        with self._lock:
            old, self._snap = self._snap, new
        return old


# -- users and counters --------------------------------------------------------------------


class Profiles:
    """Each user's recent events (item id, strength, time) and purchased items."""

    def __init__(self, history_len: int) -> None:
        self.history_len = history_len
        self._events: dict[str, deque[tuple[str, float, float]]] = {}
        self._bought: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, user: str, item: str, event: str, ts: float) -> None:
        with self._lock:
            dq = self._events.get(user)
            if dq is None:
                dq = self._events[user] = deque(maxlen=self.history_len)
            dq.append((item, EVENT_STRENGTH.get(event, 1.0), ts))
            if event == "purchase":
                self._bought.setdefault(user, set()).add(item)

    def get(self, user: str) -> tuple[list[tuple[str, float, float]], set[str]]:
        with self._lock:
            ev = list(self._events.get(user, ()))
            bought = set(self._bought.get(user, ()))
        ev.sort(key=lambda e: e[2])  # stable: same-second events keep arrival order
        return ev, bought

    def __len__(self) -> int:
        return len(self._events)

    def users(self, limit: int) -> list[str]:
        with self._lock:
            return sorted(self._events, key=lambda u: -len(self._events[u]))[:limit]


class Counters:
    """Popularity and click-through per item, and the online CTR of logged events."""

    def __init__(self) -> None:
        self.pop: dict[str, float] = {}
        self.views: dict[str, int] = {}
        self.clicks: dict[str, int] = {}
        self.total = {"view": 0, "click": 0}
        self.online: dict[str, int] = {"view": 0, "click": 0}
        self._lock = threading.Lock()
        self._top: list[str] = []
        self._top_at = 0.0
        self._dirty = True

    def add(self, item: str, event: str, *, online: bool) -> None:
        with self._lock:
            if event in ("click", "cart", "purchase"):
                self.pop[item] = self.pop.get(item, 0.0) + EVENT_STRENGTH[event]
                self._dirty = True
            if event == "view":
                self.views[item] = self.views.get(item, 0) + 1
            elif event == "click":
                self.clicks[item] = self.clicks.get(item, 0) + 1
            if event in self.total:
                self.total[event] += 1
                if online:
                    self.online[event] += 1

    def refresh_top(self, n: int = 2000) -> None:
        """Recompute the most popular items (the poller does this off the request path)."""
        with self._lock:
            if not self._dirty and self._top:
                return
            items = list(self.pop.items())
            self._dirty = False
        self._top = [k for k, _ in heapq.nlargest(n, items, key=lambda kv: kv[1])]
        self._top_at = time.monotonic()

    def top(self) -> list[str]:
        """Most popular items; recomputed here only when no poller keeps them fresh."""
        if not self._top or (self._dirty and time.monotonic() - self._top_at > 5.0):
            self.refresh_top()
        return self._top

    @property
    def global_ctr(self) -> float:
        v, c = self.total["view"], self.total["click"]
        return c / v if v else 0.05

    def item_ctr(self, item: str, prior: float, strength: float = 20.0) -> float:
        v, c = self.views.get(item, 0), self.clicks.get(item, 0)
        return float(min(max((c + strength * prior) / (v + strength), 1e-4), 1 - 1e-4))

    @property
    def online_ctr(self) -> float:
        v = self.online["view"]
        return self.online["click"] / v if v else 0.0


RERANKERS = ("hybrid",)  # models whose query-item score is a learnt re-ranking of candidates


def _limit_torch_threads(n: int) -> None:
    """Query encoding is one short sequence at a time, and requests already run in parallel (threads,
    workers): torch's default of one intra-op thread per core makes them fight over the cores
    (measured: search p50 2.2 s instead of ~25 ms with 2 workers on 2 cores)."""
    if n <= 0:
        return
    import torch

    torch.set_num_threads(n)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- the service ---------------------------------------------------------------------------


class Service:
    """Loads once (`start`), answers queries, accepts writes. Thread-safe."""

    def __init__(self, settings: Settings, store: EventStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.dataset: Dataset | None = None
        self.holder: IndexHolder | None = None
        self.profiles = Profiles(settings.history_len)
        self.counters = Counters()
        self.ready = False
        self._versions = 0
        self._event_wm = 0
        self._item_wm = 0
        self._applied_events: set[int] = set()
        self._applied_items: set[int] = set()
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._compacting = False
        self._values_cache: tuple[tuple[str, float], pd.DataFrame] | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self, *, poll: bool = True) -> None:
        s = self.settings
        t0 = time.perf_counter()
        if self.store is None:
            self.store = EventStore(s.resolved_store_url)
        self.dataset = Dataset.load(s.data_dir)
        self.holder = IndexHolder(self._build_snapshot(str(s.model_dir)))
        self._load_history(self.dataset.interactions)
        self.sync()  # items and events logged by earlier runs
        self.ready = True
        log.info("serving %d items, %d users, model %s (v%d) in %.1fs", self.holder.current.catalog.n,
                 len(self.profiles), s.model_dir, self.holder.current.version, time.perf_counter() - t0)
        if poll and s.poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, name="shoprank-poller", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self.store is not None:
            self.store.close()

    @property
    def snap(self) -> Snapshot:
        if self.holder is None:
            raise ShoprankError("the service is not started")
        return self.holder.current

    def _build_snapshot(self, model_dir: str, extra_items: pd.DataFrame | None = None) -> Snapshot:
        """Load a model and index the base catalog (plus items posted since, if given)."""
        from shoprank.training.runner import training_info

        assert self.dataset is not None
        s = self.settings
        model = load_model(model_dir)
        space = make_space(model, s.encoder, s.cache_dir)
        if "torch" in sys.modules:  # loaded by the model or the encoder
            _limit_torch_threads(s.torch_threads)
        if space is not None:
            space.query_vector("warm up")  # loads the encoder now, not in the first request
        base = self.dataset.items
        vecs: np.ndarray | None = None
        if space is not None:
            want = training_info(Path(model_dir)).get("catalog_hash")
            vecs = model_item_vectors(model, len(base)) if want in (None, self.dataset.catalog_hash()) else None
            if vecs is None:  # another catalog, or a model without vectors: embed the catalog now
                log.warning("embedding %d catalog items with %s (no matching saved vectors)", len(base), space.name)
                vecs = space.item_vectors(base)
        text = TextIndex.build(item_texts(base))
        vindex = None if vecs is None else VectorIndex.build(
            vecs, hnsw_threshold=s.hnsw_threshold, hnsw_m=s.hnsw_m, ef_search=s.hnsw_ef_search,
            cache_dir=s.cache_dir)
        self._versions += 1
        snap = Snapshot(self._versions, model_dir, model, space, Catalog.from_frame(base), text, vindex)
        if extra_items is not None and len(extra_items):
            snap = self._with_items(snap, extra_items)
        return snap

    def reload(self, model_dir: str | None = None) -> dict[str, Any]:
        """Load a model directory and swap it in; requests in flight finish on the old one."""
        assert self.holder is not None
        t0 = time.perf_counter()
        with self.holder.write_lock:
            cur = self.holder.current
            md = model_dir or cur.model_dir
            assert self.store is not None
            new = self._build_snapshot(md, extra_items=self.store.latest_items())
            self.holder.swap(new)
        return {"version": new.version, "model_dir": md, "model": new.model.name, "items": int(new.catalog.alive.sum()),
                "seconds": round(time.perf_counter() - t0, 3)}

    def _load_history(self, inter: pd.DataFrame) -> None:
        if not len(inter):
            return
        o = inter.sort_values(Col.TIMESTAMP, kind="stable")
        ts = epoch_seconds(o[Col.TIMESTAMP])
        users = o[Col.USER_ID].astype(str).tolist()
        items = o[Col.ITEM_ID].astype(str).tolist()
        evs = o[Col.EVENT].astype(str).tolist()
        pos = positive_mask(o).to_numpy()
        for u, i, e, t, p in zip(users, items, evs, ts.tolist(), pos.tolist(), strict=True):
            if e == "rating" and not p:
                continue  # a disliked item is not taste
            self.profiles.add(u, i, "click" if e == "rating" else e, t)
            self.counters.add(i, e, online=False)

    # -- syncing with the store (other workers, earlier runs) --------------------------------------
    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.sync()
                self.counters.refresh_top()
            except Exception:  # a store hiccup must not kill the poller
                log.exception("store sync failed")

    def sync(self, window: int | None = None) -> int:
        """Apply events and items that the store has and we have not applied yet.

        On PostgreSQL the last `window` ids are read again each time, because concurrent
        transactions may commit ids out of order; SQLite commits one writer at a time, in id order."""
        assert self.store is not None
        if window is None:
            window = 0 if self.store.is_sqlite else 1000
        n = 0
        with self._sync_lock:
            got = self.store.items_after(max(0, self._item_wm - window))
            fresh = [(i, it) for i, it in got if i not in self._applied_items]
            if fresh:
                self._apply_items(pd.DataFrame([it for _, it in fresh]))
                self._applied_items.update(i for i, _ in fresh)
                n += len(fresh)
            if got:
                self._item_wm = max(self._item_wm, got[-1][0])
            while True:
                rows = self.store.events_after(max(0, self._event_wm - window), 10_000)
                fresh_rows = [r for r in rows if int(r["id"]) not in self._applied_events]
                for r in fresh_rows:
                    self._apply_event(r)
                self._applied_events.update(int(r["id"]) for r in fresh_rows)
                n += len(fresh_rows)
                if not rows or int(rows[-1]["id"]) <= self._event_wm:
                    break
                self._event_wm = int(rows[-1]["id"])
            lo = self._event_wm - 2 * window
            if len(self._applied_events) > 4 * window + 10_000:
                self._applied_events = {i for i in self._applied_events if i > lo}
        return n

    # -- writes ----------------------------------------------------------------------------------
    def add_events(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Check item ids, commit to the store, then update profiles; returns the store ids."""
        assert self.store is not None
        cat = self.snap.catalog
        for r, row in enumerate(rows):
            if str(row[Col.ITEM_ID]) not in cat.slot_of:
                raise RowError(f"events[{r}].item_id", r, f"unknown item {row[Col.ITEM_ID]!r}")
        res = self.store.append_events(rows)  # committed (durable) when this returns
        with self._sync_lock:
            for i, is_new, row in zip(res.ids, res.new, rows, strict=True):
                if is_new and i not in self._applied_events:
                    self._apply_event(row)
                    self._applied_events.add(i)
        return res.ids

    def _apply_event(self, r: dict[str, Any]) -> None:
        self.profiles.add(str(r[Col.USER_ID]), str(r[Col.ITEM_ID]), str(r[Col.EVENT]), float(r[Col.TIMESTAMP]))
        self.counters.add(str(r[Col.ITEM_ID]), str(r[Col.EVENT]), online=True)

    def add_items(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Log the items durably, then index them (BM25 + vectors) before returning."""
        assert self.store is not None
        t0 = time.perf_counter()
        ids = self.store.append_items(items)
        with self._sync_lock:
            self._apply_items(pd.DataFrame(list(items)))
            self._applied_items.update(ids)
        return {"indexed": len(items), "version": self.snap.version, "seconds": round(time.perf_counter() - t0, 3)}

    def _apply_items(self, df: pd.DataFrame) -> None:
        assert self.holder is not None
        if not len(df):
            return
        df = df.drop_duplicates(Col.ITEM_ID, keep="last").reset_index(drop=True)
        with self.holder.write_lock:
            self.holder.swap(self._with_items(self.holder.current, df))
        if self._needs_compaction():
            self._compact_soon()

    def _with_items(self, snap: Snapshot, df: pd.DataFrame) -> Snapshot:
        for c in ITEM_FIELDS:
            if c not in df.columns:
                df[c] = None
        vindex = snap.vindex
        if vindex is not None and snap.space is not None:
            vindex = vindex.with_added(snap.space.item_vectors(df))
        self._versions += 1
        return replace(snap, version=self._versions, catalog=snap.catalog.with_items(df),
                       text=snap.text.add(item_texts(df)), vindex=vindex)

    def _needs_compaction(self) -> bool:
        snap = self.snap
        text_delta = sum(seg.n_docs for seg in snap.text.segments[1:])
        vec_delta = 0 if snap.vindex is None else len(snap.vindex.delta)
        return not self._compacting and max(text_delta, vec_delta) >= self.settings.compact_after

    def _compact_soon(self) -> None:
        self._compacting = True
        threading.Thread(target=self.compact, name="shoprank-compact", daemon=True).start()

    def compact(self) -> None:
        """Merge the delta into the main indexes in the background, then swap them in."""
        assert self.holder is not None
        try:
            snap = self.holder.current
            s = self.settings
            built = None
            n0 = 0
            if snap.vindex is not None:
                n0 = snap.vindex.n
                built = VectorIndex.build(snap.vindex.all_vectors(), hnsw_threshold=s.hnsw_threshold,
                                          hnsw_m=s.hnsw_m, ef_search=s.hnsw_ef_search, build_threads=1)
            with self.holder.write_lock:
                cur = self.holder.current
                if cur.model is not snap.model:
                    return  # a reload happened meanwhile; its indexes are fresh anyway
                vindex = cur.vindex
                if built is not None and vindex is not None:
                    if vindex.n > n0:  # items posted while we were building
                        built = built.with_added(vindex.vectors(np.arange(n0, vindex.n)))
                    vindex = built
                self._versions += 1
                self.holder.swap(replace(cur, version=self._versions, vindex=vindex, text=cur.text.compacted()))
        finally:
            self._compacting = False

    # -- reads -------------------------------------------------------------------------------------
    def search(self, q: str, k: int = 10, *, category: str | None = None, brand: str | None = None,
               price_min: float | None = None, price_max: float | None = None) -> dict[str, Any]:
        """Hybrid retrieval: BM25 and dense candidates, fused by reciprocal rank, filtered."""
        snap = self.snap
        cat = snap.catalog
        r = self._retrieve(snap, q, category=category, brand=brand, price_min=price_min, price_max=price_max)
        fused, rerank = self._reranked(snap, r)
        top = fused[:k]
        facets: dict[str, dict[str, int]] = {"category": {}, "brand": {}}
        for sl, _ in fused[: max(k, FACET_DEPTH)]:  # the head only: the dense tail matches anything
            for name, arr in (("category", cat.categories), ("brand", cat.brands)):
                v = arr[sl]
                if v is not None:
                    facets[name][str(v)] = facets[name].get(str(v), 0) + 1
        facets = {n: dict(sorted(f.items(), key=lambda kv: (-kv[1], kv[0]))[:20]) for n, f in facets.items()}
        items = []
        for sl, score in top:
            it = cat.item(sl)
            it.update(score=round(score, 6), bm25_rank=r["bm_rank"].get(sl), dense_rank=r["dn_rank"].get(sl))
            if sl in rerank:
                it["rerank_score"] = round(rerank[sl], 6)
            items.append(it)
        return {"query": q, "corrected_query": r["query"] if r["fixes"] else None, "corrections": r["fixes"],
                "items": items, "facets": facets, "total_candidates": len(fused), "reranked": len(rerank),
                "version": snap.version}

    def _reranked(self, snap: Snapshot, r: dict[str, Any]) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """The fused list with its head re-ordered by the re-ranker (if any), and its scores."""
        fused = r["fused"]
        rerank = self._rerank(snap, r["query"], fused)
        if rerank:
            d = min(self.settings.rerank_depth, len(fused))
            rrf = dict(fused[:d])
            order = iter(sorted(rerank, key=lambda sl: (-rerank[sl], sl)))
            head = [next(order) if sl in rerank else sl for sl, _ in fused[:d]]
            fused = [(sl, rrf[sl]) for sl in head] + fused[d:]
        return fused, rerank

    def _rerank(self, snap: Snapshot, query: str, fused: list[tuple[int, float]]) -> dict[int, float]:
        """Scores of the served model for the head of the fused list, when the model is a re-ranker.

        A `hybrid` model learnt how to order candidates (LambdaRank over dense and BM25 scores,
        ranks, popularity, price, ...), so its score re-orders the top `rerank_depth` fused
        candidates. Items posted after the model was trained are unknown to it: they keep their
        fused positions and the re-ranked catalog items fill the others."""
        depth = self.settings.rerank_depth
        if depth <= 0 or snap.model.name not in RERANKERS or not fused:
            return {}
        n_model = int(getattr(snap.model, "n_items_", 0))
        head = [sl for sl, _ in fused[:depth] if sl < n_model]
        if not head:
            return {}
        sc = snap.model.score_query_items([query], [np.asarray(head, np.int64)])[0]
        return {int(sl): float(v) for sl, v in zip(head, np.asarray(sc, np.float64), strict=True)}

    def _retrieve(self, snap: Snapshot, q: str, **filters: Any) -> dict[str, Any]:
        s = self.settings
        cat = snap.catalog
        toks, fixes = snap.text.correct(snap.text.tokens(q))
        query = q
        for bad, good in fixes.items():
            query = " ".join(good if w.lower() == bad else w for w in query.split())
        has_filter = any(v is not None and v != "" for v in filters.values())
        allowed = cat.mask(**filters) if has_filter or not cat.alive.all() else None
        n_cand = s.candidates
        bm = snap.text.scores(toks)
        if allowed is not None:
            bm = np.where(allowed[: len(bm)], bm, 0.0)
        hits = np.flatnonzero(bm > 0)
        if len(hits) > n_cand:
            hits = hits[np.argpartition(-bm[hits], n_cand - 1)[:n_cand]]
        bm_slots = hits[np.argsort(-bm[hits], kind="stable")]
        dn_slots = np.zeros(0, np.int64)
        if snap.vindex is not None and snap.space is not None and q.strip():
            qv = snap.space.query_vector(query)
            dn_slots, _ = snap.vindex.search(qv, n_cand, allowed)
        rrf: dict[int, float] = {}
        bm_rank = {int(sl): i + 1 for i, sl in enumerate(bm_slots)}
        dn_rank = {int(sl): i + 1 for i, sl in enumerate(dn_slots)}
        for ranks in (bm_rank, dn_rank):
            for sl, rk in ranks.items():
                rrf[sl] = rrf.get(sl, 0.0) + 1.0 / (s.rrf_k + rk)
        fused = sorted(rrf.items(), key=lambda kv: (-kv[1], kv[0]))
        return {"fused": fused, "bm_rank": bm_rank, "dn_rank": dn_rank, "tokens": toks, "fixes": fixes,
                "query": query, "bm": bm}

    def user_vector(self, snap: Snapshot, user_id: str) -> dict[str, Any]:
        """Recency- and event-weighted mean of the user's item vectors (None without history)."""
        events, bought = self.profiles.get(user_id)
        cat = snap.catalog
        slots, weights = [], []
        n = len(events)
        for j, (iid, strength, _) in enumerate(events):
            sl = cat.slot_of.get(iid)
            if sl is None:
                continue
            slots.append(sl)
            weights.append(strength * self.settings.decay ** (n - 1 - j))
        bought_slots = [cat.slot_of[i] for i in bought if i in cat.slot_of]
        u = None
        if slots and snap.vindex is not None:
            w = np.asarray(weights, np.float32)
            v = snap.vindex.vectors(slots)
            u = (w[:, None] * v).sum(0) / w.sum()
            u = u / max(float(np.linalg.norm(u)), 1e-12)
        return {"vector": u, "slots": slots, "weights": weights, "bought": bought_slots, "n_events": n}

    def recommend(self, user_id: str, k: int = 10) -> dict[str, Any]:
        snap = self.snap
        cat = snap.catalog
        uv = self.user_vector(snap, user_id)
        exclude = set(uv["bought"])
        if uv["vector"] is None:
            items = self._popular(snap, k, exclude)
            strategy = "popular"
        else:
            allowed = None
            if exclude or not cat.alive.all():
                allowed = cat.alive.copy()
                allowed[list(exclude)] = False
            assert snap.vindex is not None
            slots, scores = snap.vindex.search(uv["vector"], k, allowed)
            items = [cat.item(int(sl)) | {"score": round(float(sc), 6)} for sl, sc in zip(slots, scores, strict=True)]
            strategy = "personal"
        return {"user_id": user_id, "strategy": strategy, "history_events": uv["n_events"], "items": items,
                "version": snap.version}

    def _popular(self, snap: Snapshot, k: int, exclude: set[int]) -> list[dict[str, Any]]:
        cat = snap.catalog
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for iid in self.counters.top():
            sl = cat.slot_of.get(iid)
            if sl is None or sl in exclude or sl in seen:
                continue
            seen.add(sl)
            out.append(cat.item(sl) | {"score": round(self.counters.pop.get(iid, 0.0), 6)})
            if len(out) >= k:
                return out
        for free in np.flatnonzero(cat.alive).tolist():  # too few popular items: fill in catalog order
            if free not in exclude and free not in seen:
                out.append(cat.item(free) | {"score": 0.0})
                if len(out) >= k:
                    break
        return out

    def similar(self, item_id: str, k: int = 10) -> dict[str, Any]:
        snap = self.snap
        cat = snap.catalog
        sl = cat.slot(item_id)
        allowed = cat.alive.copy()
        allowed[sl] = False
        if snap.vindex is not None:
            slots, scores = snap.vindex.search(snap.vindex.vectors([sl])[0], k, allowed)
            how = "vector"
        else:  # no vectors: the item's own text as a BM25 query
            bm = np.where(allowed, snap.text.scores(sorted(snap.text.doc_terms(sl))), 0.0)
            slots = np.argsort(-bm, kind="stable")[:k]
            slots = slots[bm[slots] > 0]
            scores = bm[slots]
            how = "bm25"
        return {"item": cat.item(sl), "method": how, "version": snap.version,
                "items": [cat.item(int(s)) | {"score": round(float(v), 6)} for s, v in zip(slots, scores, strict=True)]}

    def explain_query(self, q: str, item_id: str) -> dict[str, Any]:
        snap = self.snap
        cat = snap.catalog
        sl = cat.slot(item_id)
        r = self._retrieve(snap, q)
        final, rerank = self._reranked(snap, r)
        bm = r["bm"]
        weights = snap.text.term_scores(r["tokens"], sl)  # the query terms this product contains
        matched = sorted(weights)
        out: dict[str, Any] = {
            "query": q, "item": cat.item(sl), "corrections": r["fixes"], "query_terms": r["tokens"],
            "matched_terms": matched,
            "term_weights": {t: round(weights[t], 6) for t in matched},
            "bm25": round(float(bm[sl]), 6), "bm25_rank": int((bm > bm[sl]).sum()) + 1 if bm[sl] > 0 else None,
            "dense": None, "dense_rank": None,
            "rrf": round(dict(r["fused"]).get(sl, 0.0), 6),
            "rerank_score": None if sl not in rerank else round(rerank[sl], 6),
            "rank": next((i + 1 for i, (s_, _) in enumerate(final) if s_ == sl), None),
            "influential_training_records": self.influential_records([item_id]),
            "version": snap.version,
        }
        if snap.vindex is not None and snap.space is not None:
            qv = snap.space.query_vector(r["query"])
            scores = self._all_scores(snap, qv)
            out["dense"] = round(float(scores[sl]), 6)
            out["dense_rank"] = int((scores > scores[sl]).sum()) + 1
        return out

    @staticmethod
    def _all_scores(snap: Snapshot, v: np.ndarray) -> np.ndarray:
        assert snap.vindex is not None
        vi = snap.vindex
        sc = np.concatenate([vi.main_vectors @ v, vi.delta @ v]) if len(vi.delta) else vi.main_vectors @ v
        return np.where(snap.catalog.alive[: len(sc)], sc, -np.inf)

    def explain_user(self, user_id: str, item_id: str, n_nearest: int = 3) -> dict[str, Any]:
        snap = self.snap
        cat = snap.catalog
        sl = cat.slot(item_id)
        uv = self.user_vector(snap, user_id)
        out: dict[str, Any] = {"user_id": user_id, "item": cat.item(sl), "history_events": uv["n_events"],
                               "already_purchased": sl in uv["bought"], "score": None, "rank": None,
                               "nearest_history": [], "influential_training_records": None,
                               "version": snap.version}
        if uv["vector"] is None or snap.vindex is None:
            out["reason"] = "no usable history: popularity fallback" if snap.vindex is not None else "no item vectors"
            return out
        v = snap.vindex.vectors([sl])[0]
        scores = self._all_scores(snap, uv["vector"])
        out["score"] = round(float(scores[sl]), 6)
        others = [b for b in uv["bought"] if b != sl]
        scores[others] = -np.inf  # ranked as /v1/recommend ranks: purchased items are left out
        out["rank"] = int((scores > scores[sl]).sum()) + 1
        hist = np.asarray(uv["slots"])
        sims = snap.vindex.vectors(hist) @ v
        w = np.asarray(uv["weights"], np.float32)
        contrib = w * sims / w.sum()
        best: dict[int, tuple[float, float, float]] = {}
        for h, s_, ww, c in zip(hist.tolist(), sims.tolist(), w.tolist(), contrib.tolist(), strict=True):
            prev = best.get(h)
            best[h] = (s_, ww + (prev[1] if prev else 0.0), c + (prev[2] if prev else 0.0))
        order = sorted(best, key=lambda h: -best[h][0])[:n_nearest]
        out["nearest_history"] = [cat.item(h) | {"similarity": round(best[h][0], 6), "weight": round(best[h][1], 6),
                                                 "contribution": round(best[h][2], 6)} for h in order]
        out["reason"] = "recency-weighted mean of the user's item vectors"
        out["influential_training_records"] = self.influential_records(
            [item_id, *[h["item_id"] for h in out["nearest_history"]]])
        return out

    def ads(self, user_id: str | None, k: int = 5) -> dict[str, Any]:
        """Items with a bid, ranked by predicted CTR x bid.

        pCTR = sigmoid(logit(item CTR, smoothed towards the global CTR) + 2 x cosine(user, item)):
        the item's own click-through from logged views and clicks, tilted by the user's taste."""
        snap = self.snap
        cat = snap.catalog
        cand = np.flatnonzero(cat.alive & (cat.bids > 0))
        u = self.user_vector(snap, user_id)["vector"] if user_id else None
        aff = np.zeros(len(cand), np.float32)
        if u is not None and snap.vindex is not None and len(cand):
            aff = snap.vindex.vectors(cand) @ u
        prior = self.counters.global_ctr
        rows = []
        for sl, a in zip(cand.tolist(), aff.tolist(), strict=True):
            base = self.counters.item_ctr(str(cat.item_ids[sl]), prior)
            p = _sigmoid(_logit(base) + 2.0 * a)
            rows.append((p * float(cat.bids[sl]), p, sl))
        rows.sort(key=lambda r: (-r[0], r[2]))
        return {"user_id": user_id, "personalised": u is not None, "version": snap.version,
                "items": [cat.item(sl) | {"pctr": round(p, 6), "expected_value": round(ev, 6)}
                          for ev, p, sl in rows[:k]]}

    def influential_records(self, item_ids: Sequence[str], n: int = 5) -> list[dict[str, Any]] | None:
        """The highest-valued training records about these items, from the newest valuation
        `values.csv` under `reports_dir` (None when no valuation has run)."""
        vals = self._values_table()
        if vals is None:
            return None
        rows = vals[vals[Col.ITEM_ID].isin([str(i) for i in item_ids])].nlargest(n, "value")
        keep = [c for c in (Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.TIMESTAMP, Col.SOURCE, "value") if c in rows]
        return json.loads(rows[keep].to_json(orient="records", date_format="iso"))

    def _values_table(self) -> pd.DataFrame | None:
        d = self.settings.reports_dir
        if d is None or not Path(d).is_dir():
            return None
        files = sorted(Path(d).rglob("values.csv"), key=lambda p: p.stat().st_mtime)
        if not files:
            return None
        f = files[-1]
        key = (str(f), f.stat().st_mtime)
        if self._values_cache is None or self._values_cache[0] != key:
            try:
                df = pd.read_csv(f)
            except (OSError, ValueError, pd.errors.ParserError):
                log.warning("unreadable valuation table %s", f)
                return None
            if not {"value", Col.ITEM_ID} <= set(df.columns):
                return None  # values of groups or of another kind of record
            df[Col.ITEM_ID] = df[Col.ITEM_ID].astype(str)
            self._values_cache = (key, df)
        return self._values_cache[1]

    def known_users(self, limit: int = 50) -> list[str]:
        return self.profiles.users(limit)

    def info(self) -> dict[str, Any]:
        snap = self.snap
        return {"version": snap.version, "pid": os.getpid(), "model": snap.model.name, "model_dir": snap.model_dir,
                "items": int(snap.catalog.alive.sum()), "slots": snap.catalog.n, "users": len(self.profiles),
                "index": None if snap.vindex is None else snap.vindex.kind,
                "delta_items": 0 if snap.vindex is None else len(snap.vindex.delta),
                "dense": snap.space is not None, "loaded_at": snap.loaded_at,
                "query_encoder": None if snap.space is None else snap.space.counters()}


def event_rows(batch: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic event models -> store rows (timestamps as epoch seconds, now when absent)."""
    now = time.time()
    out = []
    for e in batch:
        d = e.model_dump()
        ts = d.get(Col.TIMESTAMP)
        d[Col.TIMESTAMP] = now if ts is None else ts.timestamp()
        out.append(d)
    return out

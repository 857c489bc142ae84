"""Durable event and item log (SQLAlchemy 2 core): SQLite by default, PostgreSQL by URL.

An event is acknowledged only after its transaction committed: SQLite runs in WAL mode with
`synchronous=FULL` (the WAL is fsynced at every commit, so a `kill -9` or power cut loses
nothing acknowledged); PostgreSQL commits synchronously by default. Both tables are append-only
logs with increasing ids, so every worker process can tail them (`events_after`) and the next
training run can read them back as a `Dataset` (`to_frame`, `export_dataset`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from shoprank.data.dataset import Dataset
from shoprank.data.schema import INTERACTIONS, Col

metadata = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only

events_table = sa.Table(
    "events",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column(Col.USER_ID, sa.String(128), nullable=False, index=True),
    sa.Column(Col.ITEM_ID, sa.String(128), nullable=False),
    sa.Column(Col.EVENT, sa.String(16), nullable=False),
    sa.Column(Col.LABEL, sa.Float, nullable=True),
    sa.Column(Col.TIMESTAMP, sa.Float, nullable=False),  # epoch seconds, UTC
    sa.Column(Col.SOURCE, sa.String(64), nullable=True),
    sa.Column(Col.QUERY, sa.String(512), nullable=True),
    sa.Column(Col.COST, sa.Float, nullable=True),
    sa.Column("received_at", sa.Float, nullable=False),
    # optional client key: a batch sent again (after a timeout, a crash) is stored only once
    sa.Column("event_id", sa.String(128), nullable=True, unique=True),
)

items_table = sa.Table(
    "item_log",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column(Col.ITEM_ID, sa.String(128), nullable=False, index=True),
    sa.Column("payload", sa.Text, nullable=False),  # the posted item as JSON
    sa.Column("received_at", sa.Float, nullable=False),
)

class Appended(NamedTuple):
    """Store ids of a posted batch, in order, and which rows were new (not seen before)."""

    ids: list[int]
    new: list[bool]


EVENT_FIELDS = (Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.LABEL, Col.TIMESTAMP, Col.SOURCE, Col.QUERY, Col.COST)


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (psycopg2 is not a dependency)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    eng = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8,
                           max_overflow=16)

    @sa_event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa_event.listens_for(eng, "begin")
    def _on_begin(conn: Any) -> None:
        # writers take the write lock at BEGIN, so two writers queue instead of failing on upgrade
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return eng


class EventStore:
    """Append-only event and item logs behind one SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self._write = _sqlite_engine(self.url, immediate=True)
            self._read = _sqlite_engine(self.url, immediate=False)
        else:
            self._write = sa.create_engine(self.url, pool_size=8, max_overflow=16, pool_pre_ping=True)
            self._read = self._write
        metadata.create_all(self._write)

    # -- writing ---------------------------------------------------------------------------
    def append_events(self, rows: Sequence[dict[str, Any]]) -> Appended:
        """Insert a batch in one transaction; returns its ids once it has committed.

        Rows carrying an `event_id` already in the store are not inserted again: they get the
        stored row's id and `new=False`, which makes client retries safe (exactly once)."""
        if not rows:
            return Appended([], [])
        now = time.time()
        values = [{**{f: r.get(f) for f in EVENT_FIELDS}, "event_id": r.get("event_id"), "received_at": now}
                  for r in rows]
        keyed = [i for i, v in enumerate(values) if v["event_id"] is not None]
        plain = [i for i, v in enumerate(values) if v["event_id"] is None]
        ids: list[int] = [0] * len(values)
        new = [True] * len(values)
        with self._write.begin() as conn:
            if plain:
                res = conn.execute(sa.insert(events_table).returning(events_table.c.id, sort_by_parameter_order=True),
                                   [values[i] for i in plain])
                for i, got in zip(plain, res.scalars().all(), strict=True):
                    ids[i] = int(got)
            if keyed:
                insert = (sqlite_insert if self.is_sqlite else pg_insert)(events_table)
                inserted = {str(k) for k in conn.execute(
                    insert.on_conflict_do_nothing(index_elements=["event_id"]).returning(events_table.c.event_id),
                    [values[i] for i in keyed]).scalars().all()}
                keys = list({str(values[i]["event_id"]) for i in keyed})
                found: dict[str, int] = {}
                for s in range(0, len(keys), 900):
                    q = sa.select(events_table.c.event_id, events_table.c.id).where(
                        events_table.c.event_id.in_(keys[s : s + 900]))
                    found.update({str(k): int(v) for k, v in conn.execute(q)})
                seen: set[str] = set()
                for i in keyed:
                    k = str(values[i]["event_id"])
                    ids[i] = found[k]
                    new[i] = k in inserted and k not in seen  # a key twice in one batch: stored once
                    seen.add(k)
        return Appended(ids, new)

    def append_items(self, items: Sequence[dict[str, Any]]) -> list[int]:
        if not items:
            return []
        now = time.time()
        values = [{Col.ITEM_ID: str(it[Col.ITEM_ID]), "payload": json.dumps(it, ensure_ascii=False, default=str),
                   "received_at": now} for it in items]
        with self._write.begin() as conn:
            res = conn.execute(sa.insert(items_table).returning(items_table.c.id, sort_by_parameter_order=True),
                               values)
            return [int(i) for i in res.scalars().all()]

    # -- reading ---------------------------------------------------------------------------
    def events_after(self, last_id: int, limit: int = 10_000) -> list[dict[str, Any]]:
        """Events with id > last_id, oldest first (what other workers wrote since we looked)."""
        q = sa.select(events_table).where(events_table.c.id > last_id).order_by(events_table.c.id).limit(limit)
        with self._read.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def iter_events(self, chunk: int = 50_000) -> Iterator[dict[str, Any]]:
        last = 0
        while True:
            rows = self.events_after(last, chunk)
            if not rows:
                return
            yield from rows
            last = int(rows[-1]["id"])

    def items_after(self, last_id: int, limit: int = 10_000) -> list[tuple[int, dict[str, Any]]]:
        q = sa.select(items_table.c.id, items_table.c.payload).where(items_table.c.id > last_id) \
            .order_by(items_table.c.id).limit(limit)
        with self._read.connect() as conn:
            return [(int(i), json.loads(p)) for i, p in conn.execute(q)]

    def count_events(self) -> int:
        with self._read.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())

    def event_counts(self) -> dict[str, int]:
        q = sa.select(events_table.c.event, sa.func.count()).group_by(events_table.c.event)
        with self._read.connect() as conn:
            return {str(e): int(n) for e, n in conn.execute(q)}

    def ping(self) -> bool:
        try:
            with self._read.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    # -- export for training -------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """All logged events in the interactions schema (timestamps as UTC datetimes)."""
        rows = list(self.iter_events())
        df = pd.DataFrame(rows, columns=["id", *EVENT_FIELDS, "received_at"])
        out = pd.DataFrame({c: df[c] for c in EVENT_FIELDS})
        out[Col.TIMESTAMP] = pd.to_datetime(df[Col.TIMESTAMP].astype("float64"), unit="s", utc=True)
        for c in (Col.LABEL, Col.COST):
            out[c] = out[c].astype("float64")
        return out[[c for c in INTERACTIONS.names if c in out.columns]]

    def latest_items(self) -> pd.DataFrame:
        """The last posted version of every item, as catalog rows."""
        last: dict[str, dict[str, Any]] = {}
        lid = 0
        while True:
            got = self.items_after(lid)
            if not got:
                break
            for _, it in got:
                last[str(it[Col.ITEM_ID])] = it
            lid = got[-1][0]
        return pd.DataFrame(list(last.values()))

    def export_dataset(self, base: Dataset, name: str | None = None) -> Dataset:
        """`base` plus the posted items and logged events, validated, ready for the next training run."""
        items = base.items
        new_items = self.latest_items()
        if len(new_items):
            cols = [c for c in items.columns if c in new_items.columns]
            upd = new_items[cols]
            items = pd.concat([items[~items[Col.ITEM_ID].isin(upd[Col.ITEM_ID])], upd], ignore_index=True)
        inter = pd.concat([base.interactions, self.to_frame()], ignore_index=True)
        if Col.SPLIT in inter.columns and inter[Col.SPLIT].isna().all():
            inter = inter.drop(columns=[Col.SPLIT])
        return Dataset.from_frames(name or f"{base.name}+events", items, inter, base.judgments,
                                   meta={k: v for k, v in base.meta.items() if k != "counts"})

    def close(self) -> None:
        self._write.dispose()
        if self._read is not self._write:
            self._read.dispose()


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    """datetime64 (UTC) column -> float epoch seconds."""
    return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9

"""Event store: durable SQLite settings, round trip to a training Dataset, and the same on a real
PostgreSQL server started by the test (skipped only where PostgreSQL is not installed)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from shoprank.data.dataset import Dataset
from shoprank.serving.app import create_app
from shoprank.serving.process import free_port
from shoprank.serving.service import Service
from shoprank.serving.store import EventStore
from tests.serving.conftest import API_KEY, make_settings

EVENTS = [
    {"user_id": "a", "item_id": "i000001", "event": "view", "timestamp": 1_700_000_000.0, "source": "api"},
    {"user_id": "a", "item_id": "i000002", "event": "purchase", "timestamp": 1_700_000_001.5, "cost": 0.2},
    {"user_id": "b", "item_id": "i000001", "event": "click", "timestamp": 1_700_000_002.0, "query": "desk"},
]


def _roundtrip(store: EventStore, ds: Dataset) -> None:
    ids = store.append_events(EVENTS).ids
    assert len(ids) == 3 and ids == sorted(ids)
    assert [r["user_id"] for r in store.events_after(ids[0])] == ["a", "b"]
    assert store.event_counts() == {"view": 1, "purchase": 1, "click": 1}
    df = store.to_frame()
    assert list(df["event"]) == ["view", "purchase", "click"]
    assert df["timestamp"].iloc[1] == pd.Timestamp(1_700_000_001.5, unit="s", tz="UTC")
    store.append_items([{"item_id": "new1", "title": "New Thing", "price": 3.0}])
    out = store.export_dataset(ds)
    assert len(out.interactions) == len(ds.interactions) + 3 and "new1" in out.item_map
    assert out.interactions["event"].iloc[-1] == "click"
    # idempotency keys: a retried batch is stored once, with the first ids
    keyed = [e | {"event_id": f"k{i}"} for i, e in enumerate(EVENTS)]
    first = store.append_events(keyed[:2])
    again = store.append_events([keyed[1], keyed[2], keyed[2], EVENTS[0]])
    assert first.new == [True, True] and again.ids[0] == first.ids[1]
    assert again.new == [False, True, False, True] and again.ids[1] == again.ids[2]
    assert store.count_events() == 3 + 2 + 2


def test_sqlite_is_durable_and_exports(shop: tuple[Dataset, Path], tmp_path: Path) -> None:
    store = EventStore(f"sqlite:///{tmp_path / 'ev.sqlite'}")
    with store._write.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: fsync at every commit
    _roundtrip(store, shop[0])
    store.close()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port (as the postgres user when we are root)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)")
    tmp = Path(tempfile.mkdtemp(prefix="shoprank-pg-"))
    preexec = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)

        def preexec() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    data, port = tmp / "data", free_port()

    def pg(*args: str | Path) -> None:
        subprocess.run([str(a) for a in args], check=True, preexec_fn=preexec, capture_output=True, timeout=120,
                       cwd=tmp)

    pg(bindir / "initdb", "-D", data, "-A", "trust", "-U", "shoprank", "-E", "UTF8", "--no-sync")
    pg(bindir / "pg_ctl", "-D", data, "-l", tmp / "log", "-w", "-t", "60", "start", "-o",
       f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on")
    try:
        yield f"postgresql://shoprank@127.0.0.1:{port}/postgres"
    finally:
        pg(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def test_postgres_store_roundtrip(pg_url: str, shop: tuple[Dataset, Path]) -> None:
    store = EventStore(pg_url)
    assert store.url.startswith("postgresql+psycopg://") and store.ping()
    _roundtrip(store, shop[0])
    store.close()


def test_postgres_backs_the_service_and_other_workers_see_events(
        pg_url: str, shop: tuple[Dataset, Path], pop_dir: Path, emb_cache: Path, tmp_path: Path) -> None:
    s = make_settings(pop_dir, shop[1], tmp_path, emb_cache, store_url=pg_url, encoder="none", poll_seconds=0.1)
    a, b = Service(s), Service(s)  # two "workers" on one store
    a.start()
    b.start()
    try:
        with TestClient(create_app(s, service=a)) as ca:
            top = ca.get("/v1/recommend", params={"user_id": "pg-user", "k": 3}).json()["items"][0]["item_id"]
            ev = [{"user_id": "pg-user", "item_id": top, "event": "purchase"}]
            r = ca.post("/v1/events", json={"events": ev}, headers={"X-API-Key": API_KEY})
            assert r.status_code == 200
            after = ca.get("/v1/recommend", params={"user_id": "pg-user", "k": 3}).json()
            assert top not in [i["item_id"] for i in after["items"]]  # purchased: excluded at once
            item = {"item_id": "pg-new", "title": "Postgres Elephant Plush"}
            assert ca.post("/v1/items", json={"items": [item]}, headers={"X-API-Key": API_KEY}).status_code == 200
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not b.profiles.get("pg-user")[1]:
            time.sleep(0.05)
        assert b.profiles.get("pg-user")[1] == {top}  # worker b applied worker a's event
        while time.monotonic() < deadline and "pg-new" not in b.snap.catalog.slot_of:
            time.sleep(0.05)
        assert b.search("elephant plush", 1)["items"][0]["item_id"] == "pg-new"
    finally:
        a.stop()
        b.stop()

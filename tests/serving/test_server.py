"""The real server in a subprocess: `shoprank serve` on a real port, events posted concurrently,
`kill -9` in the middle of the stream, restart: every acknowledged event is in the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoprank.data.dataset import Dataset
from shoprank.serving.process import ServerProcess
from shoprank.serving.service import Service
from shoprank.serving.store import EventStore
from tests.serving.conftest import API_KEY, make_settings

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def served(shop: tuple[Dataset, Path], pop_dir: Path, tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    store = f"sqlite:///{tmp_path / 'events.sqlite'}"
    args = ["--model", str(pop_dir), "--data", str(shop[1]), "--store", store, "--encoder", "none"]
    yield args, store


def test_kill9_loses_no_acknowledged_event(served: tuple[list[str], str], tmp_path: Path, shop: tuple[Dataset, Path],
                                            pop_dir: Path, emb_cache: Path) -> None:
    args, store_url = served
    srv = ServerProcess(args, tmp_path / "server.log", env={"SHOPRANK_API_KEY": API_KEY})
    acked: list[tuple[int, str, str]] = []  # (store id, user, item)
    lock = threading.Lock()
    stop = threading.Event()
    try:
        srv.wait_ready()
        # a posted product is searchable within 5 s on the real server
        t0 = time.perf_counter()
        item = {"item_id": "before-crash", "title": "Phoenix Feather Duster", "category": "cleaning"}
        assert httpx.post(srv.url + "/v1/items", json={"items": [item]}, headers=KEY).status_code == 200
        hit = httpx.get(srv.url + "/v1/search", params={"q": "phoenix feather", "k": 1}).json()["items"]
        assert hit[0]["item_id"] == "before-crash" and time.perf_counter() - t0 < 5
        assert "Traceback" not in httpx.get(srv.url + "/v1/similar/nope").text

        def client(t: int) -> None:
            n = 0
            with httpx.Client(base_url=srv.url, timeout=5) as c:
                while not stop.is_set():
                    batch = [{"user_id": f"dur-{t}-{n}-{j}", "item_id": f"i{(n + j) % 200:06d}", "event": "click"}
                             for j in range(5)]
                    n += 1
                    try:
                        r = c.post("/v1/events", json={"events": batch}, headers=KEY)
                    except httpx.HTTPError:
                        return  # the server died: this batch was never acknowledged
                    if r.status_code == 200:
                        with lock:
                            acked.extend((i, e["user_id"], e["item_id"])
                                         for i, e in zip(r.json()["ids"], batch, strict=True))

        threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(acked) < 300:
            time.sleep(0.02)
        srv.kill9()  # mid-stream: clients are still posting
        stop.set()
        for th in threads:
            th.join()
    finally:
        stop.set()
        srv.stop()
    assert len(acked) >= 300

    store = EventStore(store_url)
    rows = {int(r["id"]): (r["user_id"], r["item_id"]) for r in store.iter_events()}
    store.close()
    missing = [a for a in acked if rows.get(a[0]) != (a[1], a[2])]
    assert missing == [], f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"

    # restart on the crashed store (in-process, to spare a second interpreter start):
    # the users' events and the posted item come back
    svc = Service(make_settings(pop_dir, shop[1], tmp_path, emb_cache, store_url=store_url, encoder="none"))
    svc.start(poll=False)
    try:
        assert svc.recommend(acked[0][1], 3)["history_events"] == 1
        assert all(svc.profiles.get(u)[0] for _, u, _ in acked)
        assert svc.search("phoenix feather", 1)["items"][0]["item_id"] == "before-crash"
    finally:
        svc.stop()


def test_metrics_sum_over_workers(served: tuple[list[str], str], tmp_path: Path) -> None:
    """Two uvicorn workers: any worker's /metrics counts the requests both of them answered."""
    args, _ = served
    srv = ServerProcess([*args, "--workers", "2", "--no-access-log"], tmp_path / "server.log",
                        env={"SHOPRANK_API_KEY": API_KEY})
    try:
        srv.wait_ready(workers=2)  # both workers up and answering
        n = 30
        for _ in range(n):
            with httpx.Client(timeout=5) as c:
                assert c.get(srv.url + "/v1/search", params={"q": "lamp"}).status_code == 200
        line = 'shoprank_requests_total{method="GET",route="/v1/search",status="200"}'
        for _ in range(6):  # whichever worker answers the scrape, the count is the service's
            with httpx.Client(timeout=5) as c:
                text = c.get(srv.url + "/metrics").text
            got = [ln for ln in text.splitlines() if ln.startswith(line)]
            assert got and float(got[0].split()[-1]) == n, got
    finally:
        srv.stop()


def test_server_process_reports_a_failed_start(tmp_path: Path) -> None:
    """A server that exits during start-up is an error carrying the log's last lines."""
    from shoprank.errors import ShoprankError

    srv = ServerProcess(["--model", str(tmp_path / "nope"), "--data", str(tmp_path)], tmp_path / "server.log")
    with pytest.raises(ShoprankError, match="(?s)exited with code 2 during start-up.*not a saved model"):
        srv.wait_ready(timeout=60)
    srv.stop()

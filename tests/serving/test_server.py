"""The real server in a subprocess: `shoprank serve` on a real port, events posted concurrently,
`kill -9` in the middle of the stream, restart: every acknowledged event is in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoprank.data.dataset import Dataset
from shoprank.serving.service import Service
from shoprank.serving.store import EventStore
from tests.serving.conftest import API_KEY, free_port, make_settings

KEY = {"X-API-Key": API_KEY}


class Server:
    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "shoprank.cli", "serve", *args, "--port", str(self.port)]
        env = os.environ | {"SHOPRANK_API_KEY": API_KEY}
        with log.open("ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def served(shop: tuple[Dataset, Path], pop_dir: Path, tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    store = f"sqlite:///{tmp_path / 'events.sqlite'}"
    args = ["--model", str(pop_dir), "--data", str(shop[1]), "--store", store, "--encoder", "none"]
    yield args, store


def test_kill9_loses_no_acknowledged_event(served: tuple[list[str], str], tmp_path: Path, shop: tuple[Dataset, Path],
                                            pop_dir: Path, emb_cache: Path) -> None:
    args, store_url = served
    srv = Server(args, tmp_path / "server.log")
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
    srv = Server([*args, "--workers", "2", "--no-access-log"], tmp_path / "server.log")
    try:
        srv.wait_ready()
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:  # both workers up and answering
            with httpx.Client(timeout=5) as c:  # a fresh connection may reach either worker
                pids.add(int(c.get(srv.url + "/v1/info").json()["pid"]))
        assert len(pids) == 2
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

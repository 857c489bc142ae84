"""Serving under load: latency and throughput of search and recommend, and event durability.

    python benchmarks/serving.py [--items 100000] [--events 200000] [--model dense|popularity]
                                 [--encoder minilm|none] [--workers 2] [--clients 32]
                                 [--requests 20000] [--post-events 100000] [--random-vectors]
                                 [--no-record]

1. Builds the built-in shop (`SynthConfig.preset("large")`: 100k items) and a model
   (frozen-encoder `dense` by default: every item is embedded once, ~180 texts/s on this CPU,
   kept in benchmarks/out/emb-cache so later runs are fast), both cached in benchmarks/out/.
2. Starts `shoprank serve --workers N` on a real port; `--clients` concurrent clients (threads
   spread over 4 client processes, on the same machine) send `--requests` requests, half
   search (queries from the shop's query log), half recommend (known and unknown users).
3. Posts `--post-events` events (each with an `event_id`) concurrently in batches of 50,
   `kill -9`s the whole server (process group) half-way, restarts it, resends what was not
   acknowledged, posts the rest, and checks that every acknowledged event is in the store, once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import ROOT, md_table, record

from shoprank.serving.process import ServerProcess

OUT = ROOT / "benchmarks" / "out"
KEY = "bench-key"


def prepare(items: int, events: int, model: str, random_vectors: bool = False
            ) -> tuple[Path, Path, list[str], list[str]]:
    from shoprank.data.dataset import Dataset
    from shoprank.data.synth import SynthConfig, synthesize
    from shoprank.models.base import get_model_class

    data = OUT / f"serving-shop-{items}-{events}"
    if not (data / "dataset.json").exists():
        cfg = SynthConfig.preset("large", n_items=items, n_users=max(100, items // 4), n_events=events)
        ds, _ = synthesize(cfg, progress=True)
        ds.save(data)
    ds = Dataset.load(data)
    mdir = OUT / f"serving-model-{model}{'-random' if random_vectors else ''}-{items}-{events}"
    if random_vectors and not (mdir / "config.json").exists():
        # latency only: a flat index costs the same whatever the values; queries and posted
        # items are still embedded by the real encoder
        m = get_model_class("dense")()
        rng = np.random.default_rng(0)
        v = rng.normal(size=(ds.n_items, 384)).astype(np.float32)
        m.item_emb_ = v / np.linalg.norm(v, axis=1, keepdims=True)
        m.n_items_, m.fitted_ = ds.n_items, True
        m.save(mdir)
    if not (mdir / "config.json").exists():
        t0 = time.perf_counter()
        params: dict[str, Any] = {"cache_dir": str(OUT / "emb-cache")} if model == "dense" else {}
        get_model_class(model)(**params).fit(ds).save(mdir)
        print(f"fitted {model} in {time.perf_counter() - t0:.0f}s", flush=True)
    queries = sorted(set(ds.judgments["query"].astype(str))) or ["desk"]
    users = sorted(set(ds.interactions["user_id"].astype(str)))
    return data, mdir, queries, users


def _load_worker(url: str, n_threads: int, n_requests: int, queries: list[str], users: list[str], seed: int,
                 rate: float | None, q: Any) -> None:
    """One client process: n_threads keep-alive clients; returns (kind, client s, server s, status) rows.
    `rate` (requests/s per client thread): paced on a fixed schedule (open loop, latency counted
    from the scheduled send time, so a slow server cannot hide its backlog); None = closed loop."""
    import httpx

    rows: list[tuple[str, float, float, int]] = []
    lock = threading.Lock()
    per = n_requests // n_threads

    def run(t: int) -> None:
        rng = np.random.default_rng(seed * 1000 + t)
        out = []
        start = time.perf_counter() + rng.random() * (1.0 / rate if rate else 0.0)
        with httpx.Client(base_url=url, timeout=30) as c:
            for j in range(per):
                if rng.random() < 0.5:
                    kind, path = "search", "/v1/search"
                    params = {"q": queries[int(rng.integers(len(queries)))], "k": "10"}
                else:
                    kind, path = "recommend", "/v1/recommend"
                    u = users[int(rng.integers(len(users)))] if rng.random() < 0.9 else f"new-{rng.integers(1e9)}"
                    params = {"user_id": u, "k": "10"}
                if rate:
                    due = start + j / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    t0 = due
                else:
                    t0 = time.perf_counter()
                server = float("nan")
                try:
                    r = c.get(path, params=params)
                    code = r.status_code
                    st = r.headers.get("server-timing", "")
                    if st.startswith("app;dur="):
                        server = float(st[8:]) / 1000
                except httpx.HTTPError:
                    code = -1
                out.append((kind, time.perf_counter() - t0, server, code))
        with lock:
            rows.extend(out)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    q.put(rows)


def load_test(url: str, clients: int, requests: int, queries: list[str], users: list[str],
              rate: float | None = None) -> dict[str, Any]:
    """`rate`: total requests/s over all clients (paced), None = as fast as the server answers."""
    procs_n = min(4, clients)
    per_client = None if rate is None else rate / clients
    q: Any = mp.get_context("fork").Queue()
    t0 = time.perf_counter()
    procs = [mp.get_context("fork").Process(target=_load_worker, args=(url, clients // procs_n, requests // procs_n,
                                                                        queries, users, p, per_client, q))
             for p in range(procs_n)]
    for p in procs:
        p.start()
    rows = [r for _ in procs for r in q.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    out: dict[str, Any] = {"requests": len(rows), "seconds": round(wall, 1), "rps": round(len(rows) / wall, 1),
                           "errors": sum(1 for r in rows if r[3] != 200), "rate": rate}
    for kind in ("search", "recommend"):
        lat = np.array([r[1] for r in rows if r[0] == kind]) * 1000
        srv = np.array([r[2] for r in rows if r[0] == kind and r[2] == r[2]]) * 1000
        out[kind] = {"n": int(len(lat)), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                     "p99_ms": round(float(np.percentile(lat, 99)), 1),
                     "server_p50_ms": round(float(np.percentile(srv, 50)), 1) if len(srv) else None,
                     "server_p99_ms": round(float(np.percentile(srv, 99)), 1) if len(srv) else None,
                     "errors": sum(1 for r in rows if r[0] == kind and r[3] != 200)}
    return out


def post_events(url: str, n_items: int, batches: list[tuple[int, int]], clients: int,
                acked: list[tuple[int, str, str]], kill_at: int | None = None, on_kill: Any = None
                ) -> list[tuple[int, int]]:
    """Post event ranges [s, e) from `clients` threads, killing the server once `kill_at` events are
    acknowledged; returns the ranges not acknowledged (a client would send them again)."""
    import httpx

    lock = threading.Lock()
    todo = list(reversed(batches))
    failed: list[tuple[int, int]] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while True:
                with lock:
                    if stop.is_set() or not todo:
                        return
                    s, e = todo.pop()
                batch = [{"user_id": f"bench-{k % 5000}", "item_id": f"i{(k * 7919) % n_items:06d}",
                          "event": ("view", "click", "cart", "purchase")[k % 4], "event_id": f"bench-{k}"}
                         for k in range(s, e)]
                try:
                    r = c.post("/v1/events", json={"events": batch}, headers={"X-API-Key": KEY})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if not ok:
                        failed.append((s, e))
                        continue
                    acked.extend((i, ev["user_id"], ev["item_id"]) for i, ev in zip(r.json()["ids"], batch, strict=True))
                    if kill_at is not None and len(acked) >= kill_at and not stop.is_set():
                        stop.set()
                        on_kill()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sorted(failed) + sorted(todo)


def index_recall(mdir: Path, hnsw_threshold: int, cache_dir: Path, data: Path, n: int = 500) -> dict[str, Any]:
    """Recall@10 of the serving index against exact search, for queries that are item vectors
    (similar items), real users' profiles (mean vector of their last 50 items in the shop's
    history, as recommend uses) and mixtures of 5 random items (a worst case: no structure);
    builds (and caches) the same index the server loads."""
    from shoprank.data.dataset import Dataset
    from shoprank.models.base import load_model
    from shoprank.serving.vectors import VectorIndex, model_item_vectors

    m = load_model(mdir)
    v = model_item_vectors(m, int(m.n_items_))  # type: ignore[attr-defined]
    assert v is not None
    t0 = time.perf_counter()
    idx = VectorIndex.build(v, hnsw_threshold=hnsw_threshold, cache_dir=cache_dir)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    items = v[rng.choice(len(v), n, replace=False)]
    mix = v[rng.choice(len(v), (n, 5))].mean(1)
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    ds = Dataset.load(data)
    inter = ds.interactions.sort_values("timestamp")
    ids = ds.item_map.to_internal(inter["item_id"])
    by_user = pd.Series(ids).groupby(inter["user_id"].astype(str).to_numpy()).apply(lambda x: np.asarray(x)[-50:])
    pick = by_user.iloc[rng.choice(len(by_user), min(n, len(by_user)), replace=False)]
    prof = np.stack([v[h].mean(0) for h in pick])
    prof /= np.linalg.norm(prof, axis=1, keepdims=True)
    return {"kind": idx.kind, "build_or_load_s": round(build_s, 1), "item_queries": round(idx.recall(items), 4),
            "user_profiles": round(idx.recall(prof), 4), "random_mixtures": round(idx.recall(mix), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=200_000, help="events in the synthetic history")
    ap.add_argument("--model", default="dense")
    ap.add_argument("--encoder", default="minilm", help="for models without vectors; none = BM25 only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--post-events", type=int, default=100_000)
    ap.add_argument("--hnsw-threshold", type=int, default=200_000, help="exact index up to this many items")
    ap.add_argument("--random-vectors", action="store_true",
                    help="dense model with random item vectors (skips embedding the catalog; latency only)")
    ap.add_argument("--paced-requests", type=int, default=6000,
                    help="then this many requests paced at --paced-share of the measured throughput (0: skip)")
    ap.add_argument("--paced-share", type=float, default=0.5)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    load_before = f"{os.getloadavg()[0]:.1f}"
    t_prep = time.perf_counter()
    data, mdir, queries, users = prepare(a.items, a.events, a.model, a.random_vectors)
    prep_s = time.perf_counter() - t_prep
    recall = (index_recall(mdir, a.hnsw_threshold, OUT / "emb-cache", data) if a.model in ("dense", "lm")
              else None)
    print(f"index recall@10 vs exact: {recall}", flush=True)
    store_path = OUT / f"serving-store-{os.getpid()}.sqlite"
    args = ["--model", str(mdir), "--data", str(data), "--workers", str(a.workers), "--store",
            f"sqlite:///{store_path}", "--encoder", a.encoder, "--cache-dir", str(OUT / "emb-cache"),
            "--hnsw-threshold", str(a.hnsw_threshold), "--no-access-log"]
    log = OUT / "serving-server.log"
    srv = ServerProcess(args, log, env={"SHOPRANK_API_KEY": KEY})
    try:
        start_s = srv.wait_ready(timeout=900, workers=a.workers)
        print(f"server ready in {start_s:.0f}s", flush=True)
        load = load_test(srv.url, a.clients, a.requests, queries, users)
        print(json.dumps(load), flush=True)
        paced = None
        if a.paced_requests:
            rate = round(load["rps"] * a.paced_share, 1)
            paced = load_test(srv.url, a.clients, a.paced_requests, queries, users, rate=rate)
            print(json.dumps(paced), flush=True)
        acked: list[tuple[int, str, str]] = []
        t0 = time.perf_counter()
        batches = [(s, min(s + 50, a.post_events)) for s in range(0, a.post_events, 50)]
        left = post_events(srv.url, a.items, batches, a.clients, acked, kill_at=a.post_events // 2,
                           on_kill=srv.kill9)
        first_s = time.perf_counter() - t0
        n_before = len(acked)
    finally:
        srv.stop()
    srv2 = ServerProcess(args, log, env={"SHOPRANK_API_KEY": KEY})
    try:
        restart_s = srv2.wait_ready(timeout=900, workers=a.workers)
        t1 = time.perf_counter()
        left2 = post_events(srv2.url, a.items, left, a.clients, acked)
        second_s = time.perf_counter() - t1
    finally:
        srv2.stop()
    from shoprank.serving.store import EventStore

    st = EventStore(f"sqlite:///{store_path}")
    stored = {int(r["id"]): (r["user_id"], r["item_id"]) for r in st.iter_events()}
    st.close()
    lost = sum(1 for i, u, it in acked if stored.get(i) != (u, it))
    ev = {"posted": a.post_events, "acknowledged": len(acked), "acked_before_kill": n_before,
          "resent_after_restart": sum(e - s for s, e in left), "never_acknowledged": sum(e - s for s, e in left2),
          "in_store": len(stored), "acknowledged_but_missing": lost,
          "events_per_s": round(len(acked) / (first_s + second_s), 1), "restart_s": round(restart_s, 1)}
    print(json.dumps(ev), flush=True)
    for p in (store_path, Path(str(store_path) + "-wal"), Path(str(store_path) + "-shm")):
        p.unlink(missing_ok=True)
    if a.no_record:
        return
    def table(res: dict[str, Any]) -> str:
        rows = [{"endpoint": k, "requests": res[k]["n"], "client p50 ms": res[k]["p50_ms"],
                 "client p99 ms": res[k]["p99_ms"], "server p50 ms": res[k]["server_p50_ms"],
                 "server p99 ms": res[k]["server_p99_ms"], "errors": res[k]["errors"]} for k in ("search", "recommend")]
        return md_table(rows, ["endpoint", "requests", "client p50 ms", "client p99 ms", "server p50 ms",
                               "server p99 ms", "errors"])

    vec = (" with RANDOM item vectors (--random-vectors: measures latency only; queries and posted items "
           "are embedded by the real MiniLM encoder)") if a.random_vectors else ""
    kind = "HNSW (M=32, efSearch=128)" if a.items > a.hnsw_threshold else "exact (IndexFlatIP)"
    rec = "" if recall is None else (
        f" Index recall@10 against exact search: {recall['item_queries']} for item vectors (similar items), "
        f"{recall['user_profiles']} for real users' profiles (recommend), {recall['random_mixtures']} for means of "
        f"5 random items (worst case); index built or loaded from the cache in {recall['build_or_load_s']} s.")
    cmd = "python benchmarks/serving.py " + " ".join(sys.argv[1:])
    body = (f"`{cmd}`\n\nShop: {a.items:,} items, {a.events:,} history events, model `{a.model}`{vec} (encoder for "
            f"other models: `{a.encoder}`), vector index {kind} (`--hnsw-threshold {a.hnsw_threshold}`).{rec} "
            f"`shoprank serve --workers {a.workers}`, SQLite store (WAL, synchronous=FULL); {a.clients} concurrent "
            f"keep-alive clients (threads in 4 processes on the same 2 cores as the server); half search (queries "
            f"from the shop's query log), half recommend (10% unknown users). Client latency is measured by the "
            f"client (queueing included); server latency is the app's own `Server-Timing` header (time inside "
            f"the server process, from the request's arrival in the app to its response).\n\n"
            f"**Closed loop** (each client sends its next request when the last is answered, i.e. the server is "
            f"saturated): {load['requests']:,} requests, {load['rps']} requests/s over {load['seconds']} s, "
            f"errors: {load['errors']}\n\n" + table(load))
    if paced is not None:
        body += (f"\n\n**Paced** (open loop at {paced['rate']} requests/s = {a.paced_share:.0%} of the closed-loop "
                 f"throughput, spread over the {a.clients} clients; latency from each request's scheduled send "
                 f"time): {paced['requests']:,} requests, {paced['rps']} requests/s, errors: {paced['errors']}\n\n"
                 + table(paced))
    body += (f"\n\n- start-up (both workers ready): {start_s:.0f} s; data + model preparation: {prep_s:.0f} s"
             f"\n- events: {ev['posted']:,} posted in batches of 50 by {a.clients} clients; server killed with "
             f"SIGKILL (whole process group) after {ev['acked_before_kill']:,} acknowledged, restarted "
             f"({ev['restart_s']} s), the unacknowledged batches resent and the rest posted: "
             f"{ev['acknowledged']:,} acknowledged, {ev['in_store']:,} rows in the store (every event carries an "
             f"`event_id`, so a batch committed but not acknowledged before the kill is not stored twice when "
             f"resent), **{ev['acknowledged_but_missing']} acknowledged but missing** from the store; "
             f"{ev['events_per_s']} events/s\n"
             f"- targets (issue 5): p99 < 50 ms search, < 20 ms recommend, zero errors.\n"
             f"- machine load (1-minute load average) before / after the run: {load_before} / "
             f"{os.getloadavg()[0]:.1f}")
    record("Serving: latency, throughput and kill -9 durability (benchmarks/serving.py)", body)


if __name__ == "__main__":
    main()

"""Service internals without HTTP: the vector index (exact and HNSW, delta, filters), a model
without vectors (BM25 + popularity only), and background compaction."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from shoprank.data.dataset import Dataset
from shoprank.serving.service import Service
from shoprank.serving.vectors import VectorIndex
from tests.serving.conftest import make_settings


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_graph_is_cached_on_disk_and_reloaded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    v = _unit(rng.normal(size=(400, 16)))
    q = _unit(rng.normal(size=(20, 16)))
    a = VectorIndex.build(v, hnsw_threshold=100, cache_dir=tmp_path)
    files = list(tmp_path.glob("hnsw-*.faiss"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = VectorIndex.build(v, hnsw_threshold=100, cache_dir=tmp_path)  # loaded, not rebuilt
    assert files[0].stat().st_mtime_ns == stamp and len(list(tmp_path.glob("hnsw-*.faiss"))) == 1
    for qq in q:
        assert a.search(qq, 10)[0].tolist() == b.search(qq, 10)[0].tolist()
    assert b.recall(q, 10) >= 0.9 and VectorIndex.build(v, hnsw_threshold=10_000).recall(q, 10) == 1.0
    # other vectors: another file
    VectorIndex.build(v[::-1].copy(), hnsw_threshold=100, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("hnsw-*.faiss"))) == 2


def test_flat_and_hnsw_agree_with_brute_force() -> None:
    rng = np.random.default_rng(0)
    v = _unit(rng.normal(size=(500, 16)))
    q = _unit(rng.normal(size=(1, 16)))[0]
    want = np.argsort(-(v @ q))[:10]
    flat = VectorIndex.build(v, hnsw_threshold=10_000)
    hnsw = VectorIndex.build(v, hnsw_threshold=100)
    assert flat.kind == "flat" and hnsw.kind == "hnsw"
    assert flat.search(q, 10)[0].tolist() == want.tolist()
    assert len(set(hnsw.search(q, 10)[0].tolist()) & set(want.tolist())) >= 9
    # appended vectors are searched too; masks restrict the result
    extra = _unit(np.vstack([q, -q]))
    both = hnsw.with_added(extra)
    assert both.n == 502 and both.search(q, 1)[0].tolist() == [500]
    allowed = np.zeros(502, bool)
    allowed[[3, 7, 501]] = True
    assert set(both.search(q, 5, allowed)[0].tolist()) == {3, 7, 501}
    big_mask = np.ones(502, bool)
    big_mask[500] = False  # many allowed: the faiss path with oversampling
    got = both.search(q, 5, big_mask, exact_below=10)[0]
    assert 500 not in got and len(got) == 5
    np.testing.assert_allclose(both.vectors([2, 501]), np.vstack([v[2], -q]))


def test_service_without_vectors_and_compaction(shop: tuple[Dataset, Path], pop_dir: Path, emb_cache: Path,
                                                tmp_path: Path) -> None:
    s = make_settings(pop_dir, shop[1], tmp_path, emb_cache, encoder="none", compact_after=3)
    svc = Service(s)
    svc.start(poll=False)
    try:
        assert svc.snap.vindex is None and svc.info()["dense"] is False
        r = svc.search("standing desk", 3)
        assert r["items"] and all(i["dense_rank"] is None for i in r["items"])
        assert svc.recommend("someone", 3)["strategy"] == "popular"
        sim = svc.similar(r["items"][0]["item_id"], 3)
        assert sim["method"] == "bm25" and sim["items"]
        names = ["alpha", "bravo", "charlie", "delta", "echo"]
        for k, name in enumerate(names):
            svc.add_items([{"item_id": f"c{k}", "title": f"Compaction Widget {name}"}])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and svc.snap.text.segments[0].n_docs == 200:
            time.sleep(0.05)
        assert svc.snap.text.segments[0].n_docs >= 203  # the delta was merged into the base
        hits = svc.search("compaction widget echo", 5)["items"]
        assert hits[0]["item_id"] == "c4" and {h["item_id"] for h in hits} == {f"c{k}" for k in range(5)}
        # the items and their versions survive a restart (replayed from the store)
        svc.add_items([{"item_id": "c1", "title": "Renamed Gizmo"}])
    finally:
        svc.stop()
    again = Service(s)
    again.start(poll=False)
    try:
        assert again.search("renamed gizmo", 1)["items"][0]["item_id"] == "c1"
        assert "c1" not in [i["item_id"] for i in again.search("compaction widget", 10)["items"]]
    finally:
        again.stop()


def test_settings_travel_through_the_environment(tmp_path: Path) -> None:
    from shoprank.serving.settings import ENV_JSON, Settings

    s = Settings(model_dir=tmp_path / "m", data_dir=tmp_path / "d", api_key="k", max_k=7, cache_dir=tmp_path)
    back = Settings.from_env({ENV_JSON: s.to_json()})
    assert back == s and back.resolved_store_url.startswith("sqlite:///")
    plain = Settings.from_env({"SHOPRANK_MODEL_DIR": "m", "SHOPRANK_DATA_DIR": "d", "SHOPRANK_MAX_K": "5"})
    assert plain.max_k == 5 and plain.model_dir == Path("m")


def test_serve_command_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from shoprank.cli import main

    monkeypatch.setattr("sys.argv", ["shoprank", "serve", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a saved model" in err and len(err.splitlines()) == 1


def test_concurrent_queries_are_encoded_in_batches_and_errors_reach_every_waiter() -> None:
    import threading

    from shoprank.serving.vectors import VectorSpace

    calls: list[list[str]] = []

    def encode(qs: list[str]) -> np.ndarray:
        calls.append(list(qs))
        time.sleep(0.05)  # a slow forward pass: the others queue up meanwhile
        if any("boom" in q for q in qs):
            raise RuntimeError("encoder failed")
        return np.array([[len(q), 1.0] for q in qs], np.float32)

    space = VectorSpace("t", encode, encode)
    out: dict[str, np.ndarray] = {}
    words = [f"q{'x' * i}" for i in range(24)]
    threads = [threading.Thread(target=lambda w=w: out.__setitem__(w, space.query_vector(w))) for w in words]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(out) == sorted(words)
    for w, v in out.items():  # each caller got its own row
        want = np.array([len(w), 1.0], np.float32)
        np.testing.assert_allclose(v, want / np.linalg.norm(want), rtol=1e-6)
    assert len(calls) < len(words) and sum(len(c) for c in calls) == len(words)
    c = space.counters()
    assert c["queries"] == len(words) and c["encoded"] == len(words) and c["batches"] == len(calls)
    assert space.query_vector(words[3]) is out[words[3]] and len(calls) <= len(words) - 1  # cached
    errors: list[BaseException] = []

    def bad(w: str) -> None:
        try:
            space.query_vector(w)
        except RuntimeError as e:
            errors.append(e)

    good: dict[str, np.ndarray] = {}
    ts = [threading.Thread(target=bad, args=(f"boom{i}",)) for i in range(6)]
    ts += [threading.Thread(target=lambda i=i: good.__setitem__(i, space.query_vector(f"ok{i}"))) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    # a failing query fails alone, never the good queries batched with it, and nobody hangs
    assert len(errors) == 6 and len(good) == 6 and not any(t.is_alive() for t in ts)
    assert space.query_vector("fine again").shape == (2,)  # the lead was handed back


def test_a_hybrid_model_reranks_the_fused_head(shop: tuple[Dataset, Path], dense_dir: Path, emb_cache: Path,
                                                tmp_path: Path) -> None:
    from shoprank.data.splits import split_dataset
    from shoprank.models.base import load_model
    from shoprank.models.baselines import BM25Ranker
    from shoprank.models.hybrid import HybridRanker

    ds, data = shop
    sp = split_dataset(ds)
    hyb = HybridRanker.from_models(load_model(dense_dir), BM25Ranker().fit(sp.train), sp.train, sp.valid, fusion="ltr")
    hyb.save(tmp_path / "hybrid")
    svc = Service(make_settings(tmp_path / "hybrid", data, tmp_path, emb_cache, rerank_depth=20))
    svc.start(poll=False)
    try:
        q = str(ds.judgments["query"].iloc[0])
        out = svc.search(q, k=10)
        assert out["reranked"] > 0
        got = [it["rerank_score"] for it in out["items"] if "rerank_score" in it]
        assert len(got) == len(out["items"]) and got == sorted(got, reverse=True)
        for pos in (0, 3):  # explain reports the rank the search answered
            ex = svc.explain_query(q, out["items"][pos]["item_id"])
            assert ex["rank"] == pos + 1 and ex["rerank_score"] == out["items"][pos]["rerank_score"]
        # the head holds the same candidates as without re-ranking, in the model's order
        svc.settings.rerank_depth = 0
        plain = svc.search(q, k=20)
        assert "rerank_score" not in plain["items"][0] and plain["reranked"] == 0
        slots = [svc.snap.catalog.slot_of[it["item_id"]] for it in plain["items"]]
        want = hyb.score_query_items([q], [np.asarray(slots, np.int64)])[0]
        best = [plain["items"][i]["item_id"] for i in np.argsort(-want, kind="stable")[:10]]
        assert [it["item_id"] for it in out["items"]] == best
    finally:
        svc.stop()

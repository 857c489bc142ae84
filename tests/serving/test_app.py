"""The HTTP API through FastAPI's TestClient on a started service over the tiny shop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shoprank.serving.app import create_app, get_service
from shoprank.serving.service import Service
from tests.serving.conftest import API_KEY, BIDS

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def client(dense_service: Service) -> Iterator[TestClient]:
    app = create_app(dense_service.settings, service=dense_service)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_search_is_hybrid_filtered_and_typo_tolerant(client: TestClient) -> None:
    r = client.get("/v1/search", params={"q": "standing desk", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 5 and all("standing desk" in it["title"].lower() for it in body["items"][:3])
    assert any(it["bm25_rank"] and it["dense_rank"] for it in body["items"])  # both retrievers contributed
    assert "furniture" in body["facets"]["category"]
    typo = client.get("/v1/search", params={"q": "standng dsk", "k": 5}).json()
    assert typo["corrections"] == {"standng": "standing", "dsk": "desk"}
    assert [i["item_id"] for i in typo["items"]][:3] == [i["item_id"] for i in body["items"]][:3]
    f = client.get("/v1/search", params={"q": "desk", "k": 50, "category": "FURNITURE", "price_max": 400}).json()
    assert f["items"] and all(i["category"] == "furniture" and i["price"] <= 400 for i in f["items"])
    none = client.get("/v1/search", params={"q": "desk", "brand": "no such brand"}).json()
    assert none["items"] == []


def test_recommend_uses_events_posted_just_now(client: TestClient) -> None:
    cold = client.get("/v1/recommend", params={"user_id": "brand-new-user", "k": 5}).json()
    assert cold["strategy"] == "popular" and len(cold["items"]) == 5
    desk = client.get("/v1/search", params={"q": "standing desk", "k": 3}).json()["items"]
    ev = [{"user_id": "brand-new-user", "item_id": d["item_id"], "event": "click"} for d in desk[:2]]
    ev.append({"user_id": "brand-new-user", "item_id": desk[2]["item_id"], "event": "purchase"})
    r = client.post("/v1/events", json={"events": ev}, headers=KEY)
    assert r.status_code == 200 and r.json()["accepted"] == 3
    warm = client.get("/v1/recommend", params={"user_id": "brand-new-user", "k": 5}).json()
    assert warm["strategy"] == "personal" and warm["history_events"] == 3
    ids = [i["item_id"] for i in warm["items"]]
    assert desk[2]["item_id"] not in ids  # purchased: excluded
    assert sum("desk" in i["title"].lower() for i in warm["items"]) >= 2
    ex = client.get("/v1/explain", params={"user_id": "brand-new-user", "item_id": ids[0]}).json()
    assert ex["rank"] >= 1 and ex["nearest_history"] and ex["nearest_history"][0]["similarity"] > 0.3


def test_event_validation_names_field_and_row(client: TestClient) -> None:
    good = {"user_id": "u1", "item_id": "i000001", "event": "view"}
    bad = client.post("/v1/events", json={"events": [good, good | {"event": "clik"}]}, headers=KEY)
    assert bad.status_code == 422
    assert bad.json()["detail"][0] == {"field": "events[1].event", "row": 1,
                                       "message": "Input should be 'view', 'click', 'cart' or 'purchase'"}
    assert bad.json()["error"].startswith("events[1].event:")
    unknown = client.post("/v1/events", json={"events": [good, good, good | {"item_id": "nope"}]}, headers=KEY)
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["field"] == "events[2].item_id"
    extra = client.post("/v1/events", json={"events": [good | {"colour": "red"}]}, headers=KEY)
    assert extra.status_code == 422 and extra.json()["detail"][0]["field"] == "events[0].colour"
    future = client.post("/v1/events", json={"events": [good | {"timestamp": "2999-01-01T00:00:00Z"}]}, headers=KEY)
    assert future.status_code == 422 and "timestamp" in future.json()["error"]
    assert client.post("/v1/events", content=b"{not json", headers=KEY | {"content-type": "application/json"}
                       ).status_code == 422
    assert client.post("/v1/events", json={"events": []}, headers=KEY).status_code == 422


def test_security_and_limits(client: TestClient, dense_service: Service) -> None:
    ev = {"events": [{"user_id": "u1", "item_id": "i000001", "event": "view"}]}
    assert client.post("/v1/events", json=ev).status_code == 401
    assert client.post("/v1/events", json=ev, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.post("/v1/admin/reload", json={}).status_code == 401
    assert client.get("/v1/search", params={"q": "desk", "k": 1000}).json()["error"].startswith("query.k: Input should be less than or equal to 100")
    assert client.get("/v1/search", params={"q": ""}).status_code == 422
    assert client.get("/v1/search", params={"q": "x" * 1000}).status_code == 422
    big = {"events": [{"user_id": "u" * 100, "item_id": "i000001", "event": "view"}] * 20_000}
    r = client.post("/v1/events", json=big, headers=KEY)
    assert r.status_code == 413 and "request_id" in r.json()
    def chunks():  # no content-length: the limit is enforced while the body streams in
        yield b'{"events": ['
        for _ in range(30_000):
            yield b'{"user_id": "u", "item_id": "i000001", "event": "view"},'
        yield b"]}"

    r = client.post("/v1/events", content=chunks(), headers=KEY | {"content-type": "application/json"})
    assert r.status_code == 413
    many = {"events": [{"user_id": "u", "item_id": "i000001", "event": "view"}] * 1001}
    assert client.post("/v1/events", json=many, headers=KEY).status_code == 422
    assert client.get("/v1/similar/nope").status_code == 404
    assert client.get("/v1/explain", params={"item_id": "i000001"}).status_code == 422


def test_no_stack_trace_reaches_the_client(client: TestClient, dense_service: Service) -> None:
    class Broken:
        ready = True

        def search(self, *a: object, **kw: object) -> None:
            raise RuntimeError("secret internal detail")

    app = client.app
    app.dependency_overrides[get_service] = lambda: Broken()  # type: ignore[attr-defined]
    try:
        r = client.get("/v1/search", params={"q": "desk"}, headers={"X-Request-ID": "req-42"})
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert r.status_code == 500 and r.json() == {"error": "internal server error", "request_id": "req-42"}
    assert "secret" not in r.text and "Traceback" not in r.text and r.headers["x-request-id"] == "req-42"
    assert r.headers["server-timing"].startswith("app;dur=")
    assert 'shoprank_errors_total{route="/v1/search"}' in client.get("/metrics").text


def test_posted_item_is_searchable_and_recommendable_within_5s(client: TestClient) -> None:
    item = {"item_id": "new-ltx", "title": "Zephyrix Levitating Lamp", "brand": "Zephyrix",
            "category": "lighting", "price": 49.0, "description": "a lamp that floats on magnets", "bid": 5.0}
    t0 = time.perf_counter()
    assert client.post("/v1/items", json={"items": [item]}, headers=KEY).status_code == 200
    while time.perf_counter() - t0 < 5:
        hits = client.get("/v1/search", params={"q": "levitating lamp", "k": 3}).json()["items"]
        if hits and hits[0]["item_id"] == "new-ltx":
            break
        time.sleep(0.1)
    assert time.perf_counter() - t0 < 5 and hits[0]["item_id"] == "new-ltx"
    assert hits[0]["bm25_rank"] == 1 and hits[0]["dense_rank"] == 1
    sim = client.get("/v1/similar/new-ltx", params={"k": 3}).json()
    assert sim["item"]["title"] == item["title"] and len(sim["items"]) == 3
    client.post("/v1/events", json={"events": [{"user_id": "lamp-fan", "item_id": "new-ltx", "event": "click"}]},
                headers=KEY)
    assert client.get("/v1/explain", params={"user_id": "lamp-fan", "item_id": "new-ltx"}).json()["rank"] == 1
    # an update replaces the old version everywhere
    upd = item | {"title": "Zephyrix Hovering Lamp"}
    assert client.post("/v1/items", json={"items": [upd]}, headers=KEY).status_code == 200
    hits = client.get("/v1/search", params={"q": "zephyrix lamp", "k": 5}).json()["items"]
    assert [h["title"] for h in hits if h["item_id"] == "new-ltx"] == ["Zephyrix Hovering Lamp"]


def test_ads_rank_by_ctr_times_bid(client: TestClient) -> None:
    ads = client.get("/v1/ads", params={"user_id": "u000001", "k": 100}).json()
    ids = [a["item_id"] for a in ads["items"]]
    assert set(BIDS) <= set(ids) and ads["personalised"]
    ev = [a["expected_value"] for a in ads["items"]]
    assert ev == sorted(ev, reverse=True)
    assert all(abs(a["pctr"] * a["bid"] - a["expected_value"]) < 1e-5 for a in ads["items"])
    assert not client.get("/v1/ads").json()["personalised"]


def test_explain_query(client: TestClient) -> None:
    top = client.get("/v1/search", params={"q": "phone charger", "k": 1}).json()["items"][0]
    ex = client.get("/v1/explain", params={"q": "phone chargr", "item_id": top["item_id"]}).json()
    assert ex["corrections"] == {"chargr": "charger"} and set(ex["matched_terms"]) == {"phone", "charger"}
    assert ex["rank"] == 1 and ex["bm25"] > 0 and ex["dense"] > 0
    # the per-term weights add up to the product's BM25 score (distinct matched terms)
    assert set(ex["term_weights"]) == {"phone", "charger"} and min(ex["term_weights"].values()) > 0
    assert abs(sum(ex["term_weights"].values()) - ex["bm25"]) < 1e-4 * ex["bm25"] + 1e-5


def test_reload_swaps_without_failing_requests(client: TestClient, dense_service: Service) -> None:
    item = {"item_id": "pre-reload", "title": "Quokka Survivor Thermos"}
    assert client.post("/v1/items", json={"items": [item]}, headers=KEY).status_code == 200
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.get("/v1/search", params={"q": "phone charger", "k": 3})
            if r.status_code != 200 or not r.json()["items"]:
                errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    v0 = dense_service.snap.version
    r = client.post("/v1/admin/reload", json={}, headers=KEY)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200 and r.json()["version"] > v0 and errors == []
    # items posted before the reload survive it
    assert client.get("/v1/search", params={"q": "quokka thermos", "k": 1}).json()["items"][0]["item_id"] == "pre-reload"
    bad = client.post("/v1/admin/reload", json={"model_dir": "/no/such/model"}, headers=KEY)
    assert bad.status_code == 400 and "not a saved model" in bad.json()["error"]


def test_ops_endpoints_page_and_openapi(client: TestClient, dense_service: Service) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    assert client.get("/v1/search", params={"q": "lamp"}).status_code == 200  # not left to other tests' order
    m = client.get("/metrics").text
    assert 'shoprank_request_seconds_bucket{le="0.005",method="GET",route="/v1/search"}' in m
    assert "shoprank_online_ctr" in m and 'shoprank_requests_total{method="GET",route="/v1/search",status="200"}' in m
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/recommend", "/v1/events", "/v1/items", "/v1/ads"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text
    assert client.get("/v1/reports").json()["available"] is True
    rd = dense_service.settings.reports_dir
    assert isinstance(rd, Path)
    (rd / "index.html").write_text("<h1>report</h1>")
    assert "index.html" in client.get("/v1/reports").json()["html"]
    assert client.get("/reports/index.html").text == "<h1>report</h1>"
    assert client.get("/reports/../../etc/passwd").status_code == 404


def test_online_ctr_metric(client: TestClient, dense_service: Service) -> None:
    before = dense_service.counters.online.copy()
    ev = [{"user_id": "ctr", "item_id": "i000005", "event": e} for e in ("view", "view", "view", "click")]
    client.post("/v1/events", json={"events": ev}, headers=KEY)
    after = dense_service.counters.online
    assert after["view"] - before["view"] == 3 and after["click"] - before["click"] == 1
    line = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("shoprank_online_ctr ")][0]
    assert abs(float(line.split()[1]) - after["click"] / after["view"]) < 1e-9


def test_explain_shows_influential_records_once_valuation_ran(client: TestClient, dense_service: Service) -> None:
    top = client.get("/v1/search", params={"q": "phone charger", "k": 1}).json()["items"][0]["item_id"]
    before = client.get("/v1/explain", params={"q": "phone charger", "item_id": top}).json()
    rd = dense_service.settings.reports_dir
    assert isinstance(rd, Path)
    if not (rd / "job").exists():
        assert before["influential_training_records"] is None
    (rd / "job").mkdir(exist_ok=True)
    (rd / "job" / "values.csv").write_text(
        "index,name,value,stderr,count,user_id,item_id,event\n"
        f"0,0,0.5,0.1,3,u1,{top},click\n1,1,-0.2,0.1,3,u2,{top},view\n2,2,0.9,0.1,3,u3,i999999,click\n")
    ex = client.get("/v1/explain", params={"q": "phone charger", "item_id": top}).json()
    assert [r["value"] for r in ex["influential_training_records"]] == [0.5, -0.2]
    assert ex["influential_training_records"][0]["user_id"] == "u1"


def test_retried_events_with_ids_count_once(client: TestClient, dense_service: Service) -> None:
    ev = [{"user_id": "retry-user", "item_id": "i000007", "event": "click", "event_id": f"retry-{k}"} for k in range(3)]
    a = client.post("/v1/events", json={"events": ev}, headers=KEY).json()
    b = client.post("/v1/events", json={"events": ev}, headers=KEY).json()
    assert a["ids"] == b["ids"] and a["accepted"] == b["accepted"] == 3
    assert len(dense_service.profiles.get("retry-user")[0]) == 3

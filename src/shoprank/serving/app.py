"""The HTTP layer: a FastAPI app factory over `Service`, with auth, limits, metrics and errors.

Everything here translates HTTP to `Service` calls and back. Handlers are plain `def`s so that
the CPU work (numpy, faiss, the encoder) and store I/O run in the thread pool, not on the event
loop. A pure-ASGI guard wraps the whole app: it gives every request an id, enforces the body
size limit while the body streams in, records Prometheus metrics per route, and turns any
unhandled exception into a JSON 500 carrying the request id (the traceback goes to the log,
never to the client).
"""



import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.staticfiles import StaticFiles

from shoprank.errors import ShoprankError
from shoprank.serving.page import INDEX_HTML
from shoprank.serving.schemas import (
    AdsOut,
    ErrorOut,
    EventBatch,
    EventsAck,
    ItemBatch,
    ItemsAck,
    RecommendOut,
    ReloadIn,
    SearchOut,
    SimilarOut,
)
from shoprank.serving.service import NotFound, RowError, Service, event_rows
from shoprank.serving.settings import Settings

log = logging.getLogger("shoprank.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """Prometheus collectors in the app's own registry (several apps can live in one process).

    Under several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set by `serving.server.run`)
    each process writes its samples to files there and a scrape of any worker sums them all,
    so `/metrics` describes the service, not whichever worker answered."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._svc: Service | None = None
        gauge_kw: dict[str, Any] = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        self.registry = CollectorRegistry()
        self.latency = Histogram("shoprank_request_seconds", "request latency by route", ["route", "method"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.requests = Counter("shoprank_requests", "requests by route and status", ["route", "method", "status"],
                                registry=self.registry)
        self.errors = Counter("shoprank_errors", "5xx responses by route", ["route"], registry=self.registry)
        self.events = Counter("shoprank_events_logged", "events committed to the store", ["event"],
                              registry=self.registry)
        self.online_ctr = Gauge("shoprank_online_ctr", "clicks / views over the events logged online",
                                registry=self.registry, **gauge_kw)
        self.items = Gauge("shoprank_items", "live catalog items", registry=self.registry, **gauge_kw)
        self.version = Gauge("shoprank_index_version", "current snapshot version", registry=self.registry,
                             **gauge_kw)

    def bind(self, svc: Service) -> None:
        """Gauges read the service's live state at scrape time."""
        self._svc = svc
        if not self.multiprocess:
            self.online_ctr.set_function(lambda: svc.counters.online_ctr)
            self.items.set_function(lambda: float(svc.snap.catalog.alive.sum()) if svc.ready else 0.0)
            self.version.set_function(lambda: float(svc.snap.version) if svc.ready else 0.0)

    def render(self) -> bytes:
        if not self.multiprocess:
            return bytes(generate_latest(self.registry))
        from prometheus_client import multiprocess

        svc = self._svc
        if svc is not None and svc.ready:  # every worker sees every event (it tails the store)
            self.online_ctr.set(svc.counters.online_ctr)
            self.items.set(float(svc.snap.catalog.alive.sum()))
            self.version.set(float(svc.snap.version))
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return bytes(generate_latest(reg))


class _TooLarge(Exception):
    pass


class Guard:
    """Request ids, body-size limit, metrics and the catch-all 500, as one ASGI wrapper."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = hdrs.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}
        over = {"flag": False}
        extra = [(b"x-request-id", rid.encode()), (b"x-content-type-options", b"nosniff")]

        async def send_wrapped(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                if over["flag"]:  # the app answered a body it could not read: say why instead
                    await self._too_large(send, status, extra, rid)
                    return
                status["code"], status["started"] = msg["status"], True
                # time inside the server (W3C Server-Timing), so a client can tell it from queueing
                took = f"app;dur={(time.perf_counter() - t0) * 1000:.3f}".encode()
                msg["headers"] = [*msg.get("headers", []), *extra, (b"server-timing", took)]
            elif over["flag"]:
                return
            await send(msg)

        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    over["flag"] = True
                    raise _TooLarge
            return msg

        try:
            cl = hdrs.get("content-length", "")
            if cl.isdigit() and int(cl) > self.max_body:
                raise _TooLarge
            await self.app(scope, receive_limited, send_wrapped)
        except _TooLarge:
            if not status["started"]:
                await self._too_large(send, status, extra, rid)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if not status["started"]:
                status["code"], status["started"] = 500, True
                took = f"app;dur={(time.perf_counter() - t0) * 1000:.3f}".encode()
                await _send_json(send, 500, {"error": "internal server error", "request_id": rid},
                                 [*extra, (b"server-timing", took)])
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(path, method, str(status["code"])).inc()
            if status["code"] >= 500:
                self.metrics.errors.labels(path).inc()

    async def _too_large(self, send: Send, status: dict[str, Any], extra: list[tuple[bytes, bytes]],
                         rid: str) -> None:
        if status["started"]:
            return
        status["code"], status["started"] = 413, True
        await _send_json(send, 413, {"error": f"request body over {self.max_body} bytes", "request_id": rid}, extra)


async def _send_json(send: Send, code: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": data})


def _field(loc: tuple[Any, ...]) -> tuple[str, int | None]:
    """('body', 'events', 3, 'event') -> ('events[3].event', 3)."""
    parts = [p for p in loc if p not in ("body",)]
    name, row = "", None
    for p in parts:
        if isinstance(p, int):
            name += f"[{p}]"
            row = p if row is None else row
        else:
            name += ("." if name else "") + str(p)
    return name or "body", row


def _rid(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def get_service(request: Request) -> Service:
    """The app's service (a dependency, so tests can override it)."""
    svc: Service | None = getattr(request.app.state, "service", None)
    if svc is None or not svc.ready:
        raise HTTPException(503, "the service is starting")
    return svc


def _check_batch(field: str, n: int, limit: int) -> None:
    """A 4xx naming the field and the first row over the limit."""
    if n > limit:
        raise RowError(field, limit, f"at most {limit} {field} per request, got {n}")


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    """Build the app. The service (model, indexes, profiles) loads once, in the lifespan;
    pass a started `service` to skip that (tests)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = service is None
        svc = service if service is not None else Service(settings)
        if own:
            import gc

            import anyio

            await anyio.to_thread.run_sync(svc.start)
            # the catalog and profiles are long-lived: keep them out of every future full GC pass,
            # which would otherwise walk millions of objects in the middle of a request
            gc.collect()
            gc.freeze()
        app.state.service = svc
        metrics.bind(svc)
        try:
            yield
        finally:
            if own:
                svc.stop()

    app = FastAPI(title=settings.title, version="1", lifespan=lifespan,
                  description="Hybrid search, recommendations, events and ads over a shoprank model.",
                  responses={422: {"model": ErrorOut}, 500: {"model": ErrorOut}})
    app.state.settings = settings
    app.state.metrics = metrics
    if service is not None:  # already started (tests): usable without running the lifespan
        app.state.service = service
        metrics.bind(service)
    max_k = settings.max_k
    K = Annotated[int, Query(ge=1, le=max_k, description=f"results, 1..{max_k}")]
    Svc = Annotated[Service, Depends(get_service)]

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if not settings.api_key:
            raise HTTPException(403, "writes are disabled: the server has no API key (start it with --api-key)")
        if not x_api_key:
            raise HTTPException(401, "missing X-API-Key header")
        if not hmac.compare_digest(x_api_key.encode(), settings.api_key.encode()):
            raise HTTPException(403, "wrong API key")

    Auth = Depends(require_key)

    # -- errors as JSON -------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = []
        for e in exc.errors():
            name, row = _field(tuple(e.get("loc", ())))
            errs.append({"field": name, "row": row, "message": e.get("msg", "invalid")})
        first = errs[0] if errs else {"field": "request", "message": "invalid"}
        return JSONResponse(status_code=422, content={
            "error": f"{first['field']}: {first['message']}", "detail": errs, "request_id": _rid(request)})

    @app.exception_handler(RowError)
    async def _row(request: Request, exc: RowError) -> JSONResponse:
        return JSONResponse(status_code=422, content={
            "error": str(exc), "detail": [{"field": exc.field, "row": exc.row, "message": exc.message}],
            "request_id": _rid(request)})

    @app.exception_handler(NotFound)
    async def _nf(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": str(exc), "request_id": _rid(request)})

    @app.exception_handler(ShoprankError)
    async def _user(request: Request, exc: ShoprankError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": str(exc), "request_id": _rid(request)})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": exc.detail, "request_id": _rid(request)},
                            headers=getattr(exc, "headers", None))

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _shttp(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": exc.detail, "request_id": _rid(request)})

    # -- reads ------------------------------------------------------------------------------------
    Text = Annotated[str, Query(min_length=1, max_length=settings.max_query_chars)]
    Price = Annotated[float | None, Query(ge=0, allow_inf_nan=False)]
    Facet = Annotated[str | None, Query(max_length=200)]
    UserId = Annotated[str, Query(min_length=1, max_length=128)]

    @app.get("/v1/search", response_model=SearchOut, tags=["read"])
    def search(svc: Svc, q: Text, k: K = 10, category: Facet = None, brand: Facet = None,
               price_min: Price = None, price_max: Price = None) -> dict[str, Any]:
        """Hybrid BM25 + dense search fused by reciprocal rank, with filters and typo correction."""
        return svc.search(q, k, category=category, brand=brand, price_min=price_min, price_max=price_max)

    @app.get("/v1/recommend", response_model=RecommendOut, tags=["read"])
    def recommend(svc: Svc, user_id: UserId, k: K = 10) -> dict[str, Any]:
        """Personalised from the user's events so far (including just-posted ones); popularity otherwise."""
        return svc.recommend(user_id, k)

    @app.get("/v1/similar/{item_id}", response_model=SimilarOut, tags=["read"], responses={404: {"model": ErrorOut}})
    def similar(svc: Svc, item_id: str, k: K = 10) -> dict[str, Any]:
        """Nearest items by vector (or by BM25 on the item's text when the model has no vectors)."""
        return svc.similar(item_id, k)

    @app.get("/v1/explain", tags=["read"], responses={404: {"model": ErrorOut}})
    def explain(svc: Svc, item_id: Annotated[str, Query(min_length=1, max_length=128)],
                q: Annotated[str | None, Query(max_length=settings.max_query_chars)] = None,
                user_id: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
        """Why an item ranks where it does, for a query (`q`) or for a user (`user_id`)."""
        if bool(q) == bool(user_id):
            raise RowError("q", 0, "give exactly one of q (search) or user_id (recommendation)")
        return svc.explain_query(q, item_id) if q else svc.explain_user(str(user_id), item_id)

    @app.get("/v1/ads", response_model=AdsOut, tags=["read"])
    def ads(svc: Svc, user_id: Annotated[str | None, Query(max_length=128)] = None, k: K = 5) -> dict[str, Any]:
        """Items with a bid, ranked by predicted CTR x bid."""
        return svc.ads(user_id, k)

    @app.get("/v1/users", tags=["read"])
    def users(svc: Svc, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """The most active known users (for the web page's user picker)."""
        return {"users": svc.known_users(limit)}

    @app.get("/v1/info", tags=["read"])
    def info(svc: Svc) -> dict[str, Any]:
        return svc.info()

    # -- writes -----------------------------------------------------------------------------------
    @app.post("/v1/events", response_model=EventsAck, tags=["write"], dependencies=[Auth],
              responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut}})
    def post_events(svc: Svc, batch: EventBatch) -> dict[str, Any]:
        """Validate, commit durably, then apply to the user profiles. 200 means stored."""
        _check_batch("events", len(batch.events), settings.max_events_per_batch)
        rows = event_rows(batch.events)
        ids = svc.add_events(rows)
        for r in rows:
            metrics.events.labels(r["event"]).inc()
        return {"accepted": len(ids), "ids": ids}

    @app.post("/v1/items", response_model=ItemsAck, tags=["write"], dependencies=[Auth],
              responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut}})
    def post_items(svc: Svc, batch: ItemBatch) -> dict[str, Any]:
        """Add or update products; searchable and recommendable when this returns."""
        _check_batch("items", len(batch.items), settings.max_items_per_batch)
        return svc.add_items([it.model_dump(exclude_none=True) for it in batch.items])

    @app.post("/v1/admin/reload", tags=["admin"], dependencies=[Auth],
              responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})
    def reload(svc: Svc, body: ReloadIn | None = None) -> dict[str, Any]:
        """Load a model directory and swap it in atomically; no request in flight fails."""
        return svc.reload(body.model_dir if body else None)

    # -- operations -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorOut}})
    def readyz(request: Request) -> JSONResponse:
        svc: Service | None = getattr(request.app.state, "service", None)
        ok = svc is not None and svc.ready and svc.store is not None and svc.store.ping()
        return JSONResponse(status_code=200 if ok else 503, content={"ready": bool(ok)})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- web page ---------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML.replace("{{TITLE}}", settings.title))

    @app.get("/v1/reports", tags=["read"])
    def reports() -> dict[str, Any]:
        """Valuation report files (the page's data-value dashboard), if a reports dir exists."""
        d = settings.reports_dir
        if d is None or not Path(d).is_dir():
            return {"available": False, "html": [], "images": []}
        files = sorted(p.relative_to(d).as_posix() for p in Path(d).rglob("*") if p.is_file())
        return {"available": True, "html": [f for f in files if f.endswith((".html", ".htm"))],
                "images": [f for f in files if f.lower().endswith((".png", ".svg", ".jpg", ".jpeg"))]}

    if settings.reports_dir is not None:
        app.mount("/reports", StaticFiles(directory=str(settings.reports_dir), check_dir=False), name="reports")

    app.add_middleware(Guard, metrics=metrics, max_body=settings.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory shoprank.serving.app:create_app_from_env` (multi-worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings.from_env())

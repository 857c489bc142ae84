"""HTTP service: a thin adapter over the core library.

- `settings.Settings`: one typed settings object (CLI flags or `SHOPRANK_*` environment).
- `service.Service`: catalog, BM25 + vector indexes, user profiles; hybrid search, recommend,
  similar, explain, ads; events and items in, reload out. Immutable snapshots swapped atomically.
- `textindex.TextIndex`: incremental BM25 (equal to bm25s' Lucene scores) with typo correction.
- `vectors`: the model's vector space and the faiss index (exact up to a threshold, HNSW beyond).
- `store.EventStore`: durable event/item log (SQLite WAL + synchronous=FULL, or PostgreSQL).
- `app.create_app`: the FastAPI app (auth, limits, metrics, JSON errors, web page at `/`).
- `server.run` / `shoprank serve`: uvicorn with one or more workers.
"""

from typing import Any

from shoprank.serving.settings import Settings


def create_app(settings: Settings, service: Any = None) -> Any:
    """`shoprank.serving.app.create_app`, imported lazily so `import shoprank.serving` stays cheap."""
    from shoprank.serving.app import create_app as _create

    return _create(settings, service=service)


__all__ = ["Settings", "create_app"]

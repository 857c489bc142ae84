"""Service settings: one typed object, built from CLI flags or `SHOPRANK_*` environment variables.

The environment path exists because `uvicorn --workers N` starts fresh processes that can only
receive settings through the environment (see `create_app_from_env`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SHOPRANK_"
ENV_JSON = "SHOPRANK_SERVE_SETTINGS"  # the whole Settings as JSON (used by `shoprank serve`)


@dataclass
class Settings:
    """Everything the app needs; paths may be str or Path."""

    model_dir: Path
    data_dir: Path
    # event/item store: SQLAlchemy URL; default sqlite file next to the data ("<data_dir>/serving.sqlite")
    store_url: str | None = None
    api_key: str | None = None  # required for write and admin endpoints; None disables them
    encoder: str = "minilm"  # item/query vectors for models without their own ("none": BM25 + popularity only)
    cache_dir: Path | None = None  # encoder embedding cache (SQLite), so restarts do not re-encode
    reports_dir: Path | None = None  # valuation report (index.html + PNGs) shown on the dashboard
    max_k: int = 100
    max_body_bytes: int = 1_000_000
    max_events_per_batch: int = 1000
    max_items_per_batch: int = 500
    max_query_chars: int = 256
    hnsw_threshold: int = 200_000  # exact inner-product index up to this many items, HNSW beyond
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    rrf_k: int = 60  # reciprocal rank fusion constant
    candidates: int = 200  # per retriever, before fusion
    rerank_depth: int = 50  # fused candidates re-ordered by a re-ranking model (`hybrid`); 0 = off
    history_len: int = 50  # recent events per user that make the user vector
    decay: float = 0.9  # recency weight per step back in the history
    poll_seconds: float = 0.5  # how often a worker reads events/items written by other workers
    torch_threads: int = 1  # intra-op threads per worker for query encoding (0: torch's default)
    compact_after: int = 5000  # delta items before the vector index is rebuilt in the background
    title: str = "shoprank"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        self.data_dir = Path(self.data_dir)
        for name in ("cache_dir", "reports_dir"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v))

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'serving.sqlite').resolve()}"

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """`SHOPRANK_SERVE_SETTINGS` (JSON) if set, else `SHOPRANK_MODEL_DIR`, `SHOPRANK_DATA_DIR`, ..."""
        env = dict(os.environ if env is None else env)
        if ENV_JSON in env:
            return cls.from_json(env[ENV_JSON])
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in env and f.name != "extra":
                raw = env[key]
                default = f.default
                kw[f.name] = (int(raw) if isinstance(default, int) and not isinstance(default, bool)
                              else float(raw) if isinstance(default, float) else raw)
        if "model_dir" not in kw or "data_dir" not in kw:
            raise ValueError(f"set {ENV_JSON} or {ENV_PREFIX}MODEL_DIR and {ENV_PREFIX}DATA_DIR")
        return cls(**kw)

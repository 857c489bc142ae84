"""Request bodies (validated strictly: unknown fields, bad types and out-of-range values are 422s
that name the field and row) and the response shapes that appear in the OpenAPI document."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Id = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EventIn(_Strict):
    user_id: str = Id
    item_id: str = Id
    event: Literal["view", "click", "cart", "purchase"]
    timestamp: datetime | None = Field(None, description="ISO 8601 or epoch seconds; default: now")
    source: str | None = Field("api", max_length=64)
    query: str | None = Field(None, max_length=512)
    label: float | None = Field(None, ge=0, le=1)
    cost: float | None = Field(None, ge=0, le=1e9)
    event_id: str | None = Field(None, min_length=1, max_length=128,
                                 description="optional idempotency key: an event sent again with the same key "
                                             "is stored once and answered with the first id")

    @field_validator("timestamp")
    @classmethod
    def _sane_time(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if not (datetime(1990, 1, 1, tzinfo=UTC) <= v <= datetime.now(UTC) + timedelta(days=1)):
            raise ValueError("timestamp must lie between 1990-01-01 and tomorrow")
        return v


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1)


class EventsAck(BaseModel):
    accepted: int
    ids: list[int]


class ItemIn(_Strict):
    item_id: str = Id
    title: str = Field(min_length=1, max_length=500)
    description: str | None = Field(None, max_length=5000)
    brand: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=200)
    price: float | None = Field(None, ge=0, le=1e9)
    bid: float | None = Field(None, ge=0, le=1e6, description="advertising bid; items with a bid are ads")
    attributes: dict[str, Any] | None = None

    @field_validator("price", "bid", "description", "brand", "category")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class ItemBatch(_Strict):
    items: list[ItemIn] = Field(min_length=1)


class ItemsAck(BaseModel):
    indexed: int
    version: int
    seconds: float


class ReloadIn(_Strict):
    model_dir: str | None = Field(None, max_length=4096, description="default: the current model directory")


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_id: str
    title: str | None = None
    brand: str | None = None
    category: str | None = None
    price: float | None = None
    score: float | None = None


class SearchOut(BaseModel):
    query: str
    corrected_query: str | None
    corrections: dict[str, str]
    items: list[Item]
    facets: dict[str, dict[str, int]]
    total_candidates: int
    reranked: int = Field(0, description="fused candidates re-ordered by the model's re-ranker (0: none)")
    version: int


class RecommendOut(BaseModel):
    user_id: str
    strategy: Literal["personal", "popular"]
    history_events: int
    items: list[Item]
    version: int


class SimilarOut(BaseModel):
    item: Item
    method: str
    items: list[Item]
    version: int


class AdsOut(BaseModel):
    user_id: str | None
    personalised: bool
    items: list[Item]
    version: int


class ErrorOut(BaseModel):
    error: str
    detail: Any = None
    request_id: str | None = None

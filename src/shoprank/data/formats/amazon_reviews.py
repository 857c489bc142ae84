"""`amazon-reviews`: Amazon Reviews 2018 and 2023 JSON-lines review and metadata files.

2018 reviews: ``reviewerID, asin, overall, unixReviewTime``; meta: ``asin, title,
description (list), brand, category (list), price ("$12.99")``.
2023 reviews: ``user_id, parent_asin, rating, timestamp (ms)``; meta: ``parent_asin, title,
description (list), store, categories/main_category, price``.
A file is metadata when its name contains "meta" or its first record has no user field.
A review is a purchase with the star rating as label (reviews are verified-purchase-like
signals; the rating says how it went).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    Mapping,
    Part,
    RawRows,
    assemble,
    default_name,
    object_frame,
    read_json_records,
)
from shoprank.data.formats.table import expand_sources
from shoprank.data.schema import Col, Event
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import ShoprankError

EXTENSIONS = {".json", ".jsonl", ".ndjson"}
USER_KEYS = ("reviewerID", "user_id")
_PRICE = re.compile(r"^\s*(?:US)?\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*$")


def is_meta(path: Path, rows: RawRows) -> bool:
    if "meta" in path.name.lower():
        return True
    return not any(k in rows.columns for k in USER_KEYS)


def parse_price(value: Any) -> tuple[float | None, str | None]:
    """``"$1,299.00"`` -> 1299.0; ranges and junk -> (None, original text)."""
    if value is None or isinstance(value, bool):
        return None, None
    if isinstance(value, int | float):
        return float(value), None
    s = str(value)
    if not s.strip():
        return None, None
    m = _PRICE.match(s)
    if m:
        return float(m.group(1).replace(",", "")), None
    return None, s[:200]


def _text(value: Any, sep: str) -> Any:
    """Lists (description paragraphs, category paths) -> one text; empty -> None."""
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return sep.join(parts) if parts else None
    return value


def meta_part(rows: RawRows) -> Part:
    """Catalog rows from a 2018 or 2023 metadata file."""
    cols = set(rows.columns)
    id_key = "parent_asin" if "parent_asin" in cols else "asin"
    out: list[dict[str, Any]] = []
    for r in rows.records:
        price, price_text = parse_price(r.get("price"))
        cat = _text(r.get("categories") or r.get("category"), " > ")
        if cat is None:
            cat = r.get("main_category") or r.get("main_cat")
        attrs = {
            "main_category": r.get("main_category") or r.get("main_cat"),
            "features": r.get("features") or r.get("feature"),
            "details": r.get("details"),
            "price_text": price_text,
        }
        attrs = {k: v for k, v in attrs.items() if v not in (None, "", [], {})}
        out.append(
            {
                Col.ITEM_ID: r.get(id_key),
                Col.TITLE: r.get("title"),
                Col.DESCRIPTION: _text(r.get("description"), " "),
                Col.BRAND: r.get("brand") if "brand" in r else r.get("store"),
                Col.CATEGORY: cat,
                Col.PRICE: price,
                Col.ATTRIBUTES: json.dumps(attrs, ensure_ascii=False, default=str) if attrs else None,
            }
        )
    columns = [Col.DESCRIPTION, Col.BRAND, Col.CATEGORY, Col.PRICE, Col.ATTRIBUTES]
    if id_key in cols:
        columns.insert(0, Col.ITEM_ID)
    if "title" in cols:
        columns.insert(1 if id_key in cols else 0, Col.TITLE)
    return Part(rows.file, object_frame(out, columns, rows.lines), rows.rejects)


def review_part(rows: RawRows) -> Part:
    """Interaction rows from a 2018 or 2023 review file (columns present in the file only)."""
    cols = set(rows.columns)
    v2018 = "reviewerID" in cols
    keys = {
        Col.USER_ID: "reviewerID" if v2018 else "user_id",
        Col.ITEM_ID: "asin" if v2018 or "parent_asin" not in cols else "parent_asin",
        Col.LABEL: "overall" if v2018 else "rating",
        Col.TIMESTAMP: "unixReviewTime" if v2018 else "timestamp",
    }
    out = [
        {**{c: r.get(k) for c, k in keys.items()}, Col.EVENT: Event.PURCHASE.value}
        for r in rows.records
    ]
    columns = [c for c, k in keys.items() if k in cols] + [Col.EVENT]
    return Part(rows.file, object_frame(out, columns, rows.lines), rows.rejects)


def load_amazon_reviews(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """Review files -> purchases with rating labels; meta files -> catalog."""
    m = Mapping(mapping)
    items: list[Part] = []
    reviews: list[Part] = []
    kinds: list[str] = []
    for path in expand_sources(sources, EXTENSIONS):
        rows = m.apply(read_json_records(path))
        if is_meta(path, rows):
            items.append(meta_part(rows))
            kinds.append(f"{path} (meta)")
        else:
            reviews.append(review_part(rows))
            kinds.append(f"{path} (reviews)")
    m.check_used()
    if not items:
        raise ShoprankError(
            "amazon-reviews: no metadata file among the sources (name it *meta*.jsonl, or give "
            "a file whose records have asin/parent_asin and title); the catalog comes from it"
        )
    meta = {
        "provenance": "Amazon Reviews JSON lines: " + ", ".join(kinds),
        "notes": ["each review is a purchase event; label = star rating (1-5)"],
    }
    return assemble(
        name or default_name(sources), items, reviews, meta=meta, on_bad_rows=on_bad_rows, report=report
    )

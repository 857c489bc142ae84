"""`recbole`: RecBole atomic files (``.inter``, ``.item``, optional ``.user``).

Atomic files are tab-separated with a typed header (``item_id:token``); the ``:type``
suffixes are stripped. Cells are never quoted, so the csv module runs with QUOTE_NONE.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    EPOCH_2000,
    Mapping,
    Part,
    RawRows,
    assemble,
    base_stem,
    base_suffix,
    default_name,
    object_frame,
    ordinal_times,
    read_delimited,
    time_series,
)
from shoprank.data.schema import Col, Event, Split
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import ShoprankError

EXTENSIONS = {".inter", ".item", ".user"}
TITLE_COLS = ("title", "movie_title", "item_title", "product_title", "book_title", "name", "item_name")
CATEGORY_COLS = ("categories", "category", "class", "genre", "genres", "cate", "main_category")
YEAR_COLS = ("release_year", "year")
_KNOWN_ITEM_COLS = {Col.ITEM_ID, Col.DESCRIPTION, Col.BRAND, Col.PRICE}


def read_atomic(path: Path) -> tuple[RawRows, dict[str, str]]:
    """Rows of one atomic file with plain column names, and each column's RecBole type."""
    rows = read_delimited(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    types: dict[str, str] = {}
    plain: list[str] = []
    for c in rows.columns:
        name, _, typ = c.partition(":")
        plain.append(name.strip())
        types[name.strip()] = typ.strip() or "token"
    ren = dict(zip(rows.columns, plain, strict=True))
    rows.columns = plain
    rows.records = [{ren[k]: v for k, v in r.items()} for r in rows.records]
    return rows, types


def _first(columns: list[str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in columns:
            return n
    return next((c for c in columns if "title" in c.lower()), None) if names is TITLE_COLS else None


def _seq(value: Any, typ: str) -> Any:
    """RecBole ``token_seq`` cells are space-separated; show them comma-separated."""
    if isinstance(value, str) and typ.endswith("_seq"):
        return ", ".join(value.split())
    return value


def titled(title: Any, year: Any) -> Any:
    """MovieLens style ``Toy Story (1995)``: the year disambiguates remakes."""
    if not isinstance(title, str) or not title.strip():
        return title
    y = year.strip() if isinstance(year, str) else ""
    if re.fullmatch(r"\d{4}", y) and not title.rstrip().endswith(f"({y})"):
        return f"{title.strip()} ({y})"
    return title


def catalog_part(rows: RawRows, types: dict[str, str]) -> Part:
    """A RecBole ``.item`` file as raw catalog rows; unmapped columns go to attributes."""
    cols = rows.columns
    title_col = _first(cols, TITLE_COLS)
    cat_col = _first(cols, CATEGORY_COLS)
    year_col = _first(cols, YEAR_COLS)
    used = {c for c in (title_col, cat_col) if c} | _KNOWN_ITEM_COLS
    out: list[dict[str, Any]] = []
    for r in rows.records:
        rec: dict[str, Any] = {k: r.get(k) for k in _KNOWN_ITEM_COLS if k in r}
        rec[Col.TITLE] = titled(r.get(title_col), r.get(year_col) if year_col else None) if title_col else None
        if cat_col:
            rec[Col.CATEGORY] = _seq(r.get(cat_col), types.get(cat_col, "token"))
        extra = {k: v for k, v in r.items() if k not in used and isinstance(v, str) and v.strip()}
        rec[Col.ATTRIBUTES] = json.dumps(extra, ensure_ascii=False) if extra else None
        out.append(rec)
    columns = [Col.ITEM_ID, Col.TITLE, Col.CATEGORY, Col.ATTRIBUTES, *sorted((_KNOWN_ITEM_COLS - {Col.ITEM_ID}) & set(cols))]
    if Col.ITEM_ID not in cols:
        columns.remove(Col.ITEM_ID)  # let the validator name the missing column
    if not title_col:
        columns.remove(Col.TITLE)
    return Part(rows.file, object_frame(out, columns, rows.lines), rows.rejects)


def split_of(path: Path) -> str | None:
    """``ml-100k.train.inter`` -> train (RecBole's benchmark-file naming)."""
    words = set(re.split(r"[-_.]+", base_stem(path).lower()))
    for s in (Split.TRAIN, Split.VALID, Split.TEST):
        if s.value in words or (s is Split.VALID and "validation" in words):
            return s.value
    return None


def interactions_part(rows: RawRows, path: Path, notes: list[str]) -> Part:
    """``.inter`` rows: rating (or label) -> explicit label with event=rating, else click."""
    cols = rows.columns
    label_col = next((c for c in ("rating", "label", "score") if c in cols), None)
    split = split_of(path)
    times: list[Any]
    if Col.TIMESTAMP in cols:
        times = [r.get(Col.TIMESTAMP) for r in rows.records]
    else:
        times = ordinal_times(EPOCH_2000, len(rows.records))
        notes.append(f"{path.name}: no timestamp column; timestamps are ordinal (file order), not real")
    out = []
    for r in rows.records:
        out.append(
            {
                Col.USER_ID: r.get(Col.USER_ID),
                Col.ITEM_ID: r.get(Col.ITEM_ID),
                Col.EVENT: Event.RATING.value if label_col else Event.CLICK.value,
                Col.LABEL: r.get(label_col) if label_col else None,
                Col.SPLIT: split,
            }
        )
    columns = [c for c in (Col.USER_ID, Col.ITEM_ID) if c in cols] + [Col.EVENT, Col.LABEL, Col.SPLIT]
    frame = object_frame(out, columns, rows.lines)
    frame[Col.TIMESTAMP] = time_series(times)
    return Part(rows.file, frame, rows.rejects)


def find_atomic(sources: list[Path]) -> dict[str, list[Path]]:
    """Sources (files or folders) grouped by atomic suffix: inter / item / user."""
    found: dict[str, list[Path]] = {"inter": [], "item": [], "user": []}
    for src in sources:
        files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else [src]
        for p in files:
            ext = base_suffix(p).lstrip(".")
            if ext in found:
                found[ext].append(p)
            elif not src.is_dir():
                raise ShoprankError(f"{p}: not a RecBole atomic file (.inter, .item or .user)")
    return found


def load_recbole(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """RecBole atomic files -> catalog (from .item) and interactions (from .inter)."""
    m = Mapping(mapping)
    found = find_atomic(sources)
    if not found["item"]:
        raise ShoprankError(
            "recbole: no .item file among the sources; the catalog (titles) comes from it"
        )
    notes: list[str] = []
    items: list[Part] = []
    for p in found["item"]:
        rows, types = read_atomic(p)
        items.append(catalog_part(m.apply(rows, "items"), types))
    inters: list[Part] = []
    for p in found["inter"]:
        rows, _ = read_atomic(p)
        inters.append(interactions_part(m.apply(rows, "interactions"), p, notes))
    m.check_used()
    if found["user"]:
        notes.append(
            "user features (" + ", ".join(p.name for p in found["user"]) + ") are not part of the schema; not imported"
        )
    meta = {
        "provenance": "RecBole atomic files: " + ", ".join(str(p) for v in found.values() for p in v),
        "notes": notes,
    }
    return assemble(
        name or default_name(sources), items, inters, meta=meta, on_bad_rows=on_bad_rows, report=report
    )

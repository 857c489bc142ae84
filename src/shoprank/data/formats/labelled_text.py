"""`labelled-text`: a CSV/TSV of labelled texts (e.g. Chinese shopping reviews) as a dataset.

Each row becomes one item (id = row number, title = the text's first 60 characters,
description = the text, category = the category column) and one explicit label from a
single constant user ``labeler`` (event=rating, label = the label column). That shape lets
label-noise and data-valuation code treat every labelled row as one training example.

Columns are found by name (text: review/text/content/comment/sentence; label:
label/sentiment/score/y; category: cat/category/class/domain) or given by the mapping,
``{"my_text": "text", "stars": "label", "topic": "category"}`` (schema names description /
label / category work as targets too). Byte-order marks at the start of texts are removed
(files concatenated from several UTF-8-with-BOM files carry one per part).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    EPOCH_2000,
    Part,
    RawRows,
    assemble,
    base_suffix,
    default_name,
    object_frame,
    ordinal_times,
    read_delimited,
    time_series,
)
from shoprank.data.formats.table import expand_sources
from shoprank.data.schema import Col, Event
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import DataError, ShoprankError

TEXT_NAMES = ("text", "review", "content", "comment", "sentence", "description", "body")
LABEL_NAMES = ("label", "sentiment", "score", "y", "target", "rating")
CATEGORY_NAMES = ("category", "cat", "class", "domain", "topic")
ROLE_ALIASES = {"text": "text", "description": "text", "review": "text", "label": "label", "category": "category", "cat": "category"}
TITLE_CHARS = 60
USER = "labeler"
EMPTY_TITLE = "(empty text)"


def _role_columns(rows: RawRows, mapping: dict[str, str] | None) -> tuple[str, str, str | None]:
    """role -> source column: mapping first, then the usual names (case-insensitive)."""
    roles: dict[str, str | None] = {"text": None, "label": None, "category": None}
    for src, dst in (mapping or {}).items():
        role = ROLE_ALIASES.get(dst.strip().lower())
        if role is None:
            raise ShoprankError(
                f"labelled-text: mapping target {dst!r} is not a role (text, label or category)"
            )
        if src not in rows.columns:
            raise ShoprankError(f"labelled-text: mapping column {src!r} is not in {rows.file} ({rows.columns})")
        roles[role] = src
    lower = {c.lower(): c for c in rows.columns}
    for role, names in (("text", TEXT_NAMES), ("label", LABEL_NAMES), ("category", CATEGORY_NAMES)):
        if roles[role] is None:
            roles[role] = next((lower[n] for n in names if n in lower), None)
    text, label = roles["text"], roles["label"]
    for role, col in (("text", text), ("label", label)):
        if col is None:
            raise DataError(
                f"no {role} column (looked for {list(TEXT_NAMES if role == 'text' else LABEL_NAMES)}; "
                f"found {rows.columns}); name it with the mapping, e.g. {{'<column>': '{role}'}}",
                file=rows.file, line=1, column=role,
            )
    assert text is not None and label is not None
    return text, label, roles["category"]


def title_of(text: Any) -> Any:
    """First ~60 characters on one line: a readable handle, not a summary."""
    if not isinstance(text, str):
        return text
    flat = re.sub(r"\s+", " ", text).strip()
    if not flat:
        return EMPTY_TITLE
    return flat if len(flat) <= TITLE_CHARS else flat[: TITLE_CHARS - 1].rstrip() + "…"


def load_labelled_text(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """One item + one label event per row; item ids are global row numbers across files."""
    items: list[Part] = []
    events: list[Part] = []
    n = 0
    n_empty = 0
    n_bom = 0
    for path in expand_sources(sources, {".csv", ".tsv"}):
        rows = read_delimited(path, delimiter="\t" if base_suffix(path) == ".tsv" else ",")
        text_col, label_col, cat_col = _role_columns(rows, mapping)
        it: list[dict[str, Any]] = []
        ev: list[dict[str, Any]] = []
        for r in rows.records:
            n += 1
            text = r[text_col]
            if isinstance(text, str) and text.startswith("\ufeff"):
                text = text.lstrip("\ufeff")
                n_bom += 1
            if isinstance(text, str) and not text.strip():
                n_empty += 1
            it.append(
                {
                    Col.ITEM_ID: str(n),
                    Col.TITLE: title_of(text),
                    Col.DESCRIPTION: text,
                    Col.CATEGORY: r[cat_col] if cat_col else None,
                }
            )
            ev.append(
                {Col.USER_ID: USER, Col.ITEM_ID: str(n), Col.EVENT: Event.RATING.value, Col.LABEL: r[label_col]}
            )
        items.append(Part(rows.file, object_frame(it, [Col.ITEM_ID, Col.TITLE, Col.DESCRIPTION, Col.CATEGORY], rows.lines)))
        frame = object_frame(ev, [Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.LABEL], rows.lines)
        frame[Col.TIMESTAMP] = time_series(ordinal_times(EPOCH_2000 + timedelta(seconds=n - len(ev)), len(ev)))
        events.append(Part(rows.file, frame, rows.rejects))
    meta = {
        "provenance": "labelled text rows: " + ", ".join(p.file for p in items),
        "notes": [
            f"one item per row (item_id = row number), one label per row from user {USER!r} (event=rating)",
            f"title = first {TITLE_CHARS} characters of the text; {n_empty} empty texts titled {EMPTY_TITLE!r}",
            f"{n_bom} leading byte-order marks removed from texts",
            "timestamps are ordinal (2000-01-01 + row seconds), not real",
        ],
    }
    return assemble(
        name or default_name(sources), items, events, meta=meta, on_bad_rows=on_bad_rows, report=report
    )

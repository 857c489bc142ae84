"""`homedepot`: Home Depot product search relevance (Kaggle 2016) -> catalog + judgments.

``train.csv`` (``id, product_uid, product_title, search_term, relevance``) is Latin-1,
not UTF-8: a file that is not valid UTF-8 is read as Latin-1 (every byte is a character
there, so nothing is lost; the encoding is recorded in the dataset meta). Every row is a
judgment (query = search_term, grade = relevance, the mean of several human grades);
repeated (query, product) pairs would be kept as separate judgments. The catalog holds each
product once, with its first title; other titles of the same product go to attributes.
An optional ``product_descriptions.csv`` (``product_uid, product_description``) fills
descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    Mapping,
    Part,
    RawRows,
    assemble,
    decode,
    default_name,
    object_frame,
    read_bytes,
    read_delimited,
)
from shoprank.data.formats.table import expand_sources
from shoprank.data.schema import Col
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import DataError, ShoprankError

UID, TITLE, QUERY, GRADE, DESC = "product_uid", "product_title", "search_term", "relevance", "product_description"


def read_csv_any_encoding(path: Path, encodings: list[str]) -> RawRows:
    """Decode as UTF-8 when the bytes are valid UTF-8, else Latin-1; note which one."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
        text = text[1:] if text.startswith("\ufeff") else text
        encodings.append(f"{path.name}: utf-8")
    except UnicodeDecodeError:
        text = decode(data, "latin-1")
        encodings.append(f"{path.name}: latin-1 (not valid UTF-8)")
    return read_delimited(path, text=text)


def _require(rows: RawRows, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in rows.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {rows.columns}", file=rows.file, line=1, column=missing[0]
        )


def load_homedepot(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """Judgments from every file with relevance grades, catalog from the titles they name."""
    m = Mapping(mapping)
    encodings: list[str] = []
    judged: list[RawRows] = []
    descriptions: dict[str, str] = {}
    ignored: list[str] = []
    unread: list[str] = []
    for src in sources:
        in_folder = src.is_dir()
        for path in expand_sources([src], {".csv"}):
            rows = m.apply(read_csv_any_encoding(path, encodings))
            if GRADE in rows.columns:
                _require(rows, (UID, TITLE, QUERY, GRADE))
                judged.append(rows)
            elif DESC in rows.columns:
                _require(rows, (UID, DESC))
                if rows.rejects:
                    where = [r.line for r in rows.rejects[:5]]
                    unread.append(f"{path.name}: {len(rows.rejects)} unreadable rows (lines {where}...)")
                for r in rows.records:
                    descriptions.setdefault(r[UID].strip(), r[DESC])
            elif in_folder:
                ignored.append(path.name)  # e.g. Kaggle's ungraded test.csv, attributes.csv
            else:
                raise ShoprankError(
                    f"homedepot: {path} is neither a judgments file ({UID}, {TITLE}, {QUERY}, "
                    f"{GRADE}) nor a descriptions file ({UID}, {DESC})"
                )
    m.check_used()
    if not judged:
        raise ShoprankError("homedepot: no judgments file (train.csv) among the sources")
    items: list[Part] = []
    judgments: list[Part] = []
    seen: set[str] = set()
    n_retitled = 0
    for rows in judged:
        first: dict[str, dict[str, Any]] = {}
        lines: dict[str, int] = {}
        others: dict[str, list[str]] = {}
        for r, line in zip(rows.records, rows.lines, strict=True):
            uid, title = r[UID].strip(), r[TITLE]
            if uid in seen:
                continue
            if uid not in first:
                first[uid] = {Col.ITEM_ID: uid, Col.TITLE: title, Col.DESCRIPTION: descriptions.get(uid)}
                lines[uid] = line
            elif title != first[uid][Col.TITLE] and title not in others.setdefault(uid, []):
                others[uid].append(title)
        for uid, alt in others.items():
            if alt:
                first[uid][Col.ATTRIBUTES] = json.dumps({"other_titles": alt}, ensure_ascii=False)
                n_retitled += 1
        seen.update(first)
        cols = [Col.ITEM_ID, Col.TITLE, Col.DESCRIPTION, Col.ATTRIBUTES]
        items.append(Part(rows.file, object_frame(list(first.values()), cols, list(lines.values()))))
        jrows = [
            {Col.QUERY: r[QUERY], Col.ITEM_ID: r[UID], Col.GRADE: r[GRADE], Col.LABELER: None}
            for r in rows.records
        ]
        judgments.append(
            Part(rows.file, object_frame(jrows, [Col.QUERY, Col.ITEM_ID, Col.GRADE, Col.LABELER], rows.lines), rows.rejects)
        )
    meta = {
        # grade 1 means irrelevant: evaluation subtracts this so that it earns no gain
        "grade_min": 1.0,
        "provenance": "Home Depot product search relevance (Kaggle 2016): "
        + ", ".join(r.file for r in judged),
        "notes": [
            "grade = relevance, the mean of several human grades on 1 (irrelevant) .. 3 (exact); labeler unknown",
            "encodings: " + "; ".join(encodings),
            f"{n_retitled} products appear with more than one title: first title kept, others in attributes.other_titles",
            f"{sum(1 for v in descriptions.values() if v)} product descriptions",
            *([f"files without grades or descriptions not imported: {ignored}"] if ignored else []),
            *unread,
        ],
    }
    return assemble(
        name or default_name(sources), items, (), judgments, meta=meta, on_bad_rows=on_bad_rows, report=report
    )

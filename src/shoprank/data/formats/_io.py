"""Shared reading and assembly for the format loaders.

Everything here keeps two promises of the data layer:

- Raw cells stay Python objects (``dtype=object``) until `validate_table` has seen them:
  files are decoded with ``errors="surrogateescape"`` so bad bytes survive as lone
  surrogates, which pandas' inferred string dtype would crash on, and which the validator
  reports as "invalid UTF-8 bytes" at their file and line.
- Nothing is silently dropped: a row the format itself cannot read (bad JSON, wrong field
  count, ...) becomes a `Reject` that lands in the same `ValidationReport` as the
  validator's own rejects, so ``read == kept + rejected`` holds per file.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset, _empty
from shoprank.data.schema import CATALOG, INTERACTIONS, JUDGMENTS, Col, TableSpec
from shoprank.data.validate import LINE, OnBadRows, ValidationReport, validate_table
from shoprank.errors import DataError, ShoprankError

csv.field_size_limit(1 << 30)  # product descriptions can exceed csv's 128 KiB default

TABLE_ALIASES: dict[str, str] = {
    "items": "items",
    "item": "items",
    "catalog": "items",
    "products": "items",
    "interactions": "interactions",
    "events": "interactions",
    "judgments": "judgments",
    "judgements": "judgments",
    "qrels": "judgments",
}
SPECS: dict[str, TableSpec] = {"items": CATALOG, "interactions": INTERACTIONS, "judgments": JUDGMENTS}


# -- rows the format could not read ---------------------------------------------------------
@dataclass
class Reject:
    """A source row rejected before validation (unreadable), with where and why."""

    line: int | None
    column: str | None
    reason: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    """Raw rows of one table from one file, plus the rows the format could not read.

    ``frame`` holds raw cells (object dtype) in schema column names and a ``_line`` column.
    """

    file: str
    frame: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    header_line: int | None = 1


@dataclass
class RawRows:
    """A source file read as records: column names, row dicts, their lines, unreadable rows."""

    file: str
    columns: list[str]
    records: list[dict[str, Any]]
    lines: list[int]
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


# -- decoding -------------------------------------------------------------------------------
def read_bytes(path: Path) -> bytes:
    """File bytes; ``.gz`` files are decompressed (Amazon ships ``.json.gz``)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", file=str(path)) from None
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"not a valid gzip file: {e}", file=str(path)) from None
    return data


def decode(data: bytes, encoding: str = "utf-8") -> str:
    """Text with bad bytes kept as lone surrogates (the validator reports them) and no BOM."""
    text = data.decode(encoding, errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: Path, encoding: str = "utf-8") -> str:
    return decode(read_bytes(path), encoding)


def base_suffix(path: Path) -> str:
    """Lower-case extension, ignoring a trailing ``.gz``: ``a.json.gz`` -> ``.json``."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def default_name(sources: Sequence[Path]) -> str:
    """A folder source names the dataset; otherwise the first file's folder does."""
    first = sources[0]
    return (first if first.is_dir() else first.resolve().parent).name or "dataset"


def base_stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


# -- delimited text -------------------------------------------------------------------------
def read_delimited(
    path: Path,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL,
    text: str | None = None,
) -> RawRows:
    """CSV/TSV through the csv module: exact 1-based start lines, cells as ``str``.

    The header is line 1. A row with the wrong number of fields is rejected, not padded.
    """
    text = read_text(path, encoding) if text is None else text
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("empty file (no header line)", file=str(path), line=1) from None
    except csv.Error as e:
        raise DataError(f"unreadable header: {e}", file=str(path), line=1) from None
    columns = [h.strip() for h in header]
    out = RawRows(str(path), columns, [], [])
    prev = reader.line_num
    while True:
        start = prev + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            # The csv module cannot resynchronise inside a broken quoted field.
            raise DataError(f"malformed CSV: {e}", file=str(path), line=start) from None
        prev = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip() and len(columns) > 1):
            continue  # blank line: not a row
        if len(row) != len(columns):
            missing = columns[len(row)] if len(row) < len(columns) else None
            out.rejects.append(
                Reject(
                    start,
                    missing,
                    f"expected {len(columns)} fields, found {len(row)}",
                    {f"field_{i + 1}": v for i, v in enumerate(row)},
                )
            )
            continue
        out.records.append(dict(zip(columns, row, strict=True)))
        out.lines.append(start)
    return out


# -- JSON -----------------------------------------------------------------------------------
class _Lines:
    """Character offset -> 1-based line number."""

    def __init__(self, text: str) -> None:
        self._nl = [m.start() for m in re.finditer("\n", text)]

    def __call__(self, pos: int) -> int:
        return bisect.bisect_left(self._nl, pos) + 1


_WS = re.compile(r"\s*")


def _skip_ws(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def iter_json_lines(text: str, file: str) -> Iterator[tuple[int, Any | Reject]]:
    """``(line, value)`` per non-blank line; unparsable lines come back as `Reject`."""
    for i, raw in enumerate(text.split("\n"), start=1):
        s = raw.strip()
        if not s:
            continue
        try:
            yield i, json.loads(s)
        except json.JSONDecodeError as e:
            yield i, Reject(i, None, f"invalid JSON: {e.msg} (char {e.colno})", {"text": s[:200]})


def iter_json_array(text: str, file: str) -> Iterator[tuple[int, Any]]:
    """``(line, element)`` for a top-level JSON array, with each element's start line.

    Broken JSON in an array cannot be resynchronised, so it raises (file-level error).
    """
    lines = _Lines(text)
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise DataError("expected a JSON array", file=file, line=lines(pos))
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return
    while True:
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", file=file, line=e.lineno) from None
        yield lines(pos), value
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
            continue
        if text.startswith("]", pos):
            return
        raise DataError("invalid JSON: expected ',' or ']'", file=file, line=lines(pos))


def iter_json_object(text: str, file: str) -> Iterator[tuple[int, str, Any]]:
    """``(line, key, value)`` for a top-level JSON object (e.g. ``{"<id>": {...}}``)."""
    lines = _Lines(text)
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        raise DataError("expected a JSON object", file=file, line=lines(pos))
    pos = _skip_ws(text, pos + 1)
    if text.startswith("}", pos):
        return
    while True:
        try:
            key, end = dec.raw_decode(text, pos)
            if not isinstance(key, str):
                raise json.JSONDecodeError("expected a string key", text, pos)
            colon = _skip_ws(text, end)
            if not text.startswith(":", colon):
                raise json.JSONDecodeError("expected ':'", text, colon)
            vpos = _skip_ws(text, colon + 1)
            value, end = dec.raw_decode(text, vpos)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", file=file, line=e.lineno) from None
        yield lines(pos), key, value
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
            continue
        if text.startswith("}", pos):
            return
        raise DataError("invalid JSON: expected ',' or '}'", file=file, line=lines(pos))


def read_json_records(path: Path, *, text: str | None = None) -> RawRows:
    """JSON lines, or one JSON array of objects: records with lines; bad lines rejected."""
    text = read_text(path) if text is None else text
    file = str(path)
    first = text.lstrip()[:1]
    items: Iterable[tuple[int, Any]] = (
        iter_json_array(text, file) if first == "[" else iter_json_lines(text, file)
    )
    out = RawRows(file, [], [], [])
    cols: dict[str, None] = {}
    for line, value in items:
        if isinstance(value, Reject):
            out.rejects.append(value)
        elif not isinstance(value, dict):
            out.rejects.append(Reject(line, None, "not a JSON object", {"value": repr(value)[:200]}))
        else:
            out.records.append(value)
            out.lines.append(line)
            cols.update(dict.fromkeys(value))
    out.columns = list(cols)
    return out


def read_parquet_rows(path: Path) -> RawRows:
    """Parquet rows as records; 'lines' are 1-based row numbers (Parquet has no lines)."""
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types
        raise DataError(f"cannot read Parquet: {e}", file=str(path)) from None
    records = [
        {str(k): (None if _isna(v) else v) for k, v in r.items()}
        for r in df.astype(object).to_dict("records")
    ]
    return RawRows(str(path), [str(c) for c in df.columns], records, list(range(1, len(df) + 1)))


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# -- mapping --------------------------------------------------------------------------------
class Mapping:
    """User column renames ``source -> schema`` (optionally ``table:source``) and file routes.

    ``{"product": "item_id"}`` renames in every table, ``{"items:name": "title"}`` only in
    the catalog, and ``{"clicks.csv": "interactions"}`` (a file name or stem mapped to a
    table name) routes a file to a table. Entries that match nothing raise, so typos show.
    """

    def __init__(self, mapping: dict[str, str] | None) -> None:
        self.renames: dict[str | None, dict[str, str]] = {}
        self.routes: dict[str, str] = {}
        self._used: set[str] = set()
        self._raw = dict(mapping or {})
        for key, value in self._raw.items():
            k, v = str(key).strip(), str(value).strip()
            table: str | None = None
            if ":" in k and k.split(":", 1)[0].lower() in TABLE_ALIASES:
                prefix, k = k.split(":", 1)
                table = TABLE_ALIASES[prefix.lower()]
            elif v.lower() in TABLE_ALIASES:
                self.routes[k] = TABLE_ALIASES[v.lower()]
                continue
            self.renames.setdefault(table, {})[k] = v

    def __bool__(self) -> bool:
        return bool(self._raw)

    def route(self, path: Path) -> str | None:
        for key in (path.name, base_stem(path), str(path)):
            if key in self.routes:
                self._used.add(key)
                return self.routes[key]
        return None

    def rename(self, columns: Iterable[str], table: str | None = None) -> dict[str, str]:
        """Renames that apply to these columns (table-specific ones win)."""
        cols = list(columns)
        out: dict[str, str] = {}
        for scope in (None, table) if table is not None else (None,):
            for src, dst in self.renames.get(scope, {}).items():
                if src in cols:
                    out[src] = dst
                    self._used.add(f"{scope}:{src}" if scope else src)
        return out

    def apply(self, rows: RawRows, table: str | None = None) -> RawRows:
        """Rename columns of `rows` in place (records too) and return it."""
        ren = self.rename(rows.columns, table)
        if ren:
            rows.columns = [ren.get(c, c) for c in rows.columns]
            rows.records = [{ren.get(k, k): v for k, v in r.items()} for r in rows.records]
        return rows

    def check_used(self) -> None:
        unused = [k for k in self.routes if k not in self._used]
        for scope, ren in self.renames.items():
            unused += [
                (f"{scope}:{s}" if scope else s)
                for s in ren
                if (f"{scope}:{s}" if scope else s) not in self._used
            ]
        if unused:
            raise ShoprankError(
                f"mapping entries match no file or column: {unused} "
                "(keys are source column names, 'table:column', or file names routed to a table)"
            )


# -- frames and assembly --------------------------------------------------------------------
def object_frame(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], lines: Sequence[int]
) -> pd.DataFrame:
    """Raw object-dtype frame (never inferred strings) with the ``_line`` column."""
    data: dict[str, Any] = {
        c: pd.Series([r.get(c) for r in rows], dtype=object) for c in columns
    }
    data[LINE] = pd.Series(np.asarray(lines, dtype=np.int64))
    return pd.DataFrame(data)


def time_series(values: Sequence[Any]) -> pd.Series:
    """A raw timestamp column: datetime64 when all values are datetimes (fast path)."""
    if values and all(isinstance(v, datetime) for v in values):
        return pd.Series(pd.DatetimeIndex(list(values)), dtype="datetime64[ns, UTC]")
    return pd.Series(list(values), dtype=object)


def ordinal_times(start: datetime, n: int, step_s: float = 1.0) -> list[datetime]:
    """``n`` strictly increasing synthetic timestamps ``start + k*step`` (ordinal, not real)."""
    base = pd.Timestamp(start)
    return list(pd.date_range(base, periods=n, freq=pd.Timedelta(seconds=step_s)).to_pydatetime())


EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


def _clean(v: Any) -> Any:
    if v is None or _isna(v):
        return None
    s = v if isinstance(v, str) else (json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict | list) else str(v))
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _reject_frame(table: str, file: str, rejects: Sequence[Reject]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "table": table,
            "file": file,
            "line": pd.Series([r.line for r in rejects], dtype="Int64"),
            "column": [r.column for r in rejects],
            "reason": [r.reason for r in rejects],
            "row": [
                json.dumps({k: _clean(v) for k, v in r.row.items()}, ensure_ascii=False)
                for r in rejects
            ],
        }
    )


def _validate_part(
    part: Part,
    spec: TableSpec,
    policy: OnBadRows,
    report: ValidationReport,
    known: pd.Index | None,
) -> pd.DataFrame:
    """`validate_table` on one file's rows, folding in the rows the format rejected."""
    if part.rejects and policy is OnBadRows.ERROR:
        first = min(part.rejects, key=lambda r: (r.line is None, r.line or 0))
        if first.line is not None:
            # A bad row on an earlier line should be reported first: validate those alone.
            earlier = part.frame[part.frame[LINE] < first.line]
            validate_table(
                earlier, spec, file=part.file, on_bad_rows=policy, known_items=known,
                report=ValidationReport(), header_line=part.header_line,
            )
        raise DataError(first.reason, file=part.file, line=first.line, column=first.column)
    kept = validate_table(
        part.frame, spec, file=part.file, on_bad_rows=policy, known_items=known,
        report=report, header_line=part.header_line,
    )
    if part.rejects:
        tr = report.tables[-1]
        tr.read += len(part.rejects)
        tr.rejected += len(part.rejects)
        report.rejects.append(_reject_frame(spec.name, part.file, part.rejects))
    return kept


def _norm_id(v: Any) -> str | None:
    if v is None or _isna(v):
        return None
    return v.strip() if isinstance(v, str) else str(v)


def assemble(
    name: str,
    items: Sequence[Part],
    interactions: Sequence[Part] = (),
    judgments: Sequence[Part] = (),
    *,
    meta: dict[str, Any] | None = None,
    on_bad_rows: OnBadRows | str = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """Validate every part (file) of every table and build the Dataset.

    This is `Dataset.from_frames` generalised to several files per table: each file is
    validated on its own so errors name the right file and line; an item id repeated in a
    later catalog file is a duplicate like one repeated inside a file.
    """
    policy = OnBadRows(on_bad_rows)
    report = report if report is not None else ValidationReport()
    if not items:
        raise ShoprankError("no catalog (items) rows: every dataset needs a catalog")
    kept_items: list[pd.DataFrame] = []
    seen: dict[str, str] = {}  # kept item id -> "file:line" of its row
    for part in items:
        frame = part.frame
        if seen and Col.ITEM_ID in frame.columns:
            ids = [_norm_id(v) for v in frame[Col.ITEM_ID].to_numpy(dtype=object)]
            dup = np.array([i is not None and i in seen for i in ids], dtype=bool)
            if dup.any():
                extra = [
                    Reject(
                        int(frame[LINE].iloc[j]),
                        Col.ITEM_ID,
                        f"duplicate id {ids[j]} (first seen in {seen[str(ids[j])]})",
                        {str(k): v for k, v in frame.iloc[j].items() if k != LINE},
                    )
                    for j in np.flatnonzero(dup)
                ]
                part = Part(part.file, frame[~dup].reset_index(drop=True), part.rejects + extra, part.header_line)
        kept = _validate_part(part, CATALOG, policy, report, None)
        if Col.ITEM_ID in part.frame.columns and len(kept):
            keep_ids = set(kept[Col.ITEM_ID].astype(str))
            for v, line in zip(part.frame[Col.ITEM_ID].to_numpy(dtype=object), part.frame[LINE], strict=True):
                i = _norm_id(v)
                if i is not None and i in keep_ids and i not in seen:
                    seen[i] = f"{part.file}:{int(line)}"
        kept_items.append(kept)
    it = _concat(kept_items, CATALOG)
    known = pd.Index(it[Col.ITEM_ID])
    inter = _concat([_validate_part(p, INTERACTIONS, policy, report, known) for p in interactions], INTERACTIONS)
    judg = _concat([_validate_part(p, JUDGMENTS, policy, report, known) for p in judgments], JUDGMENTS)
    return Dataset(name=name, items=it, interactions=inter, judgments=judg, meta=dict(meta or {}))


def _concat(frames: list[pd.DataFrame], spec: TableSpec) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty(spec)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)

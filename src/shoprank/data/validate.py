"""Validate raw tables against the schema: typed output, located errors, nothing lost.

Loaders hand over raw frames whose cells are still text (or whatever the format gave)
plus a `_line` column with the 1-based line of each row in its source file. Every
rejected row keeps its line, column and reason, so `read == kept + rejected` always.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.schema import FLOAT, JSON, STR, TIME, Col, TableSpec
from shoprank.errors import DataError

LINE = "_line"


class OnBadRows(StrEnum):
    ERROR = "error"
    SKIP = "skip"
    QUARANTINE = "quarantine"


@dataclass
class TableReport:
    table: str
    file: str
    read: int = 0
    kept: int = 0
    rejected: int = 0


@dataclass
class ValidationReport:
    """Counts per table and every rejected row with its reason."""

    tables: list[TableReport] = field(default_factory=list)
    rejects: list[pd.DataFrame] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(t.read for t in self.tables)

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.tables)

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables)

    def rejects_frame(self) -> pd.DataFrame:
        cols = ["table", "file", "line", "column", "reason", "row"]
        if not self.rejects:
            return pd.DataFrame(columns=cols)
        return pd.concat(self.rejects, ignore_index=True)[cols]

    def write_quarantine(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rejects_frame().to_csv(path, index=False)
        return path

    def summary(self) -> str:
        lines = [f"{'table':<14}{'file':<40}{'read':>9}{'kept':>9}{'rejected':>10}"]
        for t in self.tables:
            lines.append(f"{t.table:<14}{t.file[-39:]:<40}{t.read:>9}{t.kept:>9}{t.rejected:>10}")
        lines.append(f"{'total':<54}{self.read:>9}{self.kept:>9}{self.rejected:>10}")
        return "\n".join(lines)


_SURROGATE = re.compile("[\udc80-\udcff]")


def _omap(s: pd.Series, f: Any, dtype: str = "object") -> pd.Series:
    """Element-wise map without pandas' string inference (which rejects bad UTF-8)."""
    return pd.Series([f(v) for v in s.to_numpy(dtype=object)], index=s.index, dtype=dtype)


def _utf8_clean(s: pd.Series) -> bool:
    """True when no cell carries undecodable bytes: one C-level encode of the whole column."""
    if s.dtype != object:
        return True
    try:
        "\x00".join(v for v in s.to_numpy(dtype=object) if isinstance(v, str)).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_bad_utf8(s: pd.Series) -> pd.Series:
    """Cells read with errors='surrogateescape' carry lone surrogates for bad bytes."""
    return _omap(s, lambda v: isinstance(v, str) and _SURROGATE.search(v) is not None, "bool")


def _blank(s: pd.Series) -> pd.Series:
    if _utf8_clean(s):
        st = s.astype("string")
        return (st.isna() | (st.str.strip() == "")).fillna(True).astype(bool)
    return _omap(s, lambda v: _isna(v) or (isinstance(v, str) and not v.strip()), "bool")


def _text(v: Any) -> Any:
    if _isna(v):
        return None
    return v.strip() if isinstance(v, str) else str(v)


def parse_time(values: pd.Series) -> pd.Series:
    """Epoch seconds/milliseconds or ISO-8601 text -> UTC datetimes; NaT where unparsable."""
    if pd.api.types.is_datetime64_any_dtype(values):
        out = pd.to_datetime(values, utc=True)
        return out
    num = pd.to_numeric(values, errors="coerce")
    is_num = num.notna()
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if is_num.any():
        ms = is_num & (num.abs() > 1e11)  # beyond year 5138 in seconds: read as milliseconds
        # Convert each unit on its own: dividing ms by 1000 first adds float noise (~100 ns).
        for mask, unit in ((is_num & ~ms, "s"), (ms, "ms")):
            if mask.any():
                vals = num[mask].to_numpy(dtype="float64")
                out.loc[mask] = pd.to_datetime(vals, unit=unit, utc=True, errors="coerce")  # type: ignore[call-overload]
    rest = ~is_num & values.notna()
    if rest.any():
        out.loc[rest] = pd.to_datetime(
            values[rest].astype(str), utc=True, errors="coerce", format="mixed"
        )
    return out


def _row_json(df: pd.DataFrame, idx: pd.Index) -> list[str]:
    sub = df.loc[idx].drop(columns=[LINE], errors="ignore")
    return [
        json.dumps(
            {k: (None if _isna(v) else str(v).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
             for k, v in r.items()},
            ensure_ascii=False,
        )
        for r in sub.to_dict("records")
    ]


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def validate_table(
    raw: pd.DataFrame,
    spec: TableSpec,
    *,
    file: str,
    on_bad_rows: OnBadRows | str = OnBadRows.ERROR,
    known_items: pd.Index | None = None,
    report: ValidationReport | None = None,
    header_line: int | None = 1,
) -> pd.DataFrame:
    """Return the typed, valid rows of `raw`; reject or raise on the others.

    Missing required columns always raise: no row of such a file can be trusted.
    """
    policy = OnBadRows(on_bad_rows)
    report = report if report is not None else ValidationReport()
    df = raw.copy()
    if LINE not in df.columns:
        df[LINE] = np.arange(1, len(df) + 1) + (header_line or 0)
    missing = [c for c in spec.required if c not in df.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {[c for c in raw.columns if c != LINE]}",
            file=file,
            line=header_line,
            column=missing[0],
        )
    for c in spec.columns:
        if c.name not in df.columns:
            df[c.name] = None

    # Per-cell problems: (mask, column, reason), evaluated in column order.
    problems: list[tuple[pd.Series, str, str]] = []
    out = pd.DataFrame(index=df.index)
    for c in spec.columns:
        s = df[c.name]
        if c.kind == STR and _utf8_clean(s):
            # fast path, no bad bytes anywhere in the column: vectorised string ops
            st = s.astype("string").str.strip()
            isnull = (st.isna() | (st == "")).fillna(True).astype(bool)
            out[c.name] = st.astype(object).where(~isnull, None)
        else:
            isnull = s.isna().astype(bool) if s.dtype != object else _blank(s)
        if c.kind == STR:
            if c.name not in out.columns:  # slow path: a cell carries undecodable bytes
                problems.append((_has_bad_utf8(s), c.name, "invalid UTF-8 bytes"))
                out[c.name] = _omap(s, _text).where(~isnull, None)
        elif c.kind == FLOAT:
            num = pd.to_numeric(s, errors="coerce").astype("float64")
            unparsable = num.isna() & ~isnull
            problems.append((unparsable, c.name, "not a number"))
            inf = np.isinf(num.to_numpy(dtype="float64", na_value=np.nan))
            problems.append((pd.Series(inf, index=df.index), c.name, "infinite value"))
            if c.name in (Col.WEIGHT, Col.COST):
                problems.append(((num < 0).fillna(False).astype(bool), c.name, "negative value"))
            out[c.name] = num
        elif c.kind == TIME:
            t = parse_time(s.where(~isnull, None))
            problems.append((t.isna() & ~isnull, c.name, "unparsable timestamp"))
            out[c.name] = t
        elif c.kind == JSON:
            def _ok(v: Any) -> bool:
                if _isna(v) or isinstance(v, dict):
                    return True
                try:
                    return isinstance(json.loads(str(v)), dict)
                except (ValueError, TypeError):
                    return False

            okj = _omap(s, _ok, "bool")
            problems.append((~okj, c.name, "not a JSON object"))
            out[c.name] = _omap(
                s,
                lambda v: None if _isna(v) else (json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else str(v)),
            )
        if not c.nullable:
            problems.append((isnull, c.name, "missing value (empty or NaN)"))

    if spec.name == "interactions":
        # An interaction is either an event or an explicit label.
        ev = out[Col.EVENT]
        allowed = {"view", "click", "cart", "purchase", "rating"}
        low = _omap(ev, lambda v: v.lower() if isinstance(v, str) else v)
        bad_ev = low.notna() & ~low.isin(allowed)
        problems.append((bad_ev.astype(bool), Col.EVENT, f"unknown event (allowed: {sorted(allowed)})"))
        out[Col.EVENT] = low
        no_label = (out[Col.EVENT] == "rating") & out[Col.LABEL].isna()
        problems.append((no_label.fillna(False).astype(bool), Col.LABEL, "rating event without a label"))

    if known_items is not None and Col.ITEM_ID in out.columns:
        unknown = out[Col.ITEM_ID].notna() & ~out[Col.ITEM_ID].isin(known_items)
        problems.append((unknown.astype(bool), Col.ITEM_ID, "unknown item id (not in the catalog)"))

    # First reason per row wins; rows are then ordered by line for the error policy.
    reason = pd.Series(None, index=df.index, dtype="object")
    column = pd.Series(None, index=df.index, dtype="object")
    for mask, col, why in problems:
        m = mask.fillna(False).astype(bool) & reason.isna()
        reason[m] = why
        column[m] = col

    if spec.key:
        ok = reason.isna()
        keys = out.loc[ok, list(spec.key)]
        dup = keys.duplicated(keep="first")
        if dup.any():
            first_line = df.loc[keys.index[~dup], LINE]
            firsts = dict(zip(map(tuple, keys[~dup].to_numpy()), first_line, strict=True))
            for i in keys.index[dup]:
                k = tuple(keys.loc[i].to_numpy())
                reason[i] = f"duplicate id {k[0] if len(k) == 1 else k} (first seen on line {firsts[k]})"
                column[i] = spec.key[0]

    bad = reason.notna()
    tr = TableReport(spec.name, file, read=len(df))
    if bad.any():
        lines = df.loc[bad, LINE]
        if policy is OnBadRows.ERROR:
            pos = int(np.argmin(lines.to_numpy()))
            first_reason = str(reason[bad].iloc[pos])
            first_col = str(column[bad].iloc[pos])
            value = df.loc[bad, first_col].iloc[pos]
            raise DataError(
                f"{first_reason}: {_short(_printable(value))}",
                file=file,
                line=int(lines.iloc[pos]),
                column=first_col,
            )
        rej = pd.DataFrame(
            {
                "table": spec.name,
                "file": file,
                "line": lines.astype(int).to_numpy(),
                "column": column[bad].to_numpy(),
                "reason": reason[bad].to_numpy(),
                "row": _row_json(df, df.index[bad]),
            }
        )
        report.rejects.append(rej)
    kept = out.loc[~bad].reset_index(drop=True)
    for c in spec.columns:
        if c.kind == STR:
            kept[c.name] = kept[c.name].astype("string")
    tr.kept, tr.rejected = len(kept), int(bad.sum())
    report.tables.append(tr)
    return kept


def _printable(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return v


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."

"""`amazon-industrial`: the sliding-window next-item split of Amazon 2018 Industrial.

The folder has ``items.json`` and ``valid.csv`` / ``test.csv`` whose rows are windows
``(history_item_id[-10:], item_id)`` per user. There is no training file, and test histories
contain earlier test targets, so training on them leaks (see shared/data/README.md). We
rebuild each user's event log and mark who may use what:

- every event reconstructed from ``valid.csv`` -> split "train";
- test-history items not covered by the user's valid sequence -> "history" (model input
  only, never training rows nor targets);
- each ``test.csv`` target -> "test": one event per test row, in file order.

The sources carry no times, so timestamps are ordinal: train events at 2017-01-01 + k s and
history/test events at 2018-06-01 + k s (k = global event order), strictly increasing per
user, so "events before t" reproduces every test row's history exactly (checked on load).
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    Part,
    RawRows,
    Reject,
    assemble,
    default_name,
    iter_json_object,
    object_frame,
    ordinal_times,
    read_delimited,
    read_text,
    time_series,
)
from shoprank.data.schema import Col, Event, Split
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import DataError, ShoprankError

TRAIN_START = datetime(2017, 1, 1, tzinfo=UTC)
TEST_START = datetime(2018, 6, 1, tzinfo=UTC)
HIST, TARGET, USER = "history_item_id", "item_id", "user_id"
FILES = ("items.json", "valid.csv", "test.csv")


def _resolve(sources: list[Path]) -> dict[str, Path]:
    """The folder, or the three files given one by one (matched by name)."""
    files: dict[str, Path] = {}
    for src in sources:
        if src.is_dir():
            for f in FILES:
                if (src / f).exists():
                    files.setdefault(f, src / f)
        elif src.name in FILES:
            files[src.name] = src
        elif src.name != "info.txt":
            raise ShoprankError(f"amazon-industrial: unexpected source {src} (want the folder or {FILES})")
    missing = [f for f in FILES if f not in files]
    if missing:
        raise ShoprankError(f"amazon-industrial: missing {missing} among the sources")
    return files


def description_text(value: Any) -> str | None:
    """``"['para 1', 'para 2']"`` -> ``"para 1 para 2"``; tolerates the broken literals.

    Some descriptions are truncated or hold unescaped quotes, so literal_eval fails on them;
    then the brackets and quote separators are stripped by hand instead of dropping text.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    s = value.strip()
    try:
        parsed = ast.literal_eval(s)
        if isinstance(parsed, list):
            parts = [str(p).strip() for p in parsed if str(p).strip()]
            return " ".join(parts) or None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    if s.startswith("["):
        s = s[1:]
        s = s[:-1] if s.endswith("]") else s
        s = s.strip()
        if s[:1] in "'\"":
            s = s[1:]
        if s[-1:] in "'\"":
            s = s[:-1]
        s = re.sub(r"""['"], ['"]""", " ", s)
    return s.replace("\\n", "\n").strip() or None


def _items(path: Path) -> Part:
    file = str(path)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    for line, key, value in iter_json_object(read_text(path), file):
        if not isinstance(value, dict):
            rejects.append(Reject(line, None, "item is not a JSON object", {"item_id": key}))
            continue
        rows.append(
            {
                Col.ITEM_ID: key,
                Col.TITLE: value.get("title"),
                Col.DESCRIPTION: description_text(value.get("description")),
                Col.BRAND: value.get("brand"),
                Col.CATEGORY: value.get("categories"),
            }
        )
        lines.append(line)
    cols = [Col.ITEM_ID, Col.TITLE, Col.DESCRIPTION, Col.BRAND, Col.CATEGORY]
    return Part(file, object_frame(rows, cols, lines), rejects)


def parse_ids(cell: Any) -> list[str] | None:
    """``"[3437, 642]"`` -> ``["3437", "642"]``; None when the cell is not a list of ids."""
    if not isinstance(cell, str):
        return None
    try:
        v = json.loads(cell)
    except ValueError:
        try:
            v = ast.literal_eval(cell)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if not isinstance(v, list) or not all(isinstance(x, int | str) and not isinstance(x, bool) for x in v):
        return None
    return [str(x).strip() for x in v]


@dataclass
class Window:
    line: int
    user: str
    history: list[str]
    target: str


def read_windows(path: Path) -> tuple[RawRows, list[Window], list[Reject]]:
    """Parse the window rows; rows whose id lists do not parse are rejected."""
    rows = read_delimited(path)
    missing = [c for c in (USER, HIST, TARGET) if c not in rows.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {rows.columns}", file=str(path), line=1, column=missing[0]
        )
    out: list[Window] = []
    rejects = list(rows.rejects)
    for rec, line in zip(rows.records, rows.lines, strict=True):
        hist = parse_ids(rec[HIST])
        if hist is None:
            rejects.append(Reject(line, HIST, f"not a list of item ids: {rec[HIST][:60]!r}", rec))
            continue
        out.append(Window(line, rec[USER].strip(), hist, rec[TARGET].strip()))
    return rows, out, rejects


def _overlap(base: list[str], hist: list[str]) -> int:
    """Largest m with hist[:m] == base[-m:]: how much of `hist` the valid sequence covers."""
    for m in range(min(len(base), len(hist)), 0, -1):
        if hist[:m] == base[len(base) - m:]:
            return m
    return 0


def _continues(seq: list[str], hist: list[str], width: int) -> bool:
    return hist == seq[-width:] if seq else False


def _event(user: str, item: str, split: Split, line: int) -> dict[str, Any]:
    return {Col.USER_ID: user, Col.ITEM_ID: item, Col.EVENT: Event.PURCHASE.value, Col.SPLIT: split.value, "_l": line}


def build_events(
    valid: list[Window], test: list[Window], width: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Reject], list[Reject]]:
    """Event logs from the windows: (valid-file events, test-file events, rejects of each).

    A window that does not continue its user's earlier windows is rejected: accepting it
    would make the reconstructed histories disagree with the file.
    """
    seqs: dict[str, list[str]] = {}
    train_events: list[dict[str, Any]] = []
    bad_valid: list[Reject] = []
    for w in valid:
        seq = seqs.get(w.user)
        if seq is None:
            seqs[w.user] = [*w.history, w.target]
            train_events += [_event(w.user, i, Split.TRAIN, w.line) for i in w.history]
        elif _continues(seq, w.history, width):
            seq.append(w.target)
        else:
            bad_valid.append(_window_reject(w))
            continue
        train_events.append(_event(w.user, w.target, Split.TRAIN, w.line))

    history_events: list[dict[str, Any]] = []
    test_events: list[dict[str, Any]] = []
    bad_test: list[Reject] = []
    test_seqs: dict[str, list[str]] = {}
    for w in test:
        seq = test_seqs.get(w.user)
        if seq is None:
            base = seqs.get(w.user, [])
            new = w.history[_overlap(base, w.history):]
            history_events += [_event(w.user, i, Split.HISTORY, w.line) for i in new]
            test_seqs[w.user] = seq = [*base, *new]
        elif not _continues(seq, w.history, width):
            bad_test.append(_window_reject(w))
            continue
        seq.append(w.target)
        test_events.append(_event(w.user, w.target, Split.TEST, w.line))
    return train_events, history_events + test_events, bad_valid, bad_test


def _window_reject(w: Window) -> Reject:
    return Reject(
        w.line,
        HIST,
        "history does not continue this user's earlier rows (not a sliding window)",
        {USER: w.user, HIST: str(w.history), TARGET: w.target},
    )


def _part(file: str, events: list[dict[str, Any]], start: datetime, rejects: list[Reject]) -> Part:
    cols = [Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.SPLIT]
    frame = object_frame(events, cols, [e["_l"] for e in events])
    frame[Col.LABEL] = None
    frame[Col.TIMESTAMP] = time_series(ordinal_times(start, len(events)))
    return Part(file, frame, rejects)


def verify_test_histories(ds: Dataset, test_csv: Path, width: int = 10) -> list[int]:
    """Lines of ``test.csv`` whose history is NOT the last `width` events before the target.

    For each user the event log is sorted by time; the k-th test row of a user must match
    the user's k-th "test" event and the `width` events before it. Empty list = all match.
    """
    inter = ds.interactions.sort_values(Col.TIMESTAMP, kind="stable")
    logs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for u, i, s in zip(
        inter[Col.USER_ID].astype(str), inter[Col.ITEM_ID].astype(str),
        inter[Col.SPLIT].astype(object), strict=True,
    ):
        logs[u].append((i, str(s)))
    test_pos: dict[str, list[int]] = {
        u: [k for k, (_, s) in enumerate(log) if s == Split.TEST.value] for u, log in logs.items()
    }
    seen: dict[str, int] = defaultdict(int)
    bad: list[int] = []
    _, windows, rejects = read_windows(test_csv)
    bad += [r.line for r in rejects if r.line is not None]
    for w in windows:
        k = seen[w.user]
        seen[w.user] += 1
        pos = test_pos.get(w.user, [])
        if k >= len(pos):
            bad.append(w.line)
            continue
        log = logs[w.user]
        p = pos[k]
        hist = [i for i, _ in log[max(0, p - width):p]]
        if log[p][0] != w.target or hist != w.history:
            bad.append(w.line)
    return bad


def load_amazon_industrial(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """Catalog from items.json; event log rebuilt from the valid/test windows (see module)."""
    if mapping:
        raise ShoprankError("amazon-industrial: the layout is fixed; a mapping is not supported")
    files = _resolve(sources)
    items = _items(files["items.json"])
    _, valid, valid_rejects = read_windows(files["valid.csv"])
    _, test, test_rejects = read_windows(files["test.csv"])
    width = max((len(w.history) for w in [*valid, *test]), default=10)
    train_ev, test_ev, bad_v, bad_t = build_events(valid, test, width)
    n_hist = sum(1 for e in test_ev if e[Col.SPLIT] == Split.HISTORY.value)
    meta = {
        "provenance": (
            "Amazon Reviews 2018 Industrial_and_Scientific (5-core) as sliding windows "
            f"(MiniOneRec layout) from {files['valid.csv'].parent}; event log rebuilt from the windows"
        ),
        "notes": [
            "timestamps are ordinal, not real: train (valid.csv) events at 2017-01-01 + k s, "
            "history/test events at 2018-06-01 + k s, k = global event order",
            "split=train: every event rebuilt from valid.csv (the only data safe to train on)",
            f"split=history: {n_hist} test-history items not covered by the user's valid sequence; "
            "model input only, never training rows or targets",
            "split=test: one event per test.csv row, in file order",
            f"history window width: {width}",
        ],
    }
    ds = assemble(
        name or default_name(sources),
        [items],
        [
            _part(str(files["valid.csv"]), train_ev, TRAIN_START, valid_rejects + bad_v),
            _part(str(files["test.csv"]), test_ev, TEST_START, test_rejects + bad_t),
        ],
        meta=meta,
        on_bad_rows=on_bad_rows,
        report=report,
    )
    bad = verify_test_histories(ds, files["test.csv"], width)
    n_test = int((ds.interactions[Col.SPLIT] == Split.TEST.value).sum())
    ds.meta["checks"] = {"test_rows": n_test, "test_histories_matching": n_test - len(bad)}
    if bad and OnBadRows(on_bad_rows) is OnBadRows.ERROR:
        raise DataError(
            f"{len(bad)} test rows' histories do not match the rebuilt event log",
            file=str(files["test.csv"]), line=bad[0], column=HIST,
        )
    return ds


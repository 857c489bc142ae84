"""`tallrec`: TALLRec preference data (binary like/dislike), two routes.

CSV route (preferred): ``baseline/{train,valid,test}.csv`` rows ``user_id,
history_movie_id, history_rating, movie_id, rating, timestamp`` with MovieLens ids, plus a
RecBole ``.item`` file for titles (``Toy Story (1995)``). Each row's target is a rating
event (label 0/1, split from the file); history items not already events of the user are
added as split "history" (label from history_rating) just before the row, so a user's
history can be rebuilt from the event log. MovieLens timestamps tie often, so times are made
strictly increasing per user in file order by adding microseconds.

JSON route: the prompt files alone (``valid.json``, ``test.json``: ``input`` names liked and
disliked titles and a target, ``output`` is "Yes."/"No."), for any domain. Items are the
distinct titles (id = hash of the title); each prompt is a synthetic user whose history
events (liked = 1, disliked = 0) precede the target event.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    EPOCH_2000,
    Part,
    RawRows,
    Reject,
    assemble,
    base_stem,
    base_suffix,
    default_name,
    iter_json_array,
    iter_json_lines,
    object_frame,
    ordinal_times,
    read_delimited,
    read_text,
    time_series,
)
from shoprank.data.formats.amazon_industrial import parse_ids
from shoprank.data.formats.recbole import catalog_part, read_atomic
from shoprank.data.schema import Col, Event, Split
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import DataError, ShoprankError

CSV_COLUMNS = ("user_id", "history_movie_id", "history_rating", "movie_id", "rating", "timestamp")
SPLIT_ORDER = {Split.TRAIN.value: 0, Split.VALID.value: 1, Split.TEST.value: 2}


def split_of(path: Path) -> str | None:
    words = set(re.split(r"[-_.]+", base_stem(path).lower()))
    for s in (Split.TRAIN, Split.VALID, Split.TEST):
        if s.value in words:
            return s.value
    return "valid" if "validation" in words else None


@dataclass
class Sources:
    csv: list[Path] = field(default_factory=list)
    explicit_csv: bool = False  # csv files named as sources (not found in a folder)
    json: list[Path] = field(default_factory=list)
    item: list[Path] = field(default_factory=list)


def _collect(sources: list[Path]) -> Sources:
    out = Sources()
    for src in sources:
        if src.is_dir():
            base = src / "baseline"
            for folder in (base, src) if base.is_dir() else (src,):
                out.csv += sorted(folder.glob("*.csv"))
            out.json += sorted(p for p in src.glob("*.json") if split_of(p))
            out.item += sorted(src.glob("*.item"))
            continue
        ext = base_suffix(src)
        if ext == ".csv":
            out.csv.append(src)
            out.explicit_csv = True
        elif ext in {".json", ".jsonl"}:
            out.json.append(src)
        elif ext == ".item":
            out.item.append(src)
        else:
            raise ShoprankError(f"tallrec: unexpected source {src} (want the folder, .csv, .json or .item)")
    for paths in (out.csv, out.json):
        paths.sort(key=lambda p: SPLIT_ORDER.get(split_of(p) or "", 3))
    return out


# -- CSV route ------------------------------------------------------------------------------
def parse_labels(cell: Any) -> list[float] | None:
    """``"[1, 0, 1]"`` -> [1.0, 0.0, 1.0]; None if it is not a list of numbers."""
    if not isinstance(cell, str):
        return None
    try:
        v = json.loads(cell)
    except ValueError:
        return None
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        return None
    return [float(x) for x in v]


def _seconds(cell: Any) -> int | None:
    """Epoch seconds as an integer count of microseconds, None when not a number."""
    try:
        f = float(str(cell).strip())
    except ValueError:
        return None
    if not np.isfinite(f):
        return None
    return int(round(f * 1_000_000))


@dataclass
class _Ev:
    user: str
    item: str
    label: Any
    split: str
    line: int
    file: str
    base_us: int | None  # wanted time (µs); None when the row's timestamp is unparsable
    raw_ts: Any
    time: Any = None


def _csv_events(rows: RawRows, split: str | None, users: dict[str, list[_Ev]], seen: dict[str, set[str]]) -> list[Reject]:
    """Append each row's history-only items and target to the user's event list."""
    rejects = list(rows.rejects)
    for rec, line in zip(rows.records, rows.lines, strict=True):
        hist = parse_ids(rec["history_movie_id"])
        if hist is None:
            rejects.append(Reject(line, "history_movie_id", "not a list of item ids", rec))
            continue
        labels = parse_labels(rec["history_rating"])
        if labels is None or len(labels) != len(hist):
            why = "not a list of numbers" if labels is None else f"{len(labels)} ratings for {len(hist)} history items"
            rejects.append(Reject(line, "history_rating", why, rec))
            continue
        user = rec["user_id"].strip()
        ts = _seconds(rec["timestamp"])
        have = seen.setdefault(user, set())
        new = [(h, lab) for h, lab in zip(hist, labels, strict=True) if h not in have]
        ev = users.setdefault(user, [])
        for k, (h, lab) in enumerate(new):
            base = None if ts is None else ts - (len(new) - k)
            ev.append(_Ev(user, h, lab, Split.HISTORY.value, line, rows.file, base, rec["timestamp"]))
            have.add(h)
        target = rec["movie_id"].strip()
        ev.append(_Ev(user, target, rec["rating"], split or "", line, rows.file, ts, rec["timestamp"]))
        have.add(target)
    return rejects


def _strict_times(users: dict[str, list[_Ev]]) -> int:
    """Make each user's times strictly increasing in event order (+1 µs steps); count shifts."""
    shifted = 0
    for evs in users.values():
        prev: int | None = None
        for e in evs:
            if e.base_us is None:
                e.time = e.raw_ts  # left for the validator to reject with its line
                continue
            t = e.base_us if prev is None else max(e.base_us, prev + 1)
            shifted += int(t != e.base_us and e.split != Split.HISTORY.value)
            e.time = pd.Timestamp(t, unit="us", tz="UTC").to_pydatetime()
            prev = t
    return shifted


def _events_part(file: str, evs: list[_Ev], rejects: list[Reject]) -> Part:
    rows = [
        {
            Col.USER_ID: e.user,
            Col.ITEM_ID: e.item,
            Col.EVENT: Event.RATING.value,
            Col.LABEL: e.label,
            Col.SPLIT: e.split or None,
        }
        for e in evs
    ]
    frame = object_frame(rows, [Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.LABEL, Col.SPLIT], [e.line for e in evs])
    frame[Col.TIMESTAMP] = time_series([e.time for e in evs])
    return Part(file, frame, rejects)


def _load_csv(src: Sources) -> tuple[list[Part], list[Part], dict[str, Any]]:
    if not src.item:
        raise ShoprankError(
            "tallrec: the csv files hold MovieLens ids only; pass the item file for titles too "
            "(e.g. movielens-100k/ml-100k.item), or import the prompt .json files instead"
        )
    items = []
    for p in src.item:
        rows, types = read_atomic(p)
        items.append(catalog_part(rows, types))
    users: dict[str, list[_Ev]] = {}
    seen: dict[str, set[str]] = {}
    rejects: dict[str, list[Reject]] = {}
    for p in src.csv:
        rows = read_delimited(p)
        missing = [c for c in CSV_COLUMNS if c not in rows.columns]
        if missing:
            raise DataError(
                f"missing required column(s) {missing}; found {rows.columns}", file=str(p), line=1, column=missing[0]
            )
        rejects[str(p)] = _csv_events(rows, split_of(p), users, seen)
    shifted = _strict_times(users)
    by_file: dict[str, list[_Ev]] = defaultdict(list)
    for evs in users.values():
        for e in evs:
            by_file[e.file].append(e)
    parts = []
    for f in rejects:
        evs = sorted(by_file.get(f, []), key=lambda e: e.line)  # stable: history before target
        parts.append(_events_part(f, evs, rejects[f]))
    n_hist = sum(1 for evs in users.values() for e in evs if e.split == Split.HISTORY.value)
    meta = {
        "provenance": "TALLRec MovieLens preference data (csv route): "
        + ", ".join(str(p) for p in [*src.csv, *src.item]),
        "notes": [
            "target events: event=rating, label = rating (1 liked, 0 disliked), split from the file",
            f"split=history: {n_hist} history items that are not otherwise events of the user, "
            "label from history_rating, timed a few microseconds before the row that names them",
            "timestamps are MovieLens seconds made strictly increasing per user in file order by "
            f"adding microseconds ({shifted} target events shifted)",
            *(["prompt .json files ignored: the csv rows carry the same examples"] if src.json else []),
        ],
    }
    return items, parts, meta


# -- JSON route -----------------------------------------------------------------------------
_PREF = re.compile(r"^[ \t]*User Preference[ \t]*:[ \t]*(.*?)[ \t]*$", re.I | re.M)
_UNPREF = re.compile(r"^[ \t]*User Unpreference[ \t]*:[ \t]*(.*?)[ \t]*$", re.I | re.M)
_SEP = re.compile(r'(?<!\\)"\s*,\s*"')


def split_titles(body: str) -> list[str]:
    """``"A", "B, The (1990)", "C \\"x\\""`` -> titles; commas inside titles are kept."""
    body = body.strip()
    if not body:
        return []
    if len(body) < 2 or not (body.startswith('"') and body.endswith('"')):
        raise ValueError(f"titles must be double-quoted: {body[:60]!r}")
    return [t.replace('\\"', '"').strip() for t in _SEP.split(body[1:-1])]


def parse_prompt(text: str) -> tuple[list[str], list[str], str]:
    """Liked titles, disliked titles and the quoted target of a TALLRec prompt."""
    pref, unpref = _PREF.search(text), _UNPREF.search(text)
    if pref is None or unpref is None:
        raise ValueError("no 'User Preference:' / 'User Unpreference:' line")
    last = text.strip().split("\n")[-1]
    m = re.search(r'"(.*)"', last)
    if m is None or not m.group(1).strip():
        raise ValueError(f"no quoted target title in the last line: {last[:60]!r}")
    return split_titles(pref.group(1)), split_titles(unpref.group(1)), m.group(1).replace('\\"', '"').strip()


def parse_answer(value: Any) -> float:
    s = str(value).strip().rstrip(".").strip().lower() if value is not None else ""
    if s == "yes":
        return 1.0
    if s == "no":
        return 0.0
    raise ValueError(f"output must be 'Yes.' or 'No.', got {str(value)[:30]!r}")


def title_id(title: str) -> str:
    """Stable id of a title, the same in every file and run."""
    return "t" + hashlib.blake2b(title.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def _load_json(src: Sources) -> tuple[list[Part], list[Part], dict[str, Any]]:
    items: list[Part] = []
    parts: list[Part] = []
    known: set[str] = set()
    clock = 0
    for p in src.json:
        file, split = str(p), split_of(p)
        text = read_text(p)
        records = iter_json_array(text, file) if text.lstrip()[:1] == "[" else iter_json_lines(text, file)
        new_items: list[dict[str, Any]] = []
        item_lines: list[int] = []
        events: list[dict[str, Any]] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        for idx, (line, rec) in enumerate(records):
            if isinstance(rec, Reject):
                rejects.append(rec)
                continue
            if not isinstance(rec, dict):
                rejects.append(Reject(line, None, "not a JSON object", {"value": repr(rec)[:200]}))
                continue
            try:
                liked, disliked, target = parse_prompt(str(rec.get("input", "")))
            except ValueError as e:
                rejects.append(Reject(line, "input", str(e), rec))
                continue
            try:
                label = parse_answer(rec.get("output"))
            except ValueError as e:
                rejects.append(Reject(line, "output", str(e), rec))
                continue
            user = f"{base_stem(p)}-{idx}"
            pairs: list[tuple[str, float, str | None]] = [(t, 1.0, Split.HISTORY.value) for t in liked]
            pairs += [(t, 0.0, Split.HISTORY.value) for t in disliked]
            pairs.append((target, label, split))
            for title, lab, sp in pairs:
                iid = title_id(title)
                if iid not in known:
                    known.add(iid)
                    new_items.append({Col.ITEM_ID: iid, Col.TITLE: title})
                    item_lines.append(line)
                events.append(
                    {Col.USER_ID: user, Col.ITEM_ID: iid, Col.EVENT: Event.RATING.value, Col.LABEL: lab, Col.SPLIT: sp}
                )
                lines.append(line)
        items.append(Part(file, object_frame(new_items, [Col.ITEM_ID, Col.TITLE], item_lines)))
        frame = object_frame(events, [Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.LABEL, Col.SPLIT], lines)
        times = ordinal_times(EPOCH_2000 + timedelta(seconds=clock), len(events))
        clock += len(events)
        frame[Col.TIMESTAMP] = time_series(times)
        parts.append(Part(file, frame, rejects))
    meta = {
        "provenance": "TALLRec prompt files (json route): " + ", ".join(str(p) for p in src.json),
        "notes": [
            "items are the distinct titles; item_id = 't' + blake2b-48 hash of the title",
            "each prompt is a synthetic user '<file stem>-<index>': liked titles (label 1) then "
            "disliked titles (label 0) as split=history, then the target (split from the file name)",
            "timestamps are ordinal (2000-01-01 + k s); the prompts do not give the order "
            "of liked versus disliked items",
        ],
    }
    return items, parts, meta


def load_tallrec(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """CSV rows + item file when there are csv sources, else the prompt JSON files."""
    if mapping:
        raise ShoprankError("tallrec: the layout is fixed; a mapping is not supported")
    src = _collect(sources)
    if src.csv and (src.item or src.explicit_csv or not src.json):
        items, parts, meta = _load_csv(src)
    elif src.json:
        items, parts, meta = _load_json(src)
        if src.csv:
            meta["notes"].append("csv files found but no .item file for titles: used the prompt json files")
    else:
        raise ShoprankError("tallrec: no baseline .csv or prompt .json files among the sources")
    return assemble(
        name or default_name(sources), items, parts, meta=meta, on_bad_rows=on_bad_rows, report=report
    )

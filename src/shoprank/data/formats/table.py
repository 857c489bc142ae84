"""`table`: generic CSV / TSV / Parquet / JSON-lines files, one file per table.

Which table a file holds comes from its stem (``items.csv``, ``events.jsonl``,
``qrels.tsv``...) or from the mapping (``{"clicks.csv": "interactions"}``); columns are
renamed with the mapping (``{"product": "item_id"}``, ``{"items:name": "title"}``).
"""

from __future__ import annotations

import re
from pathlib import Path

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import (
    SPECS,
    TABLE_ALIASES,
    Mapping,
    Part,
    RawRows,
    assemble,
    base_stem,
    base_suffix,
    default_name,
    object_frame,
    read_delimited,
    read_json_records,
    read_parquet_rows,
)
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import ShoprankError

EXTENSIONS = {".csv", ".tsv", ".parquet", ".jsonl", ".json", ".ndjson"}


def expand_sources(sources: list[Path], extensions: set[str]) -> list[Path]:
    """Folders stand for the readable files directly inside them, sorted by name."""
    out: list[Path] = []
    for src in sources:
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.is_file() and base_suffix(p) in extensions)
            if not found:
                raise ShoprankError(f"{src}: no {sorted(extensions)} files in this folder")
            out.extend(found)
        else:
            out.append(src)
    return out


def table_of(path: Path, mapping: Mapping) -> str:
    """The table a file holds: a mapping route, else an alias word in its stem."""
    routed = mapping.route(path)
    if routed:
        return routed
    words = {w.lower() for w in re.split(r"[-_.\s]+", base_stem(path)) if w}
    tables = {TABLE_ALIASES[w] for w in words if w in TABLE_ALIASES}
    if len(tables) == 1:
        return tables.pop()
    what = f"it could be {sorted(tables)}" if tables else "its name has no table word"
    raise ShoprankError(
        f"{path}: cannot tell which table this file holds ({what}); name it items/catalog/"
        f"products, interactions/events or judgments/qrels, or pass a mapping like "
        f"{{'{path.name}': 'interactions'}}"
    )


def read_rows(path: Path) -> RawRows:
    """Any supported file as raw records, by extension."""
    ext = base_suffix(path)
    if ext == ".csv":
        return read_delimited(path, delimiter=",")
    if ext == ".tsv":
        return read_delimited(path, delimiter="\t")
    if ext == ".parquet":
        return read_parquet_rows(path)
    if ext in {".jsonl", ".json", ".ndjson"}:
        return read_json_records(path)
    raise ShoprankError(f"{path}: unsupported file type {ext!r} (use {sorted(EXTENSIONS)})")


def to_part(rows: RawRows, header_line: int | None = 1) -> Part:
    return Part(rows.file, object_frame(rows.records, rows.columns, rows.lines), rows.rejects, header_line)


def load_table(
    sources: list[Path],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows = OnBadRows.ERROR,
    report: ValidationReport | None = None,
) -> Dataset:
    """Read each file into its table, rename columns, validate everything together."""
    m = Mapping(mapping)
    parts: dict[str, list[Part]] = {t: [] for t in SPECS}
    for path in expand_sources(sources, EXTENSIONS):
        table = table_of(path, m)
        rows = m.apply(read_rows(path), table)
        parts[table].append(to_part(rows, None if base_suffix(path) == ".parquet" else 1))
    m.check_used()
    if not parts["items"]:
        given = [t for t in ("interactions", "judgments") if parts[t]]
        raise ShoprankError(
            f"no catalog file among the sources (found {given or 'nothing'}): add an items/"
            "catalog/products file; interactions and judgments must refer to catalog items"
        )
    return assemble(
        name or default_name(sources),
        parts["items"],
        parts["interactions"],
        parts["judgments"],
        meta={"provenance": "table files: " + ", ".join(p.file for ps in parts.values() for p in ps)},
        on_bad_rows=on_bad_rows,
        report=report,
    )

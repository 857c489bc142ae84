"""Import external data formats into a validated `Dataset`, or check data without writing.

``import_dataset("table", [Path("shop/")])`` reads, maps and validates; every format goes
through the same validator, so bad rows are reported the same way everywhere (file, 1-based
line, column, reason) and handled by one policy (`OnBadRows`: error / skip / quarantine).
Formats (see each module in `shoprank.data.formats` for details):

- ``table``: generic CSV/TSV/Parquet/JSON-lines files, one per table (named by file stem)
- ``recbole``: RecBole atomic files (.inter/.item/.user)
- ``amazon-reviews``: Amazon Reviews 2018 / 2023 review + metadata JSON lines
- ``amazon-industrial``: the MiniOneRec sliding-window split of Amazon 2018 Industrial
- ``tallrec``: TALLRec like/dislike data (baseline csv + .item titles, or prompt json)
- ``homedepot``: Home Depot search relevance (Latin-1 CSV) -> catalog + judgments
- ``labelled-text``: a labelled text CSV -> one item + one label per row
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from shoprank.data.dataset import Dataset
from shoprank.data.formats._io import default_name
from shoprank.data.formats.amazon_industrial import load_amazon_industrial, verify_test_histories
from shoprank.data.formats.amazon_reviews import load_amazon_reviews
from shoprank.data.formats.homedepot import load_homedepot
from shoprank.data.formats.labelled_text import load_labelled_text
from shoprank.data.formats.recbole import load_recbole
from shoprank.data.formats.table import load_table
from shoprank.data.formats.tallrec import load_tallrec
from shoprank.data.validate import OnBadRows, ValidationReport
from shoprank.errors import ShoprankError


class Loader(Protocol):
    """What every format reader looks like (keyword-only options, already normalised)."""

    def __call__(
        self,
        sources: list[Path],
        *,
        mapping: dict[str, str] | None = ...,
        name: str | None = ...,
        on_bad_rows: OnBadRows = ...,
        report: ValidationReport | None = ...,
    ) -> Dataset: ...


FORMATS: dict[str, Loader] = {
    "table": load_table,
    "recbole": load_recbole,
    "amazon-reviews": load_amazon_reviews,
    "amazon-industrial": load_amazon_industrial,
    "tallrec": load_tallrec,
    "homedepot": load_homedepot,
    "labelled-text": load_labelled_text,
}


def _policy(on_bad_rows: OnBadRows | str) -> OnBadRows:
    try:
        return OnBadRows(on_bad_rows)
    except ValueError:
        raise ShoprankError(
            f"unknown on_bad_rows {on_bad_rows!r} (use one of {[p.value for p in OnBadRows]})"
        ) from None


def import_dataset(
    fmt: str,
    sources: Sequence[Path | str],
    *,
    mapping: dict[str, str] | None = None,
    name: str | None = None,
    on_bad_rows: OnBadRows | str = "error",
    report: ValidationReport | None = None,
) -> Dataset:
    """Read `sources` in format `fmt` into a validated Dataset (nothing is written).

    Pass a `report` to get counts and rejected rows back (``report.read == kept + rejected``).
    """
    loader = FORMATS.get(fmt)
    if loader is None:
        raise ShoprankError(f"unknown format {fmt!r}; available: {', '.join(sorted(FORMATS))}")
    paths = [Path(s) for s in sources]
    if not paths:
        raise ShoprankError(f"{fmt}: no sources given")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ShoprankError(f"{fmt}: source(s) not found: {missing}")
    report = report if report is not None else ValidationReport()
    ds = loader(
        paths,
        mapping=dict(mapping) if mapping else None,
        name=name or default_name(paths),
        on_bad_rows=_policy(on_bad_rows),
        report=report,
    )
    ds.meta.setdefault("notes", [])
    ds.meta["format"] = fmt
    ds.meta["sources"] = [str(p) for p in paths]
    if report.rejected:
        ds.meta["rejected_rows"] = report.rejected
    return ds


def check_path(
    path: Path | str | Sequence[Path | str],
    *,
    fmt: str | None = None,
    mapping: dict[str, str] | None = None,
    on_bad_rows: OnBadRows | str = "error",
    report: ValidationReport | None = None,
) -> Dataset:
    """Validate a dataset folder (no `fmt`) or raw files in format `fmt`; writes nothing."""
    if fmt is None:
        if mapping:
            raise ShoprankError("a mapping only applies to raw files: give the format too")
        if not isinstance(path, str | Path):
            raise ShoprankError("checking a dataset folder takes one path")
        return Dataset.load(path, on_bad_rows=_policy(on_bad_rows), report=report)
    paths = [path] if isinstance(path, str | Path) else list(path)
    return import_dataset(fmt, paths, mapping=mapping, on_bad_rows=on_bad_rows, report=report)


__all__ = ["FORMATS", "Loader", "check_path", "import_dataset", "verify_test_histories"]

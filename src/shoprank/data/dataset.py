"""A dataset folder: catalog, interactions and judgments as Parquet plus `dataset.json`.

Items keep their external ids; models work on contiguous internal ids from `IdMap`,
built from the catalog so that every split of one dataset shares the same item ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank import __version__
from shoprank.data.schema import CATALOG, INTERACTIONS, JUDGMENTS, SCHEMA_VERSION, Col, TableSpec
from shoprank.data.validate import OnBadRows, ValidationReport, validate_table
from shoprank.errors import DataError

META_FILE = "dataset.json"
FILES = {"items": "items.parquet", "interactions": "interactions.parquet", "judgments": "judgments.parquet"}


class IdMap:
    """External id <-> contiguous internal id (0..n-1)."""

    def __init__(self, external: Iterable[Any]) -> None:
        ext = pd.Index(pd.Series(list(external), dtype="object").astype(str))
        if ext.has_duplicates:
            raise ValueError("IdMap ids must be unique")
        self._ext = ext

    @classmethod
    def from_values(cls, values: Iterable[Any]) -> IdMap:
        """Ids in order of first appearance."""
        return cls(pd.unique(pd.Series(list(values), dtype="object").astype(str)))

    def __len__(self) -> int:
        return len(self._ext)

    @property
    def external(self) -> np.ndarray:
        return self._ext.to_numpy()

    def to_internal(self, ids: Sequence[Any] | pd.Series | np.ndarray, *, missing: int | None = None) -> np.ndarray:
        """Map external ids; unknown ids raise unless `missing` gives a fill value."""
        arr = pd.Series(np.asarray(ids, dtype="object")).astype(str)
        idx = self._ext.get_indexer(pd.Index(arr))
        if (idx < 0).any():
            if missing is None:
                bad = arr[idx < 0].iloc[0]
                raise KeyError(f"unknown id {bad!r}")
            idx = np.where(idx < 0, missing, idx)
        return idx.astype(np.int64)

    def to_external(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._ext.to_numpy()[np.asarray(idx, dtype=np.int64)]

    def __contains__(self, ext: object) -> bool:
        return str(ext) in self._ext


def _empty(spec: TableSpec) -> pd.DataFrame:
    dtypes = {"str": "string", "float": "float64", "time": "datetime64[ns, UTC]", "json": "object"}
    return pd.DataFrame({c.name: pd.Series(dtype=dtypes[c.kind]) for c in spec.columns})


@dataclass
class Dataset:
    """Typed tables of one shop. Construct through loaders or `Dataset.load`."""

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame = field(default_factory=lambda: _empty(INTERACTIONS))
    judgments: pd.DataFrame = field(default_factory=lambda: _empty(JUDGMENTS))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._item_map: IdMap | None = None
        self._user_map: IdMap | None = None

    # -- ids --------------------------------------------------------------
    @property
    def item_map(self) -> IdMap:
        if self._item_map is None:
            self._item_map = IdMap(self.items[Col.ITEM_ID])
        return self._item_map

    @property
    def user_map(self) -> IdMap:
        if self._user_map is None:
            self._user_map = IdMap.from_values(sorted(self.interactions[Col.USER_ID].astype(str).unique()))
        return self._user_map

    @property
    def n_items(self) -> int:
        return len(self.items)

    def item_idx(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """Internal item ids of `frame` (default: interactions)."""
        f = self.interactions if frame is None else frame
        return self.item_map.to_internal(f[Col.ITEM_ID])

    def catalog_hash(self) -> str:
        """Identity of the item id order: models address items by internal id, so a saved
        model is only valid on a catalog with the same hash."""
        import hashlib

        h = hashlib.sha1("\x00".join(self.item_map.external.tolist()).encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]

    def with_tables(self, **tables: Any) -> Dataset:
        """Same catalog (and so the same item ids), other interactions/judgments."""
        new = replace(self, **tables)
        new._item_map = self._item_map if "items" not in tables else None
        return new

    # -- folder I/O -------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for key, fname in FILES.items():
            getattr(self, key).to_parquet(p / fname, index=False)
        meta = {
            "name": self.name,
            "schema_version": SCHEMA_VERSION,
            "created_by": f"shoprank {__version__}",
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "counts": {k: int(len(getattr(self, k))) for k in FILES},
            **{k: v for k, v in self.meta.items() if k not in {"name", "schema_version", "counts"}},
        }
        (p / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")
        return p

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        on_bad_rows: OnBadRows | str = OnBadRows.ERROR,
        report: ValidationReport | None = None,
    ) -> Dataset:
        p = Path(path)
        mf = p / META_FILE
        if not mf.exists():
            raise DataError(f"not a dataset folder (no {META_FILE})", file=str(p))
        try:
            meta = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", file=str(mf), line=e.lineno) from None
        if int(meta.get("schema_version", -1)) > SCHEMA_VERSION:
            raise DataError(
                f"schema version {meta.get('schema_version')} is newer than this shoprank ({SCHEMA_VERSION})",
                file=str(mf),
            )
        report = report if report is not None else ValidationReport()
        tables: dict[str, pd.DataFrame] = {}
        for key, spec in (("items", CATALOG), ("interactions", INTERACTIONS), ("judgments", JUDGMENTS)):
            f = p / FILES[key]
            if not f.exists():
                if key == "items":
                    raise DataError("missing catalog file", file=str(f))
                tables[key] = _empty(spec)
                continue
            raw = pd.read_parquet(f)
            tables[key] = validate_table(
                raw,
                spec,
                file=str(f),
                on_bad_rows=on_bad_rows,
                known_items=None if key == "items" else pd.Index(tables["items"][Col.ITEM_ID]),
                report=report,
                header_line=None,
            )
        return cls(name=str(meta.get("name", p.name)), meta=meta, **tables)

    @classmethod
    def from_frames(
        cls,
        name: str,
        items: pd.DataFrame,
        interactions: pd.DataFrame | None = None,
        judgments: pd.DataFrame | None = None,
        *,
        meta: dict[str, Any] | None = None,
        on_bad_rows: OnBadRows | str = OnBadRows.ERROR,
        report: ValidationReport | None = None,
        files: dict[str, str] | None = None,
    ) -> Dataset:
        """Validate raw frames (from loaders or code) into a Dataset."""
        report = report if report is not None else ValidationReport()
        files = files or {}
        it = validate_table(items, CATALOG, file=files.get("items", "items"), on_bad_rows=on_bad_rows, report=report)
        known = pd.Index(it[Col.ITEM_ID])
        inter = (
            validate_table(
                interactions, INTERACTIONS, file=files.get("interactions", "interactions"),
                on_bad_rows=on_bad_rows, known_items=known, report=report,
            )
            if interactions is not None
            else _empty(INTERACTIONS)
        )
        judg = (
            validate_table(
                judgments, JUDGMENTS, file=files.get("judgments", "judgments"),
                on_bad_rows=on_bad_rows, known_items=known, report=report,
            )
            if judgments is not None
            else _empty(JUDGMENTS)
        )
        return cls(name=name, items=it, interactions=inter, judgments=judg, meta=dict(meta or {}))

    def describe(self) -> dict[str, Any]:
        inter = self.interactions
        return {
            "name": self.name,
            "items": int(len(self.items)),
            "users": int(inter[Col.USER_ID].nunique()) if len(inter) else 0,
            "interactions": int(len(inter)),
            "judgments": int(len(self.judgments)),
            "queries": int(self.judgments[Col.QUERY].nunique()) if len(self.judgments) else 0,
            "events": inter[Col.EVENT].value_counts().to_dict() if len(inter) else {},
        }

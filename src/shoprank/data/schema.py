"""One schema for every table: column-name constants and typed table specs.

Every loader produces these tables and every model reads them, so column names are
written in exactly one place (RecTools-style).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

SCHEMA_VERSION = 1


class Col:
    """Column names shared by all tables."""

    ITEM_ID = "item_id"
    TITLE = "title"
    DESCRIPTION = "description"
    BRAND = "brand"
    CATEGORY = "category"
    PRICE = "price"
    CREATED_AT = "created_at"
    ATTRIBUTES = "attributes"  # JSON object as text: free-form item attributes

    USER_ID = "user_id"
    EVENT = "event"
    LABEL = "label"  # explicit label or rating; NaN when the row is an implicit event
    TIMESTAMP = "timestamp"
    SOURCE = "source"
    QUERY = "query"
    COST = "cost"
    SPLIT = "split"  # optional predefined split from the source data (see Split below)
    WEIGHT = "weight"  # optional training weight of a record (>= 0; missing = 1), e.g. from valuation

    GRADE = "grade"
    LABELER = "labeler"


class Event(StrEnum):
    """Implicit feedback events, in funnel order."""

    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"
    RATING = "rating"  # an explicit label/rating row; the value is in Col.LABEL


class Split(StrEnum):
    """Predefined splits that public datasets ship with.

    HISTORY rows are context only: model input at prediction time, never training rows and
    never evaluation targets (for example the test histories of amazon-industrial).
    """

    TRAIN = "train"
    VALID = "valid"
    TEST = "test"
    HISTORY = "history"


EVENT_STRENGTH: dict[str, float] = {
    Event.VIEW: 1.0,
    Event.CLICK: 2.0,
    Event.CART: 3.0,
    Event.PURCHASE: 4.0,
    Event.RATING: 1.0,
}

# Column kinds understood by the validator.
STR, FLOAT, TIME, JSON = "str", "float", "time", "json"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str
    required: bool = True
    nullable: bool = False


@dataclass(frozen=True)
class TableSpec:
    """What one table must contain; `key` columns must be unique together."""

    name: str
    columns: tuple[ColumnSpec, ...]
    key: tuple[str, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


CATALOG = TableSpec(
    "items",
    (
        ColumnSpec(Col.ITEM_ID, STR),
        ColumnSpec(Col.TITLE, STR),
        ColumnSpec(Col.DESCRIPTION, STR, required=False, nullable=True),
        ColumnSpec(Col.BRAND, STR, required=False, nullable=True),
        ColumnSpec(Col.CATEGORY, STR, required=False, nullable=True),
        ColumnSpec(Col.PRICE, FLOAT, required=False, nullable=True),
        ColumnSpec(Col.CREATED_AT, TIME, required=False, nullable=True),
        ColumnSpec(Col.ATTRIBUTES, JSON, required=False, nullable=True),
    ),
    key=(Col.ITEM_ID,),
)

INTERACTIONS = TableSpec(
    "interactions",
    (
        ColumnSpec(Col.USER_ID, STR),
        ColumnSpec(Col.ITEM_ID, STR),
        ColumnSpec(Col.EVENT, STR),
        ColumnSpec(Col.LABEL, FLOAT, required=False, nullable=True),
        ColumnSpec(Col.TIMESTAMP, TIME),
        ColumnSpec(Col.SOURCE, STR, required=False, nullable=True),
        ColumnSpec(Col.QUERY, STR, required=False, nullable=True),
        ColumnSpec(Col.COST, FLOAT, required=False, nullable=True),
        ColumnSpec(Col.SPLIT, STR, required=False, nullable=True),
        ColumnSpec(Col.WEIGHT, FLOAT, required=False, nullable=True),
    ),
)

JUDGMENTS = TableSpec(
    "judgments",
    (
        ColumnSpec(Col.QUERY, STR),
        ColumnSpec(Col.ITEM_ID, STR),
        ColumnSpec(Col.GRADE, FLOAT),
        ColumnSpec(Col.LABELER, STR, required=False, nullable=True),
        ColumnSpec(Col.TIMESTAMP, TIME, required=False, nullable=True),
        ColumnSpec(Col.COST, FLOAT, required=False, nullable=True),
        ColumnSpec(Col.SPLIT, STR, required=False, nullable=True),
        ColumnSpec(Col.WEIGHT, FLOAT, required=False, nullable=True),
    ),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (CATALOG, INTERACTIONS, JUDGMENTS)}

"""Turn catalog rows, queries and histories into the text an encoder reads.

Fields come in a fixed order with short labels so the encoder sees the same layout for every
item; long descriptions are cut so titles and brands are never truncated away.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pandas as pd

from shoprank.data.schema import Col

DEFAULT_FIELDS = (Col.TITLE, Col.BRAND, Col.CATEGORY, Col.PRICE, Col.DESCRIPTION)
FIELD_SEP = " | "


def _clean(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    return " ".join(str(v).split())


def render_items(
    items: pd.DataFrame,
    fields: Sequence[str] = DEFAULT_FIELDS,
    *,
    max_description_chars: int = 200,
) -> list[str]:
    """One text per catalog row, e.g. 'Acme Trail Shoes | brand: Acme | category: shoes | ...'."""
    cols = [f for f in fields if f in items.columns]
    data = {c: items[c].tolist() for c in cols}
    out = []
    for i in range(len(items)):
        parts = []
        for c in cols:
            v = data[c][i]
            s = _clean(v)
            if c == Col.PRICE and s:
                s = f"{float(s):.2f}"
            if c == Col.DESCRIPTION:
                s = s[:max_description_chars]
            if s:
                parts.append(s if c == Col.TITLE else f"{c}: {s}")
        out.append(FIELD_SEP.join(parts))
    return out


def render_query(q: str) -> str:
    return " ".join(str(q).split()).lower()



def shuffle_fields(text: str, rng: random.Random) -> str:
    """The same item text with its labelled fields in a random order (the title stays first).

    A training-time augmentation: the model should not learn that, say, the price always
    comes fourth.
    """
    parts = text.split(FIELD_SEP)
    if len(parts) <= 2:
        return text
    rest = parts[1:]
    rng.shuffle(rest)
    return FIELD_SEP.join([parts[0], *rest])

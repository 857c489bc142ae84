from __future__ import annotations

import pandas as pd
import pytest

from shoprank.data.dataset import Dataset, IdMap
from shoprank.data.schema import CATALOG, INTERACTIONS
from shoprank.data.validate import OnBadRows, ValidationReport, parse_time, validate_table
from shoprank.errors import DataError


def test_missing_column_names_file_and_column():
    raw = pd.DataFrame({"item_id": ["a"]})
    with pytest.raises(DataError) as ei:
        validate_table(raw, CATALOG, file="items.csv")
    msg = str(ei.value)
    assert msg.startswith("items.csv:1:") and "'title'" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("col", "value", "reason"),
    [
        ("timestamp", "yesterday-ish", "unparsable timestamp"),
        ("item_id", "zzz", "unknown item id"),
        ("user_id", "bad\udc80id", "invalid UTF-8"),
        ("event", "teleport", "unknown event"),
        ("label", "NaNish", "not a number"),
    ],
)
def test_bad_cell_error_and_quarantine(col, value, reason):
    raw = pd.DataFrame(
        {"user_id": ["u", "u", "u"], "item_id": ["a", "a", "a"], "event": ["click"] * 3,
         "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03"], "label": ["1", "0", "1"]},
        dtype=object,
    )
    raw.loc[1, col] = value
    with pytest.raises(DataError) as ei:
        validate_table(raw, INTERACTIONS, file="ev.csv", known_items=pd.Index(["a"]))
    assert str(ei.value).startswith(f"ev.csv:3: column '{col}': {reason}")

    rep = ValidationReport()
    kept = validate_table(raw, INTERACTIONS, file="ev.csv", known_items=pd.Index(["a"]),
                          on_bad_rows=OnBadRows.QUARANTINE, report=rep)
    assert len(kept) == 2 and rep.read == rep.kept + rep.rejected == 3
    rej = rep.rejects_frame()
    assert rej.loc[0, "line"] == 3 and rej.loc[0, "column"] == col and reason in rej.loc[0, "reason"]


def test_duplicate_ids_rejected_with_first_line():
    raw = pd.DataFrame({"item_id": ["a", "b", "a"], "title": ["x", "y", "z"]})
    rep = ValidationReport()
    kept = validate_table(raw, CATALOG, file="items.csv", on_bad_rows="skip", report=rep)
    assert list(kept["item_id"]) == ["a", "b"]
    assert "first seen on line 2" in rep.rejects_frame().loc[0, "reason"]


def test_nan_in_required_float_is_rejected():
    raw = pd.DataFrame({"query": ["q"], "item_id": ["a"], "grade": [float("nan")]})
    from shoprank.data.schema import JUDGMENTS

    with pytest.raises(DataError, match="missing value"):
        validate_table(raw, JUDGMENTS, file="j.csv")


def test_parse_time_accepts_seconds_ms_and_iso():
    t = parse_time(pd.Series([0, 1_700_000_000_000, "2024-05-01T10:00:00Z", None], dtype=object))
    assert t.iloc[0] == pd.Timestamp(0, unit="s", tz="UTC")
    assert t.iloc[1] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert t.iloc[2] == pd.Timestamp("2024-05-01T10:00:00Z")
    assert pd.isna(t.iloc[3])


def test_dataset_roundtrip_and_id_map(tmp_path, tiny_frames):
    items, inter, judg = tiny_frames
    ds = Dataset.from_frames("tiny", items, inter, judg)
    ds.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert back.item_map.to_internal(["c", "a"]).tolist() == [2, 0]
    assert back.item_map.to_external([3]).tolist() == ["d"]
    assert back.describe()["users"] == 3


def test_id_map_unknown_ids():
    m = IdMap(["x", "y"])
    with pytest.raises(KeyError):
        m.to_internal(["z"])
    assert m.to_internal(["z", "y"], missing=-1).tolist() == [-1, 1]


def test_load_rejects_non_dataset(tmp_path):
    with pytest.raises(DataError, match="not a dataset folder"):
        Dataset.load(tmp_path)

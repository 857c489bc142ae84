"""Import of external formats: every format on tiny hand-made files, bad input located by
file, line and column, nothing silently dropped, and the real datasets in ../shared/data."""

from __future__ import annotations

import ast
import csv
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.data.loaders import FORMATS, check_path, import_dataset, verify_test_histories
from shoprank.data.schema import Col, Split
from shoprank.data.validate import ValidationReport
from shoprank.errors import DataError, ShoprankError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} (../shared/data from the repo root)"
)


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode(encoding))
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def assert_balanced(report: ValidationReport) -> None:
    assert report.read == report.kept + report.rejected
    for t in report.tables:
        assert t.read == t.kept + t.rejected


ITEMS_CSV = "item_id,title,price\ni1,Red mug,3.5\ni2,Blue mug,\ni3,\"Mug, large\",7\n"
EVENTS_CSV = (
    "user_id,item_id,event,timestamp\n"
    "u1,i1,click,2024-01-01T10:00:00Z\n"
    "u1,i2,purchase,1704103200\n"
    "u2,i3,view,1704103200000\n"
)


# -- registry and api -----------------------------------------------------------------------
def test_registry_names() -> None:
    assert set(FORMATS) == {
        "table", "recbole", "amazon-reviews", "amazon-industrial", "tallrec", "homedepot", "labelled-text",
    }


def test_unknown_format_lists_available(tmp_path: Path) -> None:
    with pytest.raises(ShoprankError, match="available:.*amazon-industrial.*table"):
        import_dataset("nope", [tmp_path])


def test_missing_source_and_bad_policy(tmp_path: Path) -> None:
    with pytest.raises(ShoprankError, match="not found"):
        import_dataset("table", [tmp_path / "absent.csv"])
    write(tmp_path / "items.csv", ITEMS_CSV)
    with pytest.raises(ShoprankError, match="on_bad_rows"):
        import_dataset("table", [tmp_path / "items.csv"], on_bad_rows="ignore")


# -- table ----------------------------------------------------------------------------------
def test_table_csv_jsonl_tsv(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", ITEMS_CSV)
    jsonl(
        tmp_path / "events.jsonl",
        [
            {"user_id": "u1", "item_id": "i1", "event": "rating", "label": 4, "timestamp": 1704103200},
            {"user_id": 7, "item_id": "i2", "event": "CLICK", "timestamp": "2024-01-02"},
        ],
    )
    write(tmp_path / "qrels.tsv", "query\titem_id\tgrade\nred mug\ti1\t2\nred mug\ti2\t0\n")
    report = ValidationReport()
    ds = import_dataset("table", [tmp_path], report=report)
    assert ds.name == tmp_path.name
    assert list(ds.items[Col.ITEM_ID]) == ["i1", "i2", "i3"]
    assert ds.items[Col.TITLE].iloc[2] == "Mug, large"
    assert pd.isna(ds.items[Col.PRICE].iloc[1])
    assert list(ds.interactions[Col.USER_ID]) == ["u1", "7"]
    assert list(ds.interactions[Col.EVENT]) == ["rating", "click"]
    assert ds.judgments[Col.GRADE].tolist() == [2.0, 0.0]
    assert report.read == 3 + 2 + 2 and report.rejected == 0
    assert ds.meta["format"] == "table"


def test_table_parquet_and_epoch_units(tmp_path: Path) -> None:
    pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}).to_parquet(tmp_path / "products.parquet")
    write(tmp_path / "interactions.csv", EVENTS_CSV.replace("i1", "a").replace("i2", "b").replace("i3", "a"))
    ds = import_dataset("table", [tmp_path / "products.parquet", tmp_path / "interactions.csv"])
    ts = ds.interactions[Col.TIMESTAMP]
    # ISO text, epoch seconds and epoch milliseconds all read as the same kind of instant
    assert ts.iloc[1] == ts.iloc[2] == pd.Timestamp("2024-01-01T10:00:00Z")


def test_table_mapping_renames_and_routes(tmp_path: Path) -> None:
    write(tmp_path / "catalog.csv", "sku,name\ni1,Mug\ni2,Cup\n")
    write(tmp_path / "clicks.csv", "visitor,sku,what,ts\nu1,i1,click,1704103200\n")
    ds = import_dataset(
        "table",
        [tmp_path / "catalog.csv", tmp_path / "clicks.csv"],
        mapping={
            "sku": "item_id",
            "items:name": "title",
            "visitor": "user_id",
            "what": "event",
            "ts": "timestamp",
            "clicks.csv": "interactions",
        },
    )
    assert list(ds.items[Col.TITLE]) == ["Mug", "Cup"]
    assert ds.interactions[Col.ITEM_ID].tolist() == ["i1"]


def test_table_mapping_typo_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", ITEMS_CSV)
    with pytest.raises(ShoprankError, match="match no file or column.*'prodcut'"):
        import_dataset("table", [tmp_path / "items.csv"], mapping={"prodcut": "item_id"})


def test_table_needs_catalog(tmp_path: Path) -> None:
    write(tmp_path / "interactions.csv", EVENTS_CSV)
    with pytest.raises(ShoprankError, match="no catalog file"):
        import_dataset("table", [tmp_path / "interactions.csv"])


def test_table_unknown_file_role(tmp_path: Path) -> None:
    write(tmp_path / "stuff.csv", ITEMS_CSV)
    with pytest.raises(ShoprankError, match=r"stuff\.csv.*cannot tell which table"):
        import_dataset("table", [tmp_path / "stuff.csv"])


def test_table_duplicate_id_across_files(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", ITEMS_CSV)
    write(tmp_path / "more_items.csv", "item_id,title\ni4,Plate\ni2,Other mug\n")
    with pytest.raises(DataError) as e:
        import_dataset("table", [tmp_path / "items.csv", tmp_path / "more_items.csv"])
    assert "more_items.csv:3" in str(e.value) and "items.csv:3" in str(e.value)
    report = ValidationReport()
    ds = import_dataset(
        "table", [tmp_path / "items.csv", tmp_path / "more_items.csv"], on_bad_rows="skip", report=report
    )
    assert len(ds.items) == 4 and report.rejected == 1
    assert_balanced(report)


# -- the four malformed cases, located by file, line and column -----------------------------
BAD_CASES = {
    # name: (items.csv, interactions.csv, bad file, line, column)
    "missing column": (
        ITEMS_CSV,
        "user_id,item_id,event\nu1,i1,click\n",
        "interactions.csv", 1, "timestamp",
    ),
    "non-numeric timestamp": (
        ITEMS_CSV,
        "user_id,item_id,event,timestamp\nu1,i1,click,1704103200\nu1,i2,click,yesterday\n",
        "interactions.csv", 3, "timestamp",
    ),
    "unknown item id": (
        ITEMS_CSV,
        "user_id,item_id,event,timestamp\nu1,i1,click,1\nu1,i2,click,2\nu2,zzz,click,3\n",
        "interactions.csv", 4, "item_id",
    ),
    "invalid utf-8": (
        b"item_id,title\ni1,Red mug\ni2,Bad \xff\xfe mug\n",
        "user_id,item_id,event,timestamp\nu1,i1,click,1\n",
        "items.csv", 3, "title",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_malformed_input_raises_located_error(tmp_path: Path, case: str) -> None:
    items, inter, bad_file, line, column = BAD_CASES[case]
    write(tmp_path / "items.csv", items)
    write(tmp_path / "interactions.csv", inter)
    with pytest.raises(DataError) as e:
        import_dataset("table", [tmp_path])
    msg = str(e.value)
    assert bad_file in msg and f":{line}:" in msg and f"'{column}'" in msg, msg
    assert e.value.line == line and e.value.column == column


def test_quarantine_keeps_good_rows_and_locates_bad_ones(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", b"item_id,title\ni1,Red mug\ni2,Bad \xff mug\ni3,Plate\n")
    write(
        tmp_path / "interactions.csv",
        "user_id,item_id,event,timestamp\n"
        "u1,i1,click,1\n"
        "u1,i3,click,yesterday\n"
        "u2,zzz,click,3\n"
        "u2,i2,click,4\n"  # i2 was rejected from the catalog, so this is unknown too
        "u3,i3,purchase,5\n"
        "u3,i3,click\n",  # wrong field count: rejected by the reader, not padded
    )
    report = ValidationReport()
    ds = import_dataset("table", [tmp_path], on_bad_rows="quarantine", report=report)
    assert len(ds.items) == 2 and len(ds.interactions) == 2
    rej = report.rejects_frame()
    got = {(Path(f).name, int(line), col) for f, line, col in zip(rej.file, rej.line, rej.column, strict=True)}
    assert got == {
        ("items.csv", 3, "title"),
        ("interactions.csv", 3, "timestamp"),
        ("interactions.csv", 4, "item_id"),
        ("interactions.csv", 5, "item_id"),
        ("interactions.csv", 7, "timestamp"),
    }
    reasons = dict(zip(rej.line.astype(int).astype(str) + rej.column, rej.reason, strict=True))
    assert reasons["3title"] == "invalid UTF-8 bytes"
    assert "unparsable timestamp" in reasons["3timestamp"]
    assert "unknown item id" in reasons["4item_id"]
    assert "expected 4 fields, found 3" in reasons["7timestamp"]
    assert report.read == 3 + 6 and report.kept == 4 and report.rejected == 5
    assert_balanced(report)
    out = report.write_quarantine(tmp_path / "q" / "rejects.csv")
    assert len(pd.read_csv(out)) == 5


def test_jsonl_bad_line_and_bad_bytes(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", ITEMS_CSV)
    write(
        tmp_path / "events.jsonl",
        b'{"user_id": "u1", "item_id": "i1", "event": "click", "timestamp": 1}\n'
        b"\n"
        b'{"user_id": "u1", "item_id": "i2", "event": "click", "timestamp": 2\n'
        b'{"user_id": "u\xc3(", "item_id": "i2", "event": "click", "timestamp": 3}\n'
        b"[1, 2]\n",
    )
    with pytest.raises(DataError, match=r"events\.jsonl:3: invalid JSON"):
        import_dataset("table", [tmp_path])
    report = ValidationReport()
    ds = import_dataset("table", [tmp_path], on_bad_rows="skip", report=report)
    assert len(ds.interactions) == 1
    rej = report.rejects_frame()
    got = sorted(zip(rej.line.astype(int), rej.reason, strict=True))
    assert [line for line, _ in got] == [3, 4, 5]
    assert got[0][1].startswith("invalid JSON: Expecting ',' delimiter")
    assert got[1][1] == "invalid UTF-8 bytes" and got[2][1] == "not a JSON object"
    assert_balanced(report)


def test_multiline_csv_field_keeps_true_line_numbers(tmp_path: Path) -> None:
    write(tmp_path / "items.csv", 'item_id,title\ni1,"two\nlines"\ni2,\n')
    with pytest.raises(DataError) as e:
        import_dataset("table", [tmp_path / "items.csv"])
    assert e.value.line == 4 and e.value.column == "title"


# -- recbole --------------------------------------------------------------------------------
def test_recbole(tmp_path: Path) -> None:
    write(
        tmp_path / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tHeat \"1995\"\t1995\tAction\n"
        "3\tunknown\tunknown\tunknown\n",
    )
    write(
        tmp_path / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t881250949\n1\t2\t2.5\t881250950\n",
    )
    write(tmp_path / "toy.user", "user_id:token\tage:token\n1\t24\n")
    ds = import_dataset("recbole", [tmp_path])
    assert ds.items[Col.TITLE].tolist() == ["Toy Story (1995)", 'Heat "1995" (1995)', "unknown"]
    assert ds.items[Col.CATEGORY].iloc[0] == "Animation, Children's, Comedy"
    assert json.loads(ds.items[Col.ATTRIBUTES].iloc[0]) == {"release_year": "1995"}
    assert ds.interactions[Col.LABEL].tolist() == [4.0, 2.5]
    assert set(ds.interactions[Col.EVENT]) == {"rating"}
    assert any("user features" in n for n in ds.meta["notes"])


def test_recbole_without_rating_is_click_and_bad_bytes_are_located(tmp_path: Path) -> None:
    write(tmp_path / "a.item", b"item_id:token\ttitle:token_seq\n1\tOne\n2\tT\xe9o\n")
    write(tmp_path / "a.train.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t1\t10\n")
    with pytest.raises(DataError) as e:
        import_dataset("recbole", [tmp_path / "a.item", tmp_path / "a.train.inter"])
    assert "a.item:3" in str(e.value) and e.value.column == "title"
    ds = import_dataset("recbole", [tmp_path], on_bad_rows="skip")
    assert ds.interactions[Col.EVENT].tolist() == ["click"]
    assert ds.interactions[Col.SPLIT].tolist() == ["train"]


def test_recbole_needs_item_file(tmp_path: Path) -> None:
    write(tmp_path / "a.inter", "user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(ShoprankError, match=r"no \.item file"):
        import_dataset("recbole", [tmp_path])


# -- amazon reviews -------------------------------------------------------------------------
def test_amazon_reviews_2018(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "Tools_5.json",
        [
            {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": "A1",
             "asin": "B001", "reviewerName": "x", "reviewText": "great", "unixReviewTime": 1252800000},
            {"overall": 2.0, "reviewerID": "A2", "asin": "B002", "unixReviewTime": 1252900000},
        ],
    )
    meta = [
        {"asin": "B001", "title": "Hammer", "description": ["Steel head.", "Wood handle."], "brand": "Acme",
         "category": ["Tools", "Hand Tools"], "price": "$12.99", "feature": ["heavy"], "main_cat": "Tools"},
        {"asin": "B002", "title": "Saw", "description": [], "brand": "", "category": [],
         "price": ".a-box-inner{background-color:#fff;}"},
    ]
    with gzip.open(tmp_path / "meta_Tools.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in meta)
    ds = import_dataset("amazon-reviews", [tmp_path])
    it = ds.items.set_index(Col.ITEM_ID)
    assert it.loc["B001", Col.DESCRIPTION] == "Steel head. Wood handle."
    assert it.loc["B001", Col.CATEGORY] == "Tools > Hand Tools"
    assert it.loc["B001", Col.PRICE] == 12.99 and it.loc["B001", Col.BRAND] == "Acme"
    assert pd.isna(it.loc["B002", Col.PRICE])
    assert json.loads(it.loc["B002", Col.ATTRIBUTES])["price_text"].startswith(".a-box")
    inter = ds.interactions
    assert inter[Col.EVENT].tolist() == ["purchase", "purchase"]
    assert inter[Col.LABEL].tolist() == [5.0, 2.0]
    assert inter[Col.TIMESTAMP].iloc[0] == pd.Timestamp(1252800000, unit="s", tz="UTC")


def test_amazon_reviews_2023(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "Tools.jsonl",
        [
            {"rating": 4.0, "title": "ok", "text": "fine", "images": [], "asin": "B0C1", "parent_asin": "P1",
             "user_id": "U1", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
            {"rating": 1.0, "asin": "B0C2", "parent_asin": "P1", "user_id": "U2", "timestamp": 1588687729000},
        ],
    )
    jsonl(
        tmp_path / "catalog_Tools.jsonl",  # no "meta" in the name: told apart by its keys
        [
            {"main_category": "Tools", "title": "Drill", "average_rating": 4.1, "features": ["cordless"],
             "description": ["Fast."], "price": 59.5, "store": "DrillCo", "categories": ["Tools", "Power"],
             "details": {"Weight": "2 kg"}, "parent_asin": "P1"},
        ],
    )
    report = ValidationReport()
    ds = import_dataset("amazon-reviews", [tmp_path], report=report)
    row = ds.items.iloc[0]
    assert (row[Col.ITEM_ID], row[Col.BRAND], row[Col.PRICE]) == ("P1", "DrillCo", 59.5)
    assert row[Col.CATEGORY] == "Tools > Power"
    assert json.loads(row[Col.ATTRIBUTES])["details"] == {"Weight": "2 kg"}
    assert ds.interactions[Col.ITEM_ID].tolist() == ["P1", "P1"]
    # 2023 timestamps are milliseconds
    assert ds.interactions[Col.TIMESTAMP].iloc[0] == pd.Timestamp(1588687728923, unit="ms", tz="UTC")
    assert report.read == 3


def test_amazon_reviews_bad_rows(tmp_path: Path) -> None:
    jsonl(tmp_path / "meta.jsonl", [{"asin": "B1", "title": "One"}])
    write(
        tmp_path / "reviews.jsonl",
        '{"reviewerID": "A1", "asin": "B1", "overall": 5, "unixReviewTime": 1}\n'
        '{"reviewerID": "A1", "asin": "B1", "overall": 5, "unixReviewTime": "soon"}\n'
        "{not json}\n",
    )
    with pytest.raises(DataError) as e:
        import_dataset("amazon-reviews", [tmp_path])
    assert "reviews.jsonl:2" in str(e.value) and e.value.column == "timestamp"
    report = ValidationReport()
    ds = import_dataset("amazon-reviews", [tmp_path], on_bad_rows="quarantine", report=report)
    assert len(ds.interactions) == 1 and sorted(report.rejects_frame().line.astype(int)) == [2, 3]
    assert_balanced(report)


def test_amazon_reviews_needs_meta(tmp_path: Path) -> None:
    jsonl(tmp_path / "reviews.jsonl", [{"reviewerID": "A1", "asin": "B1", "overall": 5, "unixReviewTime": 1}])
    with pytest.raises(ShoprankError, match="no metadata file"):
        import_dataset("amazon-reviews", [tmp_path])


# -- amazon-industrial ----------------------------------------------------------------------
def _windows_csv(path: Path, rows: list[tuple[str, list[int], int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "history_item_title", "item_title", "history_item_id", "item_id",
                    "history_item_sid", "item_sid"])
        for user, hist, target in rows:
            w.writerow([user, str([f"t{i}" for i in hist]), f"t{target}", str(hist), target, "[]", ""])
    return path


def _industrial(tmp_path: Path, test_rows: list[tuple[str, list[int], int]] | None = None) -> Path:
    folder = tmp_path / "amazon-industrial"
    items = {
        str(i): {"title": f"Item {i}", "description": "['Part one.', 'Part two.']" if i % 2 else "",
                 "brand": "B", "categories": ""}
        for i in range(12)
    }
    items["11"]["description"] = "['Hose 5/16\" x 25' Length']"  # a broken literal, as in the real file
    write(folder / "items.json", json.dumps(items, indent=2))
    # valid: u1 has 3 windows (width 3), u3 is valid-only
    _windows_csv(folder / "valid.csv", [
        ("u1", [0, 1], 2), ("u3", [5], 6), ("u1", [0, 1, 2], 3), ("u1", [1, 2, 3], 4),
    ])
    _windows_csv(folder / "test.csv", test_rows or [
        ("u2", [7, 8], 9),         # test-only user: its history is "history"
        ("u1", [2, 3, 4], 10),     # continues u1's valid sequence
        ("u2", [7, 8, 9], 1),      # later window contains the earlier test target
        ("u1", [3, 4, 10], 11),
    ])
    return folder


def test_amazon_industrial_event_log(tmp_path: Path) -> None:
    ds = import_dataset("amazon-industrial", [_industrial(tmp_path)])
    inter = ds.interactions
    log = {u: g.sort_values(Col.TIMESTAMP) for u, g in inter.groupby(Col.USER_ID)}
    assert log["u1"][Col.ITEM_ID].tolist() == ["0", "1", "2", "3", "4", "10", "11"]
    assert log["u1"][Col.SPLIT].tolist() == ["train"] * 5 + ["test"] * 2
    assert log["u2"][Col.SPLIT].tolist() == ["history", "history", "test", "test"]
    assert log["u3"][Col.SPLIT].tolist() == ["train", "train"]
    test = inter[inter[Col.SPLIT] == Split.TEST]
    assert test[Col.ITEM_ID].tolist() == ["9", "10", "1", "11"]  # one per test.csv row, in order
    for g in log.values():
        assert g[Col.TIMESTAMP].is_unique
    train_max = inter.loc[inter[Col.SPLIT] == "train", Col.TIMESTAMP].max()
    assert inter.loc[inter[Col.SPLIT] != "train", Col.TIMESTAMP].min() > train_max
    assert set(inter[Col.EVENT]) == {"purchase"}
    assert ds.meta["checks"] == {"test_rows": 4, "test_histories_matching": 4}
    assert "ordinal" in " ".join(ds.meta["notes"]) and ds.meta["provenance"]
    assert verify_test_histories(ds, tmp_path / "amazon-industrial" / "test.csv", width=3) == []
    it = ds.items.set_index(Col.ITEM_ID)
    assert it.loc["1", Col.DESCRIPTION] == "Part one. Part two."
    assert pd.isna(it.loc["0", Col.DESCRIPTION])
    assert it.loc["11", Col.DESCRIPTION] == "Hose 5/16\" x 25' Length"


def test_amazon_industrial_rejects_broken_windows(tmp_path: Path) -> None:
    folder = _industrial(tmp_path, [("u2", [7, 8], 9), ("u2", [5, 5, 5], 1), ("u2", [7, 8, 9], 99)])
    with pytest.raises(DataError) as e:
        import_dataset("amazon-industrial", [folder])
    assert "test.csv:3" in str(e.value) and e.value.column == "history_item_id"
    report = ValidationReport()
    ds = import_dataset("amazon-industrial", [folder], on_bad_rows="quarantine", report=report)
    rej = report.rejects_frame()
    assert sorted(zip(rej.line.astype(int), rej.column, strict=True)) == [(3, "history_item_id"), (4, "item_id")]
    assert (ds.interactions[Col.SPLIT] == "test").sum() == 1
    assert_balanced(report)


# -- tallrec --------------------------------------------------------------------------------
ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Comedy\n2\tHeat\t1995\tAction\n3\tBabe\t1995\tDrama\n"
    "4\tSeven\t1995\tThriller\n5\tCasino\t1995\tDrama\n"
)


def _tallrec_csv(folder: Path) -> Path:
    base = folder / "baseline"
    head = "user_id,history_movie_id,history_rating,movie_id,rating,timestamp\n"
    write(base / "train.csv", head
          + "7,\"['1', '2']\",\"[1, 0]\",3,1,100\n"
          + "7,\"['2', '3']\",\"[0, 1]\",4,0,100\n")  # tie with the row before
    write(base / "valid.csv", head + "8,\"['5']\",\"[1]\",1,1,50\n")
    write(base / "test.csv", head + "7,\"['3', '4']\",\"[1, 0]\",5,1,100\n")
    return folder


def test_tallrec_csv_route(tmp_path: Path) -> None:
    folder = _tallrec_csv(tmp_path / "tallrec")
    item = write(tmp_path / "ml.item", ML_ITEM)
    ds = import_dataset("tallrec", [folder, item])
    assert ds.items[Col.TITLE].iloc[0] == "Toy Story (1995)"
    u7 = ds.interactions[ds.interactions[Col.USER_ID] == "7"].sort_values(Col.TIMESTAMP)
    assert u7[Col.ITEM_ID].tolist() == ["1", "2", "3", "4", "5"]
    assert u7[Col.SPLIT].tolist() == ["history", "history", "train", "train", "test"]
    assert u7[Col.LABEL].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert u7[Col.TIMESTAMP].is_unique and u7[Col.TIMESTAMP].is_monotonic_increasing
    t = u7[Col.TIMESTAMP].tolist()
    assert t[0] < t[1] < t[2] == pd.Timestamp(100, unit="s", tz="UTC")
    assert t[3] - t[2] == pd.Timedelta(microseconds=1)  # tie broken in file order
    assert set(ds.interactions[Col.EVENT]) == {"rating"}
    assert any("microseconds" in n for n in ds.meta["notes"])


def test_tallrec_csv_needs_titles(tmp_path: Path) -> None:
    folder = _tallrec_csv(tmp_path / "tallrec")
    with pytest.raises(ShoprankError, match=r"item file"):
        import_dataset("tallrec", [folder / "baseline" / "test.csv"])


def test_tallrec_csv_bad_row(tmp_path: Path) -> None:
    folder = _tallrec_csv(tmp_path / "tallrec")
    with (folder / "baseline" / "test.csv").open("a") as f:
        f.write("7,\"['1', '2']\",\"[1]\",2,1,200\n")
    item = write(tmp_path / "ml.item", ML_ITEM)
    with pytest.raises(DataError) as e:
        import_dataset("tallrec", [folder, item])
    assert "test.csv:3" in str(e.value) and e.value.column == "history_rating"


def _prompt(liked: str, disliked: str, target: str, domain: str = "movie") -> str:
    return (f"User Preference: {liked}\nUser Unpreference: {disliked}\n"
            f"Whether the user will like the target {domain} \"{target}\"?")


def test_tallrec_json_route(tmp_path: Path) -> None:
    records = [
        {"instruction": "...", "input": _prompt('"Paris, Texas (1984)", "Dave (1993)"', "", "Heat (1995)"),
         "output": "Yes."},
        {"instruction": "...", "input": _prompt("", '"Say \\"Hi\\", Bob (2001)"', 'The "Book", Vol. 2', "book"),
         "output": "No."},
    ]
    write(tmp_path / "test.json", json.dumps(records, indent=4))
    write(tmp_path / "valid.json", json.dumps(records[:1], indent=4))
    report = ValidationReport()
    ds = import_dataset("tallrec", [tmp_path / "valid.json", tmp_path / "test.json"], report=report)
    titles = set(ds.items[Col.TITLE])
    assert titles == {"Paris, Texas (1984)", "Dave (1993)", "Heat (1995)", 'Say "Hi", Bob (2001)', 'The "Book", Vol. 2'}
    inter = ds.interactions
    first = inter[inter[Col.USER_ID] == "test-0"]
    assert first[Col.SPLIT].tolist() == ["history", "history", "test"]
    assert first[Col.LABEL].tolist() == [1.0, 1.0, 1.0]
    second = inter[inter[Col.USER_ID] == "test-1"]
    assert second[Col.LABEL].tolist() == [0.0, 0.0] and second[Col.SPLIT].tolist() == ["history", "test"]
    assert (inter[Col.SPLIT] == "valid").sum() == 1
    # the same title gets the same id in both files
    assert inter[inter[Col.USER_ID] == "valid-0"][Col.ITEM_ID].tolist() == first[Col.ITEM_ID].tolist()
    assert report.read == 5 + 3 + 3 + 2


def test_tallrec_json_bad_prompt_is_located(tmp_path: Path) -> None:
    records = [
        {"input": _prompt('"A (1990)"', "", "B (1991)"), "output": "Yes."},
        {"input": _prompt('"A (1990)"', "", "B (1991)"), "output": "Maybe."},
    ]
    write(tmp_path / "test.json", json.dumps(records, indent=4))
    with pytest.raises(DataError) as e:
        import_dataset("tallrec", [tmp_path / "test.json"])
    assert "test.json:6" in str(e.value) and e.value.column == "output"
    report = ValidationReport()
    ds = import_dataset("tallrec", [tmp_path / "test.json"], on_bad_rows="skip", report=report)
    assert len(ds.interactions) == 2
    assert_balanced(report)


# -- homedepot ------------------------------------------------------------------------------
def test_homedepot_latin1(tmp_path: Path) -> None:
    write(
        tmp_path / "train.csv",
        '"id","product_uid","product_title","search_term","relevance"\n'
        '2,100001,"Caf\xe9 Angle 90\xb0","angle bracket",3\n'
        '3,100001,"Caf\xe9 Angle 90\xb0","angle bracket",2.33\n'
        '4,100002,"Deck paint","deck, paint",1.67\n'
        '5,100001,"Cafe Angle","l bracket",2\n',
        encoding="latin-1",
    )
    write(tmp_path / "product_descriptions.csv", "product_uid,product_description\n100002,Covers old decks.\n")
    write(tmp_path / "test.csv", "id,product_uid,product_title,search_term\n9,100003,Rope,rope\n")
    ds = import_dataset("homedepot", [tmp_path])
    assert ds.items[Col.TITLE].tolist() == ["Café Angle 90°", "Deck paint"]
    assert ds.items[Col.DESCRIPTION].tolist()[1] == "Covers old decks."
    assert any("test.csv" in n for n in ds.meta["notes"])  # ungraded file named, not imported
    assert json.loads(ds.items[Col.ATTRIBUTES].iloc[0]) == {"other_titles": ["Cafe Angle"]}
    j = ds.judgments
    assert len(j) == 4  # the repeated (query, product) pair stays two judgments
    assert j[Col.QUERY].tolist()[:3] == ["angle bracket", "angle bracket", "deck, paint"]
    assert j[Col.GRADE].tolist() == [3.0, 2.33, 1.67, 2.0]
    assert j[Col.LABELER].isna().all()
    assert any("latin-1" in n for n in ds.meta["notes"])


def test_homedepot_bad_grade(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "id,product_uid,product_title,search_term,relevance\n1,9,T,q,high\n")
    with pytest.raises(DataError) as e:
        import_dataset("homedepot", [tmp_path / "train.csv"])
    assert "train.csv:2" in str(e.value) and e.value.column == "grade"


# -- labelled text --------------------------------------------------------------------------
def test_labelled_text(tmp_path: Path) -> None:
    long = "这本书非常好看" * 20
    write(tmp_path / "reviews.csv", f"cat,label,review\n书籍,1,\ufeff{long}\n水果,0,\"不新鲜, 太贵\"\n水果,1,\n")
    report = ValidationReport()
    ds = import_dataset("labelled-text", [tmp_path / "reviews.csv"], report=report)
    it = ds.items
    assert it[Col.ITEM_ID].tolist() == ["1", "2", "3"]
    assert it[Col.DESCRIPTION].iloc[0] == long  # the BOM is gone
    assert len(it[Col.TITLE].iloc[0]) <= 60 and it[Col.TITLE].iloc[0].startswith("这本书")
    assert it[Col.TITLE].iloc[2] == "(empty text)"
    assert it[Col.CATEGORY].tolist() == ["书籍", "水果", "水果"]
    inter = ds.interactions
    assert set(inter[Col.USER_ID]) == {"labeler"} and inter[Col.LABEL].tolist() == [1.0, 0.0, 1.0]
    assert inter[Col.TIMESTAMP].is_monotonic_increasing and inter[Col.TIMESTAMP].is_unique
    assert report.read == 6


def test_labelled_text_mapping_and_errors(tmp_path: Path) -> None:
    write(tmp_path / "d.tsv", "topic\tstars\tbody_text\nA\t1\thello\nB\tx\tworld\n")
    with pytest.raises(DataError) as e:
        import_dataset("labelled-text", [tmp_path / "d.tsv"], mapping={"body_text": "text", "stars": "label"})
    assert "d.tsv:3" in str(e.value) and e.value.column == "label"
    ds = import_dataset(
        "labelled-text", [tmp_path / "d.tsv"], mapping={"body_text": "text", "stars": "label"}, on_bad_rows="skip"
    )
    assert ds.items[Col.CATEGORY].tolist() == ["A", "B"] and len(ds.interactions) == 1
    with pytest.raises(DataError, match="no label column"):
        import_dataset("labelled-text", [tmp_path / "d.tsv"], mapping={"body_text": "text"})


# -- check_path -----------------------------------------------------------------------------
def test_check_path_dataset_folder_and_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(raw / "items.csv", ITEMS_CSV)
    write(raw / "events.csv", EVENTS_CSV)
    before = sorted(p.name for p in raw.iterdir())
    ds = check_path(raw, fmt="table")
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing written
    folder = ds.save(tmp_path / "ds")
    again = check_path(folder)
    assert isinstance(again, Dataset) and len(again.interactions) == 3
    with pytest.raises(DataError, match="not a dataset folder"):
        check_path(raw)
    write(raw / "events.csv", EVENTS_CSV + "u9,nope,click,1\n")
    report = ValidationReport()
    check_path(raw, fmt="table", on_bad_rows="skip", report=report)
    assert report.rejected == 1


# -- the real datasets (../shared/data) -----------------------------------------------------
@pytest.mark.shared_data
@needs_shared
def test_real_amazon_industrial() -> None:
    folder = SHARED / "amazon-industrial"
    ds = import_dataset("amazon-industrial", [folder])
    inter = ds.interactions
    assert len(ds.items) == 3686
    test = inter[inter[Col.SPLIT] == "test"]
    assert len(test) == 4533
    with (folder / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert test[Col.ITEM_ID].tolist() == [r["item_id"] for r in rows]
    # every test row's history is exactly the last 10 events before its target
    assert verify_test_histories(ds, folder / "test.csv") == []
    first = rows[0]
    log = inter[inter[Col.USER_ID] == first["user_id"]].sort_values(Col.TIMESTAMP)[Col.ITEM_ID].tolist()
    pos = log.index(first["item_id"])
    assert log[max(0, pos - 10):pos] == [str(i) for i in ast.literal_eval(first["history_item_id"])]
    # leakage guard: nothing from test.csv is a training row
    assert inter.loc[inter[Col.SPLIT] == "train", Col.TIMESTAMP].max() < test[Col.TIMESTAMP].min()
    assert (inter[Col.SPLIT] == "train").sum() > 4532


@pytest.mark.shared_data
@needs_shared
def test_real_tallrec_csv_route() -> None:
    ds = import_dataset("tallrec", [SHARED / "tallrec-movie", SHARED / "movielens-100k" / "ml-100k.item"])
    inter = ds.interactions
    counts = inter[Col.SPLIT].value_counts()
    assert (counts["train"], counts["valid"], counts["test"]) == (8000, 1000, 1000)
    assert ds.items.set_index(Col.ITEM_ID).loc["1", Col.TITLE] == "Toy Story (1995)"
    assert inter.groupby(Col.USER_ID)[Col.TIMESTAMP].agg(lambda s: s.is_unique).all()
    # every test row's 10-item history can be rebuilt from the event log
    log = inter.sort_values(Col.TIMESTAMP, kind="stable")
    seqs = {u: g[Col.ITEM_ID].tolist() for u, g in log.groupby(Col.USER_ID)}
    splits = {u: g[Col.SPLIT].tolist() for u, g in log.groupby(Col.USER_ID)}
    with (SHARED / "tallrec-movie" / "baseline" / "test.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            s, sp = seqs[r["user_id"]], splits[r["user_id"]]
            pos = next(k for k, (i, x) in enumerate(zip(s, sp, strict=True)) if i == r["movie_id"] and x == "test")
            assert s[pos - 10:pos] == ast.literal_eval(r["history_movie_id"])


@pytest.mark.shared_data
@needs_shared
def test_real_homedepot() -> None:
    ds = import_dataset("homedepot", [SHARED / "homedepot-search" / "train.csv"])
    assert len(ds.judgments) == 74067
    assert ds.judgments[Col.QUERY].nunique() == 11795
    assert ds.items[Col.ITEM_ID].is_unique


@pytest.mark.shared_data
@needs_shared
def test_real_zh_reviews() -> None:
    ds = import_dataset("labelled-text", [SHARED / "zh-shopping-reviews" / "online_shopping_10_cats.csv"])
    assert len(ds.items) == len(ds.interactions) == 62774
    assert not ds.items[Col.DESCRIPTION].dropna().str.startswith("\ufeff").any()
    assert ds.interactions[Col.LABEL].isin([0.0, 1.0]).all()
    assert ds.items[Col.CATEGORY].nunique() == 10

"""Active labelling from the command line: the pool file, the exclusions and the batch sheet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.data.synth import SynthConfig, synthesize
from shoprank.errors import DataError, ShoprankError
from shoprank.valuation.labeling import next_to_label, read_pool


@pytest.fixture(scope="module")
def shop_with_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The tiny shop with half its queries' judgments hidden: those pairs are the pool."""
    ds, _ = synthesize(SynthConfig.preset("tiny"))
    j = ds.judgments
    hidden_q = sorted(j["query"].unique())[::2]
    hidden = j[j["query"].isin(hidden_q)]
    root = tmp_path_factory.mktemp("label")
    ds.with_tables(judgments=j[~j["query"].isin(hidden_q)].reset_index(drop=True)).save(root / "shop")
    pool = hidden[["query", "item_id"]]
    pool.to_csv(root / "pool.csv", index=False)
    return root / "shop", root / "pool.csv", hidden


def test_label_command_writes_a_sheet_for_annotators(shop_with_pool: tuple[Path, Path, pd.DataFrame],
                                                    tmp_path: Path) -> None:
    data, pool_csv, hidden = shop_with_pool
    judged = pd.read_parquet(data / "judgments.parquet")
    # one pair that is already judged and one repeated pool row must not be asked for
    pool = pd.concat([pd.read_csv(pool_csv), judged[["query", "item_id"]].head(1), pd.read_csv(pool_csv).head(1)])
    pool.to_csv(tmp_path / "pool.csv", index=False)
    out = tmp_path / "next.csv"
    r = subprocess.run([sys.executable, "-m", "shoprank.cli", "label", "--data", str(data), "--pool",
                        str(tmp_path / "pool.csv"), "--k", "25", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 pool pairs are already judged" in r.stdout and "1 pool pairs repeat" in r.stdout
    sheet = pd.read_csv(out, keep_default_na=False)
    assert list(sheet["rank"]) == list(range(1, 26))
    assert {"query", "item_id", "grade", "labeler", "pool_line", "p_relevant", "title"} <= set(sheet.columns)
    assert (sheet["grade"] == "").all()
    keys = set(zip(sheet["query"], sheet["item_id"], strict=True))
    assert len(keys) == 25 and keys <= set(zip(hidden["query"], hidden["item_id"], strict=True))
    assert sheet["p_relevant"].between(0, 1).all()


def test_next_to_label_respects_k_and_strategy(shop_with_pool: tuple[Path, Path, pd.DataFrame],
                                               fake_embeddings: None) -> None:
    from shoprank.data.dataset import Dataset

    data, pool_csv, _ = shop_with_pool
    ds = Dataset.load(data)
    pool = read_pool(pool_csv, ds)
    fisher = next_to_label(ds, pool, 10)
    rand = next_to_label(ds, pool, 10, strategy="random", seed=3)
    assert len(fisher.pairs) == len(rand.pairs) == 10 and fisher.relevant_from == 1.5  # grades 0-3
    assert set(fisher.pairs["pool_line"]) != set(rand.pairs["pool_line"])
    assert len(next_to_label(ds, pool.head(4), 10).pairs) == 4  # a pool smaller than k: all of it
    in_code = next_to_label(ds, pool.drop(columns="line").iloc[::-1], 3)  # any index, no line numbers
    assert in_code.pairs["pool_line"].between(2, len(pool) + 1).all()
    with pytest.raises(ShoprankError, match="missing: item_id"):
        next_to_label(ds, pool.drop(columns="item_id"), 3)
    with pytest.raises(ShoprankError, match="k must be"):
        next_to_label(ds, pool, 0)
    with pytest.raises(ShoprankError, match="unknown strategy"):
        next_to_label(ds, pool, 5, strategy="nope")
    judged = ds.judgments[["query", "item_id"]].assign(line=np.arange(len(ds.judgments)) + 2)
    with pytest.raises(ShoprankError, match="already judged"):
        next_to_label(ds, judged, 5)


def test_bad_pool_files_name_the_line_and_column(shop_with_pool: tuple[Path, Path, pd.DataFrame],
                                                 tmp_path: Path) -> None:
    from shoprank.data.dataset import Dataset

    data, pool_csv, _ = shop_with_pool
    ds = Dataset.load(data)
    bad = pd.read_csv(pool_csv).head(5)
    bad.loc[2, "item_id"] = "nope"
    bad.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match=r"p\.csv:4: column 'item_id': 'nope' is not in the catalog"):
        read_pool(tmp_path / "p.csv", ds)
    bad.drop(columns="query").to_csv(tmp_path / "q.csv", index=False)
    with pytest.raises(DataError, match=r"q\.csv:1: column 'query': missing column"):
        read_pool(tmp_path / "q.csv", ds)
    empty = pd.read_csv(pool_csv).head(3)
    empty.loc[1, "query"] = " "
    empty.to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(DataError, match=r"e\.csv:3: column 'query': empty value"):
        read_pool(tmp_path / "e.csv", ds)
    with pytest.raises(ShoprankError, match="no such file"):
        read_pool(tmp_path / "absent.csv", ds)

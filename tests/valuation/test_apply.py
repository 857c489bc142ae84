"""Values -> weights: `apply_values` and `shoprank data weigh` on the built-in shop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.data.splits import click_rows, record_weights
from shoprank.data.synth import SynthConfig, save_synth, synthesize
from shoprank.errors import ShoprankError
from shoprank.valuation.apply import apply_values
from shoprank.valuation.job import run_valuation


@pytest.fixture(scope="module")
def shop() -> Dataset:
    return synthesize(SynthConfig.preset("tiny"))[0]


def test_group_values_weigh_every_record_of_the_group(shop: Dataset) -> None:
    values = pd.DataFrame({"index": [0, 1, 2], "source": ["web", "bot", "app"], "value": [0.1, -0.2, 0.05],
                           "stderr": 0.0, "count": 1})
    new, how = apply_values(shop, values, drop_below=0.0)
    bot = (shop.interactions["source"] == "bot").to_numpy()
    w = record_weights(new.interactions)
    assert how.table == "interactions" and how.groups == ["bot"] and how.n_records == int(bot.sum()) > 0
    assert (w[bot] == 0).all() and (w[~bot] == 1).all()
    half, _ = apply_values(new, values, drop_lowest=0.34, weight=0.5)  # existing lower weights stay
    assert (record_weights(half.interactions)[bot] == 0).all()
    cats = pd.DataFrame({"category": sorted(shop.items["category"].unique()), "value": 1.0})
    cats.loc[0, "value"] = -1.0
    by_cat, how = apply_values(shop, cats, drop_below=0.0)  # an item column: through each event's item
    item_cat = shop.items.set_index("item_id")["category"]
    hit = shop.interactions["item_id"].map(item_cat).eq(cats.loc[0, "category"]).to_numpy()
    assert how.groups == [cats.loc[0, "category"]] and 0 < hit.sum() == how.n_records
    assert (record_weights(by_cat.interactions) == np.where(hit, 0.0, 1.0)).all()
    on_j, how = apply_values(shop, cats, drop_below=0.0, table="judgments")
    assert how.table == "judgments" and how.n_records == int(
        shop.judgments["item_id"].map(item_cat).eq(cats.loc[0, "category"]).sum()) > 0


def test_flagged_groups_of_a_groups_csv(shop: Dataset, tmp_path: Path) -> None:
    """groups.csv of a grouped point valuation: `drop_flagged` weighs every record of the
    groups flagged significantly_low; the file says nothing of its grouping column, so it is asked."""
    items = shop.interactions["item_id"].unique()[:3]
    groups = pd.DataFrame({"group": items, "value": [-1.0, -2.0, 0.5], "n_records": 3,
                           "significantly_low": [True, False, False]})
    groups.to_csv(tmp_path / "groups.csv", index=False)
    new, how = apply_values(shop, pd.read_csv(tmp_path / "groups.csv"), drop_flagged=True, group_by="item_id")
    hit = (shop.interactions["item_id"] == items[0]).to_numpy()
    assert how.groups == [items[0]] and how.n_records == int(hit.sum()) > 0
    assert (record_weights(new.interactions) == np.where(hit, 0.0, 1.0)).all()
    with pytest.raises(ShoprankError, match="which column the groups are of"):
        apply_values(shop, groups, drop_flagged=True)
    with pytest.raises(ShoprankError, match="exactly one rule"):
        apply_values(shop, groups, drop_flagged=True, drop_below=0.0, group_by="item_id")
    with pytest.raises(ShoprankError, match="line 3, field 'significantly_low'"):
        apply_values(shop, groups.assign(significantly_low=["True", "maybe", "False"]), drop_flagged=True,
                     group_by="item_id")
    with pytest.raises(ShoprankError, match="no 'significantly_low' column"):
        apply_values(shop, pd.DataFrame({"item_id": items, "value": 1.0}), drop_flagged=True)


def test_record_values_from_a_real_job_roundtrip(shop: Dataset, fake_embeddings: None, tmp_path: Path) -> None:
    job = run_valuation(shop, "data-oob", task="click", params={"n_estimators": 10}, curves=False, acquisition=False)
    vals = pd.read_csv(job.save(tmp_path / "val")["values"])
    new, how = apply_values(shop, vals, drop_lowest=0.1)
    assert how.table == "interactions" and how.n_selected == round(0.1 * len(vals)) == how.n_records
    low = vals.nsmallest(how.n_selected, "value")
    rows = click_rows(new)
    got = rows.set_index(["user_id", "item_id"])["weight"]
    assert (got.loc[list(zip(low["user_id"], low["item_id"], strict=True))] == 0).all()
    assert int((rows["weight"] == 0).sum()) == how.n_selected
    search = run_valuation(shop, "knn-shapley", task="search", params={"k": 5}, curves=False, acquisition=False)
    sv = search.values_frame()
    new, how = apply_values(shop, sv, drop_below=float(np.median(sv["value"])))
    assert how.table == "judgments" and how.n_records == int((sv["value"] < np.median(sv["value"])).sum())
    assert int((record_weights(new.judgments) == 0).sum()) == how.n_records


def test_bad_values_fail_with_the_line(shop: Dataset) -> None:
    ev = shop.interactions.iloc[:3][["user_id", "item_id", "timestamp", "event"]].copy()
    ev["value"] = [1.0, -1.0, 0.5]
    ev.loc[ev.index[1], "item_id"] = "no-such-item"
    with pytest.raises(ShoprankError, match=r"values line 3: no interactions record with .*item_id=no-such-item"):
        apply_values(shop, ev, drop_below=0.0)
    with pytest.raises(ShoprankError, match="per interactions record; they cannot weigh the judgments"):
        apply_values(shop, ev, drop_below=0.0, table="judgments")
    with pytest.raises(ShoprankError, match="exactly one rule"):
        apply_values(shop, ev, drop_below=0.0, drop_lowest=0.1)
    ev["value"] = ["1", "x", "2"]
    with pytest.raises(ShoprankError, match="values line 3, field 'value'"):
        apply_values(shop, ev, drop_lowest=0.5)
    with pytest.raises(ShoprankError, match="not a column"):
        apply_values(shop, pd.DataFrame({"week": ["2024-01"], "value": [-1.0]}), drop_below=0.0)


def test_weigh_command(tmp_path: Path) -> None:
    ds = save_synth(SynthConfig.preset("tiny"), tmp_path / "shop")
    pd.DataFrame({"source": ["bot", "web"], "value": [-1.0, 1.0]}).to_csv(tmp_path / "values.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "shoprank.cli", "data", "weigh", "--data", str(tmp_path / "shop"),
                        "--values", str(tmp_path / "values.csv"), "--out", str(tmp_path / "weighed"),
                        "--drop-below", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    bot = int((ds.interactions["source"] == "bot").sum())
    assert f"{bot} interactions records now weigh 0" in r.stdout and "lightgbm" in r.stdout
    w = record_weights(Dataset.load(tmp_path / "weighed").interactions)
    assert int((w == 0).sum()) == bot and len(w) == len(ds.interactions)
    r = subprocess.run([sys.executable, "-m", "shoprank.cli", "train", "--data", str(tmp_path / "weighed"),
                        "--task", "recommend", "--model", "bpr", "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "warning: model 'bpr' ignores the `weight` column (" in r.stderr  # training split's records
    assert "runner.py" not in r.stderr  # one plain line, not a source location

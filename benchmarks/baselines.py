"""Every classical baseline on the shared public datasets, beside published numbers.

    python benchmarks/baselines.py [--only amazon,tallrec,homedepot] [--no-record]

- amazon-industrial: full ranking over all 3,686 items on the 4,533 test rows (trained on
  valid.csv only, see ../shared/data/README.md), HR@10 / NDCG@10 overall and cold-start;
- tallrec-movie: test AUC of click models trained on all train rows and on 16/64/256 shots;
- homedepot-search: graded NDCG@10 on held-out queries.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import SHARED, md_table, record

from shoprank.data.loaders import import_dataset
from shoprank.data.splits import DataSplit, click_rows, split_dataset
from shoprank.evaluation.protocol import evaluate_model
from shoprank.models.base import get_model_class

# frozen all-MiniLM-L6-v2, no fine-tuning: the zero-training language-model reference
DENSE = {"cache_dir": str(Path(__file__).resolve().parent / "out" / "cache")}
PUBLISHED_AMAZON = {"SASRec (published)": (0.1088, 0.0806), "GRU4Rec (published)": (0.0999, 0.0669),
                    "TIGER (published)": (0.1321, 0.0908), "MiniOneRec (published)": (0.1586, 0.1167)}
PUBLISHED_TALLREC = {"TALLRec LLaMA-7B+LoRA": (67.24, 67.48, 71.98), "SASRec": (50.43, 50.48, 52.25),
                     "GRU4Rec": (49.07, 49.87, 52.89)}


def fit_eval(split: DataSplit, task: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    model = get_model_class(name)(**params)
    t0 = time.perf_counter()
    model.fit(split.train, split.valid)
    fit_s = time.perf_counter() - t0
    res = evaluate_model(model, split, task, n_bootstrap=1000, progress=False)
    res["fit_s"] = fit_s
    return res


def amazon() -> str:
    ds = import_dataset("amazon-industrial", [SHARED / "amazon-industrial"])
    split = split_dataset(ds)
    rows = []
    for name, params in [("random", {}), ("popularity", {}), ("itemknn", {}), ("transition", {}), ("als", {}),
                         ("bpr", {}), ("sasrec", {}), ("dense", DENSE)]:
        r = fit_eval(split, "recommend", name, params)
        m, cold = r["metrics"], r["slices"]["cold_start"]
        rows.append({"model": name, "HR@10": m["hr@10"], "NDCG@10": m["ndcg@10"],
                     "NDCG@10 95% CI": "[{:.4f}, {:.4f}]".format(*r["ci"]["ndcg@10"]),
                     "cold HR@10": cold["hr@10"], "cold NDCG@10": cold["ndcg@10"], "cold n": cold["n"],
                     "fit s": round(r["fit_s"], 1)})
        print(rows[-1], flush=True)
    for name, (hr, nd) in PUBLISHED_AMAZON.items():
        rows.append({"model": name, "HR@10": hr, "NDCG@10": nd})
    cols = ["model", "HR@10", "NDCG@10", "NDCG@10 95% CI", "cold HR@10", "cold NDCG@10", "cold n", "fit s"]
    return (f"amazon-industrial: full ranking over {ds.n_items} items, {r['n']} test rows "
            "(trained on valid.csv only; published rows trained on the full training file)\n\n"
            + md_table(rows, cols))


def tallrec_split() -> tuple[DataSplit, Any]:
    ds = import_dataset("tallrec", [SHARED / "tallrec-movie", SHARED / "movielens-100k" / "ml-100k.item"])
    split = split_dataset(ds)
    return split, click_rows(split.train)


def few_shot(split: DataSplit, train_rows: Any, shots: int, seed: int) -> DataSplit:
    """k labelled train examples (+ k valid rows for early stopping); every other event stays
    as context (`history`) so that each example keeps its user's history, as in TALLRec's prompts."""
    pick = train_rows.sample(n=shots, random_state=seed)
    inter = split.context.interactions.copy()
    key = inter["user_id"].astype(str) + "\x00" + inter["item_id"].astype(str)
    chosen = set(pick["user_id"].astype(str) + "\x00" + pick["item_id"].astype(str))
    is_train = inter["split"].eq("train") & key.isin(chosen)
    inter.loc[~is_train & inter["split"].isin(["train", "history"]), "split"] = "history"
    inter = inter[inter["split"].isin(["train", "history"])]
    va = split.valid.interactions.sample(n=shots, random_state=seed)
    return DataSplit(split.train.with_tables(interactions=inter), split.valid.with_tables(interactions=va),
                     split.test, split.context, split.kind)


def tallrec() -> str:
    split, train_rows = tallrec_split()
    rows = []
    models = [("random", {}), ("popularity", {}), ("itemknn", {}), ("als", {}), ("lightgbm", {}), ("sasrec", {}),
              ("dense", DENSE)]
    for name, params in models:
        row: dict[str, Any] = {"model": name}
        for shots in (16, 64, 256, None):
            aucs = []
            for seed in (0, 1, 2) if shots else (0,):
                sub = few_shot(split, train_rows, shots, seed) if shots else split
                try:
                    aucs.append(fit_eval(sub, "click", name, params)["auc"] * 100)
                except Exception as e:  # a model that cannot fit on 16 rows is reported, not hidden
                    print(f"{name} shots={shots} seed={seed}: {type(e).__name__}: {e}")
            key = f"{shots or 'all'}"
            if not aucs:
                row[key] = "failed"
            elif all(a == 50.0 for a in aucs):
                row[key] = "50.00 (constant)"  # the model predicts one value for every row
            elif len(aucs) == 1:
                row[key] = f"{aucs[0]:.2f}"
            else:
                row[key] = f"{np.mean(aucs):.2f} ± {np.std(aucs):.2f}"
        rows.append(row)
        print(row, flush=True)
    for name, vals in PUBLISHED_TALLREC.items():
        rows.append({"model": f"{name} (published)", "16": vals[0], "64": vals[1], "256": vals[2]})
    return ("tallrec-movie: test AUC x100 (1,000 test rows); few-shot columns: mean ± std over 3 seeds of the "
            "sample, k train rows plus k valid rows for early stopping (every other event is history context "
            "only); 'all': 8,000 train rows and the 1,000 valid rows, one run\n\n"
            + md_table(rows, ["model", "16", "64", "256", "all"]))


def homedepot() -> str:
    ds = import_dataset("homedepot", [SHARED / "homedepot-search" / "train.csv"])
    split = split_dataset(ds)
    rows = []
    for name, params in [("random", {}), ("bm25", {}), ("dense", DENSE)]:
        r = fit_eval(split, "search", name, params)
        m = r["metrics"]
        rows.append({"model": name, "NDCG@10": m["ndcg@10"],
                     "NDCG@10 95% CI": "[{:.4f}, {:.4f}]".format(*r["ci"]["ndcg@10"]), "queries": r["n"],
                     "fit s": round(r["fit_s"], 1)})
        print(rows[-1], flush=True)
    return ("homedepot-search: graded NDCG@10 over each held-out query's judged products (20% of queries; "
            "gain 2^(grade-1)-1, so grade 1 'irrelevant' earns nothing)\n\n"
            + md_table(rows, ["model", "NDCG@10", "NDCG@10 95% CI", "queries", "fit s"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="amazon,tallrec,homedepot")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    parts = []
    for key in a.only.split(","):
        t0 = time.perf_counter()
        body = {"amazon": amazon, "tallrec": tallrec, "homedepot": homedepot}[key]()
        parts.append(body + f"\n\n({key}: {time.perf_counter() - t0:.0f} s)")
        print(parts[-1], flush=True)
    if not a.no_record:
        record("Classical baselines (benchmarks/baselines.py)", "\n\n".join(parts))


if __name__ == "__main__":
    main()

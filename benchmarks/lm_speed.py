"""Fine-tuning speed per tuning strategy against `full`, in one run, on the same pairs.

    python benchmarks/lm_speed.py [--pairs 512] [--epochs 2] [--no-record]

Search pairs (query -> relevant product) from homedepot-search train queries; every strategy
trains the same pairs with batch 32 and 64 tokens, one thread per process step as the rest
of the suite. Reports trainable parameters, training pairs/s of the last epoch (for `top_k`
the first epoch also fills the frozen-layer cache), wall time, and graded NDCG@10 on the
held-out queries after training (quality at an equal budget of pairs).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import SHARED, md_table, record

from shoprank.data.loaders import import_dataset
from shoprank.data.schema import Col
from shoprank.data.splits import split_dataset
from shoprank.evaluation.protocol import evaluate_model
from shoprank.models.base import get_model_class

STRATEGIES: list[tuple[str, dict[str, Any]]] = [
    ("full", {}), ("top_k", {"k": 2}), ("top_k", {"k": 1}), ("lora", {"r": 8}), ("adalora", {}), ("ia3", {}),
    ("prefix", {}), ("head", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--queries", type=int, default=300, help="held-out queries for quality")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    body = speed(a.pairs, a.epochs, a.queries)
    print(body)
    if not a.no_record:
        record("LM fine-tuning speed per strategy (benchmarks/lm_speed.py)", body)


def speed(pairs: int = 512, epochs: int = 2, queries: int = 300) -> str:
    """The speed table: every strategy on the same pairs, one thread, `full` first."""
    import torch

    torch.set_num_threads(1)
    a = argparse.Namespace(pairs=pairs, epochs=epochs, queries=queries)
    ds = import_dataset("homedepot", [SHARED / "homedepot-search" / "train.csv"])
    sp = split_dataset(ds)
    # a small catalog: the products judged for the sampled train and test queries
    rng = np.random.default_rng(0)
    tq = rng.permutation(sp.train.judgments[Col.QUERY].unique())
    train_j = sp.train.judgments[sp.train.judgments[Col.QUERY].isin(tq[: a.pairs // 2])]
    test_q = rng.permutation(sp.test.judgments[Col.QUERY].unique())[: a.queries]
    test_j = sp.test.judgments[sp.test.judgments[Col.QUERY].isin(test_q)]
    keep = set(train_j[Col.ITEM_ID]) | set(test_j[Col.ITEM_ID])
    items = ds.items[ds.items[Col.ITEM_ID].isin(keep)].reset_index(drop=True)
    small = ds.with_tables(items=items, judgments=ds.judgments.iloc[0:0])
    sp.train = small.with_tables(judgments=train_j.reset_index(drop=True))
    sp.valid = small.with_tables(judgments=test_j.iloc[0:0])
    sp.test = small.with_tables(judgments=test_j.reset_index(drop=True))
    sp.context = small
    rows = []
    for name, cfg in STRATEGIES:
        m = get_model_class("lm")(tuning=name, tuning_config=cfg, epochs=a.epochs, patience=a.epochs,
                                  batch_size=32, max_length=64, max_train_pairs=a.pairs, num_threads=1,
                                  verbose=False)
        t0 = time.perf_counter()
        m.fit(sp.train, sp.valid)
        wall = time.perf_counter() - t0
        res = evaluate_model(m, sp, "search", n_bootstrap=500, progress=False)
        eps = [h for h in m.history_ if "pairs_per_s" in h]
        rows.append({"strategy": f"{name} {cfg or ''}".strip(), "trainable params": m.n_trainable_,
                     "pairs/s (last epoch)": round(eps[-1]["pairs_per_s"], 1),
                     "wall s": round(wall, 1), "NDCG@10": res["metrics"]["ndcg@10"]})
        print(rows[-1], flush=True)
    full = rows[0]["pairs/s (last epoch)"]
    for r in rows:
        r["x full"] = round(r["pairs/s (last epoch)"] / full, 2)
    return (f"Fine-tuning speed on {a.pairs} homedepot search pairs, {len(items)} products, batch 32, 64 tokens, "
            f"{a.epochs} epochs, 1 thread; NDCG@10 on {len(test_q)} held-out queries\n\n"
            + md_table(rows, ["strategy", "trainable params", "pairs/s (last epoch)", "x full", "wall s", "NDCG@10"]))


if __name__ == "__main__":
    main()

"""Full-ranking evaluation memory and speed: 100k items x 10k users on this machine.

    python benchmarks/eval_memory.py [--items 100000] [--users 10000] [--batch 512] [--no-record]

Runs the real streaming evaluator with the `random` ranker in a fresh process and reports
peak resident memory (ru_maxrss) beside the size a dense users x items score matrix would take.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

from _common import md_table, record

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import pandas as pd
    from shoprank.data.dataset import Dataset
    from shoprank.evaluation.ranking import evaluate_full_ranking
    from shoprank.models.base import UserBatch, get_model_class

    n_items, n_users, batch = (int(x) for x in sys.argv[1:4])
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "title": ["x"] * n_items})
    ds = Dataset.from_frames("mem", items)
    model = get_model_class("random")(seed=0).fit(ds)
    rng = np.random.default_rng(1)
    users = UserBatch([str(i) for i in range(n_users)], [rng.integers(0, n_items, 20) for _ in range(n_users)])
    targets = [rng.integers(0, n_items, 2) for _ in range(n_users)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rep = evaluate_full_ranking(model, users, targets, ks=(10, 20), exclude=users.histories,
                                batch_size=batch, item_popularity=rng.random(n_items), n_bootstrap=1000,
                                progress=True)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": rss / 1024, "rss_before_mb": base / 1024, "seconds": secs,
                      "users_per_s": n_users / secs, "hr@10": rep.metrics["hr@10"]}))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(a.items), str(a.users), str(a.batch)],
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    dense_mb = a.items * a.users * 4 / 2**20
    row = {"items": a.items, "users": a.users, "batch": a.batch, "peak RSS MiB": round(out["peak_rss_mb"]),
           "dense score matrix MiB": round(dense_mb), "seconds": round(out["seconds"], 1),
           "users/s": round(out["users_per_s"]), "limit MiB": 4096}
    body = ("Streaming full-ranking evaluation (`random` ranker, top-20, history excluded, 1000 bootstrap "
            "resamples)\n\n" + md_table([row], list(row)))
    print(body)
    if out["peak_rss_mb"] >= 4096:
        raise SystemExit("peak memory above 4 GiB")
    if not a.no_record:
        record("Full-ranking evaluation memory (benchmarks/eval_memory.py)", body)


if __name__ == "__main__":
    main()

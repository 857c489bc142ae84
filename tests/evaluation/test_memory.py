"""Full-ranking evaluation keeps memory bounded by one batch, not by users x items.

Each check runs in a fresh interpreter so that ru_maxrss (peak resident memory) belongs to
the evaluation alone; tracemalloc (which numpy reports its buffers to) gives the peak of
array allocations, a sharper check that no users x items matrix is ever built.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    import numpy as np
    from shoprank.evaluation import evaluate_full_ranking
    from shoprank.models.base import Ranker, UserBatch

    n_items, n_users, batch = (int(x) for x in sys.argv[1:4])

    class RandomModel(Ranker):
        tasks = frozenset({"recommend"})

        def __init__(self, n_items):
            super().__init__()
            self.n_items_ = n_items
            self.fitted_ = True
            self.rng = np.random.default_rng(0)

        def score_users(self, users):
            return self.rng.random((len(users), self.n_items_), dtype=np.float32)

    rng = np.random.default_rng(1)
    users = UserBatch([str(i) for i in range(n_users)], [rng.integers(0, n_items, 20) for _ in range(n_users)])
    targets = [rng.integers(0, n_items, 2) for _ in range(n_users)]
    pop = rng.random(n_items)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    rep = evaluate_full_ranking(
        RandomModel(n_items), users, targets, ks=(10, 20), exclude=users.histories,
        batch_size=batch, item_popularity=pop, n_bootstrap=200, progress=False,
    )
    _, peak = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rss_mb": rss / 1024, "base_mb": base / 1024, "traced_peak_mb": peak / 2**20,
                      "n": rep.n_users, "hr": rep.metrics["hr@10"]}))
    """
)


def _run(n_items: int, n_users: int, batch: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n_items), str(n_users), str(batch)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_memory_bounded_small() -> None:
    n_items, n_users, batch = 20_000, 2_000, 128
    out = _run(n_items, n_users, batch)
    assert out["n"] == n_users
    assert out["hr"] < 0.01  # random scores: ~10 * 2 / 20k
    full_matrix_mb = n_items * n_users * 4 / 2**20  # 153 MiB of float32 scores
    # one batch: scores + copy for masking + top_k temporaries (-scores, int64 argpartition)
    batch_mb = batch * n_items * (4 + 4 + 4 + 8) / 2**20  # ~49 MiB
    assert out["traced_peak_mb"] < min(full_matrix_mb * 0.75, batch_mb * 1.5)
    assert out["rss_mb"] < 4096


@pytest.mark.slow
def test_memory_bounded_100k_items_10k_users() -> None:
    out = _run(100_000, 10_000, 512)
    assert out["n"] == 10_000
    assert out["rss_mb"] < 4096
    assert out["traced_peak_mb"] < 1024  # a full score matrix alone would be 3.7 GiB

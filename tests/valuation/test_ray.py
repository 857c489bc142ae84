"""Ray backend: a local 2-worker cluster gives the same values as joblib.

Part of `make test` (ray comes with the dev extra): starting Ray takes ~14 s on 2 cores and
the test ~23 s in all.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from shoprank.valuation import DataOOB, KNNShapley, MaxUpdates, TMCShapley, ValuationData
from shoprank.valuation.parallel import RayBackend

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _data() -> ValuationData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] > 0).astype(int)
    xv = rng.normal(size=(60, 4))
    return ValuationData(x, y, xv, (xv[:, 0] > 0).astype(int), groups=np.repeat(list("abcd"), 30))


def test_ray_matches_joblib(cluster: None) -> None:
    from sklearn.linear_model import LogisticRegression

    d = _data()
    assert RayBackend().n_workers == 2
    # joblib with threads: the same task split as processes, without a second pool to start
    knn = [KNNShapley(k=3, chunk_size=16, backend=b, n_jobs=2).fit(d).values for b in ("threads", "ray")]
    assert np.allclose(knn[0], knn[1], atol=1e-12)
    oob = [DataOOB(n_estimators=10, backend=b, n_jobs=2).fit(d).values for b in ("threads", "ray")]
    assert np.allclose(oob[0], oob[1])
    tmc = [TMCShapley(LogisticRegression(), stopping=MaxUpdates(8), batch_size=2, backend=b, n_jobs=2).fit(d).result
           for b in ("threads", "ray")]
    assert np.allclose(tmc[0].values, tmc[1].values, atol=1e-12) and tmc[1].n_updates == 8

"""Where valuation work runs: in process, on local processes (joblib) or on a Ray cluster.

Why a thin layer of our own: methods express their work as a list of independent tasks
with one shared, read-only object (the utility with its data, or the embeddings), and
merge the results in a fixed order. The answer then never depends on the backend or the
number of workers, only on the seeds, and Ray is imported only when asked for.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from shoprank.errors import ShoprankError

TaskFn = Callable[[Any, Any], Any]


class Backend(ABC):
    """Runs `fn(shared, item)` for every item; results in item order."""

    n_workers: int = 1

    @abstractmethod
    def map(self, fn: TaskFn, items: Sequence[Any], shared: Any = None) -> list[Any]: ...


class SequentialBackend(Backend):
    """In this process: no pickling, and a utility's cache fills in place."""

    def map(self, fn: TaskFn, items: Sequence[Any], shared: Any = None) -> list[Any]:
        return [fn(shared, it) for it in items]


class JoblibBackend(Backend):
    """Local processes (loky) or threads via joblib."""

    def __init__(self, n_jobs: int = -1, prefer: str = "processes") -> None:
        self.n_jobs = n_jobs
        self.prefer = prefer
        self.n_workers = (os.cpu_count() or 1) if n_jobs < 0 else max(1, n_jobs)

    def map(self, fn: TaskFn, items: Sequence[Any], shared: Any = None) -> list[Any]:
        from joblib import Parallel, delayed

        if self.n_workers == 1 or len(items) <= 1:
            return [fn(shared, it) for it in items]
        par = Parallel(n_jobs=self.n_jobs, prefer=self.prefer)
        return list(par(delayed(fn)(shared, it) for it in items))


class RayBackend(Backend):
    """Tasks on a Ray cluster: the shared object goes to the object store once per call.

    Connects to `address` (e.g. "ray://head:10001" or "auto"); without one, uses the Ray
    runtime already initialised in this process or starts a local one.
    """

    def __init__(self, address: str | None = None, **init_kwargs: Any) -> None:
        self.address = address
        self.init_kwargs = init_kwargs

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ShoprankError("backend 'ray' needs the ray package: pip install 'shoprank[ray]'") from None
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            ray.init(address=self.address, **kw)
        return ray

    @property
    def n_workers(self) -> int:  # type: ignore[override]
        return max(1, int(self._ray().cluster_resources().get("CPU", 1)))

    def map(self, fn: TaskFn, items: Sequence[Any], shared: Any = None) -> list[Any]:
        ray = self._ray()
        remote = ray.remote(num_cpus=1)(fn)
        ref = ray.put(shared)
        return list(ray.get([remote.remote(ref, it) for it in items]))


def get_backend(backend: str | Backend | None = None, *, n_jobs: int = 1, address: str | None = None) -> Backend:
    """`None`/"joblib": joblib with `n_jobs` (in process when 1); "ray", or any `address`:
    Ray; "sequential": in process; a Backend instance is returned as is."""
    if isinstance(backend, Backend):
        return backend
    if backend == "ray" or (backend is None and address):
        return RayBackend(address)
    if backend in (None, "joblib", "loky"):
        return SequentialBackend() if n_jobs == 1 else JoblibBackend(n_jobs)
    if backend == "threads":
        return JoblibBackend(n_jobs, prefer="threads")
    if backend == "sequential":
        return SequentialBackend()
    raise ShoprankError(f"unknown backend {backend!r}: joblib, threads, ray or sequential")

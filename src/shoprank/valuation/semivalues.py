"""Semivalues over a utility: exact enumeration, TMC-Shapley, Beta-Shapley, MSR-Banzhaf,
leave-one-out.

Why these: when retraining per coalition is affordable (players are groups such as sources,
categories, labelers or time windows, or a few hundred points with a fast model), the
retraining-based values are the reference; they differ only in how they weigh coalition
sizes. A semivalue is phi_i = sum_k p(k) E_{|S|=k, i not in S}[u(S + i) - u(S)] with p a
distribution over sizes 0..n-1: Shapley p(k) = 1/n, Banzhaf p(k) = C(n-1,k)/2^(n-1),
Beta(a, b) p(k) = C(n-1,k) B(k+b, n-1-k+a)/B(a, b) (Kwon and Zou 2022; Beta(16, 1) weighs
small coalitions, which is where one noisy group hurts most).

Monte Carlo methods work in rounds: each round runs one batch of samples per worker
(seeded from `SeedSequence(seed)` by round and task), merges the sums in task order, and
asks the stopping rule. The answer depends on the seed and batch settings only, never on
the backend; coalition scores computed in workers come back into the utility's cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import numpy as np
from scipy.special import betaln, gammaln

from shoprank.errors import ShoprankError
from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.parallel import Backend, get_backend
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.samplers import (
    AntitheticPermutationSampler,
    PermutationSampler,
    Sampler,
    UniformSampler,
)
from shoprank.valuation.stopping import StoppingCriterion, default_stopping
from shoprank.valuation.utility import ModelUtility, Scorer, Utility, ValuationData

MAX_EXACT_PLAYERS = 20

# ---------------------------------------------------------------------------------------
# Size distributions p(k), k = 0..n-1
# ---------------------------------------------------------------------------------------


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def shapley_sizes(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def banzhaf_sizes(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return np.exp(_log_comb(n - 1, k) - (n - 1) * np.log(2.0))


def beta_sizes(n: int, alpha: float = 16.0, beta: float = 1.0) -> np.ndarray:
    """p(k) of Beta(alpha, beta)-Shapley; Beta(1, 1) is Shapley."""
    k = np.arange(n, dtype=np.float64)
    logp = _log_comb(n - 1, k) + betaln(k + beta, n - 1 - k + alpha) - betaln(alpha, beta)
    p = np.exp(logp)
    return p / p.sum()


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def as_utility(data: Any, model: Any, scorer: str | Scorer | Callable[..., float]) -> Utility:
    """A Utility as given, or a ModelUtility built from ValuationData and the model."""
    if isinstance(data, Utility):
        return data
    if isinstance(data, ValuationData):
        if model is None:
            raise ShoprankError("this method retrains a model per coalition: pass model=...")
        return ModelUtility(model, data, scorer)
    raise ShoprankError(f"fit needs a Utility or ValuationData, got {type(data).__name__}")


def _new_entries(u: Utility, n_before: int) -> dict[bytes, float]:
    items = list(u.cache.items())
    return dict(items[n_before:])


def _eval_task(u: Utility, coalitions: list[np.ndarray]) -> tuple[list[float], dict[bytes, float]]:
    n0 = len(u.cache)
    vals = [u(c) for c in coalitions]
    return vals, _new_entries(u, n0)


def evaluate_many(u: Utility, coalitions: list[np.ndarray], backend: Backend) -> np.ndarray:
    """u(S) for many coalitions, split over the backend's workers; fills u's cache."""
    n_tasks = max(1, min(backend.n_workers, len(coalitions)))
    parts = [coalitions[i::n_tasks] for i in range(n_tasks)]
    res = backend.map(_eval_task, parts, shared=u)
    out = np.zeros(len(coalitions))
    for t, (vals, entries) in enumerate(res):
        out[t::n_tasks] = vals
        u.update_cache(entries)
    return out


def _bits(n: int) -> np.ndarray:
    """(2^n, n) membership of every coalition, coalition m holds player i iff bit i of m."""
    m = np.arange(1 << n, dtype=np.int64)
    return ((m[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_semivalue(u: Utility, sizes: Callable[[int], np.ndarray], *, backend: Backend | None = None,
                    algorithm: str = "exact") -> ValuationResult:
    """Every coalition evaluated once (2^n utility calls): for n up to 20 and for tests."""
    n = u.n_players
    if n > MAX_EXACT_PLAYERS:
        raise ShoprankError(f"exact values need 2^n coalitions; n={n} > {MAX_EXACT_PLAYERS}")
    member = _bits(n)
    coalitions = [np.flatnonzero(row) for row in member]
    vals = evaluate_many(u, coalitions, backend or get_backend())
    size = member.sum(1)
    p = sizes(n)
    w = p / np.exp(_log_comb(n - 1, np.arange(n, dtype=np.float64)))  # weight of one coalition of size k
    out = np.zeros(n)
    masks = np.arange(1 << n, dtype=np.int64)
    for i in range(n):
        without = masks[~member[:, i]]
        out[i] = float(np.sum(w[size[without]] * (vals[without | (1 << i)] - vals[without])))
    return ValuationResult(out, names=u.names, algorithm=algorithm, n_updates=1 << n)


# ---------------------------------------------------------------------------------------
# Monte Carlo tasks (module level: picklable for joblib and Ray)
# ---------------------------------------------------------------------------------------


def _sample_rng(seed: int, j: int) -> np.random.Generator:
    """The generator of the j-th sample of a run: the same numbers whatever the worker."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(j,)))


def _permutation_task(u: Utility, item: tuple[Sampler, np.ndarray, range, int, float, float]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, dict[bytes, float]]:
    sampler, weights, draws, seed, u_full, rtol = item
    n = u.n_players
    n0 = len(u.cache)
    s, sq, c = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    done = 0
    for j in draws:
        for perm in sampler.sample(n, _sample_rng(seed, j)):
            prev = u(perm[:0])
            truncated = False
            for pos, i in enumerate(perm):
                if truncated:
                    marg = 0.0
                else:
                    cur = u(perm[: pos + 1])
                    marg = cur - prev
                    prev = cur
                    if rtol >= 0 and abs(cur - u_full) <= rtol * abs(u_full):
                        truncated = True
                x = weights[pos] * marg
                s[i] += x
                sq[i] += x * x
                c[i] += 1
            done += 1
    return s, sq, c, done, _new_entries(u, n0)


def _subset_task(u: Utility, item: tuple[Sampler, range, int]) -> tuple[np.ndarray, int, dict[bytes, float]]:
    """MSR: per player, [sum, sumsq, count] of u(S) with the player in S and not in S."""
    sampler, draws, seed = item
    n = u.n_players
    n0 = len(u.cache)
    acc = np.zeros((6, n))  # in: sum, sq, count; out: sum, sq, count
    done = 0
    for j in draws:
        for subset in sampler.sample(n, _sample_rng(seed, j)):
            v = u(subset)
            inside = np.zeros(n, dtype=bool)
            inside[subset] = True
            acc[0, inside] += v
            acc[1, inside] += v * v
            acc[2, inside] += 1
            acc[3, ~inside] += v
            acc[4, ~inside] += v * v
            acc[5, ~inside] += 1
            done += 1
    return acc, done, _new_entries(u, n0)


def _draws(rnd: int, task: int, n_tasks: int, batch: int) -> range:
    """Global sample numbers of one task in one round (consecutive over tasks and rounds)."""
    start = (rnd * n_tasks + task) * batch
    return range(start, start + batch)


class _MonteCarlo(Valuation):
    """Shared settings and the round loop of the Monte Carlo methods."""

    level = "players"

    def __init__(self, model: Any = None, scorer: str | Scorer | Callable[..., float] = "accuracy", *,
                 stopping: StoppingCriterion | None = None, batch_size: int | None = None, seed: int = 0,
                 backend: str | Backend | None = None, n_jobs: int = 1) -> None:
        self.model, self.scorer, self.stopping = model, scorer, stopping
        self.batch_size, self.seed, self.backend, self.n_jobs = batch_size, seed, backend, n_jobs

    def _setup(self, data: Any) -> tuple[Utility, Backend, StoppingCriterion, int, int]:
        u = as_utility(data, self.model, self.scorer)
        be = get_backend(self.backend, n_jobs=self.n_jobs)
        stop = self.stopping if self.stopping is not None else default_stopping(u.n_players)
        stop.reset()
        n_tasks = max(1, be.n_workers)
        batch = self.batch_size or max(1, 8 // n_tasks)
        self.utility_ = u
        return u, be, stop, n_tasks, batch


class _PermutationSemivalue(_MonteCarlo):
    """Permutation sampling: the marginal at prefix size k, weighted n p(k), is an unbiased
    sample of the semivalue; after truncation the remaining marginals count as 0 (TMC)."""

    truncation_rtol: float = 0.0
    antithetic: bool = False

    def _sizes(self, n: int) -> np.ndarray:
        return shapley_sizes(n)

    def fit(self, data: Any) -> Self:
        u, be, stop, n_tasks, batch = self._setup(data)
        n = u.n_players
        weights = n * self._sizes(n)
        sampler: Sampler = AntitheticPermutationSampler() if self.antithetic else PermutationSampler()
        rtol = self.truncation_rtol if self.truncation_rtol is not None else -1.0
        u_full = u(np.arange(n))
        s, sq, c = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        done, rnd = 0, 0
        while True:
            items = [(sampler, weights, _draws(rnd, t, n_tasks, batch), self.seed, u_full, rtol)
                     for t in range(n_tasks)]
            for ps, psq, pc, pd, entries in be.map(_permutation_task, items, shared=u):
                s += ps
                sq += psq
                c += pc
                done += pd
                u.update_cache(entries)
            rnd += 1
            res = ValuationResult.from_sums(s, sq, c, names=u.names, algorithm=self.name, n_updates=done)
            if stop(res):
                break
        res.extra = {"rounds": rnd, "utility_evaluations": len(u.cache), "u_full": u_full}
        self.result_ = res
        return self


@register_method("tmc-shapley")
class TMCShapley(_PermutationSemivalue):
    """Truncated Monte Carlo Shapley (Ghorbani and Zou 2019) over the utility's players:
    a permutation stops being evaluated once the prefix scores within `truncation_rtol` of
    the full coalition (set it to None for plain permutation sampling)."""

    def __init__(self, model: Any = None, scorer: str | Scorer | Callable[..., float] = "accuracy", *,
                 truncation_rtol: float | None = 0.01, antithetic: bool = False,
                 stopping: StoppingCriterion | None = None, batch_size: int | None = None, seed: int = 0,
                 backend: str | Backend | None = None, n_jobs: int = 1) -> None:
        super().__init__(model, scorer, stopping=stopping, batch_size=batch_size, seed=seed,
                         backend=backend, n_jobs=n_jobs)
        self.truncation_rtol = truncation_rtol  # type: ignore[assignment]
        self.antithetic = antithetic


@register_method("beta-shapley")
class BetaShapley(_PermutationSemivalue):
    """Beta(alpha, beta)-Shapley (Kwon and Zou 2022), by importance-weighted permutations."""

    def __init__(self, model: Any = None, scorer: str | Scorer | Callable[..., float] = "accuracy", *,
                 alpha: float = 16.0, beta: float = 1.0, truncation_rtol: float | None = None,
                 antithetic: bool = False, stopping: StoppingCriterion | None = None,
                 batch_size: int | None = None, seed: int = 0, backend: str | Backend | None = None,
                 n_jobs: int = 1) -> None:
        super().__init__(model, scorer, stopping=stopping, batch_size=batch_size, seed=seed,
                         backend=backend, n_jobs=n_jobs)
        self.alpha, self.beta = alpha, beta
        self.truncation_rtol = truncation_rtol  # type: ignore[assignment]
        self.antithetic = antithetic

    def _sizes(self, n: int) -> np.ndarray:
        return beta_sizes(n, self.alpha, self.beta)


@register_method("msr-banzhaf")
class MSRBanzhaf(_MonteCarlo):
    """Banzhaf values by Maximum Sample Reuse (Wang and Jia 2023): every uniform random
    coalition is evaluated once and updates every player, as 'in' or 'out'."""

    def fit(self, data: Any) -> Self:
        u, be, stop, n_tasks, batch = self._setup(data)
        n = u.n_players
        sampler = UniformSampler()
        acc = np.zeros((6, n))
        done, rnd = 0, 0
        while True:
            items = [(sampler, _draws(rnd, t, n_tasks, batch), self.seed) for t in range(n_tasks)]
            for pacc, pd, entries in be.map(_subset_task, items, shared=u):
                acc += pacc
                done += pd
                u.update_cache(entries)
            rnd += 1
            res = _msr_result(acc, u.names, self.name, done)
            if stop(res):
                break
        res.extra = {"rounds": rnd, "utility_evaluations": len(u.cache)}
        self.result_ = res
        return self


def _msr_result(acc: np.ndarray, names: np.ndarray, algorithm: str, done: int) -> ValuationResult:
    def mean_var(s: np.ndarray, sq: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(c > 0, s / np.maximum(c, 1), 0.0)
            v = np.where(c > 1, (sq - c * m * m) / np.maximum(c - 1, 1), np.inf)
        return m, np.maximum(v, 0.0)

    m_in, v_in = mean_var(acc[0], acc[1], acc[2])
    m_out, v_out = mean_var(acc[3], acc[4], acc[5])
    counts = (acc[2] + acc[5]).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        se2 = v_in / np.maximum(acc[2], 1) + v_out / np.maximum(acc[5], 1)
    var = np.where(np.isfinite(se2), se2 * np.maximum(counts, 1), 0.0)
    counts = np.where(np.isfinite(se2), counts, 0)  # a side never seen: not yet estimated
    return ValuationResult(m_in - m_out, variances=var, counts=counts, names=names, algorithm=algorithm,
                           n_updates=done)


# ---------------------------------------------------------------------------------------
# Exact and leave-one-out
# ---------------------------------------------------------------------------------------


class _Exact(Valuation):
    level = "players"

    def __init__(self, model: Any = None, scorer: str | Scorer | Callable[..., float] = "accuracy", *,
                 backend: str | Backend | None = None, n_jobs: int = 1) -> None:
        self.model, self.scorer, self.backend, self.n_jobs = model, scorer, backend, n_jobs

    def _sizes(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def fit(self, data: Any) -> Self:
        u = as_utility(data, self.model, self.scorer)
        self.utility_ = u
        self.result_ = exact_semivalue(u, self._sizes, backend=get_backend(self.backend, n_jobs=self.n_jobs),
                                       algorithm=self.name)
        return self


@register_method("exact-shapley")
class ExactShapley(_Exact):
    """Shapley values by enumerating all 2^n coalitions (groups, toy games)."""

    def _sizes(self, n: int) -> np.ndarray:
        return shapley_sizes(n)


@register_method("exact-banzhaf")
class ExactBanzhaf(_Exact):
    """Banzhaf values by enumerating all 2^n coalitions."""

    def _sizes(self, n: int) -> np.ndarray:
        return banzhaf_sizes(n)


@register_method("exact-beta-shapley")
class ExactBetaShapley(_Exact):
    """Beta(alpha, beta)-Shapley by enumeration."""

    def __init__(self, model: Any = None, scorer: str | Scorer | Callable[..., float] = "accuracy", *,
                 alpha: float = 16.0, beta: float = 1.0, backend: str | Backend | None = None,
                 n_jobs: int = 1) -> None:
        super().__init__(model, scorer, backend=backend, n_jobs=n_jobs)
        self.alpha, self.beta = alpha, beta

    def _sizes(self, n: int) -> np.ndarray:
        return beta_sizes(n, self.alpha, self.beta)


@register_method("loo")
class LeaveOneOut(_Exact):
    """u(all) - u(all but i): n + 1 retrainings; blind to redundant players (two copies
    of one good source both get about 0), which is why the semivalues exist."""

    def fit(self, data: Any) -> Self:
        u = as_utility(data, self.model, self.scorer)
        self.utility_ = u
        n = u.n_players
        full = np.arange(n)
        coalitions = [full] + [np.delete(full, i) for i in range(n)]
        vals = evaluate_many(u, coalitions, get_backend(self.backend, n_jobs=self.n_jobs))
        self.result_ = ValuationResult(vals[0] - vals[1:], names=u.names, algorithm=self.name, n_updates=n + 1)
        return self

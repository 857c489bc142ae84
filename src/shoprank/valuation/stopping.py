"""Stopping rules for Monte Carlo valuation, combinable with `|`, `&` and `~`.

Why: a Monte Carlo estimate is never "done"; a user says when it is good enough (a number
of samples, a time budget, a standard error) and usually wants "converged OR out of time".
A rule looks at the running `ValuationResult` after each round and answers True to stop.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from shoprank.valuation.result import ValuationResult


class StoppingCriterion(ABC):
    """Callable `rule(result) -> bool` (True: stop). `reset()` is called when a run starts."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget state from an earlier run (start times, check counts)."""

    @abstractmethod
    def check(self, result: ValuationResult) -> bool: ...

    def __call__(self, result: ValuationResult) -> bool:
        return self.check(result)

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _Combined(self, other, any, "|")

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _Combined(self, other, all, "&")

    def __invert__(self) -> StoppingCriterion:
        return _Not(self)


class _Combined(StoppingCriterion):
    def __init__(self, a: StoppingCriterion, b: StoppingCriterion, how: Callable[[list[bool]], bool], sym: str) -> None:
        self.a, self.b, self.how, self.sym = a, b, how, sym

    def reset(self) -> None:
        self.a.reset()
        self.b.reset()

    def check(self, result: ValuationResult) -> bool:
        # evaluate both so that stateful rules (MaxChecks) advance consistently
        return self.how([self.a.check(result), self.b.check(result)])

    def __repr__(self) -> str:
        return f"({self.a!r} {self.sym} {self.b!r})"


class _Not(StoppingCriterion):
    def __init__(self, a: StoppingCriterion) -> None:
        self.a = a

    def reset(self) -> None:
        self.a.reset()

    def check(self, result: ValuationResult) -> bool:
        return not self.a.check(result)

    def __repr__(self) -> str:
        return f"~{self.a!r}"


class MaxUpdates(StoppingCriterion):
    """Stop after `n` samples in total (permutations, subsets or bags)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def check(self, result: ValuationResult) -> bool:
        return result.n_updates >= self.n

    def __repr__(self) -> str:
        return f"MaxUpdates({self.n})"


class MinUpdates(StoppingCriterion):
    """Stop once every player has at least `n` samples of its own."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def check(self, result: ValuationResult) -> bool:
        return bool(len(result) == 0 or result.counts.min() >= self.n)

    def __repr__(self) -> str:
        return f"MinUpdates({self.n})"


class MaxChecks(StoppingCriterion):
    """Stop at the `n`-th check (one check per round of parallel work)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._checks = 0

    def reset(self) -> None:
        self._checks = 0

    def check(self, result: ValuationResult) -> bool:
        self._checks += 1
        return self._checks >= self.n

    def __repr__(self) -> str:
        return f"MaxChecks({self.n})"


class MaxTime(StoppingCriterion):
    """Stop once `seconds` have passed since the run started (since `reset`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._t0: float | None = None

    def reset(self) -> None:
        self._t0 = time.monotonic()

    def check(self, result: ValuationResult) -> bool:
        if self._t0 is None:
            self._t0 = time.monotonic()
        return time.monotonic() - self._t0 >= self.seconds

    def __repr__(self) -> str:
        return f"MaxTime({self.seconds})"


class AbsoluteStandardError(StoppingCriterion):
    """Stop when a `fraction` of players have stderr <= `threshold` (after `burn_in`
    samples each, since a variance from two samples means little)."""

    def __init__(self, threshold: float, fraction: float = 1.0, burn_in: int = 4) -> None:
        self.threshold, self.fraction, self.burn_in = float(threshold), float(fraction), int(burn_in)

    def check(self, result: ValuationResult) -> bool:
        if not len(result):
            return True
        ok = (result.stderr <= self.threshold) & (result.counts >= self.burn_in)
        return bool(np.mean(ok) >= self.fraction)

    def __repr__(self) -> str:
        return f"AbsoluteStandardError({self.threshold}, fraction={self.fraction})"


class RelativeStandardError(StoppingCriterion):
    """Stop when every stderr is below `rtol` times the spread (std) of the values: the
    ranking of players is then stable even if the values' scale is unknown in advance."""

    def __init__(self, rtol: float = 0.05, burn_in: int = 4) -> None:
        self.rtol, self.burn_in = float(rtol), int(burn_in)

    def check(self, result: ValuationResult) -> bool:
        if len(result) < 2 or result.counts.min() < self.burn_in:
            return False
        scale = float(np.std(result.values)) or 1.0
        return bool(np.all(result.stderr <= self.rtol * scale))

    def __repr__(self) -> str:
        return f"RelativeStandardError({self.rtol})"


def default_stopping(n_players: int) -> StoppingCriterion:
    """A reasonable default: converged to 5% of the value spread, or 200 samples per player, or 5 minutes."""
    return RelativeStandardError(0.05) | MaxUpdates(max(200, 20 * n_players)) | MaxTime(300)

"""Samplers: which coalitions a Monte Carlo method evaluates.

Why separate from the methods: the estimator (Shapley, Banzhaf, Beta) fixes the weights,
the sampler fixes how coalitions are drawn; pyDVL's design lets one swap either. Each call
to `sample` uses the generator it is given, so that parallel tasks seeded from one
`SeedSequence` give the same numbers on any backend and any number of workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Sampler(ABC):
    """Draws samples over `n` players; one call may return several (antithetic pairs)."""

    kind: str = ""  # "permutation" or "subset"

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PermutationSampler(Sampler):
    """Uniform random permutations (Shapley-type estimators, TMC)."""

    kind = "permutation"

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [rng.permutation(n)]


class AntitheticPermutationSampler(Sampler):
    """A permutation and its reverse: negatively correlated marginals, lower variance."""

    kind = "permutation"

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        p = rng.permutation(n)
        return [p, p[::-1].copy()]


class UniformSampler(Sampler):
    """Subsets with every player in independently with probability 1/2 (MSR-Banzhaf)."""

    kind = "subset"

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.flatnonzero(rng.random(n) < 0.5)]


class AntitheticUniformSampler(Sampler):
    """A uniform subset and its complement."""

    kind = "subset"

    def sample(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        m = rng.random(n) < 0.5
        return [np.flatnonzero(m), np.flatnonzero(~m)]


SAMPLERS: dict[str, type[Sampler]] = {
    "permutation": PermutationSampler,
    "antithetic": AntitheticPermutationSampler,
    "uniform": UniformSampler,
    "msr": UniformSampler,
    "antithetic-uniform": AntitheticUniformSampler,
}

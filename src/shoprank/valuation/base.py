"""The base class of every valuation method and the registry that finds them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from shoprank.errors import NotFittedError, ShoprankError
from shoprank.valuation.result import ValuationResult

METHODS: dict[str, type[Valuation]] = {}
# methods whose modules import torch: imported on first use, so listing methods stays light
LAZY_METHODS: dict[str, str] = {"influence": "influence", "tracin": "tracin", "datainf": "datainf"}
V = TypeVar("V", bound="type[Valuation]")


class Valuation(ABC):
    """scikit-learn style: the constructor stores settings, `fit(data)` computes the values
    into `result_` and returns self."""

    name: ClassVar[str] = ""
    #: "points": values every training row; "players": values the utility's players
    #: (groups when the data has groups).
    level: ClassVar[str] = "points"
    #: whether record values add up to a group's worth (Shapley-style contributions); scores
    #: such as out-of-bag accuracy or a log-probability do not, and are centred before summing
    additive: ClassVar[bool] = True
    result_: ValuationResult

    @abstractmethod
    def fit(self, data: Any) -> Self: ...

    @property
    def result(self) -> ValuationResult:
        if not hasattr(self, "result_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(data) first")
        return self.result_

    @property
    def values(self) -> np.ndarray:
        return self.result.values

    def get_params(self) -> dict[str, Any]:
        import inspect

        return {p: getattr(self, p) for p in inspect.signature(type(self).__init__).parameters
                if p != "self" and hasattr(self, p)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def register_method(name: str) -> Callable[[V], V]:
    """Class decorator: make a method available by name (CLI, experiments, `get_method`)."""

    def deco(cls: V) -> V:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str, **params: Any) -> Valuation:
    """An unfitted method by registry name with the given settings."""
    _import_builtin()
    if name not in METHODS and name in LAZY_METHODS:
        import importlib

        importlib.import_module(f"shoprank.valuation.{LAZY_METHODS[name]}")
    try:
        cls = METHODS[name]
    except KeyError:
        raise ShoprankError(f"unknown valuation method {name!r}; available: {sorted(METHODS)}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise ShoprankError(f"valuation method {name!r}: {e}") from None


def available_methods() -> list[str]:
    _import_builtin()
    return sorted(set(METHODS) | set(LAZY_METHODS))


def _import_builtin() -> None:
    import importlib

    for m in ("knn", "oob", "semivalues", "baselines", "crossfit"):
        importlib.import_module(f"shoprank.valuation.{m}")

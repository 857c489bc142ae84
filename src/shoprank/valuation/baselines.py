"""Reference points every valuation experiment reports beside the real methods."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from shoprank.valuation.base import Valuation, register_method
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.utility import Utility, ValuationData


@register_method("random")
class RandomValuation(Valuation):
    """Uniform random values: the chance level of detection and removal experiments."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, data: Any) -> Self:
        if isinstance(data, Utility):
            n, names = data.n_players, data.names
        elif isinstance(data, ValuationData):
            n, names = data.n_train, data.point_names()
        else:
            n, names = len(data), None
        rng = np.random.default_rng(self.seed)
        self.result_ = ValuationResult(rng.random(n), names=names, algorithm=self.name)
        return self

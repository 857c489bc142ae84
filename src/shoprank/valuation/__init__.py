"""Data valuation: what each training record, and each group of records, is worth.

Composed in the manner of pyDVL: a `Utility` (model x data x scorer, with a cache of
coalition scores), a `Sampler`, a `StoppingCriterion`, and methods that return a
`ValuationResult` (values, standard errors, counts). Methods are found by name with
`get_method` ("knn-shapley", "data-oob", "tmc-shapley", "beta-shapley", "msr-banzhaf",
"loo", "exact-shapley", "exact-banzhaf", "random", "influence", "tracin", "datainf").
The gradient-based methods (influence, tracin, datainf) import torch, so their names are
loaded on first use: `import shoprank.valuation` stays light.
"""

from typing import TYPE_CHECKING, Any

from shoprank.valuation.base import Valuation, available_methods, get_method, register_method
from shoprank.valuation.baselines import RandomValuation
from shoprank.valuation.crossfit import CrossFitConfidence
from shoprank.valuation.knn import (
    KNNShapley,
    knn_attribution,
    knn_shapley_values,
    knn_utility,
    nearest_item_lists,
)
from shoprank.valuation.oob import DataOOB
from shoprank.valuation.parallel import (
    Backend,
    JoblibBackend,
    RayBackend,
    SequentialBackend,
    get_backend,
)
from shoprank.valuation.result import ValuationResult
from shoprank.valuation.samplers import (
    AntitheticPermutationSampler,
    AntitheticUniformSampler,
    PermutationSampler,
    Sampler,
    UniformSampler,
)
from shoprank.valuation.semivalues import (
    BetaShapley,
    ExactBanzhaf,
    ExactBetaShapley,
    ExactShapley,
    LeaveOneOut,
    MSRBanzhaf,
    TMCShapley,
    banzhaf_sizes,
    beta_sizes,
    exact_semivalue,
    shapley_sizes,
)
from shoprank.valuation.stopping import (
    AbsoluteStandardError,
    MaxChecks,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    RelativeStandardError,
    StoppingCriterion,
)
from shoprank.valuation.utility import (
    FunctionUtility,
    ModelUtility,
    Scorer,
    Utility,
    ValuationData,
    get_scorer,
    ndcg_scorer,
)

__all__ = [
    "Checkpoint", "DataInf", "InfluenceFunction", "LossModel", "ModuleLoss", "TowerLoss", "TracIn",
    "datainf_values", "influence_values", "inverse_hvp", "load_checkpoints", "lora_datainf", "tracin_values", "model_confidence",
    "AbsoluteStandardError", "AntitheticPermutationSampler", "AntitheticUniformSampler", "Backend",
    "BetaShapley", "CrossFitConfidence", "DataOOB", "ExactBanzhaf", "ExactBetaShapley", "ExactShapley", "FunctionUtility",
    "JoblibBackend", "KNNShapley", "LeaveOneOut", "MSRBanzhaf", "MaxChecks", "MaxTime", "MaxUpdates",
    "MinUpdates", "ModelUtility", "PermutationSampler", "RandomValuation", "RayBackend",
    "RelativeStandardError", "Sampler", "Scorer", "SequentialBackend", "StoppingCriterion", "TMCShapley",
    "UniformSampler", "Utility", "Valuation", "ValuationData", "ValuationResult", "available_methods",
    "banzhaf_sizes", "beta_sizes", "exact_semivalue", "get_backend", "get_method", "get_scorer",
    "knn_attribution", "knn_shapley_values", "knn_utility", "nearest_item_lists", "ndcg_scorer", "register_method", "shapley_sizes",
]

if TYPE_CHECKING:
    from shoprank.valuation.confidence import model_confidence
    from shoprank.valuation.datainf import DataInf, TowerLoss, datainf_values, lora_datainf
    from shoprank.valuation.influence import (
        InfluenceFunction,
        LossModel,
        ModuleLoss,
        influence_values,
        inverse_hvp,
    )
    from shoprank.valuation.tracin import Checkpoint, TracIn, load_checkpoints, tracin_values

_LAZY = {
    "DataInf": "datainf", "TowerLoss": "datainf", "datainf_values": "datainf", "lora_datainf": "datainf",
    "InfluenceFunction": "influence", "LossModel": "influence", "ModuleLoss": "influence",
    "influence_values": "influence", "inverse_hvp": "influence",
    "Checkpoint": "tracin", "TracIn": "tracin", "load_checkpoints": "tracin", "tracin_values": "tracin",
    "model_confidence": "confidence",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"shoprank.valuation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shoprank.valuation' has no attribute {name!r}")

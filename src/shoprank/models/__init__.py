"""Rankers: classical baselines and language-model rankers behind one interface."""

from shoprank.models.base import (
    MODEL_REGISTRY,
    Ranker,
    UserBatch,
    get_model_class,
    load_model,
    register,
)

__all__ = ["MODEL_REGISTRY", "Ranker", "UserBatch", "get_model_class", "load_model", "register"]

"""Training: fit a named model for a task on a dataset split and save it as a directory."""

from shoprank.training.runner import TrainResult, train_model

__all__ = ["TrainResult", "train_model"]

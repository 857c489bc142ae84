"""The language-model rankers on every shared dataset, beside the classical baselines
(rerun in this process) and published numbers.

    python benchmarks/lm.py [--only speed,tallrec,amazon,homedepot,zh] [--seeds 3]
                            [--click-strategies head,top_k,lora] [--amazon-epochs 1]
                            [--homedepot-pairs 8000] [--no-baselines] [--no-record]

- speed: fine-tuning pairs/s of every tuning strategy against `full` on the same pairs, with
  trainable parameters, wall time and quality (benchmarks/lm_speed.py), and the frozen
  encoder's embedding throughput in GFLOP/s against this CPU's FP32 peak;
- tallrec: `lm-click` test AUC with 16 / 64 / 256 / all training examples per strategy,
  mean ± std over seeds, beside TALLRec (LLaMA-7B + LoRA);
- amazon: `lm` (top_k) and its re-ranked hybrid, full ranking HR@10 / NDCG@10, overall and
  on test targets never seen in training;
- homedepot: BM25, frozen dense, fine-tuned dense, and hybrids (RRF, LambdaRank);
- zh: the built-in Chinese shop through the same pipeline, against popularity.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import baselines
import numpy as np
import torch
from _common import SHARED, md_table, record
from lm_speed import speed

from shoprank.data.loaders import import_dataset
from shoprank.data.splits import split_dataset
from shoprank.evaluation.protocol import evaluate_model
from shoprank.models.base import Ranker, get_model_class
from shoprank.models.baselines import BM25Ranker
from shoprank.models.hybrid import HybridRanker

OUT = Path(__file__).resolve().parent / "out"
CACHE = str(OUT / "cache")


def _fit(name: str, params: dict[str, Any], split: Any) -> tuple[Ranker, float]:
    m = get_model_class(name)(**params)
    t0 = time.perf_counter()
    m.fit(split.train, split.valid)
    return m, time.perf_counter() - t0


# -- speed ---------------------------------------------------------------------------------------


def _layer_flops(n: int, d: int, ffn: int) -> float:
    """Multiply-adds x 2 of one BERT layer on n tokens: Q,K,V,O projections, attention
    scores and mixing, and the feed-forward block."""
    return 2.0 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * ffn)


def embedding_throughput() -> str:
    from shoprank.text.encoder import EncoderConfig, TextEncoder

    ds = import_dataset("amazon-industrial", [SHARED / "amazon-industrial"])
    from shoprank.text.render import render_items

    texts = list(dict.fromkeys(render_items(ds.items)))[:1500]
    rows = []
    ghz = _cpu_ghz()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        enc = TextEncoder(EncoderConfig(model="minilm", max_length=64, batch_size=64))  # no cache: real work
        enc.encode(texts[:64])  # load and warm up
        cfg = enc.model.config
        tok = enc.tokenizer(texts, truncation=True, max_length=64)["input_ids"]
        lengths = np.array([len(x) for x in tok])
        # the encoder sorts by length and pads to the longest of each batch of 64
        order = np.sort(lengths)[::-1]
        padded = np.concatenate([np.full(len(order[s : s + 64]), order[s]) for s in range(0, len(order), 64)])
        L, d, ffn = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        useful = sum(L * _layer_flops(int(n), d, ffn) for n in lengths)
        done = sum(L * _layer_flops(int(n), d, ffn) for n in padded)
        t0 = time.perf_counter()
        enc.encode(texts)
        secs = time.perf_counter() - t0
        peak = threads * ghz * 32  # Zen 3 / AVX2: 2 FMA units x 8 FP32 lanes x 2 FLOPs per cycle
        a = torch.randn(2048, 2048)
        torch.mm(a, a)
        t1 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, a)
        mm = 5 * 2 * 2048**3 / (time.perf_counter() - t1) / 1e9
        rows.append({"threads": threads, "texts/s": round(len(texts) / secs, 1),
                     "mean tokens": round(float(lengths.mean()), 1),
                     "GFLOP/s (real tokens)": round(useful / secs / 1e9, 1),
                     "GFLOP/s (incl. padding)": round(done / secs / 1e9, 1),
                     "FP32 peak GFLOP/s": round(peak, 1), "% of peak": round(100 * done / secs / 1e9 / peak, 1),
                     "2048^3 matmul GFLOP/s": round(mm, 1)})
        print(rows[-1], flush=True)
    torch.set_num_threads(1)
    return (f"Frozen all-MiniLM-L6-v2 embedding throughput on {len(texts)} amazon item texts (max 64 tokens, "
            f"length-sorted batches of 64, no cache); peak = cores x {ghz:.2f} GHz x 32 FP32 FLOPs/cycle "
            "(AVX2, 2 FMA pipes)\n\n"
            + md_table(rows, list(rows[0])))


def _cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return float("nan")


# -- tallrec -------------------------------------------------------------------------------------


def tallrec(seeds: int, strategies: list[str], all_strategies: list[str]) -> str:
    split, train_rows = baselines.tallrec_split()
    rows = []
    for strat in strategies:
        row: dict[str, Any] = {"model": f"lm-click {strat}"}
        t_strat = time.perf_counter()
        for shots in (16, 64, 256, None):
            if shots is None and strat not in all_strategies:
                row["all"] = "not run"
                continue
            aucs = []
            for seed in range(seeds) if shots else (0,):
                sub = baselines.few_shot(split, train_rows, shots, seed) if shots else split
                params = {"tuning": strat, "seed": seed, "verbose": False, "num_threads": 2}
                if shots is None:
                    params |= {"epochs": 3, "patience": 1}
                m, _ = _fit("lm-click", params, sub)
                aucs.append(evaluate_model(m, sub, "click", n_bootstrap=0, progress=False)["auc"] * 100)
                print(strat, shots, seed, round(aucs[-1], 2), flush=True)
            row[f"{shots or 'all'}"] = f"{np.mean(aucs):.2f} ± {np.std(aucs):.2f}" if len(aucs) > 1 else f"{aucs[0]:.2f}"
        row["wall s"] = round(time.perf_counter() - t_strat)
        rows.append(row)
        print(row, flush=True)
    for name, vals in baselines.PUBLISHED_TALLREC.items():
        rows.append({"model": f"{name} (published)", "16": vals[0], "64": vals[1], "256": vals[2]})
    return (f"tallrec-movie, lm-click (pooled-history bi-encoder + MLP, BCE, early stopping on valid AUC): test AUC "
            f"x100, mean ± std over {seeds} seeds of the k-shot sample (k train + k valid rows); 'all': 8,000 train "
            "rows, 3 epochs, one seed\n\n" + md_table(rows, ["model", "16", "64", "256", "all", "wall s"]))


# -- amazon --------------------------------------------------------------------------------------


def amazon(epochs: int) -> str:
    ds = import_dataset("amazon-industrial", [SHARED / "amazon-industrial"])
    split = split_dataset(ds)
    rows = []
    lm_params = {"tuning": "top_k", "tuning_config": {"k": 2}, "epochs": epochs, "patience": 1, "num_threads": 2,
                 "verbose": True}
    t0 = time.perf_counter()
    lm, fit_s = _fit("lm", lm_params, split)
    models: list[tuple[str, Ranker, float]] = [(f"lm top_k(k=2), {epochs} epoch(s)", lm, fit_s)]
    t1 = time.perf_counter()
    bm = BM25Ranker().fit(split.train)
    hyb = HybridRanker.from_models(lm, bm, split.train, split.valid, fusion="ltr", n_candidates=100)
    models.append(("hybrid: lm + LambdaRank re-ranker (pop, recency, price, BM25, transitions)", hyb, fit_s + time.perf_counter() - t1))
    for name, m, secs in models:
        r = evaluate_model(m, split, "recommend", n_bootstrap=1000, progress=False)
        met, cold = r["metrics"], r["slices"]["cold_start"]
        rows.append({"model": name, "HR@10": met["hr@10"], "NDCG@10": met["ndcg@10"],
                     "NDCG@10 95% CI": "[{:.4f}, {:.4f}]".format(*r["ci"]["ndcg@10"]),
                     "unseen HR@10": cold["hr@10"], "unseen NDCG@10": cold["ndcg@10"], "unseen n": cold["n"],
                     "fit s": round(secs, 1)})
        print(rows[-1], flush=True)
    return (f"amazon-industrial, language-model rankers: full ranking over {ds.n_items} items, test rows "
            "(trained on valid.csv only); 'unseen' = test targets never seen in training "
            f"({time.perf_counter() - t0:.0f} s)\n\n"
            + md_table(rows, ["model", "HR@10", "NDCG@10", "NDCG@10 95% CI", "unseen HR@10", "unseen NDCG@10",
                              "unseen n", "fit s"]))


# -- homedepot -----------------------------------------------------------------------------------


def homedepot(pairs: int) -> str:
    ds = import_dataset("homedepot", [SHARED / "homedepot-search" / "train.csv"])
    split = split_dataset(ds)
    rows = []

    def add(name: str, m: Ranker, secs: float) -> None:
        r = evaluate_model(m, split, "search", n_bootstrap=1000, progress=False)
        rows.append({"model": name, "NDCG@10": r["metrics"]["ndcg@10"],
                     "NDCG@10 95% CI": "[{:.4f}, {:.4f}]".format(*r["ci"]["ndcg@10"]), "queries": r["n"],
                     "fit s": round(secs, 1)})
        print(rows[-1], flush=True)

    bm, s_bm = _fit("bm25", {}, split)
    add("BM25", bm, s_bm)
    frozen, s_fr = _fit("dense", {"cache_dir": CACHE}, split)
    add("frozen dense (MiniLM)", frozen, s_fr)
    t0 = time.perf_counter()
    hyb = HybridRanker.from_models(frozen, bm, split.train, split.valid, fusion="rrf")  # type: ignore[arg-type]
    add("hybrid frozen: BM25 + dense, RRF", hyb, s_fr + s_bm + time.perf_counter() - t0)
    lm_params = {"tuning": "top_k", "tuning_config": {"k": 2}, "epochs": 1, "max_train_pairs": pairs,
                 "num_threads": 2, "verbose": True}
    t0 = time.perf_counter()
    lm = get_model_class("lm")(**lm_params).fit(split.train)  # valid stays unseen: the re-ranker learns on it
    s_lm = time.perf_counter() - t0
    add(f"fine-tuned dense: lm top_k(k=2), 1 epoch, {pairs} pairs", lm, s_lm)
    for fusion in ("rrf", "ltr"):
        t0 = time.perf_counter()
        h = HybridRanker.from_models(lm, bm, split.train, split.valid, fusion=fusion)  # type: ignore[arg-type]
        add(f"fine-tuned hybrid: BM25 + lm, {fusion.upper()}", h, s_lm + s_bm + time.perf_counter() - t0)
    best = max(r["NDCG@10"] for r in rows if "hybrid" in r["model"])
    return (f"homedepot-search, language-model rankers: graded NDCG@10 on held-out queries; best hybrid "
            f"{best - rows[0]['NDCG@10']:+.4f} over BM25 (target +0.05)\n\n"
            + md_table(rows, ["model", "NDCG@10", "NDCG@10 95% CI", "queries", "fit s"]))


# -- Chinese -------------------------------------------------------------------------------------


def chinese() -> str:
    from shoprank.data.synth import SynthConfig, synthesize

    cfg = SynthConfig.preset("small")
    cfg.lang = "zh"
    ds, _ = synthesize(cfg)
    split = split_dataset(ds, "time")
    rows = []
    lm_params = {"encoder": "m3e-small", "tuning": "top_k", "tuning_config": {"k": 2}, "epochs": 1,
                 "max_train_pairs": 3000, "num_threads": 2, "verbose": False}
    fitted: dict[str, tuple[Ranker, float]] = {}
    for task, name, params in [("recommend", "popularity", {}), ("recommend", "dense", {"encoder": "m3e-small"}),
                               ("recommend", "lm", lm_params), ("search", "bm25", {}),
                               ("search", "dense", {"encoder": "m3e-small"}), ("search", "lm", lm_params)]:
        key = f"{name}{params}"
        if key not in fitted:
            fitted[key] = _fit(name, params, split)
        m, secs = fitted[key]
        r = evaluate_model(m, split, task, n_bootstrap=500, progress=False)
        rows.append({"task": task, "model": name if name != "lm" else "lm top_k (m3e-small)",
                     "NDCG@10": r["metrics"]["ndcg@10"], "HR@10": r["metrics"].get("hr@10", ""),
                     "NDCG@10 95% CI": "[{:.4f}, {:.4f}]".format(*r["ci"]["ndcg@10"]), "fit s": round(secs, 1)})
        print(rows[-1], flush=True)
    return (f"Built-in shop in Chinese (synth small, lang zh: {ds.n_items} items), time split; encoders are the "
            "opt-in m3e-small (non-commercial licence)\n\n"
            + md_table(rows, ["task", "model", "NDCG@10", "HR@10", "NDCG@10 95% CI", "fit s"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="speed,tallrec,amazon,homedepot,zh")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--click-strategies", default="head,top_k,lora")
    ap.add_argument("--click-all-strategies", default="head,top_k", help="strategies also trained on all rows")
    ap.add_argument("--amazon-epochs", type=int, default=1)
    ap.add_argument("--homedepot-pairs", type=int, default=8000)
    ap.add_argument("--speed-pairs", type=int, default=512)
    ap.add_argument("--no-baselines", action="store_true", help="skip the classical baselines' rerun")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    parts = []
    for key in a.only.split(","):
        t0 = time.perf_counter()
        if key == "speed":
            body = speed(a.speed_pairs, 2, 300) + "\n\n" + embedding_throughput()
        elif key == "tallrec":
            body = tallrec(a.seeds, a.click_strategies.split(","), a.click_all_strategies.split(","))
            if not a.no_baselines:
                body += "\n\nClassical baselines, same process:\n\n" + baselines.tallrec()
        elif key == "amazon":
            body = amazon(a.amazon_epochs)
            if not a.no_baselines:
                body += "\n\nClassical baselines, same process:\n\n" + baselines.amazon()
        elif key == "homedepot":
            body = homedepot(a.homedepot_pairs)
            if not a.no_baselines:
                body += "\n\nClassical baselines, same process:\n\n" + baselines.homedepot()
        elif key == "zh":
            body = chinese()
        else:
            raise SystemExit(f"unknown section {key!r}")
        parts.append(body + f"\n\n({key}: {time.perf_counter() - t0:.0f} s)")
        print(parts[-1], flush=True)
        if not a.no_record:  # each section is recorded as it finishes: a long run keeps what it has
            record(f"Language-model rankers: {key} (benchmarks/lm.py)", parts[-1])


if __name__ == "__main__":
    main()

"""Data valuation: correctness, speed against pyDVL, and label-noise detection.

    python benchmarks/valuation.py [--only correctness,speed,oob,detect,amazon] [--no-pydvl-50k] [--no-record]

- correctness: exact KNN-Shapley against brute-force Shapley (all coalitions of the KNN
  utility) on tiny games, and against pyDVL's KNNShapleyValuation (Spearman) on one dataset;
- speed: KNN-Shapley 10k train x 1k test (ours and pyDVL in the same run) and 50k x 1k;
  Data-OOB (100 bags) at 50k points; 384-d float32 Gaussian features (embedding-sized);
- detect: 20% flipped labels on zh-shopping-reviews (5,000 train / 1,000 valid reviews) and
  tallrec-movie (4,000 train rows / the 1,000 valid rows), frozen MiniLM embeddings cached in
  benchmarks/out/cache; KNN-Shapley (against the validation set, and self valuation on the
  training set), Data-OOB and cross-fit confidence in the same run beside a random
  valuation and the clean-label ceiling (a model fitted to the true labels judging the
  observed ones), 3 seeds (seed = which labels are flipped); tallrec again with the user's
  and the movie's like rates as features;

- amazon: injected noisy clicks (20% of next items replaced at random) on amazon-industrial's
  valid.csv pairs, KNN-Shapley with next-item vector targets and Data-OOB in the same run.
- loop: the same kind of noise in the LM ranker's training events; value them (the noisy LM's
  own confidence, KNN-Shapley, Data-OOB), drop the flagged ones, retrain the LM, and compare
  test NDCG@10 with the clean and the noisy LM fitted in the same run (~30 min on 2 cores).
- active: active labelling on homedepot-search (random, uncertainty, uncertainty x value),
  labels needed to reach 95% of the whole pool's NDCG@10 and of its gain over no labels.

pyDVL is only needed here, never by shoprank itself: `pip install pydvl==0.10.0` and then
`pip install "numpy>=2" "pandas>=3"` (pyDVL declares numpy<2, pulls numpy 1.26 back in, but
runs with numpy 2; its values match ours to 2.6e-8).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import SHARED, md_table, record

from shoprank.valuation import (
    DataOOB,
    ExactShapley,
    KNNShapley,
    ValuationData,
    knn_shapley_values,
    knn_utility,
)
from shoprank.valuation.experiments import (
    CEILING,
    method_factory,
    noise_detection_experiment,
    summarize,
)

CACHE = Path(__file__).resolve().parent / "out" / "cache"
DETECT_ONLY: list[str] = []  # --detect-datasets: substrings of the dataset names to run
LOOP: dict[str, object] = {"noise": "random", "drop_by": "confidence", "seed": 0, "train_seed": 0}  # --loop-*
ACTIVE: dict[str, object] = {"features": "all", "eval": "judged", "seeds": 3, "seed_start": 0,  # --active-features, ...
                              "strategies": ("random", "uncertainty", "uncertainty-value", "diverse-uncertainty")}
OUT = Path(__file__).resolve().parent / "out"
# the Loop's per-run test scores (small JSON, one file per fit) are kept in the repository, so
# `--only loop-pool` can pool runs made in other sessions; fitted models stay in OUT (ignored)
RESULTS = Path(__file__).resolve().parent / "results" / "loop"
K = 10
LIST_M = 20  # knn-items-lists: chosen on seeds 0-7 by injected events flagged (20 and 50 tried), not on NDCG


def _pydvl_knn(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    from pydvl.valuation import Dataset, KNNShapleyValuation
    from sklearn.neighbors import KNeighborsClassifier

    t0 = time.perf_counter()
    v = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), test_data=Dataset(xt, yt), progress=False)
    r = v.fit(Dataset(x, y)).result
    secs = time.perf_counter() - t0
    out = np.zeros(len(y))
    out[np.asarray(r.indices)] = np.asarray(r.values)
    return out, secs


def correctness() -> str:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    worst, games = 0.0, 0
    for n in (5, 6, 7):
        for k in (1, 3, 5):
            for metric in ("cosine", "euclidean"):
                for target in ("classification", "graded"):
                    nc = 2 if target == "classification" else 4
                    x, y = rng.normal(size=(n, 4)), rng.integers(0, nc, n)
                    xt, yt = rng.normal(size=(6, 4)), rng.integers(0, nc, 6)
                    fast = knn_shapley_values(x, y, xt, yt, k=k, metric=metric, target=target)
                    brute = ExactShapley().fit(knn_utility(x, y, xt, yt, k=k, metric=metric, target=target)).values
                    worst = max(worst, float(np.abs(fast - brute).max()))
                    games += 1
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=3000) > 0).astype(int)
    xt = rng.normal(size=(300, 32)).astype(np.float32)
    yt = (xt[:, 0] > 0).astype(int)
    ours = knn_shapley_values(x, y, xt, yt, k=K, metric="euclidean")
    theirs, _ = _pydvl_knn(x, y, xt, yt, K)
    rho = float(spearmanr(ours, theirs).statistic)
    diff = float(np.abs(ours - theirs).max())
    return (f"KNN-Shapley correctness: {games} tiny games (5-7 training points, K in 1/3/5, cosine and euclidean, "
            f"labels and graded targets) against brute-force Shapley over every coalition: max |difference| "
            f"{worst:.2e}. Against pyDVL {_pydvl_version()} KNNShapleyValuation (euclidean, K={K}) on 3,000 train x "
            f"300 test points: Spearman {rho:.6f}, max |difference| {diff:.2e}.")


def _pydvl_version() -> str:
    from importlib.metadata import version

    return version("pydvl")


def speed(pydvl_50k: bool) -> str:
    rng = np.random.default_rng(1)
    rows = []
    for n in (10_000, 50_000):
        x = rng.normal(size=(n, 384)).astype(np.float32)
        y = rng.integers(0, 2, n)
        xt = rng.normal(size=(1000, 384)).astype(np.float32)
        yt = rng.integers(0, 2, 1000)
        t0 = time.perf_counter()
        ours = knn_shapley_values(x, y, xt, yt, k=K, metric="euclidean")
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        knn_shapley_values(x, y, xt, yt, k=K, metric="euclidean", backend="threads", n_jobs=2)
        t_thr = time.perf_counter() - t0
        row: dict[str, object] = {"train x test": f"{n:,} x 1,000", "ours 1 core s": round(t_ours, 2),
                                  "ours 2 threads s": round(t_thr, 2)}
        if n == 10_000 or pydvl_50k:
            theirs, t_p = _pydvl_knn(x, y, xt, yt, K)
            from scipy.stats import spearmanr

            row.update({"pyDVL s": round(t_p, 1), "speed-up (1 core)": f"{t_p / t_ours:.1f}x",
                        "Spearman vs pyDVL": round(float(spearmanr(ours, theirs).statistic), 6)})
        rows.append(row)
        print(row, flush=True)
    cols = ["train x test", "ours 1 core s", "ours 2 threads s", "pyDVL s", "speed-up (1 core)", "Spearman vs pyDVL"]
    return ("KNN-Shapley speed (exact, K=10, euclidean, 384-d float32 features, chunked over test points; "
            f"pyDVL {_pydvl_version()} KNNShapleyValuation in the same run)\n\n" + md_table(rows, cols))


def oob_speed() -> str:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50_000, 384)).astype(np.float32)
    w = rng.normal(size=384)
    y = (x @ w > 0).astype(int)
    t0 = time.perf_counter()
    DataOOB(n_estimators=100).fit(ValuationData(x, y, x[:1], y[:1]))
    t1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    DataOOB(n_estimators=100, backend="threads", n_jobs=2).fit(ValuationData(x, y, x[:1], y[:1]))
    t2 = time.perf_counter() - t0
    return (f"Data-OOB, 100 bootstrap ridge classifiers on a 64-component PCA of 50,000 x 384 float32 features: "
            f"{t1:.1f} s on 1 core, {t2:.1f} s with 2 threads.")


# -- detection -----------------------------------------------------------------------------


def _encoder(model: str = "minilm"):  # type: ignore[no-untyped-def]
    from shoprank.text import EncoderConfig, TextEncoder

    return TextEncoder(EncoderConfig(model=model), cache_dir=CACHE)


def zh_frame(n: int = 6000) -> pd.DataFrame:
    df = pd.read_csv(SHARED / "zh-shopping-reviews" / "online_shopping_10_cats.csv", encoding="utf-8-sig")
    return df.dropna(subset=["review"]).sample(n=n, random_state=0).reset_index(drop=True)


def zh_data(n_train: int = 5000, n_valid: int = 1000, encoder: str = "minilm") -> ValuationData:
    df = zh_frame(n_train + n_valid)
    t0 = time.perf_counter()
    emb = _encoder(encoder).encode(df["review"].astype(str).tolist(), progress=True)
    print(f"zh embeddings {time.perf_counter() - t0:.0f}s", flush=True)
    y = df["label"].to_numpy(dtype=np.int64)
    return ValuationData(emb[:n_train], y[:n_train], emb[n_train:], y[n_train:])


def tallrec_data(n_train: int = 4000, collab: bool = False) -> ValuationData:
    """Frozen MiniLM features of the target title and of the liked and disliked history titles;
    with `collab`, three more: the user's like rate in the history, the target movie's like
    rate (add-one smoothed) and log count over the other users' history ratings in train.csv
    (never the user's own: a later row's history can hold this row's own rating)."""
    items = pd.read_csv(SHARED / "movielens-100k" / "ml-100k.item", sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    titles = {str(i): f"{t} ({y})" if pd.notna(y) else str(t)
              for i, t, y in zip(items["item_id"], items["movie_title"], items["release_year"], strict=True)}
    ids = list(titles)
    emb = dict(zip(ids, _encoder().encode([titles[i] for i in ids], progress=True), strict=True))
    zero = np.zeros(384, np.float32)

    def feats(df: pd.DataFrame) -> np.ndarray:
        out = []
        for h, r, m in zip(df["history_movie_id"], df["history_rating"], df["movie_id"], strict=True):
            hist, rat = ast.literal_eval(h), ast.literal_eval(r)
            liked = [emb.get(str(i), zero) for i, v in zip(hist, rat, strict=True) if int(v) == 1]
            disliked = [emb.get(str(i), zero) for i, v in zip(hist, rat, strict=True) if int(v) == 0]
            out.append(np.concatenate([emb.get(str(m), zero), np.mean(liked, 0) if liked else zero,
                                       np.mean(disliked, 0) if disliked else zero]))
        return np.asarray(out, dtype=np.float32)

    base = SHARED / "tallrec-movie" / "baseline"
    full = pd.read_csv(base / "train.csv")
    tr = full.sample(n=n_train, random_state=0).reset_index(drop=True)
    va = pd.read_csv(base / "valid.csv")
    xtr, xva = feats(tr), feats(va)
    if collab:
        trip = pd.DataFrame([(u, int(i), int(v)) for u, h, r in zip(full["user_id"], full["history_movie_id"],
                                                                    full["history_rating"], strict=True)
                             for i, v in zip(ast.literal_eval(h), ast.literal_eval(r), strict=True)],
                            columns=["user", "item", "liked"]).drop_duplicates(["user", "item"])
        per_item = trip.groupby("item")["liked"].agg(["sum", "count"])
        own = trip.set_index(["user", "item"])["liked"]

        def cf(df: pd.DataFrame) -> np.ndarray:
            out = []
            for u, r, m in zip(df["user_id"], df["history_rating"], df["movie_id"], strict=True):
                rat = ast.literal_eval(r)
                s_, c_ = per_item.loc[m].tolist() if m in per_item.index else (0, 0)
                if (u, m) in own.index:  # leave the user's own rating of the movie out
                    s_, c_ = s_ - int(own.loc[(u, m)]), c_ - 1
                out.append([float(np.mean(rat)) if rat else 0.5, (s_ + 1) / (c_ + 2), np.log1p(c_)])
            return np.asarray(out, dtype=np.float32)

        xtr, xva = np.hstack([xtr, cf(tr)]), np.hstack([xva, cf(va)])
    return ValuationData(xtr, tr["rating"].to_numpy(dtype=np.int64), xva, va["rating"].to_numpy(dtype=np.int64))


def _fmt(r: dict) -> dict[str, object]:
    """One summarised detection row (mean ± std over seeds) as printed in the tables."""
    out: dict[str, object] = {"F1": f"{r['f1']:.3f} ± {r['f1_std']:.3f}",
                              "AUROC": f"{r['auroc']:.3f} ± {r['auroc_std']:.3f}", "P@k": f"{r['precision_at_k']:.3f}"}
    if "seconds" in r:
        out["seconds"] = round(float(r["seconds"]), 2)
    return out


def _targeted_spam(rng: np.random.Generator, n_items: int, vectors: np.ndarray, users: np.ndarray,
                   noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targeted click spam: 20 promoted items, each given to the shoppers of one of 20 k-means
    taste clusters (a user = the mean of `vectors` over their rows). Returns the items for the
    noisy rows and the promoted items."""
    from sklearn.cluster import KMeans

    promoted = rng.choice(n_items, 20, replace=False)
    users = np.asarray(users)
    prof = pd.DataFrame(vectors).groupby(users).mean()
    cluster = dict(zip(prof.index, KMeans(20, n_init=4, random_state=seed).fit_predict(prof.to_numpy()), strict=True))
    return promoted[[cluster[u] for u in users[noisy]]], promoted


def detect() -> str:
    methods = {
        "knn-shapley (K=10, cosine)": method_factory("knn-shapley", k=10, metric="cosine"),
        "knn-shapley (K=30, cosine)": method_factory("knn-shapley", k=30, metric="cosine"),
        "knn-shapley self (K=10, no valid set)": method_factory("knn-shapley", k=10, self_valuation=True),
        "data-oob (100 ridge bags)": method_factory("data-oob", n_estimators=100),
        "cross-fit (logistic regression, 5 folds)": method_factory("cross-fit", n_folds=5),
    }
    rows, verdicts = [], []
    loaders = [("zh-shopping-reviews", zh_data), ("tallrec-movie", tallrec_data),
               ("tallrec-movie (+ user and movie like rates)", lambda: tallrec_data(collab=True))]
    try:  # the Chinese encoder (opt-in extra: `make zh`): MiniLM maps most Chinese characters to [UNK]
        from shoprank.text.encoder import resolve_model_path

        resolve_model_path("m3e-small")
        loaders.insert(1, ("zh-shopping-reviews (m3e-small features)", lambda: zh_data(encoder="m3e-small")))
    except Exception as e:  # noqa: BLE001
        print(f"m3e-small not installed, zh with MiniLM features only: {e}", flush=True)
    if DETECT_ONLY:
        loaders = [(n, f) for n, f in loaders if any(k in n for k in DETECT_ONLY)]
    for name, loader in loaders:
        data = loader()
        df = noise_detection_experiment(data, methods, noise_frac=0.2, seeds=(0, 1, 2), ceiling=True)
        s = summarize(df)
        for r in s.to_dict("records"):
            rows.append({"dataset": name, "method": r["method"], **_fmt(r), "F1 best cut": f"{r['f1_best']:.3f}"})
            print(rows[-1], flush=True)
        by = s.set_index("method")
        f1, oob = by["f1"], float(by.loc["data-oob (100 ridge bags)", "f1"])
        best = f1.drop(["random", CEILING, "data-oob (100 ridge bags)"]).idxmax()
        verdicts.append(f"- {name}: best method {best} {f1[best]:.3f} = Data-OOB {oob:.3f} "
                        f"{f1[best] - oob:+.3f} (target +0.1); the clean-label ceiling reaches {f1[CEILING]:.3f} "
                        f"(best cut {by.loc[CEILING, 'f1_best']:.3f}), {f1[CEILING] - oob:+.3f} over Data-OOB.")
    return ("Label-noise detection (OpenDataVal protocol): 20% of training labels flipped, F1 of a 2-means "
            "clustering of the values (low cluster = flagged), AUROC of -value, precision at k = number flipped; "
            "mean ± std over 3 seeds; features: frozen all-MiniLM-L6-v2 embeddings (zh: review text, and again "
            "with the Chinese m3e-small when installed; tallrec: target title, mean liked and mean disliked "
            "history titles, and again with the user's and the movie's like rates); 'F1 best cut': the F1 of "
            "the best threshold on the values, chosen knowing the answer; the ceiling row is a logistic "
            "regression fitted (5 folds) to the *clean* labels judging the observed ones: what these "
            "features allow any detector that judges a label by its features\n\n"
            + md_table(rows, ["dataset", "method", "F1", "F1 best cut", "AUROC", "P@k", "seconds"])
            + "\n\n" + "\n".join(verdicts))


def detect_lm(seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 2) -> str:
    """zh-shopping-reviews, 20% flipped labels (the same flips as `detect`): the m3e-small
    encoder fine-tuned (top 2 of its 4 layers) by 2-fold cross-fitting, each review judged by
    the model trained on the other half; beside Data-OOB, KNN-Shapley and the same cross-fit
    with logistic regression on the frozen m3e-small features, in the same run."""
    from shoprank.models.textclf import TextClassifier
    from shoprank.valuation import CrossFitConfidence

    n_train = 5000
    data = zh_data(encoder="m3e-small")
    texts = zh_frame()["review"].astype(str).to_numpy(dtype=object)
    text_data = ValuationData(texts[:n_train], data.y_train, texts[n_train:], data.y_valid)
    clf = TextClassifier("m3e-small", tuning="top_k", tuning_config={"k": 2}, epochs=epochs, batch_size=32,
                         max_length=128, num_threads=2, progress=True)
    methods = {
        "data-oob (100 ridge bags, frozen features)": method_factory("data-oob", n_estimators=100),
        "knn-shapley (K=30, cosine, frozen features)": method_factory("knn-shapley", k=30, metric="cosine"),
        "cross-fit logistic regression (2 folds, frozen features)": method_factory("cross-fit", n_folds=2),
        f"cross-fit fine-tuned m3e-small (2 folds, top_k k=2, {epochs} epochs)":
            lambda seed: CrossFitConfidence(clf, n_folds=2, seed=seed, progress=True),
    }
    tuned = [k for k in methods if k.startswith("cross-fit fine-tuned")]
    frozen = noise_detection_experiment(data, {k: m for k, m in methods.items() if k not in tuned}, noise_frac=0.2,
                                        seeds=seeds)
    text = noise_detection_experiment(text_data, {k: methods[k] for k in tuned}, noise_frac=0.2, seeds=seeds)
    df = summarize(pd.concat([frozen, text[text["method"] != "random"]]))
    rows = [{"method": r["method"], **_fmt(r)} for r in df.to_dict("records")]
    oob = float(df.loc[df["method"].str.startswith("data-oob"), "f1"].iloc[0])
    best = df[~df["method"].str.startswith("data-oob") & (df["method"] != "random")].sort_values("f1").iloc[-1]
    return ("zh-shopping-reviews (5,000 training / 1,000 validation reviews), 20% of training labels flipped (the "
            "same flips as the detection table, seeds 0-2); frozen features = m3e-small embeddings; the "
            "fine-tuned row trains the encoder itself on half of the reviews and values the other half "
            "(then the other way round), so every review is judged by a model that never saw it\n\n"
            + md_table(rows, ["method", "F1", "AUROC", "P@k", "seconds"])
            + f"\n\nBest method: {best['method']}, F1 {best['f1']:.3f} = Data-OOB {oob:.3f} "
              f"{best['f1'] - oob:+.3f} (target: +0.1).")


def detect_ceiling(seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 2) -> str:
    """zh-shopping-reviews, the same flips as `detect`: how far could *any* detector that judges
    a review's label by its text go? The clean-label ceiling (`clean_label_ceiling`) with the
    m3e-small encoder itself fine-tuned on the clean labels (2 folds, the same settings as
    `detect-lm`'s noisy cross-fit) beside the frozen-feature ceiling and Data-OOB in the same
    run. The fine-tuned fits see only clean labels, so one pair of fits serves every seed."""
    from shoprank.models.textclf import TextClassifier
    from shoprank.valuation.experiments import clean_label_ceiling, detection_metrics, flip_labels

    n_train = 5000
    data = zh_data(encoder="m3e-small")
    texts = zh_frame()["review"].astype(str).to_numpy(dtype=object)[:n_train]
    y = np.asarray(data.y_train)
    flips = [flip_labels(y, 0.2, seed=s) for s in seeds]
    obs = np.stack([f[0] for f in flips])
    clf = TextClassifier("m3e-small", tuning="top_k", tuning_config={"k": 2}, epochs=epochs, batch_size=32,
                         max_length=128, num_threads=2, progress=True)
    t0 = time.perf_counter()
    tuned = clean_label_ceiling(texts, y, obs, estimator=clf, n_folds=2)
    s_tuned = time.perf_counter() - t0
    t0 = time.perf_counter()
    frozen = clean_label_ceiling(data.x_train, y, obs, n_folds=2)
    s_frozen = time.perf_counter() - t0
    scores: dict[str, list[np.ndarray]] = {"data-oob (100 ridge bags, frozen features)": [],
                                           "ceiling: logistic regression of the clean labels (2 folds, frozen features)":
                                               list(frozen),
                                           f"ceiling: fine-tuned m3e-small of the clean labels (2 folds, top_k k=2, "
                                           f"{epochs} epochs)": list(tuned)}
    for s_, (yn, _) in zip(seeds, flips, strict=True):
        nd = ValuationData(data.x_train, yn, data.x_valid, data.y_valid)
        scores["data-oob (100 ridge bags, frozen features)"].append(DataOOB(n_estimators=100, seed=s_).fit(nd).values)
    rows, mean_f1 = [], {}
    for name, vals in scores.items():
        met = pd.DataFrame([detection_metrics(v, f[1], seed=s_) for v, f, s_ in zip(vals, flips, seeds, strict=True)])
        mean_f1[name] = float(met["f1"].mean())
        rows.append({"method": name, "F1": f"{mean_f1[name]:.3f} ± {met['f1'].std(ddof=0):.3f}",
                     "F1 best cut": f"{met['f1_best'].mean():.3f}", "AUROC": f"{met['auroc'].mean():.3f}",
                     "P@k": f"{met['precision_at_k'].mean():.3f}"})
        print(rows[-1], flush=True)
    oob = mean_f1["data-oob (100 ridge bags, frozen features)"]
    return ("zh-shopping-reviews (5,000 training reviews), 20% of labels flipped (seeds 0-2, the flips of `detect`): "
            "the clean-label ceiling, i.e. a model fitted to the *true* labels (on the other fold) judging each "
            "review's observed label: not a method (nobody has the true labels), the most that a detector judging "
            f"labels by the review text can find with that model (fits: fine-tuned {s_tuned:.0f} s, "
            f"frozen {s_frozen:.1f} s)\n\n"
            + md_table(rows, ["method", "F1", "F1 best cut", "AUROC", "P@k"])
            + f"\n\nThe target needs F1 {oob + 0.1:.3f} (Data-OOB + 0.1).")


def amazon_noise(frac: float = 0.2, seeds: tuple[int, ...] = (0, 1, 2)) -> str:
    """Injected noisy clicks on amazon-industrial: replace the next item of 20% of training
    pairs by a random catalog item ("random") or by targeted click spam ("targeted": 20
    promoted items, each clicked by the shoppers of one of 20 taste clusters); can the values
    find them? KNN-Shapley values are also read per product (`low_value_groups`)."""

    from shoprank.data.loaders import import_dataset
    from shoprank.text import render_items
    from shoprank.valuation.experiments import detection_metrics, low_value_groups

    ds = import_dataset("amazon-industrial", [SHARED / "amazon-industrial"])
    emb = _encoder().encode(render_items(ds.items), progress=True)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rows = pd.read_csv(SHARED / "amazon-industrial" / "valid.csv")  # train on valid.csv only (README)
    hist = [ds.item_map.to_internal([str(i) for i in ast.literal_eval(h)][-10:]) for h in rows["history_item_id"]]
    x = np.stack([emb[h].mean(0) for h in hist]).astype(np.float32)
    nxt = ds.item_map.to_internal(rows["item_id"].astype(str))
    users = rows["user_id"].astype(str).to_numpy()
    uniq = np.unique(users)
    valid_users = set(np.random.default_rng(0).choice(uniq, size=len(uniq) // 5, replace=False).tolist())
    va = np.isin(users, list(valid_users))
    tr = np.flatnonzero(~va)
    methods = {
        "knn-shapley (K=10, valid users)": lambda: KNNShapley(k=10, target="embedding"),
        "knn-shapley self (K=10)": lambda: KNNShapley(k=10, target="embedding", self_valuation=True),
        "data-oob (100 ridge bags)": lambda: DataOOB(n_estimators=100, target="embedding"),
    }
    group_name = "knn-shapley (K=10, valid users) per product: t-test flags (F1), t (AUROC)"
    out = []
    for noise in ("random", "targeted"):
        for seed in seeds:
            rng = np.random.default_rng(seed)
            noisy = rng.random(len(tr)) < frac
            y_items = nxt[tr].copy()
            if noise == "random":
                y_items[noisy] = rng.integers(0, ds.n_items, int(noisy.sum()))
            else:
                y_items[noisy], _ = _targeted_spam(rng, ds.n_items, x[tr], users[tr], noisy, seed)
            data = ValuationData(x[tr], emb[y_items], x[va], emb[nxt[va]])
            scores = {name: make().fit(data).values for name, make in methods.items()}
            scores["cosine(history, next) heuristic"] = (x[tr] * emb[y_items]).sum(1)
            scores["random"] = rng.random(len(tr))
            for name, v in scores.items():
                out.append({"noise": noise, "method": name, "seed": seed, **detection_metrics(v, noisy, seed=seed)})
            g = low_value_groups(scores["knn-shapley (K=10, valid users)"], y_items).set_index("group")
            flags = np.isin(y_items, g.index[g["flagged"]])
            m = detection_metrics(g.loc[y_items, "t"].to_numpy(), noisy, seed=seed)
            tp = int((flags & noisy).sum())
            m["f1"] = 2 * tp / max(int(flags.sum()) + int(noisy.sum()), 1)
            out.append({"noise": noise, "method": group_name, "seed": seed, **m})
    df = summarize(pd.DataFrame(out), by=["noise", "method"])
    table = [{"noise": r["noise"], "method": r["method"], **_fmt(r)} for r in df.to_dict("records")]
    for r in table:
        print(r, flush=True)
    return (f"amazon-industrial injected noisy clicks: {len(tr):,} training pairs (history -> next item, valid.csv, "
            f"80% of users; the other 20% are the validation pairs), {frac:.0%} of next items replaced by a random "
            "catalog item (random) or by targeted click spam (targeted: 20 promoted items, each given to the "
            "shoppers of one of 20 k-means taste clusters); x = mean MiniLM embedding of the history, y = next-item "
            "embedding (KNN-Shapley with cosine match of next items; Data-OOB ridge regression of the next-item "
            "vector, OOB cosine); per product: one-sided Welch t-test of each product's events' mean KNN-Shapley "
            "value against the rest (Bonferroni p < 0.01, >= 5 events), F1 of those flags; 3 seeds\n\n"
            + md_table(table, ["noise", "method", "F1", "AUROC", "P@k"]))


def _save(path: Path, run: dict[str, object]) -> None:
    """One Loop fit's test scores into benchmarks/results (per-row NDCG@10 to 6 decimals: what
    `--only loop-pool` needs, small enough to keep in the repository)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [None if x is None else round(float(x), 6) for x in run["per_user"]]  # type: ignore[attr-defined]
    path.write_text(json.dumps({**run, "per_user": rows}))


def _train_tag(train_seed: int) -> str:
    """File-name part of a Loop run's LM training seed (empty for seed 0, the runs recorded first)."""
    return "" if train_seed == 0 else f"-train{train_seed}"


def loop(frac: float = 0.2, seed: int | None = None, epochs: int = 1) -> str:
    """Closing the loop on amazon-industrial: inject 20% noisy clicks into the LM's training
    events, value every event, drop the ones the values flag, retrain, and compare test NDCG@10
    with the clean and the noisy model (same settings).

    `LOOP["noise"]`: "random" (each replaced item drawn uniformly from the catalog) or "spam"
    (drawn from 20 promoted items, as a click bot would) or "targeted" (each promoted item
    clicked by the shoppers of one taste cluster); `LOOP["drop_by"]`: which values flag the
    events to drop ("confidence": the noisy LM's own; "knn": KNN-Shapley against the
    validation events, 2-means; "knn-items": every event of the products whose events'
    KNN-Shapley values are significantly low as a group; "knn-items-lists": the same with the
    hubness-free list match, "-bh" with Benjamini-Hochberg instead of Bonferroni; "oracle":
    exactly the injected events). `LOOP["train_seed"]` is the LM's own training seed. The clean fit is deterministic and is reused from benchmarks/results/loop when an
    earlier run stored it (the table says so)."""
    import json

    noise, drop_by = str(LOOP["noise"]), str(LOOP["drop_by"])
    seed = int(LOOP["seed"]) if seed is None else seed  # type: ignore[call-overload]
    train_seed = int(LOOP["train_seed"])  # type: ignore[call-overload]
    tag = _train_tag(train_seed)
    from shoprank.data.loaders import import_dataset
    from shoprank.data.splits import histories_for, split_dataset
    from shoprank.evaluation import paired_bootstrap_diff
    from shoprank.evaluation.protocol import rec_testset
    from shoprank.evaluation.ranking import evaluate_full_ranking
    from shoprank.models.base import get_model_class
    from shoprank.text import render_items
    from shoprank.valuation import model_confidence
    from shoprank.valuation.experiments import detection_metrics, kmeans_flags

    ds = import_dataset("amazon-industrial", [SHARED / "amazon-industrial"])
    split = split_dataset(ds)
    tr = split.train.interactions.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    noisy = rng.random(len(tr)) < frac
    added = noise.endswith("-add")  # the spam is added beside the real events instead of replacing them
    kind = noise.removesuffix("-add")
    emb = _encoder().encode(render_items(ds.items), progress=True)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if kind == "spam":
        promoted = rng.choice(ds.n_items, 20, replace=False)
        repl = promoted[rng.integers(0, 20, int(noisy.sum()))]
    elif kind == "targeted":  # each promoted item clicked by the shoppers of one taste cluster
        repl, promoted = _targeted_spam(rng, ds.n_items, emb[ds.item_map.to_internal(tr["item_id"])],
                                        tr["user_id"].astype(str).to_numpy(), noisy, seed)
    else:
        promoted = np.array([], dtype=np.int64)
        repl = rng.integers(0, ds.n_items, int(noisy.sum()))
    if added:  # one spam click right after each chosen real event of the same shopper (1 ms later)
        extra = tr[noisy].copy()
        extra["item_id"] = ds.items["item_id"].to_numpy()[repl]
        extra["timestamp"] = extra["timestamp"] + pd.Timedelta(milliseconds=1)
        bad = pd.concat([tr, extra], ignore_index=True)
        noisy = np.r_[np.zeros(len(tr), bool), np.ones(len(extra), bool)]
    else:
        bad = tr.copy()
        bad.loc[noisy, "item_id"] = ds.items["item_id"].to_numpy()[repl]
    noisy_split = dataclasses.replace(split, train=split.train.with_tables(interactions=bad))
    print(f"{len(tr):,} training events, {int(noisy.sum()):,} {'added' if added else 'replaced'} ({noise} noise)",
          flush=True)
    params = {"tuning": "top_k", "tuning_config": {"k": 2}, "epochs": epochs, "patience": 1, "num_threads": 2,
              "verbose": True, "seed": train_seed}

    ts = rec_testset(split, "test")

    def evaluate(m: object) -> dict[str, object]:
        r = evaluate_full_ranking(m, ts.users, ts.targets, ks=(10,), n_bootstrap=1000, progress=False)  # type: ignore[arg-type]
        return {"ndcg": r.metrics["ndcg@10"], "hr": r.metrics["hr@10"], "lo": r.ci["ndcg@10"][0],
                "hi": r.ci["ndcg@10"][1], "per_user": [None if np.isnan(x) else float(x) for x in r.per_user["ndcg@10"]]}

    def fit_eval(sp: object, name: str) -> tuple[object, dict[str, object], float]:
        t0 = time.perf_counter()
        m = get_model_class("lm")(**params).fit(sp.train, sp.valid)  # type: ignore[attr-defined]
        secs = time.perf_counter() - t0
        out = evaluate(m)
        print(name, {k: v for k, v in out.items() if k != "per_user"}, f"{secs:.0f}s", flush=True)
        return m, out, secs

    cached = RESULTS / f"loop-clean-seed0{tag}-epochs{epochs}.json"  # the noise seed does not touch the clean fit
    if cached.exists():
        clean, s_clean = json.loads(cached.read_text()), 0.0
        print("clean (stored)", {k: v for k, v in clean.items() if k != "per_user"}, flush=True)
    else:
        _, clean, s_clean = fit_eval(split, "clean")
        _save(cached, clean)
    name = f"loop-noisy-{noise}-seed{seed}{tag}-epochs{epochs}"
    stored, noisy_eval = OUT / name, RESULTS / f"{name}.json"  # the noisy fit, to rerun the rest cheaply
    if (stored / "model").exists() and noisy_eval.exists():
        from shoprank.models.base import load_model

        noisy_model, dirty, s_dirty = load_model(stored / "model"), json.loads(noisy_eval.read_text()), 0.0
        print("noisy (stored)", {k: v for k, v in dirty.items() if k != "per_user"}, flush=True)
    else:
        noisy_model, dirty, s_dirty = fit_eval(noisy_split, "noisy")
        noisy_model.save(stored / "model")  # type: ignore[attr-defined]
        _save(noisy_eval, dirty)
    # values of the noisy training events
    t0 = time.perf_counter()  # (the oracle needs no scoring pass of the noisy LM)
    lists_rule = drop_by.startswith("knn-items-lists")  # the list match, with Bonferroni or (-bh) BH flags
    conf = (None if drop_by == "oracle" or lists_rule else
            model_confidence(noisy_model, noisy_split.train).values)  # type: ignore[arg-type]
    s_conf = time.perf_counter() - t0

    def pairs(frame: pd.DataFrame, ctx: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = histories_for(split.train.with_tables(interactions=ctx), frame, max_len=10, positives_only=True)
        has = np.array([len(x) > 0 for x in h.items])
        x = np.stack([emb[x].mean(0) if len(x) else np.zeros(emb.shape[1], np.float32) for x in h.items])
        return x.astype(np.float32), emb[ds.item_map.to_internal(frame["item_id"])], has

    xtr, ytr, has = pairs(bad, bad)
    va = split.valid.interactions
    xva, yva, hva = pairs(va, pd.concat([bad, va]))
    data = ValuationData(xtr[has], ytr[has], xva[hva], yva[hva])
    t0 = time.perf_counter()
    knn = np.full(len(bad), np.nan)
    knn[has] = KNNShapley(k=10, target="embedding").fit(data).values
    s_knn = time.perf_counter() - t0
    t0 = time.perf_counter()
    oob = np.full(len(bad), np.nan)
    oob[has] = DataOOB(n_estimators=100, target="embedding").fit(data).values
    s_oob = time.perf_counter() - t0
    lists = np.full(len(bad), np.nan)
    s_lists = 0.0
    if lists_rule:
        # hubness-free match: a neighbour's next item j matches validation item t when t is among
        # j's own M nearest catalog items (every item has exactly M, so a "hub" close to much of the
        # catalog earns no more than any other item): KNN-Shapley's target="lists"
        from shoprank.valuation import nearest_item_lists

        t0 = time.perf_counter()
        top = nearest_item_lists(emb, LIST_M)
        itr = ds.item_map.to_internal(bad["item_id"])[has]
        iva = ds.item_map.to_internal(va["item_id"])[hva]
        lists[has] = KNNShapley(k=10, target="lists").fit(ValuationData(xtr[has], top[itr], xva[hva], iva)).values
        s_lists = time.perf_counter() - t0
    rows = []
    for name, v, secs in (("model confidence (noisy LM, one scoring pass)", conf, s_conf),
                          ("knn-shapley (K=10, valid events)", knn, s_knn),
                          (f"knn-shapley (K=10, valid events, next item in the neighbour's {LIST_M}-item list)",
                           lists if lists_rule else None, s_lists),
                          ("data-oob (100 ridge bags)", oob, s_oob),
                          ("random", rng.random(len(bad)), 0.0)):
        if v is None:
            continue
        vv = np.where(np.isnan(v), np.nanmedian(v), v)
        met = detection_metrics(vv[has], noisy[has], seed=seed)
        rows.append({"method": name, "F1": round(met["f1"], 3), "AUROC": round(met["auroc"], 3),
                     "P@k": round(met["precision_at_k"], 3), "seconds": round(secs, 1)})
        print(rows[-1], flush=True)
    # retrain without what the model-confidence values flag (2-means, as in the detection protocol)
    flags = np.zeros(len(bad), bool)
    group_note = ""
    if drop_by == "oracle":  # the ceiling: exactly the injected events, as if a perfect valuation found them
        flags = noisy.copy()
    elif drop_by == "knn-items" or lists_rule:  # all events of the products whose clicks are worth significantly less
        from shoprank.valuation.experiments import CORRECTIONS, low_value_groups

        ev_items = bad["item_id"].astype(str).to_numpy()
        correction = "bh" if drop_by.endswith("-bh") else "bonferroni"
        g = low_value_groups((knn if drop_by == "knn-items" else lists)[has], ev_items[has], correction=correction)
        bad_items = g.loc[g["flagged"], "group"].tolist()
        flags = np.isin(ev_items, bad_items)
        group_note = (f" ({len(bad_items)} products flagged by a one-sided Welch t-test of their events' mean "
                      f"KNN-Shapley value against all other events, {CORRECTIONS[correction]}-adjusted p < 0.01, "
                      ">= 5 events; "
                      f"{len(set(bad_items) & set(ds.items['item_id'].astype(str).to_numpy()[promoted]))} of them "
                      "promoted)" if noise != "random" else "")
    else:
        flags[has] = kmeans_flags((conf if drop_by == "confidence" else knn)[has], seed=seed)
    kept = noisy_split.train.with_tables(interactions=bad[~flags].reset_index(drop=True))
    _, cleaned, s_cleaned = fit_eval(dataclasses.replace(split, train=kept), "cleaned")
    _save(RESULTS / f"loop-cleaned-{noise}-{drop_by}-seed{seed}{tag}-epochs{epochs}.json",
          {**cleaned, "n_dropped": int(flags.sum()), "n_dropped_injected": int((flags & noisy).sum())})  # for loop-pool
    lost = clean["ndcg"] - dirty["ndcg"]
    rec = (cleaned["ndcg"] - dirty["ndcg"]) / lost if lost > 0 else float("nan")

    def paired(a: dict[str, object], b: dict[str, object]) -> str:
        d = paired_bootstrap_diff(np.array(a["per_user"], dtype=float), np.array(b["per_user"], dtype=float),
                                  n=2000, nan_policy="omit")
        return f"{d.diff:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}], p = {d.p_value:.3f}"

    paired_note = (f"Paired bootstrap over the same test rows (2,000 resamples): clean minus noisy {paired(clean, dirty)}; "
                   f"cleaned minus noisy {paired(cleaned, dirty)}; clean minus cleaned {paired(clean, cleaned)}.\n\n")
    table = [
        {"training events": "clean" + (" (stored fit)" if not s_clean else ""), "n": len(tr), "NDCG@10": clean["ndcg"], "95% CI": f"[{clean['lo']:.4f}, {clean['hi']:.4f}]", "HR@10": clean["hr"], "fit s": round(s_clean)},
        {"training events": f"{frac:.0%} {noise} clicks injected" + (" (stored fit)" if not s_dirty else ""), "n": len(bad), "NDCG@10": dirty["ndcg"], "95% CI": f"[{dirty['lo']:.4f}, {dirty['hi']:.4f}]", "HR@10": dirty["hr"], "fit s": round(s_dirty)},
        {"training events": "noisy minus the flagged", "n": int((~flags).sum()), "NDCG@10": cleaned["ndcg"], "95% CI": f"[{cleaned['lo']:.4f}, {cleaned['hi']:.4f}]", "HR@10": cleaned["hr"], "fit s": round(s_cleaned)},
    ]
    flagged_noisy = int((flags & noisy).sum())
    what = {"random": "random catalog items", "spam": "one of 20 promoted items (click spam)",
            "targeted": "targeted click spam (20 promoted items, each clicked by the shoppers of one of 20 "
                        "taste clusters: k-means of their history's mean MiniLM item vector)"}[kind]
    rules = {"oracle": "exactly the injected events (the ceiling of any valuation: not a valuation method)",
          "confidence": "the 2-means low cluster of the model-confidence values",
          "knn": "the 2-means low cluster of the KNN-Shapley values",
          "knn-items": "every event of the products whose events' KNN-Shapley values are significantly low"
                       + group_note,
          "knn-items-lists": "every event of the products whose events' KNN-Shapley values are significantly low, "
                             f"with a neighbour's next item matching when the validation item is among its {LIST_M} "
                             "nearest catalog items (no cosine credit for 'hub' products)" + group_note}
    rules["knn-items-lists-bh"] = rules["knn-items-lists"]  # the correction is named in group_note
    by = rules[drop_by]
    return (f"Closing the loop on amazon-industrial (`lm` top_k k=2, {epochs} epoch, LM training seed {train_seed}, trained on valid.csv's events; "
            f"test = the predefined test rows, full ranking over {ds.n_items} items): "
            + (f"{int(noisy.sum()):,} events of {what} added to the {len(tr):,} real training events (one spam click "
               f"right after {frac:.0%} of the real events, by the same shopper) (seed {seed}); the noisy "
               if added else
               f"{int(noisy.sum()):,} of {len(tr):,} training events ({frac:.0%}) replaced by {what} (seed {seed}); the noisy ")
            + f"events valued, {by} dropped "
            f"({int(flags.sum()):,} events, {flagged_noisy:,} of them injected), and the LM retrained.\n\n"
            + md_table(table, ["training events", "n", "NDCG@10", "95% CI", "HR@10", "fit s"])
            + (f"\n\nNDCG@10 lost to the noise: {lost:.4f}; recovered by value-aware retraining: "
               f"{cleaned['ndcg'] - dirty['ndcg']:.4f} = **{rec:.0%} of the loss** (target: at least 50%).\n\n"
               if lost > 0 else
               f"\n\nThe noise did not lower NDCG@10 (noisy minus clean: {-lost:+.4f}), so there is no loss to "
               f"recover; value-aware retraining changed NDCG@10 by {cleaned['ndcg'] - dirty['ndcg']:+.4f}.\n\n")
            + paired_note
            + "Detection of the injected events by the values (events with at least one earlier event; "
            "KNN-Shapley and Data-OOB on frozen MiniLM features: mean history embedding -> next-item embedding):\n\n"
            + md_table(rows, ["method", "F1", "AUROC", "P@k", "seconds"]))


def loop_pool(epochs: int = 1) -> str:
    """The Loop over every noise seed run so far (`--only loop` with `--loop-seed S` stores each
    seed's noisy and cleaned test rows): one seed's loss is within the noise of the test set, so
    the pooled answer is the mean loss and mean recovery over seeds on the same test rows, with a
    row bootstrap of the recovered fraction. Where a condition was fitted with several LM training
    seeds (`--loop-train-seed`), its per-row scores are averaged over them first (the fit's own
    spread is listed), so one lucky or unlucky fit weighs less. `LOOP["seeds"]` /
    `LOOP["train_seeds"]` restrict the pool (empty: every stored run)."""
    import json
    import re

    from shoprank.evaluation import bootstrap_stats, paired_bootstrap_diff

    noise, drop_by = str(LOOP["noise"]), str(LOOP["drop_by"])
    want_s = set(LOOP.get("seeds") or ())  # type: ignore[call-overload]
    want_t = set(LOOP.get("train_seeds") or ())  # type: ignore[call-overload]

    def runs(pattern: str, by_noise_seed: bool = True) -> dict[tuple[int, int], dict[str, object]]:
        """(noise seed, training seed) -> stored eval, for files matching `pattern` (seed, train groups)."""
        out: dict[tuple[int, int], dict[str, object]] = {}
        for path in RESULTS.glob("loop-*.json"):
            m = re.fullmatch(pattern, path.name)
            if m is None:
                continue
            s, t = int(m.group(1)), int(m.group(2) or 0)
            if (by_noise_seed and want_s and s not in want_s) or (want_t and t not in want_t):
                continue
            out[(s, t)] = json.loads(path.read_text())
        return out

    tail = rf"(?:-train(\d+))?-epochs{epochs}"
    cleans = runs(rf"loop-clean-seed(0){tail}\.json", by_noise_seed=False)  # the clean fit has no noise seed
    noisies = runs(rf"loop-noisy-{re.escape(noise)}-seed(\d+){tail}\.json")
    cleaneds = runs(rf"loop-cleaned-{re.escape(noise)}-{re.escape(drop_by)}-seed(\d+){tail}\.json")
    if not cleans:
        return "Loop pooled: no stored clean fit (run `--only loop` first)."

    def rows_of(d: dict[str, object]) -> np.ndarray:
        return np.array(d["per_user"], dtype=float)

    clean_t = sorted(t for (_, t) in cleans)
    seeds, clean, noisy, cleaned, rows, units = [], [], [], [], [], []
    spread = [{"condition": "clean", "training seeds": ", ".join(map(str, clean_t)),
               "NDCG@10 per fit": ", ".join(f"{cleans[(0, t)]['ndcg']:.4f}" for t in clean_t),
               "SD": float(np.std([cleans[(0, t)]["ndcg"] for t in clean_t], ddof=1)) if len(clean_t) > 1 else None}]
    for seed in sorted({s for (s, _) in cleaneds}):
        # a noise seed's clean, noisy and cleaned fits, each averaged over the same LM training seeds
        ts = sorted(t for (s, t) in cleaneds if s == seed and (s, t) in noisies and (0, t) in cleans)
        if not ts:
            continue
        c_runs, n_runs, k_runs = [cleans[(0, t)] for t in ts], [noisies[(seed, t)] for t in ts], \
            [cleaneds[(seed, t)] for t in ts]
        seeds.append(seed)
        for out, rr in ((clean, c_runs), (noisy, n_runs), (cleaned, k_runs)):
            out.append(np.mean([rows_of(r) for r in rr], 0))
        nd = [float(np.mean([r["ndcg"] for r in rr])) for rr in (c_runs, n_runs, k_runs)]
        units += [(c["ndcg"] - n["ndcg"], k["ndcg"] - n["ndcg"]) for c, n, k in zip(c_runs, n_runs, k_runs, strict=True)]
        k0 = k_runs[0]
        rows.append({"noise seed": seed, "training seeds": ", ".join(map(str, ts)), "noisy NDCG@10": nd[1],
                     "cleaned NDCG@10": nd[2], "lost": nd[0] - nd[1], "recovered": nd[2] - nd[1],
                     "events dropped (injected)": f"{k0.get('n_dropped', '?')} ({k0.get('n_dropped_injected', '?')})"})
        if len(ts) > 1:
            for name, rr in (("noisy", n_runs), ("cleaned", k_runs)):
                spread.append({"condition": f"{name}, noise seed {seed}", "training seeds": ", ".join(map(str, ts)),
                               "NDCG@10 per fit": ", ".join(f"{r['ndcg']:.4f}" for r in rr),
                               "SD": float(np.std([r["ndcg"] for r in rr], ddof=1))})
    if not seeds:
        return "Loop pooled: no stored seeds (run `--only loop --loop-seed S` first)."
    ok = np.all(np.isfinite(clean), 0) & np.all(np.isfinite(noisy), 0) & np.all(np.isfinite(cleaned), 0)
    c, nm, km = np.mean(clean, 0)[ok], np.mean(noisy, 0)[ok], np.mean(cleaned, 0)[ok]
    loss = paired_bootstrap_diff(c, nm, n=2000)
    lost, p_lost, rec = loss.diff, loss.p_value, float(np.mean(km - nm))
    b_lost, b_rec = bootstrap_stats(c - nm, 2000, seed=0), bootstrap_stats(km - nm, 2000, seed=0)  # same resamples
    ratio = b_rec / np.where(b_lost > 0, b_lost, np.nan)
    lo, hi = np.nanpercentile(ratio, [2.5, 97.5])
    p_half = float(np.mean(b_rec - 0.5 * b_lost <= 0))
    # the row bootstrap sees only which test rows were drawn; refitting moves a score too, so
    # also resample whole runs (one unit = a noise seed x training seed: its lost and recovered)
    u = np.array(units, dtype=float)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(u), (2000, len(u)))
    fit_ratio = u[pick, 1].sum(1) / np.where(u[pick, 0].sum(1) > 0, u[pick, 0].sum(1), np.nan)
    f_lo, f_hi = np.nanpercentile(fit_ratio, [2.5, 97.5])
    f_half = float(np.mean(~(fit_ratio >= 0.5)))
    runs_note = (f" Resampling the {len(u)} runs (noise seed x LM training seed) instead of the rows: 95% CI "
                 f"[{f_lo:.0%}, {f_hi:.0%}], share below half {f_half:.3f}." if len(u) >= 5 else
                 f" ({len(u)} runs: too few to resample runs instead of rows.)")
    fits = ("" if len(spread) == 1 and len(clean_t) == 1 else
            "\n\nThe fit's own spread (each condition refitted with other LM training seeds; same data, same "
            "test rows):\n\n" + md_table(spread, ["condition", "training seeds", "NDCG@10 per fit", "SD"]))
    return (f"The Loop pooled over noise seeds {', '.join(map(str, seeds))} ({noise} noise, dropped by {drop_by}, "
            f"{epochs} epoch; each noise seed's clean, noisy and cleaned fits averaged over the same LM training "
            f"seeds; same test rows, {len(c):,} with a score in every run): mean NDCG@10 lost to the noise "
            f"{lost:+.4f} (paired row bootstrap p = {p_lost:.3f}), mean recovered by value-aware retraining "
            f"{rec:+.4f} = **{rec / lost:.0%} of the loss** (95% CI of the fraction over 2,000 row resamples "
            f"[{lo:.0%}, {hi:.0%}]; share of resamples recovering less than half: {p_half:.3f}).{runs_note}\n\n"
            + md_table(rows, list(rows[0])) + fits)


def active(seeds: tuple[int, ...] | None = None, start: int = 200, step: int = 200, budget: int = 4000) -> str:
    """Active labelling on homedepot-search: which (query, product) pairs to send to annotators.

    Pool = the training queries' judged pairs with their labels hidden; a relevance model
    (logistic regression on [frozen MiniLM query x product vector product, cosine, BM25], label
    = grade >= 2.5) is refitted after each batch of `step` labels and scored by graded NDCG@10
    of the held-out test queries' judged products. Strategies (`--active-strategies`): random,
    uncertainty, uncertainty x value (`ActiveLabeler`: KNN-Shapley values of the labelled pairs
    against the validation queries), and diverse uncertainty (uncertainty-weighted k-means over
    the 20k most uncertain, one pair per cluster; beta = 20 chosen on seeds 0-9, so report it
    on `--active-seed-start 10`), and fisher (`ActiveLabeler(strategy="fisher")`: the batch that
    most lowers the logistic model's expected error on the pool, BAIT; tried on seeds 0-2 of
    `--active-eval catalog` before its recorded run on fresh seeds). Reported: labels needed to reach 95% of the NDCG@10 of the model
    trained on the whole pool, and — because the unlabelled start already ranks well here — to
    reach 95% of the full pool's gain over the start. `--active-eval catalog` ranks the whole
    catalog per test query instead (unjudged products earn nothing): over the judged products
    alone a random order already scores 0.896 and the full pool 0.916, so the labels-needed
    count sits within test noise of the plateau; over the catalog a random order scores ~0."""
    from sklearn.linear_model import LogisticRegression

    from shoprank.data.loaders import import_dataset
    from shoprank.data.splits import split_dataset
    from shoprank.models.base import get_model_class
    from shoprank.models.baselines import BM25Ranker
    from shoprank.models.engine import graded_ndcg
    from shoprank.valuation.acquisition import ActiveLabeler

    ds = import_dataset("homedepot", [SHARED / "homedepot-search" / "train.csv"])
    split = split_dataset(ds)
    dense = get_model_class("dense")(cache_dir=str(CACHE)).fit(split.train)
    bm25 = BM25Ranker().fit(split.train)
    item_emb = dense.item_emb_  # type: ignore[attr-defined]

    def feats(j: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        qs = j["query"].astype(str).tolist()
        uq = sorted(set(qs))
        qv = dict(zip(uq, dense.query_vectors(uq), strict=True))  # type: ignore[attr-defined]
        items = ds.item_map.to_internal(j["item_id"])
        q = np.stack([qv[x] for x in qs])
        p = item_emb[items]
        bm = np.concatenate(bm25.score_query_items(qs, [np.array([i]) for i in items]))
        x = np.hstack([q * p, (q * p).sum(1, keepdims=True), np.log1p(np.maximum(bm, 0))[:, None]]).astype(np.float32)
        if ACTIVE["features"] == "learned":  # no ready-made relevance score: everything comes from the labels
            x = (q * p).astype(np.float32)
        return x, j["grade"].to_numpy(np.float64), np.asarray(qs, dtype=object), items

    xp, gp, _, _ = feats(split.train.judgments)
    xv, gv, _, _ = feats(split.valid.judgments)
    xt, gt, qt, _ = feats(split.test.judgments)
    yp, yv = (gp >= 2.5).astype(int), (gv >= 2.5).astype(int)
    gmin = float(ds.meta.get("grade_min", 1.0))
    groups = pd.Series(np.arange(len(qt))).groupby(qt).apply(np.asarray).tolist()

    def ndcg(scores: np.ndarray) -> float:
        return graded_ndcg([scores[g] for g in groups], [np.clip(gt[g] - gmin, 0, None) for g in groups], k=10)

    learned = ACTIVE["features"] == "learned"
    first = int(ACTIVE["seed_start"])  # type: ignore[call-overload]
    seeds = seeds if seeds is not None else tuple(range(first, first + int(ACTIVE["seeds"])))  # type: ignore[call-overload]
    no_label_scores = np.random.default_rng(0).random(len(xt)) if learned else xt[:, -2]

    catalog = ACTIVE["eval"] == "catalog"
    if catalog:  # rank the whole catalog per test query; unjudged products earn nothing
        if not learned:
            raise SystemExit("--active-eval catalog needs --active-features learned (a linear scorer over q * p)")
        import torch

        from shoprank.evaluation.metrics import ndcg_at_k

        tq = sorted(set(qt.tolist()))
        qvec = torch.from_numpy(np.stack(dense.query_vectors(tq)).astype(np.float32))
        pvec = torch.from_numpy(np.ascontiguousarray(item_emb, dtype=np.float32))
        tj = split.test.judgments
        pos = {q: i for i, q in enumerate(tq)}
        t_items, t_gains = [[] for _ in tq], [[] for _ in tq]  # type: ignore[var-annotated]
        for q, i, g in zip(qt, ds.item_map.to_internal(tj["item_id"]), gt, strict=True):
            t_items[pos[q]].append(int(i))
            t_gains[pos[q]].append(max(float(g) - gmin, 0.0))
        t_items_a, t_gains_a = [np.array(x) for x in t_items], [np.array(x) for x in t_gains]  # once, not per call

        def catalog_ndcg(w: np.ndarray | None) -> float:
            gen = torch.Generator().manual_seed(0)
            top = []
            for s in range(0, len(tq), 512):
                qs_ = qvec[s:s + 512]
                sc = (torch.rand(len(qs_), len(pvec), generator=gen) if w is None
                      else (qs_ * torch.from_numpy(w.astype(np.float32))) @ pvec.T)
                top.append(torch.topk(sc, 10, dim=1).indices.numpy())
            return float(np.nanmean(ndcg_at_k(np.concatenate(top), t_items_a, 10, gains=t_gains_a)))

    def fit_score(idx: np.ndarray) -> float:
        y = yp[idx]
        if len(np.unique(y)) < 2:
            return catalog_ndcg(None) if catalog else ndcg(no_label_scores)
        m = LogisticRegression(max_iter=1000, C=1.0).fit(xp[idx], y)
        return catalog_ndcg(m.coef_[0]) if catalog else ndcg(m.decision_function(xt))

    start_ndcg = catalog_ndcg(None) if catalog else ndcg(no_label_scores)  # no labels: cosine alone (learned: random order)
    full = fit_score(np.arange(len(xp)))
    print(f"pool {len(xp):,} pairs; test queries {len(groups):,}; no labels {start_ndcg:.4f}; full pool {full:.4f}",
          flush=True)
    curves: dict[str, list[list[float]]] = {}
    for strategy in ACTIVE["strategies"]:  # type: ignore[attr-defined]
        for seed in seeds:
            rng = np.random.default_rng(seed)
            lab = rng.choice(len(xp), start, replace=False)
            curve = [fit_score(lab)]
            while len(lab) < budget:
                pool = np.setdiff1d(np.arange(len(xp)), lab)
                if strategy == "random":
                    pick = rng.choice(pool, step, replace=False)
                else:
                    vals = None
                    if strategy.endswith("-value"):
                        vals = KNNShapley(k=10).fit(ValuationData(xp[lab], yp[lab], xv, yv)).values
                    al = ActiveLabeler(LogisticRegression(max_iter=1000), strategy=strategy, seed=seed)
                    pick = pool[al.fit(xp[lab], yp[lab], vals).select(xp[pool], step)]
                lab = np.concatenate([lab, pick])
                curve.append(fit_score(lab))
            curves.setdefault(strategy, []).append(curve)
            print(strategy, seed, [round(c, 4) for c in curve[::4]], flush=True)
    sizes = [start + step * i for i in range(len(next(iter(curves.values()))[0]))]

    def needed(curve: list[float], target: float) -> float:
        hit = [n for n, v in zip(sizes, curve, strict=True) if v >= target]
        return float(hit[0]) if hit else float("nan")

    rows = []
    target = start_ndcg + 0.95 * (full - start_ndcg)
    base = np.nanmean([needed(c, target) for c in curves["random"]]) if "random" in curves else float("nan")
    for strategy, cs in curves.items():
        mean = np.mean(cs, axis=0)
        lit = [needed(c, 0.95 * full) for c in cs]
        gain = [needed(c, target) for c in cs]
        rows.append({"strategy": strategy, f"NDCG@10 at {sizes[1]}": float(mean[1]),
                     f"at {sizes[len(sizes) // 2]}": float(mean[len(sizes) // 2]), f"at {sizes[-1]}": float(mean[-1]),
                     "labels to 95% of full NDCG": f"{np.nanmean(lit):.0f}",
                     "labels to 95% of full gain (mean where reached)": (f"{np.nanmean(gain):.0f}" if not np.isnan(gain).all() else
                                                    f"> {budget}") + f" ({sum(~np.isnan(gain))}/{len(gain)} seeds reach it)",
                     # a mean over only the seeds that got there would reward a strategy for failing on the others
                     "fewer than random": "" if strategy == "random" or np.isnan(base) else (
                         f"{1 - np.mean(gain) / base:.0%}" if not np.isnan(gain).any()
                         else f"n/a: {int(np.isnan(gain).sum())} seeds never reach it"),
                     "on the mean curve": f"{needed(list(mean), target):.0f}",
                     "per seed (gain)": " ".join("-" if np.isnan(g) else f"{g:.0f}" for g in gain),
                     "mean NDCG@10 over the curve": float(np.mean(mean[1:]))})
    feats_desc = ("the elementwise product of the frozen MiniLM query and product vectors only (no cosine, no "
                  "BM25: a relevance model that learns everything from the labels)" if learned else
                  "frozen MiniLM query x product features, cosine and BM25")
    where = (f"over the whole catalog ({len(item_emb):,} products, unjudged ones earning nothing) for {len(groups):,} "
             "test queries" if catalog else f"on {len(groups):,} test queries' judged products")
    return (f"Active labelling on homedepot-search: pool = {len(xp):,} judged (query, product) pairs of the training "
            f"queries, labels revealed {step} at a time from {start} random ones, up to {budget}; logistic regression "
            f"(label: grade >= 2.5) on {feats_desc}; graded NDCG@10 {where}; mean of {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}). No labels "
            f"({'random order' if learned else 'cosine only'}): {start_ndcg:.4f}; the whole pool: {full:.4f}.\n\n"
            + md_table(rows, list(rows[0])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="correctness,speed,oob,detect,detect-lm,amazon,loop,active")
    ap.add_argument("--no-pydvl-50k", action="store_true", help="skip pyDVL at 50k x 1k (minutes)")
    ap.add_argument("--detect-datasets", default="", help="e.g. m3e,tallrec (default: all)")
    ap.add_argument("--loop-noise", default="random",
                    choices=["random", "spam", "targeted", "random-add", "spam-add", "targeted-add"],
                    help="the replaced events' items are noise; with -add the noise is added beside the real events")
    ap.add_argument("--loop-drop-by", default="confidence", choices=["confidence", "knn", "knn-items", "knn-items-lists",
                                                                   "knn-items-lists-bh", "oracle"],
                    help="oracle: drop exactly the injected events (the ceiling of any valuation)")
    ap.add_argument("--loop-seed", type=int, default=0, help="which events get the noise (the LM's own training seed stays fixed)")
    ap.add_argument("--loop-train-seed", type=int, default=0,
                    help="the LM's own training seed (batches, negatives): repeat a condition to see the fit's spread")
    ap.add_argument("--loop-pool-seeds", default="", help="loop-pool: only these noise seeds, e.g. 3,5")
    ap.add_argument("--loop-pool-train-seeds", default="", help="loop-pool: only these LM training seeds")
    ap.add_argument("--active-features", default="all", choices=["all", "learned"])
    ap.add_argument("--active-eval", default="judged", choices=["judged", "catalog"],
                    help="NDCG@10 over each test query's judged products, or over the whole catalog")
    ap.add_argument("--active-seeds", type=int, default=3)
    ap.add_argument("--active-seed-start", type=int, default=0,
                    help="first seed (ActiveLabeler's beta was chosen on seeds 0-9: report on others)")
    ap.add_argument("--active-strategies", default="random,uncertainty,uncertainty-value,diverse-uncertainty,fisher")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    LOOP.update(noise=a.loop_noise, drop_by=a.loop_drop_by, seed=a.loop_seed, train_seed=a.loop_train_seed,
                seeds=tuple(int(x) for x in a.loop_pool_seeds.split(",") if x),
                train_seeds=tuple(int(x) for x in a.loop_pool_train_seeds.split(",") if x))
    ACTIVE.update(features=a.active_features, eval=a.active_eval, seeds=a.active_seeds, seed_start=a.active_seed_start,
                  strategies=tuple(a.active_strategies.split(",")))
    DETECT_ONLY.extend(x for x in a.detect_datasets.split(",") if x)
    parts, only = [], set(a.only.split(","))
    t0 = time.perf_counter()
    for key, fn in (("correctness", correctness), ("speed", lambda: speed(not a.no_pydvl_50k)),
                    ("oob", oob_speed), ("detect", detect), ("detect-lm", detect_lm), ("detect-ceiling", detect_ceiling),
                    ("amazon", amazon_noise), ("loop", loop), ("loop-pool", loop_pool),
                    ("active", active)):
        if key in only:
            t = time.perf_counter()
            parts.append(fn())
            parts.append(f"({key}: {time.perf_counter() - t:.0f} s)")
            print(parts[-2], parts[-1], sep="\n", flush=True)
    if not a.no_record:
        record("Data valuation (benchmarks/valuation.py)", "\n\n".join(parts) + f"\n\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

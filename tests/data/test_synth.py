"""The synthetic shop: deterministic, valid, realistic text, and carrying the signal its
ground truth claims (so that evaluations against the truth mean something)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.data.synth import (
    PROVENANCE,
    SOURCES,
    SynthConfig,
    load_truth,
    save_synth,
    synthesize,
    true_utility,
)
from shoprank.errors import ShoprankError

CJK = re.compile("[\u4e00-\u9fff]")
TABLES = ("items", "interactions", "judgments")


@pytest.fixture(scope="module")
def en() -> tuple[Dataset, dict[str, pd.DataFrame], float]:
    t = time.perf_counter()
    ds, truth = synthesize(SynthConfig.preset("tiny"))
    return ds, truth, time.perf_counter() - t


@pytest.fixture(scope="module")
def zh() -> tuple[Dataset, dict[str, pd.DataFrame]]:
    ds, truth = synthesize(SynthConfig.preset("tiny", lang="zh"))
    return ds, truth


def _clean(ds: Dataset, truth: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Interactions without the rows the truth flags as noise."""
    noise = truth["interaction_noise"].sort_values("row")["is_noise"].to_numpy()
    return ds.interactions[~noise]


# -- config -----------------------------------------------------------------------------


def test_presets_and_config_checks() -> None:
    tiny = SynthConfig.preset("tiny")
    assert (tiny.n_items, tiny.n_users, tiny.n_events, tiny.n_queries) == (200, 100, 3000, 40)
    assert SynthConfig.preset("small").n_items == 2000
    assert SynthConfig.preset("large").n_items == 100_000
    assert set(SynthConfig.preset_names()) == {"tiny", "small", "large"}
    with pytest.raises(ShoprankError, match="unknown synth preset"):
        SynthConfig.preset("huge")
    with pytest.raises(ShoprankError, match="lang"):
        SynthConfig.preset("tiny", lang="fr")
    with pytest.raises(ShoprankError, match="cold_start_frac"):
        SynthConfig.preset("tiny", cold_start_frac=1.5)
    # The CLI sets JSON-parsed values with setattr: they are coerced when synthesising.
    cfg = SynthConfig.preset("tiny")
    cfg.n_events, cfg.seed = 2000.0, "3"  # type: ignore[assignment]
    assert cfg.checked().n_events == 2000 and cfg.seed == 3
    cfg.n_items = 2.5  # type: ignore[assignment]
    with pytest.raises(ShoprankError, match="n_items"):
        cfg.checked()


def test_tiny_is_fast_and_hits_the_event_target(en) -> None:
    ds, truth, seconds = en
    assert seconds < 2.0
    assert len(ds.items) == 200
    assert len(ds.interactions) == 3000  # bot clicks top up organic events to the target
    assert ds.judgments[Col.QUERY].nunique() == 40
    assert ds.meta["provenance"] == PROVENANCE
    assert ds.meta["synth"]["preset_name"] == "tiny"


# -- determinism and validity -------------------------------------------------------------


def test_same_seed_same_tables_other_seed_other_tables(en) -> None:
    ds, truth, _ = en
    ds2, truth2 = synthesize(SynthConfig.preset("tiny"))
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(ds, t), getattr(ds2, t))
    assert truth.keys() == truth2.keys()
    for k in truth:
        pd.testing.assert_frame_equal(truth[k], truth2[k])
    ds3, _ = synthesize(SynthConfig.preset("tiny", seed=1))
    assert not ds3.items[Col.TITLE].equals(ds.items[Col.TITLE])
    assert not ds3.interactions[Col.ITEM_ID].equals(ds.interactions[Col.ITEM_ID])


def test_english_and_chinese_share_the_latent_shop(en, zh) -> None:
    (ds_en, t_en, _), (ds_zh, t_zh) = en, zh
    for k in ("item_truth", "user_truth", "interaction_noise", "judgment_truth"):
        a, b = t_en[k], t_zh[k]
        num = [c for c in a.columns if pd.api.types.is_numeric_dtype(a[c]) or a[c].dtype == bool]
        pd.testing.assert_frame_equal(a[num], b[num])
    for c in (Col.USER_ID, Col.ITEM_ID, Col.EVENT, Col.TIMESTAMP, Col.SOURCE):
        pd.testing.assert_series_equal(ds_en.interactions[c], ds_zh.interactions[c])


def test_tables_pass_validation_again(en) -> None:
    ds, _, _ = en
    from shoprank.data.validate import ValidationReport

    rep = ValidationReport()
    again = Dataset.from_frames("x", ds.items, ds.interactions, ds.judgments, report=rep)
    assert rep.rejected == 0 and rep.kept == len(ds.items) + len(ds.interactions) + len(ds.judgments)
    assert len(again.interactions) == len(ds.interactions)
    assert ds.items[Col.ITEM_ID].is_unique
    assert ds.interactions[Col.TIMESTAMP].is_monotonic_increasing
    assert ds.interactions[Col.LABEL].isna().all()


# -- text -----------------------------------------------------------------------------------


def test_english_catalog_looks_like_a_shop(en) -> None:
    ds, truth, _ = en
    items = ds.items
    assert 10 <= items[Col.CATEGORY].nunique() <= 20
    assert not items[Col.TITLE].str.contains(CJK).any()
    for _, r in items.head(50).iterrows():
        attrs = json.loads(r[Col.ATTRIBUTES])
        assert r[Col.TITLE].startswith(r[Col.BRAND] + " ")
        assert attrs["type"].lower() in r[Col.TITLE].lower()
        assert attrs["feature"].lower() in r[Col.TITLE].lower()
        if "color" in attrs:
            assert r[Col.TITLE].endswith(", " + attrs["color"].capitalize())
        n_sentences = r[Col.DESCRIPTION].count(". ") + 1
        assert 1 <= n_sentences <= 3 and r[Col.DESCRIPTION].endswith(".")
    assert (items[Col.PRICE] > 0).all()
    # Log-normal prices differ a lot between categories (laptops vs coffee).
    med = items.groupby(Col.CATEGORY)[Col.PRICE].median()
    assert med.max() / med.min() > 10
    q = truth["queries"]
    assert q[Col.QUERY].is_unique and q["uses_synonym"].any() and q["has_typo"].any()


def test_chinese_catalog_and_queries(zh) -> None:
    ds, truth = zh
    items = ds.items
    assert items[Col.TITLE].str.contains(CJK).all()
    assert items[Col.DESCRIPTION].str.endswith("。").all()
    assert items[Col.CATEGORY].str.contains(CJK).all()
    assert ds.judgments[Col.QUERY].str.contains(CJK).all()
    assert ds.meta["currency"] == "CNY"
    for a in items[Col.ATTRIBUTES].head(30):
        assert "品类" in json.loads(a)
    assert set(truth["user_tastes"].columns[1:]) == set(items[Col.CATEGORY])


# -- behaviour and signal -----------------------------------------------------------------


def test_funnel_narrows(en) -> None:
    ds, _, _ = en
    vc = ds.interactions[Col.EVENT].value_counts()
    assert vc["view"] >= vc["click"] >= vc["cart"] >= vc["purchase"] > 0
    for _src, g in ds.interactions[ds.interactions[Col.SOURCE] != "bot"].groupby(Col.SOURCE):
        c = g[Col.EVENT].value_counts().reindex(["view", "click", "cart", "purchase"], fill_value=0)
        assert list(c) == sorted(c, reverse=True)


def test_bot_is_noise_and_web_is_clean(en) -> None:
    ds, truth, _ = en
    inter = ds.interactions
    noise = truth["interaction_noise"]
    assert (noise["row"].to_numpy() == np.arange(len(inter))).all()
    assert (noise[Col.SOURCE].to_numpy() == inter[Col.SOURCE].to_numpy()).all()
    rate = noise.groupby(Col.SOURCE)["is_noise"].mean()
    assert rate["bot"] == 1.0 and rate["web"] == 0.0 and rate["app"] == 0.0
    assert 0.1 < rate["partner_feed"] < 0.45
    clicks = inter[Col.EVENT] == "click"
    bot_share = (clicks & (inter[Col.SOURCE] == "bot")).sum() / clicks.sum()
    assert 0.07 < bot_share < 0.13

    def buy_per_click(src: str) -> float:
        g = inter[inter[Col.SOURCE] == src][Col.EVENT]
        return (g == "purchase").sum() / max(1, (g == "click").sum())

    assert buy_per_click("bot") < 0.5 * buy_per_click("web")
    src = truth["sources"].set_index(Col.SOURCE)
    assert list(src.index) == list(SOURCES)
    assert (inter[Col.COST].to_numpy() == src.loc[inter[Col.SOURCE], "cost_per_record"].to_numpy()).all()


def test_cold_start_items_appear_late_and_never_before_creation(en) -> None:
    ds, truth, _ = en
    start = pd.Timestamp(ds.meta["synth"]["start"], tz="UTC")
    days = ds.meta["synth"]["days"]
    it = ds.items.merge(truth["item_truth"][[Col.ITEM_ID, "is_cold_start"]], on=Col.ITEM_ID)
    cold = it[it["is_cold_start"]]
    assert 0.03 < len(cold) / len(it) < 0.2
    assert (cold[Col.CREATED_AT] >= start + pd.Timedelta(days=0.8 * days)).all()
    assert (it.loc[~it["is_cold_start"], Col.CREATED_AT] <= start).all()
    ev = ds.interactions.merge(it[[Col.ITEM_ID, Col.CREATED_AT, "is_cold_start"]], on=Col.ITEM_ID)
    assert (ev[Col.TIMESTAMP] >= ev[Col.CREATED_AT]).all()
    assert ev["is_cold_start"].any()  # cold items do get (late) events


def test_purchases_follow_user_taste(en) -> None:
    ds, truth, _ = en
    tastes = truth["user_tastes"].set_index(Col.USER_ID)
    buys = _clean(ds, truth)
    buys = buys[buys[Col.EVENT] == "purchase"].merge(ds.items[[Col.ITEM_ID, Col.CATEGORY]], on=Col.ITEM_ID)
    top2 = {u: set(r.nlargest(2).index) for u, r in tastes.iterrows()}
    in_top = np.mean([c in top2[u] for u, c in zip(buys[Col.USER_ID], buys[Col.CATEGORY], strict=True)])
    # Random purchases would land in a user's top-2 categories about 2/15 of the time.
    cat_share = ds.items[Col.CATEGORY].value_counts(normalize=True)
    baseline = np.mean([cat_share.reindex(list(top2[u])).fillna(0).sum() for u in buys[Col.USER_ID]])
    assert in_top > 0.6 and in_top > 3 * baseline
    # The latent utility ranks purchased items above random ones for the same user.
    rng = np.random.default_rng(0)
    users = buys[Col.USER_ID].to_numpy()[:200]
    bought = buys[Col.ITEM_ID].to_numpy()[:200]
    rand = rng.choice(ds.items[Col.ITEM_ID].to_numpy(), size=len(users))
    u_b = np.diag(true_utility(truth, users, bought))
    u_r = np.diag(true_utility(truth, users, rand))
    assert (u_b > u_r).mean() > 0.8


def test_search_interactions_carry_queries_of_the_right_category(en) -> None:
    ds, truth, _ = en
    inter = ds.interactions
    with_q = inter[inter[Col.QUERY].notna()]
    assert 0.15 < len(with_q) / len(inter) < 0.45
    assert with_q[Col.QUERY].isin(truth["queries"][Col.QUERY]).all()
    qcat = truth["queries"].set_index(Col.QUERY)[Col.CATEGORY]
    icat = ds.items.set_index(Col.ITEM_ID)[Col.CATEGORY]
    same = qcat.loc[with_q[Col.QUERY]].to_numpy() == icat.loc[with_q[Col.ITEM_ID]].to_numpy()
    assert same.mean() > 0.8  # the rest: partner-feed item swaps


def test_judgments_are_graded_candidates_and_the_careless_labeler_shows(en) -> None:
    ds, truth, _ = en
    j, jt = ds.judgments, truth["judgment_truth"]
    assert len(j) == len(jt) and (jt["row"].to_numpy() == np.arange(len(j))).all()
    assert (jt[Col.LABELER].to_numpy() == j[Col.LABELER].to_numpy()).all()
    assert set(j[Col.GRADE].unique()) <= {0.0, 1.0, 2.0, 3.0}
    assert ((j[Col.GRADE].to_numpy() != jt["true_grade"].to_numpy()) == jt["is_corrupted"].to_numpy()).all()
    per_q = j.groupby(Col.QUERY)[Col.ITEM_ID].nunique()
    assert per_q.between(20, 40).all()
    best = jt.groupby(j[Col.QUERY])["true_grade"].max()
    assert (best == 3).all()  # every query has exact matches
    assert set(jt["true_grade"]) == {0, 1, 2, 3}
    err = jt.groupby(Col.LABELER)["is_corrupted"].mean()
    careless = truth["labelers"].set_index(Col.LABELER)["careless"]
    assert careless.sum() == 1
    bad = err[careless[careless].index[0]]
    good = err[careless[~careless].index]
    assert bad > 0.3 and (good < 0.1).all() and bad > 4 * good.max()


# -- folder round trip ------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path) -> None:
    cfg = SynthConfig.preset("tiny", seed=5, lang="zh")
    ds = save_synth(cfg, tmp_path / "shop")
    back = Dataset.load(tmp_path / "shop")
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(ds, t), getattr(back, t))
    assert back.meta["synth"] == asdict(cfg)
    assert back.meta["provenance"] == PROVENANCE
    assert back.name == cfg.dataset_name
    truth = load_truth(tmp_path / "shop")
    _, fresh = synthesize(cfg)
    assert truth.keys() == fresh.keys()
    for k in fresh:
        pd.testing.assert_frame_equal(truth[k], fresh[k], check_dtype=False)
    assert load_truth(tmp_path) == {}


@pytest.mark.slow
def test_small_preset() -> None:
    ds, truth = synthesize(SynthConfig.preset("small"))
    assert len(ds.interactions) == 60_000 and len(ds.items) == 2000
    assert truth["sources"].set_index(Col.SOURCE).loc["bot", "observed_noise_rate"] == 1.0

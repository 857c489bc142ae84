"""The Chinese pipeline: the opt-in m3e-small encoder (installed by `make test`, licence
non-commercial) reads Chinese where MiniLM sees [UNK]; the LM ranker fine-tunes on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shoprank.data.dataset import Dataset
from shoprank.errors import ShoprankError
from shoprank.models.lm import LMRanker
from shoprank.text.encoder import EncoderConfig, TextEncoder, resolve_model_path

TITLES = ["华为智能手机", "苹果笔记本电脑", "纯棉男士衬衫", "不锈钢保温杯", "无线蓝牙耳机", "儿童绘本故事书"]
QUERIES = {"手机": 0, "电脑": 1, "衬衫": 2, "水杯": 3, "耳机": 4, "童书": 5}


def _m3e_installed() -> bool:
    try:
        resolve_model_path("m3e-small")
        return True
    except ShoprankError:
        return False


needs_m3e = pytest.mark.skipif(not _m3e_installed(), reason="m3e-small not installed: run `make zh` (make test does)")


@needs_m3e
def test_m3e_reads_chinese_where_minilm_sees_unknown_tokens() -> None:
    torch.set_num_threads(1)
    zh = TextEncoder(EncoderConfig(model="m3e-small"))
    en = TextEncoder(EncoderConfig(model="minilm"))
    hits = {}
    for name, enc in (("m3e", zh), ("minilm", en)):
        q, d = enc.encode(list(QUERIES)), enc.encode(TITLES)
        hits[name] = int(((q @ d.T).argmax(1) == np.array(list(QUERIES.values()))).sum())
    assert hits["m3e"] >= 5 and hits["m3e"] > hits["minilm"]


@needs_m3e
def test_lm_ranker_fine_tunes_a_chinese_encoder() -> None:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TITLES))], "title": TITLES})
    judg = pd.DataFrame({"query": list(QUERIES), "item_id": [f"i{i}" for i in QUERIES.values()], "grade": 2.0})
    ds = Dataset.from_frames("zh", items, pd.DataFrame(columns=["user_id", "item_id", "event", "timestamp"]), judg)
    m = LMRanker(encoder="m3e-small", tuning="top_k", tuning_config={"k": 1}, epochs=2, batch_size=3,
                 max_length=16, verbose=False, num_threads=1).fit(ds)
    idx, _ = m.search(list(QUERIES), k=1)
    assert (idx[:, 0] == np.array(list(QUERIES.values()))).sum() >= 5


def test_missing_chinese_encoder_names_the_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shoprank.text.encoder as enc

    monkeypatch.setattr(enc.sysconfig, "get_paths", lambda: {"purelib": str(tmp_path)})
    with pytest.raises(ShoprankError, match="non-commercial.*make zh"):
        enc.resolve_model_path("m3e-small")

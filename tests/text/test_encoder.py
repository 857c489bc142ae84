from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoprank.errors import ShoprankError
from shoprank.text import EncoderConfig, TextEncoder, render_items, resolve_model_path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(EncoderConfig(batch_size=2), cache_dir=tmp_path_factory.mktemp("cache"))


def test_real_minilm_embeddings_are_semantic_and_normalised(encoder: TextEncoder) -> None:
    v = encoder.encode(["red running shoes", "crimson jogging sneakers", "espresso coffee beans"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_batching_dedup_and_cache_give_identical_vectors(encoder: TextEncoder) -> None:
    texts = ["a short one", "a much longer product title with many words in it", "a short one", "mid size text"]
    first = encoder.encode(texts)
    np.testing.assert_array_equal(first[0], first[2])
    other = TextEncoder(EncoderConfig(batch_size=64)).encode(texts)  # no cache, other batching
    np.testing.assert_allclose(first, other, atol=1e-5)
    cache = encoder._get_cache()
    assert cache is not None and len(cache) >= 3
    np.testing.assert_array_equal(encoder.encode(texts[::-1]), first[::-1])


def test_unknown_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ShoprankError, match="not a built-in name"):
        resolve_model_path(str(tmp_path))


def test_render_items_orders_fields_and_cuts_descriptions() -> None:
    items = pd.DataFrame({"item_id": ["1"], "title": ["Trail Shoe"], "brand": ["Acme"], "price": [12.5],
                          "description": ["x" * 500], "category": [None]})
    (t,) = render_items(items, max_description_chars=10)
    assert t == "Trail Shoe | brand: Acme | price: 12.50 | description: xxxxxxxxxx"

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoprank.data.dataset import Dataset
from shoprank.models.base import UserBatch, get_model_class, load_model


@pytest.fixture(scope="module")
def shop() -> Dataset:
    items = pd.DataFrame({
        "item_id": [str(i) for i in range(6)],
        "title": ["trail running shoes", "road running sneakers", "espresso coffee beans",
                  "ground arabica coffee", "cordless power drill", "hammer drill bits set"],
        "category": ["shoes", "shoes", "coffee", "coffee", "tools", "tools"],
    })
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["0"], "event": ["click"], "timestamp": [1]})
    return Dataset.from_frames("dense", items, inter)


def test_dense_ranks_by_meaning_and_restores_exactly(shop: Dataset, tmp_path) -> None:
    m = get_model_class("dense")(history_len=5).fit(shop)
    # a coffee lover's next item is the other coffee, including items never interacted with
    users = UserBatch(["x", "y"], [np.array([2]), np.array([4])])
    top, _ = m.recommend(users, k=2, exclude_seen=True)
    assert top[0, 0] == 3 and top[1, 0] == 5
    s = m.score_query_items(["coffee beans"], [np.array([0, 2, 4])])[0]
    assert int(np.argmax(s)) == 1
    idx, _ = m.search(["power drill"], k=1)
    assert idx[0, 0] == 4
    # dislikes push similar items down
    liked_only = m.score(UserBatch(["z"], [np.array([0])], [np.array([1.0])]), np.array([1]))
    with_dislike = m.score(UserBatch(["z"], [np.array([0, 1])], [np.array([1.0, 0.0])]), np.array([1]))
    assert with_dislike[0] < liked_only[0]
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    np.testing.assert_array_equal(back.score_users(users), m.score_users(users))
    np.testing.assert_allclose(back.score_query_items(["coffee beans"], [np.array([0, 2, 4])])[0], s, atol=1e-6)

"""TextClassifier: a fine-tuned MiniLM with fit / predict_proba (real weights, tiny data)."""

import numpy as np
import pytest

from shoprank.errors import NotFittedError, ShoprankError
from shoprank.models.textclf import TextClassifier

GOOD = ["great drill, works perfectly", "excellent quality, love it", "fantastic lamp, very bright",
        "perfect fit and sturdy", "wonderful, would buy again", "superb blender, fast shipping"]
BAD = ["terrible drill, broke at once", "awful quality, hate it", "horrible lamp, flickers",
       "useless and flimsy", "worst purchase, returning it", "broken blender, slow shipping"]


def test_learns_sentiment_and_predicts_probabilities() -> None:
    x, y = GOOD + BAD, np.array(["pos"] * 6 + ["neg"] * 6)
    clf = TextClassifier(tuning="top_k", tuning_config={"k": 1}, epochs=8, batch_size=4, head_lr=1e-2,
                         max_length=16, seed=0)
    assert clf.fit(x, y) is clf
    p = clf.predict_proba(["really great and perfect", "awful, broke at once", "really great and perfect"])
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1.0)
    assert list(clf.classes_) == ["neg", "pos"]
    assert p[0, 1] > 0.5 > p[1, 1]
    assert np.allclose(p[0], p[2])  # deduplicated texts get the same row
    assert list(clf.predict(["excellent, love it"])) == ["pos"]
    assert len(clf.history_) == 8 and clf.history_[-1]["loss"] < clf.history_[0]["loss"]


def test_unfitted_and_bad_input() -> None:
    with pytest.raises(NotFittedError):
        TextClassifier().predict_proba(["x"])
    with pytest.raises(ShoprankError, match="2 texts but 1 labels"):
        TextClassifier().fit(["a", "b"], [1])
    with pytest.raises(ShoprankError, match="single class"):
        TextClassifier().fit(["a", "b"], [1, 1])


def test_clones_like_a_scikit_learn_estimator() -> None:
    from sklearn.base import clone

    c = clone(TextClassifier(epochs=3, tuning="lora"))
    assert c.epochs == 3 and c.tuning == "lora" and not hasattr(c, "tower_")

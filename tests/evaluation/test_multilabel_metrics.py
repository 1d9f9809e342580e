"""Multi-label figures against scikit-learn's and by hand."""

import numpy as np
from sklearn.metrics import average_precision_score, hamming_loss

from headstart.evaluation.multilabel import multilabel_metrics


def test_figures_match_scikit_learn_and_name_the_missed_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.3).astype(int)
    y[:, 3] = 0  # a label nobody holds: no AP, left out of the macro mean
    scores = np.clip(y * 0.6 + rng.random((60, 4)) * 0.5, 0, 1)
    m = multilabel_metrics(y, scores, [0.5] * 4, ["a", "b", "c", "d"])
    expected = np.mean([average_precision_score(y[:, j], scores[:, j]) for j in range(3)])
    assert abs(m["map"] - expected) < 1e-12
    pred = scores >= 0.5
    assert abs(m["hamming_loss"] - hamming_loss(y, pred)) < 1e-12
    assert m["exact_match"] == float((pred == y).all(1).mean())
    assert m["labels_without_positives"] == ["d"] and m["per_class"]["d"]["ap"] is None
    assert abs(m["label_cardinality"] - y.sum(1).mean()) < 1e-12
    assert {r["label"] for r in m["most_missed"]} == {"a", "b", "c"}


def test_confused_pairs_count_a_missed_label_beside_a_wrong_one():
    y = np.array([[1, 0], [1, 0], [0, 1]])
    scores = np.array([[0.1, 0.9], [0.2, 0.8], [0.1, 0.9]])
    m = multilabel_metrics(y, scores, [0.5, 0.5], ["shirt", "coat"])
    assert m["confused"] == [{"missed": "shirt", "given_instead": "coat", "images": 2}]

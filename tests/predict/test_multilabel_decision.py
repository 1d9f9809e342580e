"""Multi-label decisions: per-label temperatures and thresholds chosen on validation, and the answer they give."""

import numpy as np

from headstart.predict.multilabel import Decision, best_f1_threshold, choose_thresholds, fit_temperatures, sigmoid


def test_the_f1_threshold_separates_a_separable_label():
    scores = np.array([0.9, 0.8, 0.35, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0])
    threshold, f1 = best_f1_threshold(scores, y)
    assert 0.3 < threshold < 0.35 and f1 == 1.0


def test_a_label_without_positives_keeps_half_and_a_named_threshold_is_every_labels():
    scores = np.random.default_rng(0).random((20, 3))
    y = np.zeros((20, 3), int)
    y[:5, 0] = 1
    chosen, source = choose_thresholds(scores, y)
    assert chosen[1] == chosen[2] == 0.5 and "F1-optimal" in source
    assert choose_thresholds(scores, y, fixed=0.4)[0] == [0.4, 0.4, 0.4]


def test_temperatures_undo_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (2000, 2))
    y = (rng.random((2000, 2)) < sigmoid(true_logits)).astype(float)
    temperatures = fit_temperatures(true_logits * 4, y)  # four times too confident
    assert all(3.2 < t < 4.8 for t in temperatures)


def test_the_answer_lists_labels_above_their_thresholds_best_first():
    decision = Decision(["cat", "dog", "car"], [1.0, 1.0, 2.0], [0.5, 0.9, 0.5])
    logits = np.array([[[2.0, 1.0, 4.0]]])  # scores 0.88, 0.73, 0.88 (car at T = 2)
    scores = decision.scores(logits)
    record = decision.record(scores[0])
    assert record["labels"] == ["cat", "car"] and set(record["all_scores"]) == {"cat", "dog", "car"}
    assert record["scores"] == sorted(record["scores"], reverse=True)
    assert Decision.of(["cat", "dog", "car"], decision.to_dict()) == decision
    assert Decision.of(["a"], {"temperature": 1.0}) is None

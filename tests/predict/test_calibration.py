"""Calibrated scores: the temperature fit, ECE and reliability data, and their use in the loop's selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.predict.calibration import (
    T_MIN,
    calibrated_nll,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability,
    run_temperature,
    softmax,
)
from headstart.training.loop import _correct
from tests.conftest import as_two_ranks


def _calibrated_sample(n: int = 8000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated by construction (the best temperature is 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.5])
def test_temperature_recovers_a_known_overconfidence(scale):
    logits, labels = _calibrated_sample()
    t, loss = fit_temperature(logits * scale, labels)
    assert t == pytest.approx(scale, rel=0.05)
    # At the fitted temperature the loss is the calibrated model's own.
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(expected, rel=1e-3)


def test_sharded_fit_equals_the_whole():
    """Under DDP each rank sums its shard and all-reduces: two threads stand in for two ranks, exchanging their
    sums through a barrier, and both get the temperature of the whole validation set."""
    logits, labels = _calibrated_sample(4000)
    logits = logits * 2.5
    whole = fit_temperature(logits, labels)
    shards = [(logits[i::2], labels[i::2]) for i in range(2)]
    results = as_two_ranks(fit_temperature, shards)
    assert results[0] == results[1]
    assert results[0][0] == pytest.approx(whole[0], rel=1e-9)
    assert results[0][1] == pytest.approx(whole[1], rel=1e-9)


def test_calibrated_loss_never_above_the_raw_loss():
    logits, labels = _calibrated_sample(2000)
    for scale in (0.3, 1.0, 4.0):
        raw = torch.nn.functional.cross_entropy(logits * scale, labels).item()
        assert calibrated_nll(logits * scale, labels) <= raw + 1e-12


def test_ece_of_a_known_case():
    # Every prediction says 0.8 and half are right: ECE = |0.5 - 0.8| = 0.3, all in one bin.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0, 1] * 5)
    r = reliability(probs, labels, bins=10)
    assert r["ece"] == pytest.approx(0.3)
    assert sum(r["count"]) == 10 and r["count"][7] == 10  # 0.8 lies in (0.7, 0.8]
    assert r["accuracy"][7] == pytest.approx(0.5) and r["confidence"][7] == pytest.approx(0.8)
    assert r["accuracy"][0] is None
    # Right every time at confidence 1.0: no calibration error; 1.0 falls in the last bin.
    assert expected_calibration_error(np.tile([1.0, 0.0], (4, 1)), np.zeros(4, int), bins=10) == 0.0


def test_temperature_lowers_the_ece_of_an_overconfident_model():
    logits, labels = _calibrated_sample(8000)
    over = (logits * 3).numpy()
    t, _ = fit_temperature(over, labels.numpy())
    s = calibration_summary(over, labels.numpy(), t)
    assert s["ece_before"] > 0.05 and s["ece_after"] < 0.02
    assert s["nll_after"] < s["nll_before"]
    assert np.allclose(softmax(over, t).argmax(1), over.argmax(1))  # the predicted class never changes


def test_empty_or_separable_validation_gives_identity():
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))[0] == 1.0
    # All correct: the loss keeps falling as T shrinks, so the fit ends on its bound; the run ships T = 1.
    logits, labels = torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    assert fit_temperature(logits, labels)[0] == pytest.approx(T_MIN)
    assert run_temperature(logits, labels) == 1.0
    over, y = _calibrated_sample(4000)
    assert run_temperature(over * 2, y) == pytest.approx(2.0, rel=0.1)


def test_train_accuracy_against_soft_targets():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    hard = torch.tensor([0, 2])
    assert _correct(logits, hard) == 1
    # Mixed images: the first is 70% class 0 and 30% class 1; the second 50/50 between classes 1 and 2.
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    assert _correct(logits, soft) == pytest.approx(0.7 + 0.5)

"""The copy-free logistic regression (logreg_lbfgs) solves scikit-learn's problem: same C, same validation loss to
the optimiser's tolerance, the same predictions, on real pixels (scikit-learn's digits)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from headstart.training import heads, logreg_lbfgs


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def both(monkeypatch, fit):
    """``fit()`` through scikit-learn, then through logreg_lbfgs (every size counts as large)."""
    reference = fit()
    monkeypatch.setattr(heads, "COPY_FREE_ABOVE", 0)
    return reference, fit()


@pytest.mark.parametrize("classes", [list(range(10)), [3, 8]])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_copy_free_fit_chooses_and_predicts_as_scikit_learn(digits, monkeypatch, classes, weighted):
    xt, yt, xv, yv = digits
    keep_t, keep_v = np.isin(yt, classes), np.isin(yv, classes)
    xt, yt, xv, yv = xt[keep_t], yt[keep_t], xv[keep_v], yv[keep_v]
    class_weight = np.linspace(0.5, 2.0, 10) if weighted else None
    ref, new = both(monkeypatch, lambda: heads.fit_logreg(xt, yt, xv, yv, 10, grid=(0.01, 0.3, 10.0),
                                                         class_weight=class_weight))
    assert new.info["C"] == ref.info["C"]
    assert new.info["probe_val_loss"] == pytest.approx(ref.info["probe_val_loss"], rel=1e-3)
    np.testing.assert_array_equal(new.logits(xv).argmax(1), ref.logits(xv).argmax(1))
    np.testing.assert_allclose(new.logits(xv), ref.logits(xv), atol=5e-3)
    absent = np.setdiff1d(np.arange(10), classes)
    assert (new.bias[absent] == heads.ABSENT).all() and (new.weight[absent] == 0).all()


def test_a_fold_by_its_rows_is_the_fit_on_a_copy_of_them(digits, monkeypatch):
    xt, yt, *_ = digits
    ref, new = both(monkeypatch, lambda: heads.cross_fitted_logits("logreg", xt, yt, 10, {"C": 0.3}, folds=3))
    assert ref[1] == new[1] == 3
    np.testing.assert_array_equal(new[0].argmax(1), ref[0].argmax(1))
    np.testing.assert_allclose(new[0], ref[0], atol=5e-3)


def test_the_objective_gradient_is_the_derivative_of_the_loss(digits):
    """Finite differences: the folded standardisation's gradient is right, with rows left out (weight 0)."""
    xt, yt, *_ = digits
    x, y = xt[:200], yt[:200] % 3
    mean, std = logreg_lbfgs.standardiser(x)
    std = np.maximum(std, 0.1)
    weight = np.where(np.arange(200) % 4 == 0, 0.0, 1.0)
    for k in (2, 3):
        target = np.minimum(y, k - 1)
        objective = logreg_lbfgs.Objective(x, target, k, weight, mean, std, C=0.5, chunk=64)
        params = np.random.default_rng(1).normal(0, 0.1, (objective.out, x.shape[1] + 1)).ravel()
        loss, grad = objective(params)
        for i in (0, 5, 30, x.shape[1], len(params) - 1):
            step = np.zeros_like(params)
            step[i] = 1e-3
            numeric = (objective(params + step)[0] - objective(params - step)[0]) / 2e-3
            assert numeric == pytest.approx(grad[i], rel=1e-3, abs=1e-6)


def test_the_chunked_standardiser_is_numpys(digits):
    xt, *_ = digits
    rows = np.arange(0, len(xt), 3)
    mean, std = logreg_lbfgs.standardiser(xt, rows, chunk=100)
    np.testing.assert_allclose(mean, xt[rows].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, xt[rows].std(0), rtol=1e-4, atol=1e-4)

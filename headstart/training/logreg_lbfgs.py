"""Logistic regression on raw features, standardised inside the objective: no copy of the features is made.

scikit-learn's ``LogisticRegression`` takes the standardised features as its input, so each fit holds them twice
(raw and standardised), and each fold of a cross-fit a third time (the fold's rows, taken out). That is nothing at
a few thousand images and the largest memory of a linear-probe run at 100,000: 0.5 GB per copy of EfficientNet-Lite0's
1,280 features. This module solves the same problem with the same optimiser, without the copies:

- the objective is scikit-learn's (``LinearModelLoss``): the mean sample-weighted log-loss plus
  ``||W||^2 / (2 C sum(weights))``, the intercept not penalised; multinomial over the classes present, and for two
  classes one weight vector (binomial), as scikit-learn does;
- the optimiser is scipy's L-BFGS-B with scikit-learn's options (``maxls`` 50, ``gtol`` = tol, ``ftol`` 64 eps);
- the standardisation ``(x - mean) / std`` is folded into the product: ``xs @ W.T = x @ (W / std).T - (W / std) @
  mean``, and the gradient ``G.T @ xs = (G.T @ x - outer(G.sum(0), mean)) / std``; the rows are visited a chunk at a
  time, so the temporaries are a chunk's, not the set's;
- a fold leaves rows out by a zero sample weight instead of a copy (the objective divides by the sum of weights:
  the fit on the kept rows is exactly the same problem).

The same problem, solved to the same tolerance: the solutions agree with scikit-learn's to the optimiser's
tolerance, not bit for bit (sums run in another order); ``tests/training/test_logreg_lbfgs.py`` measures how close.
"""

from __future__ import annotations

import numpy as np

CHUNK = 8192  # rows per product: 8192 x 1280 float32 is 42 MB


def standardiser(x: np.ndarray, rows: np.ndarray | None = None, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature of ``x[rows]`` (all rows by default), in float64, a chunk at a
    time: ``x[rows]`` is never gathered."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    total = np.zeros(x.shape[1])
    for start in range(0, len(rows), chunk):
        total += x[rows[start:start + chunk]].sum(0, dtype=np.float64)
    mean = total / max(len(rows), 1)
    square = np.zeros(x.shape[1])
    for start in range(0, len(rows), chunk):
        square += ((x[rows[start:start + chunk]] - mean) ** 2).sum(0)
    return mean, np.sqrt(square / max(len(rows), 1))


class Objective:
    """scikit-learn's logistic-regression objective and its gradient on ``(x - mean) / std`` (module docstring).

    Args:
        x: raw features (n, d), float32; only read.
        target: class index of each row in ``0 .. k-1`` (the classes present, in order).
        k: classes present; 2 means one weight vector (binomial), as scikit-learn fits it.
        weight: a sample weight per row (0 leaves a row out).
        mean, std: the standardisation.
        C: the inverse regularisation strength.
    """

    def __init__(self, x: np.ndarray, target: np.ndarray, k: int, weight: np.ndarray, mean: np.ndarray,
                 std: np.ndarray, C: float, chunk: int = CHUNK):
        self.x, self.target, self.k, self.mean, self.std, self.chunk = x, target, k, mean, std, chunk
        self.rows = np.flatnonzero(weight > 0)  # rows of weight 0 add nothing: they are not visited
        self.weight = weight / weight.sum()
        self.l2 = 1.0 / (C * weight.sum())
        self.out = 1 if k == 2 else k  # rows of W

    def __call__(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        d = self.x.shape[1]
        w = params.reshape(self.out, d + 1)
        coef, intercept = w[:, :d], w[:, d]
        scaled = coef / self.std  # (out, d): the standardisation folded into the weights
        shift = intercept - scaled @ self.mean
        scaled32 = scaled.astype(np.float32)
        loss, grad_x, grad_b = 0.0, np.zeros((self.out, d)), np.zeros(self.out)
        for start in range(0, len(self.rows), self.chunk):
            rows = self.rows[start:start + self.chunk]
            contiguous = rows[-1] - rows[0] == len(rows) - 1
            xc = self.x[rows[0]:rows[-1] + 1] if contiguous else self.x[rows]  # a view when it can be
            raw = (xc @ scaled32.T).astype(np.float64) + shift
            part, g = self._loss(raw, self.target[rows], self.weight[rows])
            loss += part
            grad_x += (g.T.astype(np.float32) @ xc).astype(np.float64)
            grad_b += g.sum(0)
        grad_w = (grad_x - np.outer(grad_b, self.mean)) / self.std + self.l2 * coef
        loss += 0.5 * self.l2 * float((coef ** 2).sum())
        return loss, np.concatenate([grad_w, grad_b[:, None]], axis=1).ravel()

    def _loss(self, raw: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
        """Weighted log-loss of the rows and its gradient with respect to ``raw`` (n, out)."""
        if self.out == 1:  # binomial: the positive class is the second
            z, positive = raw[:, 0], (y == 1).astype(np.float64)
            loss = np.logaddexp(0.0, z) - positive * z
            return float(weight @ loss), ((1.0 / (1.0 + np.exp(-z)) - positive) * weight)[:, None]
        top = raw.max(1, keepdims=True)
        shifted = raw - top
        log_norm = np.log(np.exp(shifted).sum(1))
        loss = log_norm - shifted[np.arange(len(y)), y]
        prob = np.exp(shifted - log_norm[:, None])
        prob[np.arange(len(y)), y] -= 1.0
        return float(weight @ loss), prob * weight[:, None]


def fit(x: np.ndarray, target: np.ndarray, k: int, C: float, mean: np.ndarray, std: np.ndarray,
        weight: np.ndarray | None = None, start: np.ndarray | None = None, tol: float = 1e-3,
        max_iter: int = 1000) -> np.ndarray:
    """Minimises :class:`Objective`; returns the parameters (out, d + 1) in standardised space (coef | intercept),
    ready to warm-start the next C as scikit-learn's ``warm_start`` does."""
    from scipy.optimize import minimize  # scipy.optimize: 0.7 s to import, paid only by the runs that fit it

    weight = np.ones(len(x)) if weight is None else np.asarray(weight, dtype=np.float64)
    objective = Objective(x, np.asarray(target, dtype=np.int64), k, weight, mean, std, C)
    start = np.zeros((objective.out, x.shape[1] + 1)) if start is None else start
    result = minimize(objective, start.ravel(), method="L-BFGS-B", jac=True,
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    return result.x.reshape(objective.out, x.shape[1] + 1)


def logits(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray, rows: np.ndarray | None = None,
           chunk: int = CHUNK) -> np.ndarray:
    """``x[rows] @ coef.T + intercept`` a chunk of rows at a time (float64 out)."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    out = np.empty((len(rows), len(intercept)))
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = x[rows[start:start + chunk]] @ coef.T + intercept
    return out

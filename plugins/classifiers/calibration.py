"""A frozen-body probe's temperature, fitted on its own training rows by cross-fitting.

Why: the probe's logistic regression (C = 1 on unit-norm features) hedges. On the demo's final
model (BBC, 1,354 gold + pseudo-labelled rows) it is right on 96 % of the test articles with a mean
confidence of 0.76 (expected calibration error 0.21), so its probabilities say little to a user
who thresholds on them, ranks by them or watches their drift.

How: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar
T, logits / T, so the predicted class never changes. With no validation rows to fit T on (the
default recipes hold none out: k counts every gold label), T is fitted on out-of-fold logits of the
training rows themselves (cross-fitting, as scikit-learn's ``CalibratedClassifierCV`` does for
Platt scaling): the head is refitted on F - 1 folds, the held-out fold scored, and T minimises the
weighted soft cross-entropy of those held-out logits against the rows' targets (pseudo-labels
included, at their weights). Each held-out fold's head has seen fewer rows than the final head, so
the out-of-fold logits are a little less right than the final model's and T errs on the cautious
(less sharp) side.

Only for a body that did not train on these rows (``Classifier.body_fits_labels`` False): a tuned
body has pulled its own training rows towards their classes, so their out-of-fold logits would be
optimistic and T too sharp.
"""

from __future__ import annotations

import numpy as np

FOLDS = 5


def log_softmax(z: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) log-probabilities, stable (the row max subtracted first)."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fit_soft_temperature(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    """(N, C) logits, (N, C) target distributions, (N,) weights -> T in [e^-4, e^4] minimising the
    weighted soft cross-entropy of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    w = np.asarray(weights, np.float64) / max(float(np.sum(weights)), 1e-12)
    t = np.asarray(targets, np.float64)

    def nll(log_t: float) -> float:
        log_p = log_softmax(logits / np.exp(log_t))  # (N, C)
        return float(-(w * (t * log_p).sum(1)).sum())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def cv_temperature(fit, x: np.ndarray, targets: np.ndarray, weights: np.ndarray, seed: int = 0,
                   folds: int = FOLDS) -> tuple[float | None, int]:
    """The temperature of a head fitted by ``fit(index) -> (W (C, F), b (C,))`` on the rows ``index``
    of ``x`` (N, F), from its out-of-fold logits -> (T, folds used); (None, 0) when some class of
    the targets' argmax has a single row (nothing to hold out). Folds are stratified by that argmax,
    at most ``folds`` and at most the smallest class's row count."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(targets).argmax(1)  # (N,)
    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        return None, 0
    logits = np.zeros(targets.shape, np.float64)  # (N, C) out-of-fold
    for train_idx, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        W, b = fit(train_idx)
        logits[held] = x[held] @ W.T + b
    return fit_soft_temperature(logits, targets, weights), k

"""Selection helpers shared by the built-in labelers."""

from __future__ import annotations

import numpy as np


def balanced_top_k(probs: np.ndarray, k: int, min_confidence: float = 0.0) -> np.ndarray:
    """Per predicted class, the ``k`` most confident rows of (N, C) ``probs``.

    Returns sorted row indices. A majority class cannot flood the selection: each class
    contributes at most ``k`` rows (Zou et al. 2018, class-balanced self-training).
    """
    pred, conf = probs.argmax(1), probs.max(1)
    keep: list[np.ndarray] = []
    for c in range(probs.shape[1]):
        rows = np.flatnonzero((pred == c) & (conf >= min_confidence))
        keep.append(rows[np.argsort(-conf[rows], kind="stable")[:k]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def precision_thresholds(val_probs: np.ndarray, val_labels: np.ndarray, target: float, floor: float) -> np.ndarray:
    """(C,) per-class confidence thresholds measured on validation.

    For class c, the lowest threshold t >= floor such that validation rows predicted c with
    confidence >= t are correct at rate >= ``target``; 1.0 (keep nothing) if none reaches it.
    """
    C = val_probs.shape[1]
    pred, conf = val_probs.argmax(1), val_probs.max(1)
    out = np.ones(C)
    for c in range(C):
        rows = np.flatnonzero(pred == c)
        if len(rows) == 0:
            continue
        order = rows[np.argsort(-conf[rows], kind="stable")]
        hits = np.cumsum(val_labels[order] == c) / np.arange(1, len(order) + 1)  # precision@top-i
        ok = np.flatnonzero((hits >= target) & (conf[order] >= floor))  # the floor limits the rows too
        if len(ok):
            out[c] = max(floor, float(conf[order[ok.max()]]))
    return out

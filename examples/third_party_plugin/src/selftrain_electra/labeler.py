"""Margin pseudo-labels: keep rows the teacher separates clearly from the runner-up.

The margin of a row is ``p_(1) - p_(2)``, its top-1 minus its top-2 class probability
(margin sampling, Scheffer et al. 2001, used here the other way round: a large margin is
a confident, unambiguous prediction). Unlike a plain confidence threshold, a margin
looks at the competitor: 0.5 vs 0.45 is rejected even though 0.5 may pass a threshold on
a 10-class problem. Rows are then capped per predicted class (class-balanced, the
``k_per_class`` largest margins), so a majority class cannot flood the students.
Targets are hard one-hot labels of the teacher's prediction, weights 1.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection, one_hot


class MarginConfig(PluginConfig):
    min_margin: float = Field(
        0.3, ge=0, le=1, description="Keep rows whose top-1 minus top-2 probability is at least this."
    )
    k_per_class: int | None = Field(
        500, ge=1, description="At most this many rows per predicted class (largest margins first); null: no cap."
    )


def margins(probs: np.ndarray) -> np.ndarray:
    """(N, C) probabilities -> (N,) top-1 minus top-2 probability (top-1 itself when C == 1)."""
    if probs.shape[1] == 1:
        return probs[:, 0].astype(np.float64)
    top2 = np.sort(probs, axis=1)[:, -2:]  # (N, 2) ascending
    return (top2[:, 1] - top2[:, 0]).astype(np.float64)


def select_by_margin(probs: np.ndarray, min_margin: float, k_per_class: int | None) -> np.ndarray:
    """Sorted (M,) row indices of (N, C) ``probs``: margin >= ``min_margin``, then per
    predicted class the ``k_per_class`` largest margins (ties keep the earlier row)."""
    pred, m = probs.argmax(1), margins(probs)
    keep = []
    for c in range(probs.shape[1]):
        rows = np.flatnonzero((pred == c) & (m >= min_margin))
        rows = rows[np.argsort(-m[rows], kind="stable")]
        keep.append(rows if k_per_class is None else rows[:k_per_class])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, dtype=np.int64)


class MarginLabeler(Labeler):
    summary = "keep rows whose top-1 minus top-2 probability margin is large; class-balanced cap; hard labels"
    Config = MarginConfig
    api_version = ">=1,<2"

    def select(self, inputs: LabelerInputs) -> Selection:
        probs = inputs.probs  # (N, C)
        c = self.config
        idx = select_by_margin(probs, c.min_margin, c.k_per_class)  # (M,)
        n_classes = probs.shape[1]
        per_class = np.bincount(probs[idx].argmax(1), minlength=n_classes) if len(idx) else np.zeros(n_classes, int)
        return Selection(
            index=idx,
            targets=one_hot(probs[idx].argmax(1), n_classes),  # (M, C)
            weights=np.ones(len(idx), dtype=np.float32),  # (M,)
            notes={"min_margin": c.min_margin,
                   "per_class": dict(zip(inputs.label_names, per_class.tolist())),
                   "mean_margin": float(margins(probs[idx]).mean()) if len(idx) else None},
        )

"""Soft labels: sharpened teacher distributions as targets (knowledge distillation, Hinton
et al. 2015; sharpening as in MixMatch, Berthelot et al. 2019: p_c^(1/T) / sum_j p_j^(1/T)).

The student minimises soft cross-entropy against these targets, so an uncertain teacher
row teaches "probably A, maybe B" instead of a wrong hard label. Rows are picked class-
balanced (top ``k_per_class`` per predicted class, or the whole pool) and optionally
above per-class thresholds measured on validation.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection
from selftrain.plugins.labelers.common import balanced_top_k, precision_thresholds


class SoftConfig(PluginConfig):
    k_per_class: int | None = Field(300, ge=1, description="Rows kept per predicted class; null keeps the whole pool.")
    temperature: float = Field(0.5, gt=0, le=1, description="Sharpening temperature T (<1 sharpens, 1 keeps the teacher's distribution).")
    target_precision: float | None = Field(
        None, gt=0, le=1, description="If set, drop rows below per-class thresholds that reach this precision on validation."
    )
    weight_by_confidence: bool = Field(True, description="Weight each row by the teacher's top probability.")


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) distributions -> (N, C) sharpened distributions, p^(1/T) renormalised."""
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


class SoftLabels(Labeler):
    summary = "sharpened teacher probabilities as soft targets, class-balanced, confidence-weighted"
    Config = SoftConfig

    def select(self, inputs: LabelerInputs) -> Selection:
        probs, c = inputs.probs, self.config
        k = c.k_per_class if c.k_per_class is not None else len(probs)
        idx = balanced_top_k(probs, k)
        if c.target_precision is not None:
            th = precision_thresholds(inputs.val_probs, inputs.val_labels, c.target_precision, 0.0)
            idx = idx[probs[idx].max(1) >= th[probs[idx].argmax(1)]]
        w = probs[idx].max(1).astype(np.float32) if c.weight_by_confidence else np.ones(len(idx), np.float32)
        return Selection(idx, sharpen(probs[idx], c.temperature), w)

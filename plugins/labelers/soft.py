"""Soft labels: sharpened teacher distributions as targets (knowledge distillation, Hinton
et al. 2015; sharpening as in MixMatch, Berthelot et al. 2019: p_c^(1/T) / sum_j p_j^(1/T)).

The student minimises soft cross-entropy against these targets, so an uncertain teacher
row teaches "probably A, maybe B" instead of a wrong hard label. By default every pool row
is kept with the (validation-calibrated) teacher distribution itself, T = 1: plain
distillation, confidence-weighted. Rows can instead be picked class-balanced (top
``k_per_class`` per predicted class), sharpened (T < 1) and held to per-class thresholds
measured on validation. Measured on tweets (see the README's Results), the whole pool at
T = 1 gave students at least as good as top-k selection at T = 0.5.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection
from selftrain.plugins.labelers.common import balanced_top_k, precision_thresholds


class SoftConfig(PluginConfig):
    k_per_class: int | None = Field(None, ge=1, description="Rows kept per predicted class; null keeps the whole pool.")
    temperature: float = Field(1.0, gt=0, le=1, description="Sharpening temperature T (<1 sharpens, 1 keeps the teacher's distribution).")
    target_precision: float | None = Field(
        None, gt=0, le=1, description="If set, drop rows below per-class thresholds that reach this precision on validation."
    )
    weight_by_confidence: bool = Field(True, description="Weight each row by the teacher's top probability.")
    balance: bool = Field(
        True, description="Rescale row weights so every predicted class carries the same total weight "
        "(class-balanced: a majority class of the pool cannot flood the student)."
    )


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
        if c.balance:
            w = class_balanced(w, probs[idx].argmax(1), probs.shape[1])
        return Selection(idx, sharpen(probs[idx], c.temperature), w)


def class_balanced(weights: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) weights, (N,) predicted classes -> (N,) weights whose per-class sums are equal
    (each present class gets total / n_present); the overall sum is unchanged."""
    mass = np.bincount(pred, weights=weights, minlength=n_classes)  # (C,)
    present = mass > 0
    if not present.any():
        return weights
    target = mass.sum() / present.sum()
    scale = np.where(present, target / np.where(present, mass, 1.0), 0.0)
    return (weights * scale[pred]).astype(np.float32)

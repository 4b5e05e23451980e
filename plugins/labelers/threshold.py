"""Confidence threshold (Lee, 2013, "Pseudo-Label"; FixMatch's fixed threshold, Sohn et al. 2020).

With ``target_precision`` set, each class gets its own threshold measured on the
validation split (the lowest confidence at which the teacher's predictions of that class
were right at least that often), instead of one guessed number.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection, one_hot
from selftrain.plugins.labelers.common import precision_thresholds


class ThresholdConfig(PluginConfig):
    threshold: float = Field(0.9, ge=0, le=1, description="Keep predictions at least this confident (calibrated probability).")
    target_precision: float | None = Field(
        None, gt=0, le=1, description="If set, per-class thresholds reaching this precision on validation (never below `threshold`)."
    )


class ConfidenceThreshold(Labeler):
    summary = "keep predictions above a (validation-calibrated) confidence threshold; hard labels"
    Config = ThresholdConfig

    def select(self, inputs: LabelerInputs) -> Selection:
        probs = inputs.probs
        C = probs.shape[1]
        th = np.full(C, self.config.threshold)
        if self.config.target_precision is not None:
            th = precision_thresholds(inputs.val_probs, inputs.val_labels, self.config.target_precision, self.config.threshold)
        pred, conf = probs.argmax(1), probs.max(1)
        idx = np.flatnonzero(conf >= th[pred])
        return Selection(idx, one_hot(pred[idx], C), np.ones(len(idx), dtype=np.float32),
                         notes={"thresholds": th.round(4).tolist()})

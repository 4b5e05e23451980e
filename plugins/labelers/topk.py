"""Class-balanced top-k (Zou et al., ECCV 2018, "Unsupervised Domain Adaptation for Semantic
Segmentation via Class-Balanced Self-Training"): per predicted class, the k most confident.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection, one_hot
from selftrain.plugins.labelers.common import balanced_top_k


class TopKConfig(PluginConfig):
    k_per_class: int = Field(250, ge=1, description="Rows kept per predicted class.")
    min_confidence: float = Field(0.0, ge=0, le=1, description="Never keep rows below this confidence.")


class ClassBalancedTopK(Labeler):
    summary = "class-balanced top-k most confident per predicted class; hard labels"
    Config = TopKConfig

    def select(self, inputs: LabelerInputs) -> Selection:
        probs = inputs.probs
        idx = balanced_top_k(probs, self.config.k_per_class, self.config.min_confidence)
        return Selection(idx, one_hot(probs[idx].argmax(1), probs.shape[1]), np.ones(len(idx), dtype=np.float32))

"""selftrain's public plugin API.

A plugin is a class exposed through one of three entry-point groups:

=====================  =====================================  ==========================
group                  base class                             chosen in config by
=====================  =====================================  ==========================
selftrain.objectives   :class:`Objective` (pretext task)      ``pretrain.objective``
selftrain.models       :class:`ModelProvider` (backbones)     ``model.name``
selftrain.labelers     :class:`Labeler` (pseudo-label pick)   ``pseudo_label.labeler``
=====================  =====================================  ==========================

The built-ins register through selftrain's own ``pyproject.toml`` entry points, the same
path a third-party package uses. Every plugin class declares ``api_version``, a
``packaging`` specifier that :data:`PLUGIN_API_VERSION` must satisfy, and ``Config``, a
pydantic model for its own options (validated with the rest of the run config, before
any work). See ``docs/plugins.md`` for a walk-through.

This module imports no other part of selftrain: plugins depend on it, never on the core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

PLUGIN_API_VERSION = "1.0"
"""Version of this API. Bumped in the major part on breaking changes."""

BackboneKind = Literal["encoder", "decoder"]


class PluginConfig(BaseModel):
    """Base for a plugin's own options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class NoOptions(PluginConfig):
    """For plugins without options."""


@dataclass
class RuntimeContext:
    """Where and how a plugin runs: handed to every plugin hook that touches tensors."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 on CUDA, None on CPU
    seed: int = 0


@dataclass
class Backbone:
    """A Hugging Face base model (``AutoModel``) plus its tokenizer.

    ``model(input_ids, attention_mask).last_hidden_state`` has shape (B, T, H).
    """

    model: torch.nn.Module
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    kind: BackboneKind

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else 0)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, H) last hidden states."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Plugin(ABC):
    #: packaging specifier over PLUGIN_API_VERSION this plugin was written for.
    api_version: ClassVar[str] = ">=1,<2"
    #: pydantic model of this plugin's options (the config's ``options`` mapping).
    Config: ClassVar[type[PluginConfig]] = NoOptions
    #: one-line description shown by ``selftrain plugins list``.
    summary: ClassVar[str] = ""


class Objective(_Plugin):
    """A self-supervised pretext task: its own head, batch construction and loss.

    Lifecycle (all in the pretrain stage's process, on ``ctx.device``):
    ``__init__`` once after the backbone is loaded and moved to the device; then per step
    ``make_batch`` (on CPU, from token-id lists) -> moved to the device -> ``loss``.
    ``heads()`` are trained with the backbone and saved in checkpoints (for resume) but
    not in the final model, which is the backbone alone.
    """

    #: backbone kinds this objective can train (checked at config-validation time).
    requires: ClassVar[frozenset[str]] = frozenset({"encoder"})
    #: False if each sequence must be one text (sentence-embedding objectives): then
    #: ``pretrain.batching: pack`` is refused at config-validation time.
    packable: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, config: PluginConfig, ctx: RuntimeContext):
        self.backbone = backbone
        self.config = config
        self.ctx = ctx

    def heads(self) -> torch.nn.Module | None:
        """Extra trainable modules (already on ``ctx.device``), or None."""
        return None

    @abstractmethod
    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Token-id lists (no padding, special tokens included) -> CPU tensors.

        Must be deterministic given ``generator`` so a resumed run sees the same noise.
        """

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch already on ``ctx.device`` -> scalar loss."""

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Number of non-pad input tokens (for tokens/s)."""
        return int(batch["attention_mask"].sum())


@dataclass
class ModelInfo:
    kind: BackboneKind
    description: str = ""


class ModelProvider(_Plugin):
    """Produces a backbone as a Hugging Face directory (``save_pretrained`` layout).

    ``info`` must be cheap (no weights loaded): it is called at config-validation time to
    check the objective fits. ``materialize`` returns a directory that
    ``AutoModel``/``AutoModelForSequenceClassification.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` accept; ``texts`` is the training corpus (labels
    hidden), for providers that train a tokenizer from scratch.
    """

    #: False when ``materialize`` only points at an existing checkpoint (then it is called
    #: with no corpus, once per stage); True when it builds weights/tokenizer into
    #: ``out_dir`` (then it runs once per run, on the training texts).
    builds_weights: ClassVar[bool] = True

    def __init__(self, config: PluginConfig):
        self.config = config

    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def materialize(self, texts: list[str], out_dir: str, seed: int = 0) -> str: ...


@dataclass
class Selection:
    """What a labeler keeps from the unlabeled pool.

    index: (M,) rows of the pool kept; targets: (M, C) target distributions (one-hot for
    hard labels, rows sum to 1); weights: (M,) per-example loss weights.
    """

    index: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self, n_pool: int, n_classes: int) -> None:
        m = len(self.index)
        if self.targets.shape != (m, n_classes) or self.weights.shape != (m,):
            raise ValueError(
                f"Selection shapes are off: index {self.index.shape}, targets {self.targets.shape}, "
                f"weights {self.weights.shape}; expected (M,), (M, {n_classes}), (M,)"
            )
        if m and (self.index.min() < 0 or self.index.max() >= n_pool):
            raise ValueError(f"Selection index out of range [0, {n_pool})")
        if len(np.unique(self.index)) != m:
            raise ValueError("Selection index has repeated rows")
        if m and not np.allclose(self.targets.sum(1), 1.0, atol=1e-4):
            raise ValueError("Selection targets must be distributions (rows sum to 1)")


@dataclass
class LabelerInputs:
    """Teacher outputs handed to a labeler.

    probs: (N, C) calibrated teacher probabilities on the unlabeled pool.
    val_probs: (V, C) the same on the validation split, val_labels: (V,) its gold labels,
    so a labeler can set thresholds from measured precision rather than guesses.
    train_counts: (C,) gold labels per class in the labeled train split.
    """

    probs: np.ndarray
    val_probs: np.ndarray
    val_labels: np.ndarray
    train_counts: np.ndarray
    label_names: list[str]


class Labeler(_Plugin):
    """A pseudo-label selection strategy."""

    def __init__(self, config: PluginConfig):
        self.config = config

    @abstractmethod
    def select(self, inputs: LabelerInputs) -> Selection: ...


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(M,) int labels -> (M, C) float32 one-hot rows."""
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


__all__ = [
    "PLUGIN_API_VERSION",
    "Backbone",
    "BackboneKind",
    "Labeler",
    "LabelerInputs",
    "ModelInfo",
    "ModelProvider",
    "NoOptions",
    "Objective",
    "PluginConfig",
    "RuntimeContext",
    "Selection",
    "one_hot",
]

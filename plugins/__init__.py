"""selftrain's public plugin API.

A plugin is a class exposed through one of three entry-point groups:

=====================  =====================================  ==========================
group                  base class                             chosen in config by
=====================  =====================================  ==========================
selftrain.objectives   :class:`Objective` (pretext task)      ``pretrain.objective``
selftrain.models       :class:`ModelProvider` (backbones)     ``model.name``
selftrain.labelers     :class:`Labeler` (pseudo-label pick)   ``pseudo_label.labeler``
selftrain.classifiers  :class:`Classifier` (fit/predict/save) ``classifier.name``
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

PLUGIN_API_VERSION = "1.7"
"""Version of this API. Bumped in the major part on breaking changes (1.1 added the
classifiers group and the embedding fields of :class:`LabelerInputs`; 1.2 added
:attr:`RuntimeContext.compile_inference` and :mod:`selftrain.plugins.inference`; 1.3 added
:attr:`LabeledRows.unlabeled` and :attr:`Classifier.uses_unlabeled`; 1.4 added
:attr:`Labeler.guards_pool` and :attr:`Selection.pool_refused`; 1.5 added
:attr:`Classifier.body_fits_labels` and :attr:`LabelerInputs.embeddings_fit_labels`; 1.6 added
:meth:`TrainedClassifier.uncalibrated`; 1.7 added :class:`PluginUserError`)."""

BackboneKind = Literal["encoder", "decoder"]


class PluginUserError(ValueError):
    """Raise it from a plugin for a mistake the user can fix (a backbone without the token the
    objective needs, options that do not fit the data), with the message saying what, where and
    the fix: the run then ends with that one line and exit code 2, and Prefect does not retry the
    stage (API 1.7). Any other exception is treated as a bug or an outage: traceback, retries."""


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
    cache_dir: str | None = None  # where a plugin may cache derived arrays (e.g. embeddings); None: no cache
    # "auto" | "on" | "off": whether inference forwards run torch.compile'd (selftrain.plugins.inference)
    compile_inference: str = "off"


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

    @property
    def pool_refused(self) -> bool:
        """True when a labeler's guard refused the pool as a whole (``notes["pool_refused"]``, API
        1.4): the gold rows measured that pseudo-labels from this teacher do not pay. The pipeline
        then trains ``classifier.adapt``, a core that moves the body, if one is configured."""
        return bool(self.notes.get("pool_refused", False))

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
    so a labeler can set thresholds from measured precision rather than guesses (V may be 0:
    a run without validation labels).
    train_counts: (C,) gold labels per class in the labeled train split.

    Filled only for labelers with ``needs_embeddings = True`` (else None):
    pool_embeddings: (N, H) the teacher's sentence embeddings of the pool (L2-normalised);
    train_embeddings: (G, H) those of the gold train rows, train_labels: (G,) their labels.
    Always filled: round / rounds (1-based round of self-training, and how many are planned);
    previous: what this labeler kept in the round before (None in round 1), so a labeler can
    grow its selection over rounds.
    embeddings_fit_labels: the teacher's body was trained on the gold train rows (its classifier's
    ``body_fits_labels``, API 1.5): their embeddings are then no held-out evidence, and a
    cross-validation over ``train_embeddings`` is optimistic.
    """

    probs: np.ndarray
    val_probs: np.ndarray
    val_labels: np.ndarray
    train_counts: np.ndarray
    label_names: list[str]
    pool_embeddings: np.ndarray | None = None
    train_embeddings: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    round: int = 1
    rounds: int = 1
    previous: Selection | None = None
    seed: int = 0
    embeddings_fit_labels: bool = False


class Labeler(_Plugin):
    """A pseudo-label selection strategy. An empty selection (M = 0) is valid: the run then
    trains no student for that round and says why (put the reason in ``Selection.notes``)."""

    #: True: the stage hands over sentence embeddings of the pool and the gold rows.
    needs_embeddings: ClassVar[bool] = False
    #: True: round 1 may refuse the pool as a whole, measured on the gold rows (a guard), and says
    #: so with ``Selection.notes["pool_refused"] = True`` and its evidence in ``notes["guard"]``
    #: (API 1.4). ``classifier.adapt`` needs such a labeler: the refusal is what picks it.
    guards_pool: ClassVar[bool] = False

    def __init__(self, config: PluginConfig):
        self.config = config

    @abstractmethod
    def select(self, inputs: LabelerInputs) -> Selection: ...


# ---------------------------------------------------------------- classifiers
@dataclass
class LabeledRows:
    """Rows a classifier trains on. texts: (N,); targets: (N, C) distributions (one-hot for gold
    rows and hard pseudo-labels); weights: (N,) loss weights; the first ``n_gold`` rows are gold
    labels, the rest pseudo-labels. noisy: (N,) bool, rows whose tokens a classifier that
    ``supports_token_noise`` drops with probability ``token_dropout`` (Noisy Student).
    unlabeled: (U,) texts of the unlabeled pool, filled only for a classifier that
    ``uses_unlabeled`` and never for the run's ``baseline`` (API 1.3); None otherwise."""

    texts: list[str]
    targets: np.ndarray
    weights: np.ndarray
    n_gold: int
    noisy: np.ndarray | None = None
    token_dropout: float = 0.0
    unlabeled: list[str] | None = None


@dataclass
class FitReport:
    """What ``Classifier.fit`` returns. Validation fields are None / empty when the run has no
    validation rows. ``val_pred``: (V,) predictions of the saved model, for paired comparisons."""

    val_macro_f1: float | None
    val_loss: float | None
    val_pred: list[int]
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    temperature: float = 1.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a plugin may hand numpy: stored as JSON-ready lists (run metrics, paired comparisons)
        self.val_pred = [] if self.val_pred is None else [int(v) for v in np.asarray(self.val_pred).reshape(-1)]
        try:
            t = float(self.temperature)
        except (TypeError, ValueError):
            t = float("nan")
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"FitReport.temperature must be a positive number (1.0: not calibrated), got "
                             f"{self.temperature!r}")
        self.temperature = t
        self.notes = [str(n) for n in (self.notes or [])]


class TrainedClassifier(ABC):
    """A saved classifier, loaded: probabilities and (optionally) sentence embeddings."""

    label_names: list[str]

    @abstractmethod
    def predict_proba(self, texts: list[str], batch_size: int = 128, progress=None) -> np.ndarray:
        """(N,) texts -> (N, C) float32 class probabilities (calibrated where the plugin calibrates)."""

    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """(N,) texts -> (N, H) L2-normalised sentence embeddings of the classifier's body."""
        raise NotImplementedError(f"{type(self).__name__} has no sentence embeddings")

    def score(self, texts: list[str], batch_size: int = 128, embeddings: bool = False,
              progress=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) texts -> ((N, C) probabilities, (N, H) embeddings or None): what pseudo-labelling
        needs of the pool, in one call. The default runs ``predict_proba`` then ``embed``; a
        plugin whose head reads the embeddings (the probe) overrides it to encode once."""
        probs = self.predict_proba(texts, batch_size, progress=progress)
        return probs, (self.embed(texts, batch_size) if embeddings else None)

    def uncalibrated(self) -> TrainedClassifier:
        """The model as its head was fitted, without a temperature its plugin fitted on the
        training rows for its users (the probe's ``calibrate``; API 1.6). Pseudo-labelling reads
        this: the labelers' guards, quotas and drift stop were measured on those probabilities.
        Default: the model itself."""
        return self


class Classifier(_Plugin):
    """How a classifier is trained from a backbone and labelled rows, saved and loaded.

    The baseline, the teacher and every student are trained by the configured classifier
    (``classifier.name``); pseudo-labelling, evaluation and the retrain flow's frozen-set
    scoring load saved models through :meth:`load`. Capabilities are declared so that
    impossible combinations are refused when the config is validated, before any work.
    """

    #: trains on soft target distributions (else targets are reduced to their argmax).
    supports_soft_targets: ClassVar[bool] = True
    #: honours per-row loss weights.
    supports_sample_weights: ClassVar[bool] = True
    #: honours LabeledRows.noisy / token_dropout (pseudo_label.noise).
    supports_token_noise: ClassVar[bool] = False
    #: a saved model can be the starting point of a further fit (student_init: teacher, refit_on_gold).
    supports_warm_start: ClassVar[bool] = False
    #: needs validation rows (e.g. early stopping): refused with data.val_per_class: 0.
    needs_validation: ClassVar[bool] = False
    #: trains on the unlabeled pool too (LabeledRows.unlabeled; consistency training): the stage
    #: hands it the pool's texts for every model but the baseline (API 1.3).
    uses_unlabeled: ClassVar[bool] = False
    #: fit moves the body's weights with the labelled rows (fixmatch, setfit, finetune; not the frozen
    #: probe), so the saved body's embeddings of those rows are no held-out evidence about them: the
    #: pseudo-label stage tells the labeler (LabelerInputs.embeddings_fit_labels, API 1.5).
    body_fits_labels: ClassVar[bool] = False
    #: which plain libraries load a saved model (written into the model card).
    loadable_with: ClassVar[str] = ""

    def __init__(self, config: PluginConfig, ctx: RuntimeContext, max_length: int, settings: dict | None = None):
        """``settings``: the run's ``finetune`` section as a dict (epochs, lr, batch_size, ...)."""
        self.config = config
        self.ctx = ctx
        self.max_length = max_length
        self.settings = settings or {}

    @abstractmethod
    def fit(self, init_dir: str, label_names: list[str], train: LabeledRows, val_texts: list[str],
            val_labels: np.ndarray, out_dir: str, max_epochs: int | None = None, log=lambda rec: None) -> FitReport:
        """Train from ``init_dir`` (a backbone, or a model this plugin saved when it
        ``supports_warm_start``) and save into ``out_dir``, which :meth:`load` must accept."""

    @abstractmethod
    def load(self, model_dir: str, label_names: list[str]) -> TrainedClassifier: ...


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(M,) int labels -> (M, C) float32 one-hot rows."""
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


__all__ = [
    "PLUGIN_API_VERSION",
    "Backbone",
    "BackboneKind",
    "Classifier",
    "FitReport",
    "LabeledRows",
    "TrainedClassifier",
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

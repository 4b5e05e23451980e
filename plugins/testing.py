"""Contract checks for plugin authors, usable from pytest (or any script).

    from selftrain.plugins.testing import check_classifier, check_labeler, check_objective
    from selftrain.plugins.models.presets import TinyBert

    def test_my_objective(tmp_path):
        check_objective(MyObjective, TinyBert, tmp_path, options={"rate": 0.2})

    def test_my_labeler():
        check_labeler(MyLabeler)

    def test_my_classifier(tmp_path):
        check_classifier(MyClassifier, TinyBert, tmp_path)

All raise ``AssertionError`` with a message that says what broke. They run on CPU with
tiny models in a few seconds. This module imports neither pytest nor selftrain's core.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selftrain.plugins import (
    Backbone,
    Classifier,
    FitReport,
    LabeledRows,
    Labeler,
    LabelerInputs,
    ModelProvider,
    Objective,
    RuntimeContext,
    Selection,
    TrainedClassifier,
)
from selftrain.plugins.registry import check_api_version

#: A small varied English corpus: tokenizers of the tiny presets are trained on it.
SENTENCES: list[str] = [
    "The cat sat quietly on the warm windowsill.",
    "A quick brown fox jumps over the lazy dog.",
    "Stock markets fell sharply after the announcement.",
    "She ordered a cappuccino and a slice of lemon cake.",
    "The new phone's battery lasts almost two days.",
    "Heavy rain is expected across the region tomorrow.",
    "I absolutely loved this film, the acting was superb!",
    "This was the worst customer service I have ever received.",
    "Our flight was delayed by three hours because of fog.",
    "The committee will publish its findings next month.",
    "He scored twice in the final ten minutes of the match.",
    "Please remember to water the plants while I'm away.",
    "Researchers discovered a new species of deep-sea fish.",
    "The recipe calls for two cups of flour and one egg.",
    "Traffic on the bridge was unbelievably slow this morning.",
    "Can you recommend a good book about ancient Rome?",
    "The museum reopens on Saturday after a long renovation.",
    "My laptop keeps crashing whenever I open the browser.",
    "They hiked to the summit and watched the sunrise.",
    "Interest rates are likely to remain unchanged this year.",
    "The hotel room was clean, quiet and surprisingly cheap.",
    "Children played in the park until the streetlights came on.",
    "The software update fixed most of the reported bugs.",
    "A violinist performed on the corner of the busy street.",
    "Doctors recommend at least thirty minutes of exercise daily.",
    "The delivery arrived late and the box was damaged.",
    "Volunteers planted hundreds of trees along the river.",
    "Why does the printer always jam before important meetings?",
    "The orchestra's performance received a standing ovation.",
    "Electric cars are becoming cheaper every year.",
    "I can't believe how expensive concert tickets have become!",
    "The old library smells of dust, leather and paper.",
    "Scientists measured the temperature of the distant star.",
    "Our team finally shipped the feature after weeks of testing.",
    "The soup was bland, but the bread was excellent.",
    "Farmers are worried about the long summer drought.",
    "He apologised for the misunderstanding and offered a refund.",
    "Snow covered the village overnight, closing every school.",
    "The startup raised ten million dollars in its first round.",
    "Birds gathered on the wires before flying south.",
]


def check_api(plugin_cls: type) -> None:
    """The gate of discovery: raise AssertionError with the message ``selftrain plugins list``
    shows when ``plugin_cls.api_version`` does not admit this selftrain's plugin API."""
    if err := check_api_version(plugin_cls):
        raise AssertionError(f"{plugin_cls.__name__}: {err}")


def _provider(model_provider: ModelProvider | type[ModelProvider]) -> ModelProvider:
    if isinstance(model_provider, ModelProvider):
        check_api(type(model_provider))
        return model_provider
    if isinstance(model_provider, type) and issubclass(model_provider, ModelProvider):
        check_api(model_provider)
        return model_provider(model_provider.Config())
    raise TypeError(f"model_provider must be a ModelProvider instance or subclass, got {model_provider!r}")


def _is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def _check_batch(name: str, batch: Any) -> None:
    if not isinstance(batch, dict) or not batch:
        raise AssertionError(f"{name}.make_batch must return a non-empty dict of tensors, got {type(batch).__name__}")
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            raise AssertionError(f"{name}.make_batch()[{k!r}] is a {type(v).__name__}, not a torch.Tensor")
        if v.device.type != "cpu":
            raise AssertionError(f"{name}.make_batch()[{k!r}] is on {v.device}; make_batch must return CPU tensors")


def _same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def build_objective(objective_cls: type[Objective], model_provider: ModelProvider | type[ModelProvider],
                    tmp_path: str | Path, options: dict | None = None, seed: int = 0,
                    texts: list[str] | None = None) -> tuple[Objective, list[list[int]]]:
    """Materialize the provider's backbone on ``texts`` (default :data:`SENTENCES`), load it
    with AutoModel/AutoTokenizer, build the objective on CPU. Returns (objective, token ids)."""
    from transformers import AutoModel, AutoTokenizer

    check_api(objective_cls)
    provider = _provider(model_provider)
    name = objective_cls.__name__
    kind = provider.info().kind
    if kind not in objective_cls.requires:
        raise AssertionError(
            f"{name} requires a backbone of kind {sorted(objective_cls.requires)}, "
            f"but {type(provider).__name__} provides {kind!r}"
        )
    texts = texts or SENTENCES
    out = provider.materialize(texts, str(Path(tmp_path) / "backbone"), seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(out)
    model.train()  # dropout on, as in pretraining
    config = objective_cls.Config(**(options or {}))
    ctx = RuntimeContext(device=torch.device("cpu"), seed=seed)
    objective = objective_cls(Backbone(model=model, tokenizer=tokenizer, kind=kind), config, ctx)
    ids = tokenizer(texts, truncation=True, max_length=32, add_special_tokens=True)["input_ids"]
    return objective, [list(map(int, row)) for row in ids]


def _modules_of(obj) -> list[tuple[str, torch.nn.Module]]:
    """The nn.Modules an objective holds as attributes (directly, or in a list / tuple / dict)."""
    out = []
    for attr, v in vars(obj).items():
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else [(None, v)]
        for key, m in items:
            if isinstance(m, torch.nn.Module):
                out.append((attr if key is None else f"{attr}[{key!r}]", m))
    return out


def check_objective(objective_cls: type[Objective], model_provider: ModelProvider | type[ModelProvider],
                    tmp_path: str | Path, options: dict | None = None, steps: int = 2, *,
                    overfit_steps: int = 15, batch_size: int = 8, lr: float = 1e-3, seed: int = 0) -> dict[str, list[float]]:
    """Train ``objective_cls`` on a tiny backbone from ``model_provider`` and check the contract.

    1. ``steps`` AdamW steps on rotating batches: make_batch returns CPU tensors and is
       deterministic for a generator seed; loss is a finite scalar with finite gradients.
    2. ``overfit_steps`` steps on ONE fixed batch (same noise each time): the loss must fall.

    ``model_provider`` is a ModelProvider instance or class (built with its default
    options); ``options`` are the objective's. Returns {"losses": [...], "overfit": [...]}.
    """
    name = objective_cls.__name__
    objective, ids = build_objective(objective_cls, model_provider, tmp_path, options, seed)
    model = objective.backbone.model
    params: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    heads = objective.heads()
    if heads is not objective.heads():
        raise AssertionError(f"{name}.heads() must return the same object every call (build the heads in __init__): "
                             "the optimizer and the checkpoints hold the first one")
    if heads is not None:
        if not isinstance(heads, torch.nn.Module):
            raise AssertionError(f"{name}.heads() must return a torch.nn.Module or None, got {type(heads).__name__}")
        heads.train()
        params.update({id(p): p for p in heads.parameters()})  # tied weights appear once
    opt = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=lr)

    def step(rows: list[list[int]], gen_seed: int, what: str) -> float:
        batch = objective.make_batch(rows, torch.Generator().manual_seed(gen_seed))
        _check_batch(name, batch)
        loss = objective.loss(batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise AssertionError(f"{name}.loss must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise AssertionError(f"{name}: non-finite loss {value} at {what}")
        if not loss.requires_grad:
            raise AssertionError(f"{name}.loss does not depend on any trainable parameter ({what})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not _is_finite(p.grad)]
        if bad:
            raise AssertionError(f"{name}: non-finite gradients at {what} in {bad[:5]}")
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params.values()):
            raise AssertionError(f"{name}.loss gives no gradient to the backbone or heads() at {what}: the loss is "
                                 "detached from the model (a .detach(), .item() or numpy step inside loss)")
        stray = [f"{attr}.{n}" for attr, mod in _modules_of(objective) for n, p in mod.named_parameters()
                 if id(p) not in params and p.grad is not None and bool(p.grad.abs().sum() > 0)]
        if stray:
            raise AssertionError(f"{name}: {stray[:5]} get gradients but are not in heads(), so the optimizer never "
                                 "updates them and checkpoints do not save them. Fix: return every trainable module "
                                 "from heads() (one nn.Module; wrap several in a ModuleDict)")
        opt.step()
        return value

    # determinism of make_batch for a given generator seed (resume must see the same noise)
    rows = ids[:batch_size]
    a = objective.make_batch(rows, torch.Generator().manual_seed(seed + 99))
    b = objective.make_batch(rows, torch.Generator().manual_seed(seed + 99))
    _check_batch(name, a)
    if not _same_batch(a, b):
        raise AssertionError(f"{name}.make_batch is not deterministic for the same generator seed")

    losses = []
    for i in range(steps):
        start = (i * batch_size) % len(ids)
        rows = (ids + ids)[start:start + batch_size]
        losses.append(step(rows, seed + i, f"step {i}"))

    fixed = ids[:batch_size]
    overfit = [step(fixed, seed + 1234, f"overfit step {i}") for i in range(overfit_steps)]
    k = max(1, min(3, overfit_steps // 4))
    first, last = overfit[0], float(np.mean(overfit[-k:]))
    if not last < first:
        raise AssertionError(
            f"{name}: loss did not decrease when training {overfit_steps} steps on one fixed batch "
            f"(first {first:.4f}, mean of last {k} {last:.4f}; all: {[round(x, 4) for x in overfit]}). "
            "Is the loss connected to the backbone/heads, and are the head's parameters returned by heads()?"
        )
    return {"losses": losses, "overfit": overfit}


def _clusters(labels: np.ndarray, n_classes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(M,) labels -> (M, dim) L2-normalised points around one random centre per class."""
    centres = np.random.default_rng(12345).normal(size=(n_classes, dim))
    x = centres[labels] + 0.5 * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def labeler_inputs(n: int = 200, n_classes: int = 3, n_val: int = 90, seed: int = 0, dim: int = 16,
                   n_train: int = 30) -> LabelerInputs:
    """Random but plausible teacher outputs: Dirichlet pool probabilities that lean towards each
    pool row's hidden class, validation probabilities that lean towards the gold label (so
    precision thresholds are meaningful), and clustered (N, dim) / (n_train, dim) embeddings for
    labelers that ``needs_embeddings``. ``n_val=0``: a run without validation rows."""
    rng = np.random.default_rng(seed)
    hidden = rng.integers(0, n_classes, size=n)
    probs = (0.4 * np.eye(n_classes)[hidden] + 0.6 * rng.dirichlet(np.full(n_classes, 0.7), size=n)).astype(np.float32)
    val_labels = rng.integers(0, n_classes, size=n_val)
    noise = rng.dirichlet(np.full(n_classes, 0.7), size=n_val)
    gold = np.eye(n_classes)[val_labels]
    val_probs = (0.5 * gold + 0.5 * noise).astype(np.float32).reshape(n_val, n_classes)
    train_labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, size=max(n_train - n_classes, 0))])
    return LabelerInputs(probs=probs, val_probs=val_probs, val_labels=val_labels,
                         train_counts=np.bincount(train_labels, minlength=n_classes),
                         label_names=[f"class{c}" for c in range(n_classes)],
                         pool_embeddings=_clusters(hidden, n_classes, dim, rng),
                         train_embeddings=_clusters(train_labels, n_classes, dim, rng),
                         train_labels=train_labels.astype(np.int64), seed=seed)


def check_labeler(labeler_cls: type[Labeler], options: dict | None = None, *, seed: int = 0,
                  inputs: LabelerInputs | None = None) -> Selection:
    """Run ``labeler_cls.select`` on random teacher outputs (N=200, C=3) and check the Selection:
    shapes and distributions (``Selection.validate``), integer index into the pool without
    repeats, finite non-negative weights, finite targets. Returns the Selection."""
    name = labeler_cls.__name__
    check_api(labeler_cls)
    inputs = inputs or labeler_inputs(seed=seed)
    n, c = inputs.probs.shape
    labeler = labeler_cls(labeler_cls.Config(**(options or {})))
    sel = labeler.select(inputs)
    if not isinstance(sel, Selection):
        raise AssertionError(f"{name}.select must return a selftrain.plugins.Selection, got {type(sel).__name__}")
    try:
        sel.validate(n, c)
    except ValueError as exc:
        raise AssertionError(f"{name}.select returned an invalid Selection: {exc}") from exc
    index, weights, targets = np.asarray(sel.index), np.asarray(sel.weights), np.asarray(sel.targets)
    if len(index) and not np.issubdtype(index.dtype, np.integer):
        raise AssertionError(f"{name}: Selection.index must hold integers, got {index.dtype}")
    if not np.isin(index, np.arange(n)).all():
        raise AssertionError(f"{name}: Selection.index is not a subset of the pool rows [0, {n})")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise AssertionError(f"{name}: Selection.weights must be finite and >= 0, got min {weights.min() if len(weights) else None}")
    if not np.isfinite(targets).all() or (targets < 0).any():
        raise AssertionError(f"{name}: Selection.targets must be finite non-negative distributions")
    return sel


#: Two topics the tiny presets' tokenizers know, for classifier checks: (text, class id).
TOPIC_ROWS: list[tuple[str, int]] = [
    ("Stock markets fell sharply after the announcement.", 0),
    ("The startup raised ten million dollars in its first round.", 0),
    ("Electric cars are becoming cheaper every year.", 0),
    ("He apologised for the misunderstanding and offered a refund.", 0),
    ("The delivery arrived late and the box was damaged.", 0),
    ("Our team finally shipped the feature after weeks of testing.", 0),
    ("A violinist performed on the corner of the busy street.", 1),
    ("The orchestra's performance received a standing ovation.", 1),
    ("I can't believe how expensive concert tickets have become!", 1),
    ("Birds gathered on the wires before flying south.", 1),
    ("Volunteers planted hundreds of trees along the river.", 1),
    ("Snow covered the village overnight, closing every school.", 1),
]


def check_classifier(classifier_cls: type[Classifier], model_provider: ModelProvider | type[ModelProvider],
                     tmp_path: str | Path, options: dict | None = None, settings: dict | None = None,
                     seed: int = 0) -> FitReport:
    """Fit ``classifier_cls`` from the provider's backbone on 12 labelled rows (two classes, one
    soft and one down-weighted pseudo row among them when the plugin declares support), with and
    without validation rows, and check: capabilities are bools, ``fit`` returns a FitReport,
    ``load`` of the saved directory gives (N, C) finite probabilities that sum to 1 and equal
    across two loads, ``embed`` (where implemented) gives (N, H) finite rows, and a warm start
    from the saved model works where ``supports_warm_start``. Returns the first FitReport."""
    check_api(classifier_cls)
    name = classifier_cls.__name__
    for flag in ("supports_soft_targets", "supports_sample_weights", "supports_token_noise",
                 "supports_warm_start", "needs_validation", "uses_unlabeled", "body_fits_labels"):
        if not isinstance(getattr(classifier_cls, flag, None), bool):
            raise AssertionError(f"{name}.{flag} must be a bool class attribute")
    tmp = Path(tmp_path)
    provider = _provider(model_provider)
    init = provider.materialize(SENTENCES, str(tmp / "backbone"), seed=seed)
    texts = [t for t, _ in TOPIC_ROWS]
    y = np.array([c for _, c in TOPIC_ROWS])
    targets = np.eye(2, dtype=np.float32)[y]
    weights = np.ones(len(y), np.float32)
    if classifier_cls.supports_soft_targets:
        targets[-1] = [0.3, 0.7]
    if classifier_cls.supports_sample_weights:
        weights[-2:] = 0.5
    # a plugin that trains on the pool gets one (API 1.3), as the finetune stage gives it
    pool = list(SENTENCES) if getattr(classifier_cls, "uses_unlabeled", False) else None
    rows = LabeledRows(texts=texts, targets=targets, weights=weights, n_gold=len(y) - 2, unlabeled=pool)
    labels = ["business", "culture"]
    ctx = RuntimeContext(device=torch.device("cpu"), seed=seed)
    clf = classifier_cls(classifier_cls.Config(**(options or {})), ctx, 32, settings or {"epochs": 2, "batch_size": 4})
    val_texts, val_labels = texts[:4], y[:4]
    if not classifier_cls.needs_validation:
        rep0 = clf.fit(init, labels, rows, [], np.zeros(0, np.int64), str(tmp / "noval"))
        if not isinstance(rep0, FitReport):
            raise AssertionError(f"{name}.fit must return a selftrain.plugins.FitReport, got {type(rep0).__name__}")
    report = clf.fit(init, labels, rows, val_texts, val_labels, str(tmp / "model"))
    if not isinstance(report, FitReport):
        raise AssertionError(f"{name}.fit must return a selftrain.plugins.FitReport, got {type(report).__name__}")
    if report.val_macro_f1 is not None and not 0.0 <= report.val_macro_f1 <= 1.0:
        raise AssertionError(f"{name}.fit: val_macro_f1 {report.val_macro_f1} is outside [0, 1]")
    if len(report.val_pred) != len(val_labels) or not all(0 <= v < len(labels) for v in report.val_pred):
        raise AssertionError(f"{name}.fit: FitReport.val_pred must be the saved model's class index for each of the "
                             f"{len(val_labels)} validation rows, got {report.val_pred}")
    p1 = np.asarray(clf.load(str(tmp / "model"), labels).predict_proba(texts))
    p2 = np.asarray(classifier_cls(clf.config, ctx, 32, clf.settings).load(str(tmp / "model"), labels).predict_proba(texts))
    if p1.shape != (len(texts), 2):
        raise AssertionError(f"{name}: predict_proba returned shape {p1.shape}, expected {(len(texts), 2)}")
    if not np.isfinite(p1).all() or not np.allclose(p1.sum(1), 1.0, atol=1e-4):
        raise AssertionError(f"{name}: predict_proba rows must be finite distributions (sum to 1)")
    if not np.allclose(p1, p2, atol=1e-5):
        raise AssertionError(f"{name}: two loads of the same saved model predict differently (max diff {np.abs(p1 - p2).max():.2e})")
    trained = clf.load(str(tmp / "model"), labels)
    if not isinstance(trained, TrainedClassifier):
        raise AssertionError(f"{name}.load must return a subclass of selftrain.plugins.TrainedClassifier, got "
                             f"{type(trained).__name__} (the stages call its score() and uncalibrated())")
    try:
        emb = np.asarray(trained.embed(texts[:3]))
    except NotImplementedError:
        emb = None
    if emb is not None and (emb.ndim != 2 or len(emb) != 3 or not np.isfinite(emb).all()):
        raise AssertionError(f"{name}: embed returned {emb.shape if hasattr(emb, 'shape') else emb}, expected (3, H) finite")
    # what the stages call: score() in batches with a progress callback, and the uncalibrated model
    seen: list[int] = []
    try:
        probs, pool_emb = trained.score(texts, 4, embeddings=emb is not None, progress=seen.append)
        raw = np.asarray(trained.uncalibrated().predict_proba(texts, 4, progress=None))
    except TypeError as exc:
        raise AssertionError(f"{name}: the stages call score(texts, batch_size, embeddings=..., progress=...), which "
                             f"calls predict_proba(texts, batch_size, progress=...) and embed(texts, batch_size): {exc}. "
                             "Fix: def predict_proba(self, texts, batch_size=128, progress=None) (call progress(n) "
                             "after each batch of n rows, when it is not None)") from exc
    if np.asarray(probs).shape != (len(texts), 2) or (emb is not None and np.asarray(pool_emb).shape[0] != len(texts)):
        raise AssertionError(f"{name}: score(texts, batch_size=4, embeddings=..., progress=...) returned "
                             f"{np.asarray(probs).shape} probabilities, expected {(len(texts), 2)}")
    if raw.shape != (len(texts), 2) or not np.allclose(raw.argmax(1), p1.argmax(1)):
        raise AssertionError(f"{name}: uncalibrated().predict_proba must give (N, C) probabilities with the same "
                             f"predicted classes as the calibrated model, got shape {raw.shape}")
    if classifier_cls.supports_warm_start:
        clf.fit(str(tmp / "model"), labels, rows, val_texts, val_labels, str(tmp / "warm"), max_epochs=1)
        clf.load(str(tmp / "warm"), labels).predict_proba(texts[:2])
    return report


__all__ = ["SENTENCES", "TOPIC_ROWS", "build_objective", "check_api", "check_classifier", "check_labeler",
           "check_objective", "labeler_inputs"]

"""The guard's check of the adapted core: both cores cross-validated, whole, on the gold rows.

The agree labeler's guard (``plugins/labelers/agree.py``) measures on the gold rows whether
self-training in the *frozen* embedding space pays; when it refuses, ``classifier.adapt`` (a core
that moves the body on gold + pool: fixmatch) is the candidate. Whether moving the body pays on
this draw is another question, and the guard's folds cannot answer it: they live in the frozen
space. On the tweets the adapted core gained up to +0.13 on some draws and lost 0.02-0.05 on
others (docs/experiments.md sessions 9, 11, 13). With ``classifier.adapt.check: cv`` this module
asks the gold rows: every fold fits the frozen core and the adapted core on the other folds
(the adapted one with the pool, as in the run) and scores the held-out rows; the adapted core
is taken only when its held-out log-loss per gold row leads the frozen core's by
``classifier.adapt.margin``. Log-loss, as the agree guard, because it charges a confident error
without bound (session 7). Across two model families raw log-loss also rewards the sharper core
(session 15: the probe hedges near ln C), so ``classifier.adapt.metric: calibrated_log_loss`` first
scales each core's held-out probabilities by a temperature fit on the other folds. Cost: ``folds``
fits of each core.
"""

from __future__ import annotations

import tempfile

import numpy as np

from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.core.run.stages import _gold, _pool_texts, backbone, label_names
from selftrain.core.train.classifiers import classifier
from selftrain.plugins import LabeledRows, one_hot
from selftrain.plugins.classifiers.calibration import fit_soft_temperature, log_softmax


def fold_indices(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index sets of a stratified k-fold over the gold labels ``y`` (N,), with k capped at
    the smallest class's count so every fold holds out (and trains on) every class."""
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise ValueError(f"classifier.adapt.check: cv needs at least 2 gold rows of every class in the train split; "
                         f"the smallest class has {int(np.bincount(y).min())}. Add labels or set classifier.adapt.check: none")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _train, held in splitter.split(np.zeros(len(y)), y)]


def heldout_scores(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) held-out probabilities and (N,) labels -> ((N,) log-loss -log p_true, (N,) right)."""
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
    return -np.log(p_true), probs.argmax(1) == y


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that minimises the log-loss of softmax(log p / T) over the rows of (N, C)
    ``probs`` with labels (N,) ``y``: temperature scaling (Guo et al. 2017, "On Calibration of Modern
    Neural Networks"). One parameter, so it changes how sharp a core is, never which class it picks."""
    logp = np.log(np.clip(probs, 1e-12, None))  # (N, C): logits up to a per-row constant
    return fit_soft_temperature(logp, one_hot(np.asarray(y), probs.shape[1]), np.ones(len(y)))


def temperature_scaled(probs: np.ndarray, y: np.ndarray, held: list[np.ndarray]) -> np.ndarray:
    """(N, C) held-out probabilities -> the same rows with each fold's temperature fit on the *other*
    folds' held-out rows (cross-fitted, so no row's own label sets the temperature it is scored with).
    Why: raw log-loss across two model families rewards the sharper one (docs/experiments.md session 15:
    the probe hedges near ln C, the adapted core does not); after scaling, both are scored at their best
    sharpness and the comparison is about which rows each gets right, and how clearly."""
    out = np.empty_like(probs)
    for h in held:
        rest = np.setdiff1d(np.arange(len(y)), h)
        t = fit_temperature(probs[rest], y[rest])
        out[h] = np.exp(log_softmax(np.log(np.clip(probs[h], 1e-12, None)) / t))
    return out


def cv_probs(make, init_dir: str, labels: list[str], texts: list[str], y: np.ndarray, pool: list[str] | None,
             held: list[np.ndarray], epochs: int | None = None) -> np.ndarray:
    """(N, C) held-out probabilities of the gold rows: for each fold, ``make()`` (a fresh classifier
    plugin) is fitted from ``init_dir`` on the other folds' rows (+ ``pool`` for a plugin that
    ``uses_unlabeled``, as the finetune stage hands it) and scores the fold's rows with its head
    as fitted (``uncalibrated()``: the check's metric does its own temperature scaling)."""
    probs = np.zeros((len(y), len(labels)), np.float32)
    for out in held:
        train_idx = np.setdiff1d(np.arange(len(y)), out)
        clf = make()
        rows = LabeledRows([texts[i] for i in train_idx], one_hot(y[train_idx], len(labels)),
                           np.ones(len(train_idx), np.float32), len(train_idx),
                           unlabeled=pool if getattr(clf, "uses_unlabeled", False) else None)
        with tempfile.TemporaryDirectory(prefix="selftrain-cv-") as tmp:
            clf.fit(init_dir, labels, rows, [], np.zeros(0, np.int64), tmp, epochs)
            # uncalibrated(): both cores as fitted (the probe's own temperature would hand the raw
            # log_loss metric a calibrated probe against an uncalibrated adapted core)
            probs[out] = clf.load(tmp, labels).uncalibrated().predict_proba([texts[i] for i in out])
    return probs


def cv_record(plugin: str, probs: np.ndarray, y: np.ndarray, held: list[np.ndarray]) -> dict:
    """A core's cross-validation record: mean held-out log-loss (raw and temperature-scaled) and
    accuracy per gold row, and the raw log-loss per fold."""
    loss, right = heldout_scores(probs, y)
    calibrated, _ = heldout_scores(temperature_scaled(probs, y, held), y)
    return {"classifier": plugin, "log_loss": float(loss.mean()), "calibrated_log_loss": float(calibrated.mean()),
            "accuracy": float(right.mean()), "fold_log_loss": [float(loss[out].mean()) for out in held]}


def prefers_adapted(cores: dict, metric: str, margin: float = 0.0) -> bool:
    """The check's decision from two ``cv_record``s (``cores["adapted"]``, ``cores["supervised"]``):
    the adapted core's held-out ``metric`` per gold row is at most the supervised core's minus ``margin``."""
    return cores["adapted"][metric] <= cores["supervised"][metric] - margin


def adapt_check(cfg: PipelineConfig, clean: str, base_model: str | None) -> dict:
    """The frozen core (``classifier``) and the adapted core (``classifier.adapt``) on the same folds
    of the gold rows -> their scores and ``use_adapted``: the adapted core's held-out log-loss per
    gold row (``classifier.adapt.metric``: raw or temperature-scaled) is at most the frozen core's minus
    ``classifier.adapt.margin``."""
    a = cfg.classifier.adapt
    if a.name is None:
        raise ValueError("adapt_check needs classifier.adapt.name; it is null")
    df = io.read_parquet(clean)  # read once: both cores see the same gold rows, folds and pool
    labels = label_names(cfg, df)
    texts, y = _gold(df, "train", labels)
    pool = _pool_texts(df)
    model_dir = io.local_dir(base_model) if base_model else backbone(cfg, clean)[0]
    held = fold_indices(y, a.folds, cfg.seed)
    cores = {}
    for core, plugin, options in (("supervised", cfg.classifier.name, None), ("adapted", a.name, a.options)):
        probs = cv_probs(lambda: classifier(cfg, plugin, options=options), model_dir, labels, texts, y, pool, held,
                         cfg.finetune.epochs)
        cores[core] = cv_record(plugin, probs, y, held)
    return {"metric": a.metric, "folds": len(held), "margin": a.margin, **cores,
            "use_adapted": prefers_adapted(cores, a.metric, a.margin)}

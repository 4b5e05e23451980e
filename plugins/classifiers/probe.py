"""The frozen-body classifier: a logistic regression on the backbone's sentence embeddings.

With a handful of labels per class, a linear probe on a good sentence encoder is the strong
few-shot baseline (SetFit, Tunstall et al. 2022, reports it within a few points of full
few-shot finetuning; our own measurements: it beat finetuning MiniLM on 48 tweets). The body
stays frozen, so the embeddings of the pool are computed once and every self-training round
costs one logistic regression: this is what makes many rounds of pseudo-labelling cheap.

Soft targets and weights are exact: a row with target distribution t and weight w becomes C
rows (one per class with t_c > 0) of weight w * t_c, whose summed log-loss is w * (-sum_c t_c
log p_c), the soft cross-entropy.

Features (``embed.py``): the checkpoint's own sentence embedding, by default concatenated with
the mean-pooled middle layer (``extra_layer``); the label names join the training rows as one
row per class (``label_names``). Both were picked on dev-eval, never on a test split.

Saved layout (loads with plain transformers + safetensors; with ``extra_layer: null`` with plain
sentence-transformers; the model card has the snippet)::

    <dir>/            the body: config.json, model.safetensors, tokenizer, modules.json, 1_Pooling/
    <dir>/head.safetensors           weight (C, F), bias (C,): logits = features @ weight.T + bias (calibrated:
                                     the temperature folded in); raw_weight, raw_bias: the head as fitted
    <dir>/selftrain_classifier.json  {"classifier": "probe", "labels": [...], "pooling": {...},
                                      "extra_layer": 3 | null, "features": "...", ...}
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from selftrain.plugins import Classifier, FitReport, LabeledRows, PluginConfig, TrainedClassifier
from selftrain.plugins.classifiers.calibration import cv_temperature
from selftrain.plugins.classifiers.embed import Embedder, resolve_layer

HEAD_FILE, META_FILE = "head.safetensors", "selftrain_classifier.json"
FROZEN_DIR = "frozen_core"  # a second, frozen probe saved inside a model dir (fixmatch frozen_weight): never part of a body


class ProbeConfig(PluginConfig):
    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic regression (scikit-learn's C).")
    max_iter: int = Field(2000, ge=10, description="L-BFGS iterations of the logistic regression.")
    extra_layer: int | Literal["middle"] | None = Field(
        "middle", description="A second view from the same forward pass, concatenated to the checkpoint's own sentence "
        "embedding: the mean-pooled hidden states of this layer ('middle': num_hidden_layers // 2, layer 3 of MiniLM's 6; "
        "an int: that hidden state, 0 = the embedding layer). null: the checkpoint's embedding alone (then the saved "
        "model loads with plain sentence-transformers). Measured: +0.015 / +0.008 macro-F1 on BBC at 4 / 8 labels per "
        "class, +0.006 / +0.017 on the tweets at 16 / 32 (dev-eval, 5 seeds).")
    label_names: bool = Field(
        True, description="Add each class's name (underscores and dashes read as spaces) as one more training row of "
        "weight 1: the declared label set carries meaning a sentence encoder understands (zero-shot). Names without "
        "a letter (e.g. '0', '1') are never used. Measured: +0.018 (BBC) / +0.011 (tweets) macro-F1 at 4 labels per "
        "class, within +-0.001 from 16 on (dev-eval, 5 seeds). No labelled example is added: k is unchanged.")
    calibrate: bool = Field(
        True, description="Temperature-scale the head (one scalar T folded into its weights: the predicted class never "
        "changes) so that its probabilities are calibrated: T is fitted on out-of-fold logits of the training rows "
        "themselves (5 folds, stratified; calibration.py). Frozen bodies only (a plugin whose body trains on the rows "
        "keeps T = 1). Pseudo-labelling reads the head as fitted. Measured (dev-eval, 5 draws): expected calibration error "
        "0.205 -> 0.030 (BBC k = 4, final model), 0.161 -> 0.097 (tweets k = 16); every prediction unchanged.")


def name_rows(label_names: list[str]) -> tuple[list[str], list[int]]:
    """The texts and class ids of the label names usable as training rows (those with a letter)."""
    texts, ids = [], []
    for c, name in enumerate(label_names):
        if any(ch.isalpha() for ch in name):
            texts.append(" ".join(name.replace("_", " ").replace("-", " ").split()))
            ids.append(c)
    return texts, ids


def expand_soft(x: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, H) features, (N, C) target distributions, (N,) weights -> (M, H), (M,) classes,
    (M,) weights with one row per (row, class) where the target is positive."""
    r, c = np.nonzero(targets > 0)
    return x[r], c, (weights[r] * targets[r, c]).astype(np.float64)


def fit_head(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, n_classes: int, C: float = 1.0,
             max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Weighted soft-target logistic regression -> weight (C, H), bias (C,). A class absent from
    the targets gets a bias of -30 (probability ~0), not a missing column."""
    from sklearn.linear_model import LogisticRegression

    xe, ye, we = expand_soft(x, targets, weights)
    present = np.unique(ye)
    W = np.zeros((n_classes, x.shape[1]), np.float32)
    b = np.full(n_classes, -30.0, np.float32)
    if len(present) == 1:  # one class only: it always wins
        b[present[0]] = 0.0
        return W, b
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(xe, ye, sample_weight=we)
    coef, icpt = clf.coef_, clf.intercept_
    if len(present) == 2:  # scikit-learn's binary form: one row for the second class
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    W[present], b[present] = coef, icpt
    return W, b


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: no second copy of the body's weights
    except OSError:
        shutil.copy2(src, dst)


class TrainedProbe(TrainedClassifier):
    def __init__(self, model_dir: str, label_names: list[str], embedder: Embedder, W: np.ndarray, b: np.ndarray,
                 raw: tuple[np.ndarray, np.ndarray] | None = None):
        self.model_dir, self.label_names, self.embedder, self.W, self.b = model_dir, label_names, embedder, W, b
        self.raw = raw  # the head before its temperature (calibrate), as fitted: (C, F), (C,)

    def uncalibrated(self) -> TrainedProbe:
        """The same body with the head as fitted (bit for bit), before the temperature folded into it."""
        if self.raw is None:
            return self
        return TrainedProbe(self.model_dir, self.label_names, self.embedder, *self.raw)

    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return self.embedder(texts, batch_size)

    def predict_proba(self, texts: list[str], batch_size: int = 128, progress=None) -> np.ndarray:
        return self.score(texts, batch_size, progress=progress)[0]

    def score(self, texts, batch_size=128, embeddings=False, progress=None):
        e = self.embedder(texts, batch_size, progress=progress)  # (N, H): one encoding for both
        return softmax(e @ self.W.T + self.b), (e if embeddings else None)  # (N, C), (N, H)


class Probe(Classifier):
    summary = ("frozen body: logistic regression on the checkpoint's own sentence embedding (pooling from its config) "
               "+ its middle layer, with the label names as extra rows")
    Config = ProbeConfig
    supports_soft_targets = True
    supports_sample_weights = True
    supports_token_noise = False
    supports_warm_start = False  # the body is frozen: a further fit would just be a new head
    needs_validation = False
    loadable_with = ("transformers (AutoModel, hidden states) + safetensors (head.safetensors: logits = features @ "
                     "weight.T + bias); with extra_layer: null, sentence-transformers' encode gives the features")

    @staticmethod
    def body_dir(init_dir: str) -> str:
        """A probe's saved dir holds its body, so a probe dir and a backbone dir both work."""
        return init_dir

    def fit(self, init_dir, label_names, train: LabeledRows, val_texts, val_labels, out_dir, max_epochs=None,
            log=lambda rec: None) -> FitReport:
        t0 = time.perf_counter()
        body = self.body_dir(init_dir)
        emb = Embedder(body, self.max_length, self.ctx, resolve_layer(self.config.extra_layer, body))
        x = emb(train.texts)  # (N, F): F = H, or 2H with the extra layer
        targets = np.asarray(train.targets, np.float32)
        weights = np.asarray(train.weights, np.float32)
        names, name_ids = name_rows(label_names) if self.config.label_names else ([], [])
        if names:  # (N + n, F): the label names as rows of their class, weight 1
            hx = np.vstack([x, emb(names)])
            ht = np.vstack([targets, np.eye(len(label_names), dtype=np.float32)[name_ids]])
            hw = np.concatenate([weights, np.ones(len(names), np.float32)])
        else:
            hx, ht, hw = x, targets, weights
        W, b = fit_head(hx, ht, hw, len(label_names), self.config.C, self.config.max_iter)
        notes = []
        raw_W, raw_b, temperature = W, b, 1.0
        if self.config.calibrate and not self.body_fits_labels:
            n = len(x)  # the label-name rows stay in every fold's training part

            def fit_rows(idx):
                return fit_head(np.vstack([x[idx], hx[n:]]), np.vstack([targets[idx], ht[n:]]),
                                np.concatenate([weights[idx], hw[n:]]), len(label_names), self.config.C,
                                self.config.max_iter)
            t, _ = cv_temperature(fit_rows, x, targets, weights, self.ctx.seed)  # (T, folds used)
            if t is None:
                notes.append("not temperature-scaled: a class has a single training row, nothing to hold out")
            else:
                temperature = t
                W, b = W / t, b / t  # (C, F), (C,): logits / T, folded into the head
        self.save(init_dir, out_dir, label_names, W, b, emb.pooling, emb.extra_layer, names, temperature,
                  raw=(raw_W, raw_b) if temperature != 1.0 else None)
        gold_pred = (x[: train.n_gold] @ W.T + b).argmax(1)
        if train.n_gold and len(np.unique(gold_pred)) == 1 and len(np.unique(targets[: train.n_gold].argmax(1))) > 1:
            notes.append("the probe predicts one class for every gold training row: collapsed")
        f1 = loss = None
        pred: list[int] = []
        if len(val_texts):
            from sklearn.metrics import f1_score

            p = softmax(emb(list(val_texts)) @ W.T + b)  # (V, C)
            pred = p.argmax(1).tolist()
            f1 = float(f1_score(val_labels, pred, average="macro", labels=list(range(len(label_names))), zero_division=0))
            loss = float(-np.log(np.clip(p[np.arange(len(val_labels)), val_labels], 1e-12, 1)).mean())
        p_tr = softmax(x @ raw_W.T + raw_b)  # (N, C): the weighted soft cross-entropy the head minimised (without L2)
        w = np.asarray(train.weights, np.float64)
        train_loss = float(-(w * (targets * np.log(np.clip(p_tr, 1e-12, 1))).sum(1)).sum() / max(w.sum(), 1e-12))
        log({"epoch": 1, "train_loss": train_loss, "val_macro_f1": f1})
        return FitReport(val_macro_f1=f1, val_loss=loss, val_pred=pred, best_epoch=1, epochs_run=1,
                         seconds=time.perf_counter() - t0, temperature=temperature, notes=notes)

    def save(self, body: str, out_dir: str, label_names, W, b, pooling: dict, extra_layer: int | None = None,
             name_texts: list[str] = (), temperature: float = 1.0,
             raw: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``W``, ``b``: the head users read (its temperature folded in); ``raw``: the head as fitted, kept
        beside it (``raw_weight``, ``raw_bias``) for pseudo-labelling (``TrainedProbe.uncalibrated``)."""
        from safetensors.numpy import save_file

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for f in Path(body).iterdir():  # the body (weights hard-linked when possible), not an old head
            if f.name in (HEAD_FILE, META_FILE, FROZEN_DIR, "README.md") or f.name.startswith("."):
                continue
            if f.is_dir():
                shutil.copytree(f, Path(out_dir) / f.name, copy_function=_link_or_copy, dirs_exist_ok=True)
            else:
                _link_or_copy(str(f), str(Path(out_dir) / f.name))
        if not (Path(out_dir) / "modules.json").exists():  # a plain HF body: say how we pooled
            (Path(out_dir) / "1_Pooling").mkdir(exist_ok=True)
            hidden = int(W.shape[1]) // (1 if extra_layer is None else 2)  # the body's width, not the features'
            (Path(out_dir) / "1_Pooling" / "config.json").write_text(json.dumps({
                "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling["mode"] == "cls",
                "pooling_mode_mean_tokens": pooling["mode"] == "mean", "pooling_mode_max_tokens": pooling["mode"] == "max",
                "pooling_mode_mean_sqrt_len_tokens": pooling["mode"] == "mean_sqrt_len"}, indent=2))
            mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if pooling["normalize"]:
                (Path(out_dir) / "2_Normalize").mkdir(exist_ok=True)
                mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (Path(out_dir) / "modules.json").write_text(json.dumps(mods, indent=2))
        head = {"weight": W.astype(np.float32), "bias": b.astype(np.float32)}
        if raw is not None:
            head |= {"raw_weight": raw[0].astype(np.float32), "raw_bias": raw[1].astype(np.float32)}
        save_file(head, str(Path(out_dir) / HEAD_FILE))
        meta = {"classifier": "probe", "labels": list(label_names), "pooling": pooling, "max_length": self.max_length,
                "C": self.config.C, "extra_layer": extra_layer, "label_name_rows": list(name_texts),
                "temperature": temperature,  # already folded into head.safetensors (logits = raw logits / T)
                "features": "embedding" if extra_layer is None else
                f"concat(l2(embedding), l2(mean_pool(hidden_states[{extra_layer}]))) / sqrt(2)", **self.meta()}
        (Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=2))

    def meta(self) -> dict:
        """What a subclass that tunes the body adds to ``selftrain_classifier.json`` (its name, its budget)."""
        return {}

    def load(self, model_dir: str, label_names: list[str]) -> TrainedProbe:
        from safetensors.numpy import load_file

        meta_path = Path(model_dir) / META_FILE
        if not meta_path.exists():
            raise ValueError(f"{model_dir} is not a saved probe (no {META_FILE}); it was trained by another classifier")
        meta = json.loads(meta_path.read_text())
        if list(meta["labels"]) != list(label_names):
            raise ValueError(f"{model_dir} was trained for labels {meta['labels']}, not {list(label_names)}")
        head = load_file(str(Path(model_dir) / HEAD_FILE))
        return TrainedProbe(model_dir, list(label_names),
                            Embedder(model_dir, self.max_length, self.ctx, meta.get("extra_layer")),
                            head["weight"], head["bias"],
                            (head["raw_weight"], head["raw_bias"]) if "raw_weight" in head else None)

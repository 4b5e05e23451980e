"""SetFit-style classifier: contrastive finetuning of the sentence encoder on label pairs, then the
frozen probe's logistic-regression head on the tuned embeddings.

SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"): from a handful of
labelled rows make pairs — same class -> target cosine 1, different class -> 0 — and train the
sentence encoder with a cosine-similarity (MSE) loss, so that same-class sentences move together;
a logistic regression on the tuned embeddings is then the classifier. Pseudo-labelled rows
(``LabeledRows`` after ``n_gold``) join the pairs with their hard label when their weight is at
least ``pseudo_min_weight``, so a student's encoder is also tuned on the pool's confident labels.

Saved layout: exactly the probe's (``probe.py``): the tuned body (``save_pretrained`` +
``modules.json`` / ``1_Pooling``: loadable with sentence-transformers or SetFit's body), plus
``head.safetensors``; ``load`` is the probe's.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from selftrain.plugins import FitReport, LabeledRows
from selftrain.plugins.classifiers.embed import pool, read_pooling, save_tuned_body
from selftrain.plugins.classifiers.probe import Probe, ProbeConfig
from selftrain.plugins.objectives.common import pad_batch


class SetFitConfig(ProbeConfig):
    iterations: int = Field(5, ge=1, description="Pairs per labelled row and epoch, half positive, half negative (SetFit's num_iterations; its default is 20).")
    epochs: int = Field(1, ge=1, description="Epochs over the pairs.")
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate of the encoder.")
    batch_size: int = Field(16, ge=2, description="Pairs per step.")
    pseudo_min_weight: float = Field(0.5, ge=0, description="Pseudo-labelled rows of at least this weight join the pairs (hard label).")
    max_pairs: int = Field(4000, ge=2, description="Cap on pairs per epoch (the pool's pseudo-labels can make many).")


def make_pairs(labels: np.ndarray, iterations: int, rng: np.random.Generator,
               max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int labels -> (P, 2) row-index pairs and (P,) float targets (1 same class, 0 not).

    For every row and iteration: one positive partner (another row of its class, where the
    class has one) and one negative partner (a row of another class) — SetFit's pair sampling.
    ``max_pairs``: a random subset of at most that many pairs."""
    labels = np.asarray(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    pairs, targets = [], []
    for _ in range(iterations):
        for i, c in enumerate(labels):
            same = by_class[c][by_class[c] != i]
            if len(same):
                pairs.append((i, int(rng.choice(same))))
                targets.append(1.0)
            other = np.flatnonzero(labels != c)
            if len(other):
                pairs.append((i, int(rng.choice(other))))
                targets.append(0.0)
    p, t = np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(targets, np.float32)
    if max_pairs is not None and len(p) > max_pairs:
        keep = rng.choice(len(p), max_pairs, replace=False)
        p, t = p[keep], t[keep]
    return p, t


def cosine_pair_loss(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, H), (B, H) pair embeddings, (B,) targets in {0, 1} -> MSE between cos(u, v) and the
    target (sentence-transformers' CosineSimilarityLoss, SetFit's default)."""
    return F.mse_loss(F.cosine_similarity(u, v, dim=-1), target)


class SetFit(Probe):
    summary = "SetFit-style: contrastive finetuning of the encoder on label pairs (cosine loss), then the probe's head"
    Config = SetFitConfig
    supports_warm_start = False
    body_fits_labels = True  # the body trains on the labelled rows (API 1.5)
    loadable_with = ("sentence-transformers / SetFit body (tuned) + safetensors head "
                     "(head.safetensors: logits = emb @ weight.T + bias)")

    def fit(self, init_dir, label_names, train: LabeledRows, val_texts, val_labels, out_dir, max_epochs=None,
            log=lambda rec: None) -> FitReport:
        from transformers import AutoModel, AutoTokenizer

        c, t0 = self.config, time.perf_counter()
        torch.manual_seed(self.ctx.seed)
        rng = np.random.default_rng(self.ctx.seed)
        y = np.asarray(train.targets).argmax(1)
        use = np.arange(len(y)) < train.n_gold
        use |= np.asarray(train.weights) >= c.pseudo_min_weight
        rows = np.flatnonzero(use)
        pooling = read_pooling(init_dir)
        tok = AutoTokenizer.from_pretrained(init_dir)
        body = AutoModel.from_pretrained(init_dir).to(self.ctx.device).train()
        ids = tok([train.texts[i] for i in rows], truncation=True, max_length=self.max_length)["input_ids"]
        # fused AdamW on CUDA (one kernel over all parameters); bf16 autocast where the runtime asks for it
        opt = torch.optim.AdamW(body.parameters(), lr=c.lr, **({"fused": True} if self.ctx.device.type == "cuda" else {}))
        amp = dict(device_type=self.ctx.device.type, dtype=self.ctx.autocast_dtype, enabled=self.ctx.autocast_dtype is not None)
        losses = []
        for _ in range(c.epochs):
            pairs, targets = make_pairs(y[rows], c.iterations, rng, c.max_pairs)  # (P, 2) into `rows`
            order = rng.permutation(len(pairs))
            for s in range(0, len(order), c.batch_size):
                b = order[s:s + c.batch_size]
                left, right = pairs[b, 0], pairs[b, 1]
                x, m = pad_batch([ids[i] for i in np.concatenate([left, right])], tok.pad_token_id)  # (2B, T)
                x, m = x.to(self.ctx.device), m.to(self.ctx.device)
                with torch.autocast(**amp):
                    h = body(input_ids=x, attention_mask=m).last_hidden_state  # (2B, T, H)
                e = pool(h.float(), m, pooling["mode"])  # (2B, H)
                loss = cosine_pair_loss(e[: len(b)], e[len(b):], torch.as_tensor(targets[b], device=e.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())  # read back once at the end: no host sync per step
        losses = torch.stack(losses).float().cpu().tolist() if losses else []
        tuned = Path(out_dir) / ".body"
        save_tuned_body(body, tok, init_dir, tuned)  # keeps the checkpoint's pooling declaration
        report = super().fit(str(tuned), label_names, train, val_texts, val_labels, out_dir, max_epochs, log=lambda r: None)
        shutil.rmtree(tuned, ignore_errors=True)
        log({"epoch": c.epochs, "train_loss": float(np.mean(losses)) if losses else float("nan"),
             "val_macro_f1": report.val_macro_f1})
        report.seconds = time.perf_counter() - t0
        report.epochs_run = report.best_epoch = c.epochs
        report.notes.append(f"setfit: {len(losses)} steps over pairs of {len(rows)} rows "
                            f"({int((~(np.arange(len(y)) < train.n_gold))[rows].sum())} pseudo-labelled)")
        return report

    def meta(self) -> dict:
        return {"classifier": "setfit", "iterations": self.config.iterations, "epochs": self.config.epochs}

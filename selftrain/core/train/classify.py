"""Classifier finetuning (teacher, students, baseline) and batched inference.

Targets are distributions (B, C): one-hot rows for gold labels and hard pseudo-labels,
soft rows for soft pseudo-labels; each row has a loss weight. The loss is the weighted
soft cross-entropy  -sum_c t_c log p_c  (equal to ordinary cross-entropy on one-hot rows).
Early stopping keeps the epoch with the best validation macro-F1 (ties: lower loss).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from selftrain.config import FinetuneConfig
from selftrain.core.train.runtime import autocast, fused_adamw, length_buckets, seed_everything, tokenize
from selftrain.plugins import Classifier, FitReport, LabeledRows, RuntimeContext, TrainedClassifier
from selftrain.plugins.inference import InferenceForward
from selftrain.plugins.objectives.common import pad_batch


@dataclass
class TrainSet:
    texts: list[str]
    targets: np.ndarray  # (N, C) float32, rows sum to 1
    weights: np.ndarray  # (N,) float32
    noisy: np.ndarray | None = None  # (N,) bool: rows whose tokens get dropped (``token_dropout``)
    token_dropout: float = 0.0  # per-token deletion probability on noisy rows, redrawn every epoch


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    val_macro_f1: float
    val_loss: float
    seconds: float
    history: list[dict]
    val_pred: list[int]  # (N_val,) predictions of the kept epoch, for paired comparisons
    temperature: float = 1.0  # folded into the classification layer (1.0: not calibrated)


def load_classifier(model_dir: str, label_names: list[str]):
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
    )
    model.config.pad_token_id = tok.pad_token_id  # decoders classify at the last non-pad token
    return model, tok


CPU_BATCH_TOKENS = 1024
"""On the CPU an inference batch holds at most this many token positions (rows x its longest
row), so its activations stay cache-sized: ~10 % more examples/s than 128 rows of tweets on 2
cores (512-4096 measured; 1024 was best). Batches are still cut from the length-sorted order,
so only float rounding (~1e-7 in the logits) differs from fixed-size batches."""


@torch.inference_mode()
def predict_logits(model, tok, texts: list[str], max_length: int, batch_size: int, ctx: RuntimeContext,
                   progress: Callable[[int], None] | None = None, int8: bool = False,
                   compile: bool | None = None, forward: InferenceForward | None = None) -> np.ndarray:
    """(N,) texts -> (N, C) float32 logits; length-sorted batches, restored to input order.

    ``forward``: the model's :class:`~selftrain.plugins.inference.InferenceForward`, kept by the
    caller across calls (so ``ctx.compile_inference: auto`` sees the model's whole workload, e.g. a
    pool scored in chunks); without one, a fresh one for this call, whose choice ``compile`` fixes
    (None: as ``ctx.compile_inference`` decides; False: eager, e.g. for the per-epoch validation of
    a model whose weights change between calls).

    ``int8``: run a copy of the model with its nn.Linear layers dynamically quantised to int8
    (per output channel; CPU only). Faster, but not the same predictions: on the MiniLM teacher
    ~1.4x the examples/s and ~88 % argmax agreement with fp32 (``python -m benchmarks.speed``),
    which is why the pipeline does not use it."""
    model.eval().to(ctx.device)
    if int8:
        if ctx.device.type != "cpu":
            raise ValueError(f"int8 inference runs on the CPU only, not on {ctx.device.type}")
        with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated (torchao) but works
            warnings.simplefilter("ignore", DeprecationWarning)
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, inplace=False)
    ids = tokenize(tok, texts, max_length)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    cap = CPU_BATCH_TOKENS if ctx.device.type == "cpu" else None
    if int8 or forward is None:  # int8: the quantised copy above, eager
        forward = InferenceForward(model, ctx, compiled=False if int8 else compile)
    forward.expect(int(lengths.sum()))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    start = 0
    while start < len(order):
        idx = order[start : start + batch_size]
        if cap is not None:  # ascending lengths: n rows cost n * lengths[idx[n - 1]] positions
            fits = np.arange(1, len(idx) + 1) * lengths[idx] <= cap
            idx = idx[: max(1, int(fits.sum()))]
        start += len(idx)
        x, m = pad_batch([ids[i] for i in idx], tok.pad_token_id)
        with autocast(ctx):
            logits = forward(input_ids=x.to(ctx.device), attention_mask=m.to(ctx.device)).logits
        out[idx] = logits.float().cpu().numpy()
        if progress:
            progress(len(idx))
    return out


def drop_tokens(ids: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Input noise for a student (Noisy Student, Xie et al. 2020; word dropout): (T,) token ids ->
    a shorter list. Each token between the first and the last (BERT's [CLS] and [SEP]) is deleted
    with probability ``rate``; at least one of them stays, so no text becomes empty."""
    inner = ids[1:-1]
    if len(inner) < 2:
        return ids
    keep = rng.random(len(inner)) >= rate
    if not keep.any():
        keep[rng.integers(len(inner))] = True
    return [ids[0], *(t for t, k in zip(inner, keep) if k), ids[-1]]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, C) logits, (B, C) target distributions, (B,) weights -> weighted mean loss."""
    per_row = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)  # (B,)
    return (per_row * weights).sum() / weights.sum().clamp(min=1e-8)


def fit(
    model_dir: str,
    label_names: list[str],
    train: TrainSet,
    val_texts: list[str],
    val_labels: np.ndarray,
    cfg: FinetuneConfig,
    max_epochs: int,
    max_length: int,
    ctx: RuntimeContext,
    out_dir: str,
    log: Callable[[dict], None] = lambda rec: None,
) -> FitResult:
    """Finetune a sequence classifier from ``model_dir``; save the best epoch to ``out_dir``."""
    seed_everything(ctx.seed)
    model, tok = load_classifier(model_dir, label_names)
    model.to(ctx.device)
    ids = tokenize(tok, train.texts, max_length)
    lengths = np.array([len(x) for x in ids])
    targets = torch.as_tensor(train.targets, dtype=torch.float32)
    weights = torch.as_tensor(train.weights, dtype=torch.float32)
    noisy = train.noisy if train.noisy is not None and train.token_dropout > 0 else np.zeros(len(ids), bool)
    steps_per_epoch = int(np.ceil(len(ids) / cfg.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused_adamw(ctx.device))
    total = steps_per_epoch * max_epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    best_state, best, best_pred, best_logits = None, (-1.0, float("inf"), 0), [], None
    history, bad, step = [], 0, 0
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        rng = np.random.default_rng([ctx.seed, epoch])
        losses = []
        for idx in length_buckets(lengths, cfg.batch_size, rng, chunk=8):
            x, m = pad_batch([drop_tokens(ids[i], train.token_dropout, rng) if noisy[i] else ids[i] for i in idx],
                             tok.pad_token_id)
            with autocast(ctx):
                logits = model(input_ids=x.to(ctx.device), attention_mask=m.to(ctx.device)).logits  # (B, C)
            loss = soft_cross_entropy(logits, targets[idx].to(ctx.device), weights[idx].to(ctx.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        val_logits = predict_logits(model, tok, val_texts, max_length, 128, ctx, compile=False)  # weights move
        val_pred = val_logits.argmax(1)
        f1 = float(f1_score(val_labels, val_pred, average="macro", labels=list(range(len(label_names))), zero_division=0))
        vloss = float(F.cross_entropy(torch.as_tensor(val_logits), torch.tensor(val_labels, dtype=torch.long)))
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_macro_f1": f1, "val_loss": vloss}
        history.append(rec)
        log(rec)
        if (f1, -vloss) > (best[0], -best[1]):
            best, bad = (f1, vloss, epoch), 0
            best_state = copy.deepcopy(model.state_dict())
            best_pred, best_logits = val_pred.tolist(), val_logits  # (N_val, C) of the kept weights
        else:
            bad += 1
            if bad >= cfg.patience and step >= cfg.min_steps:
                break
    model.load_state_dict(best_state)
    temperature = 1.0
    if cfg.calibrate:  # few-shot finetunes are often over-confident; argmax is unchanged by this
        temperature = fit_temperature(best_logits, val_labels)
        fold_temperature(model, temperature)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return FitResult(best_epoch=best[2], epochs_run=epoch, val_macro_f1=best[0], val_loss=best[1],
                     seconds=time.perf_counter() - t0, history=history, val_pred=best_pred, temperature=temperature)


def fold_temperature(model, temperature: float) -> None:
    """Temperature scaling baked into the weights: the output layer z = W h + b becomes
    (W / T) h + b / T = z / T, so the saved model emits calibrated logits with no extra code at
    load time. The output layer is the last nn.Linear with num_labels outputs (BERT's
    ``classifier``, GPT-2's ``score``, RoBERTa's ``classifier.out_proj``)."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not heads:
        raise ValueError(f"no output layer with {model.config.num_labels} outputs in {type(model).__name__}; "
                         "set finetune.calibrate: false for this model")
    with torch.no_grad():
        heads[-1].weight.div_(temperature)
        if heads[-1].bias is not None:
            heads[-1].bias.div_(temperature)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): T minimising validation NLL of softmax(logits / T)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 300))
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    nll = [float(F.cross_entropy(z / t, y)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------- the `finetune` classifier plugin
class TrainedFinetune(TrainedClassifier):
    """A saved ``AutoModelForSequenceClassification`` (temperature already folded in)."""

    def __init__(self, model_dir: str, label_names: list[str], max_length: int, ctx: RuntimeContext):
        self.model_dir, self.label_names, self.max_length, self.ctx = model_dir, list(label_names), max_length, ctx
        self.model, self.tok = load_classifier(model_dir, label_names)
        self.forward = InferenceForward(self.model, ctx)  # across calls: auto sees the whole pool

    def predict_proba(self, texts, batch_size=128, progress=None):
        return softmax(predict_logits(self.model, self.tok, texts, self.max_length, batch_size, self.ctx, progress,
                                      forward=self.forward))

    @torch.inference_mode()
    def embed(self, texts, batch_size=128):
        """(N, H) mean-pooled, L2-normalised last hidden states of the finetuned encoder."""
        from selftrain.plugins.objectives.common import mean_pool

        body = self.model.base_model.eval().to(self.ctx.device)
        ids = tokenize(self.tok, texts, self.max_length)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            x, m = pad_batch([ids[i] for i in idx], self.tok.pad_token_id)
            with autocast(self.ctx):
                h = body(input_ids=x.to(self.ctx.device), attention_mask=m.to(self.ctx.device)).last_hidden_state
            out[idx] = F.normalize(mean_pool(h.float(), m.to(h.device)), dim=-1).cpu().numpy()
        return out


class Finetune(Classifier):
    """Full finetuning of ``AutoModelForSequenceClassification`` (:func:`fit`), hyperparameters
    from the run's ``finetune`` section; early stopping and calibration on validation."""

    summary = "full finetuning of AutoModelForSequenceClassification, early stopping on validation"
    supports_soft_targets = True
    supports_sample_weights = True
    supports_token_noise = True
    supports_warm_start = True
    body_fits_labels = True  # the body trains on the labelled rows (API 1.5)
    needs_validation = True
    loadable_with = "transformers (AutoModelForSequenceClassification, AutoTokenizer)"

    def fit(self, init_dir, label_names, train: LabeledRows, val_texts, val_labels, out_dir, max_epochs=None,
            log=lambda rec: None) -> FitReport:
        cfg = FinetuneConfig(**self.settings)
        ts = TrainSet(train.texts, train.targets, train.weights, train.noisy, train.token_dropout)
        res = fit(init_dir, label_names, ts, val_texts, np.asarray(val_labels), cfg, max_epochs or cfg.epochs,
                  self.max_length, self.ctx, out_dir, log=log)
        notes = []
        if len(set(res.val_pred)) == 1 and len(set(np.asarray(val_labels).tolist())) > 1:
            notes.append("the finetuned model predicts one class for every validation row: collapsed")
        return FitReport(val_macro_f1=res.val_macro_f1, val_loss=res.val_loss, val_pred=res.val_pred,
                         best_epoch=res.best_epoch, epochs_run=res.epochs_run, seconds=res.seconds,
                         temperature=res.temperature, notes=notes)

    def load(self, model_dir, label_names) -> TrainedFinetune:
        return TrainedFinetune(model_dir, label_names, self.max_length, self.ctx)

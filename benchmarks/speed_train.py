"""Speed section a (pretraining) of ``python -m benchmarks.speed``, and the data and models
every section uses (section b, pseudo-labelling: ``benchmarks/speed_label.py``).

a. pretrain      — MLM pretraining throughput, real (non-pad) tokens/s: our loop
                   (``selftrain.core.train.pretrain.pretrain`` + the ``mlm`` objective) vs Hugging Face
                   ``Trainer`` + ``DataCollatorForLanguageModeling`` on the same MiniLM, texts,
                   batch size and max_length. Both count real tokens as the sum of the attention
                   mask of the batches that reached the model. Throughput is measured over the
                   training loop (ours: ``PretrainResult.seconds``; HF: ``on_train_begin`` ->
                   ``on_train_end``); the end-to-end wall (model load, tokenisation) is reported too.
                   With CUDA: also bf16 autocast tokens/s and model FLOPs utilisation
                   (6 * params * tokens / s / peak bf16 FLOP/s).

``profile_*`` run one contender under ``torch.profiler`` and return where the time goes.
"""
from __future__ import annotations

import math
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from benchmarks.common import alternate, log, median, spread

PEAK_BF16 = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
}



# ============================================================================ data and models
TWEETS = {"source": "builtin:tweets", "encoding": "latin-1"}
"""The speed sections measure the tweets (short texts of varying length); the default config is BBC."""

@lru_cache(maxsize=1)
def tweets_frame():
    """A snapshot of the tweets (16 + 32 labels per class, 500 test rows per class, every other
    tweet in the pool: ~30k, so that the sections' 4,000-20,000 texts are distinct and no
    contender gains from repeated texts). Named explicitly: the default config is BBC now, whose
    articles fill any max_length and would measure another workload."""
    from selftrain.config import DataConfig
    from selftrain.core.data.ingest import ingest_frame

    return ingest_frame(DataConfig(**TWEETS, labels_per_class=16, val_per_class=32, test_per_class=500,
                                   unlabeled_size=None))


def tweet_texts(split: str | None = None, exclude_test: bool = False) -> list[str]:
    df = tweets_frame()
    if split is not None:
        df = df[df["split"] == split]
    if exclude_test:
        df = df[df["split"] != "test"]
    return df["text"].astype(str).tolist()


def take(texts: list[str], n: int) -> list[str]:
    """n distinct texts (the pipeline's validate stage drops exact duplicates, so a real pool has
    none), cycling only when there are fewer (same list for baseline and ours)."""
    texts = list(dict.fromkeys(texts))
    if n <= len(texts):
        return texts[:n]
    return [texts[i % len(texts)] for i in range(n)]


def minilm_dir() -> str:
    from selftrain.plugins.models.hf import DEFAULT_MODEL, resolve_model_path

    return resolve_model_path(DEFAULT_MODEL)


def make_classifier(backbone_dir: str, labels: list[str], out_dir: str,
                    fit_on: tuple[list[str], list[str]] | None = None) -> str:
    """A sequence classifier on ``backbone_dir``, saved with its tokenizer. Its head is random,
    or with ``fit_on`` (texts, labels) a logistic regression on the frozen pooled features, so
    that its predictions are confident like a trained teacher's (agreement checks mean something)."""
    from selftrain.core.train.classify import load_classifier

    model, tok = load_classifier(backbone_dir, labels)
    if fit_on is not None:
        fit_head(model, tok, *fit_on, labels)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def fit_head(model, tok, texts: list[str], y: list[str], labels: list[str], max_length: int = 64) -> None:
    """Set a BERT classifier's head (``classifier`` on ``pooler_output``) to a logistic regression."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    model.eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i : i + 64], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            feats.append(model.base_model(**enc).pooler_output.numpy())
    lr = LogisticRegression(C=10.0, max_iter=2000).fit(np.concatenate(feats), [labels.index(v) for v in y])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(lr.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.as_tensor(lr.intercept_, dtype=torch.float32))


def labeled_tweets(n: int = 600) -> tuple[list[str], list[str]]:
    """Up to ``n`` labeled tweets (train / val / test splits), for a teacher's head."""
    df = tweets_frame()
    df = df[df["split"] != "unlabeled"].dropna(subset=["label"]).sample(frac=1.0, random_state=0).head(n)
    return df["text"].astype(str).tolist(), df["label"].astype(str).tolist()


def make_tiny_bert(texts: list[str], out_dir: str, seed: int = 0, **options) -> str:
    """A from-scratch tiny BERT backbone (WordPiece trained on ``texts``)."""
    from selftrain.plugins.models.presets import TinyBert

    return TinyBert(TinyBert.Config(**options)).materialize(texts, out_dir, seed=seed)


# ============================================================================ a. pretraining
def _cpu_ctx(seed: int = 0):
    import torch
    from selftrain.plugins import RuntimeContext

    return RuntimeContext(device=torch.device("cpu"), autocast_dtype=None, seed=seed)


def run_ours_pretrain(texts: list[str], model_dir: str, steps: int, batch_size: int, max_length: int,
                      device: str = "cpu", seed: int = 0) -> dict:
    """Our loop, MLM objective, ``steps`` steps; loop throughput plus end-to-end wall."""
    from selftrain.plugins.objectives.mlm import MaskedLM, MLMConfig

    from selftrain.config import PretrainConfig
    from selftrain.core.train.pretrain import pretrain
    from selftrain.core.train.runtime import runtime

    ctx = _cpu_ctx(seed) if device == "cpu" else runtime(device, seed)
    epochs = max(1.0, math.ceil(steps * batch_size / max(len(texts), 1)) + 1.0)
    pc = PretrainConfig(max_steps=steps, epochs=epochs, batch_size=batch_size, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(prefix="bench-pre-") as tmp:
        t0 = time.perf_counter()
        res = pretrain(texts, model_dir, "encoder", MaskedLM, MLMConfig(), pc, max_length, ctx,
                       str(Path(tmp) / "out"), str(Path(tmp) / "ckpt"), key="bench")
        wall = time.perf_counter() - t0
    return {"tokens": int(res.tokens), "steps": int(res.steps), "loop_s": res.seconds,
            "tokens_per_s": res.tokens / res.seconds, "wall_s": wall, "final_loss": res.losses[-1]}


def run_hf_pretrain(texts: list[str], model_dir: str, steps: int, batch_size: int, max_length: int,
                    device: str = "cpu", seed: int = 0) -> dict:
    """Hugging Face Trainer + DataCollatorForLanguageModeling (padding to the longest in batch)."""
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    enc = tok(list(texts), truncation=True, max_length=max_length)
    dataset = [{"input_ids": ids} for ids in enc["input_ids"]]
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    counted = {"tokens": 0, "batches": 0}

    def count(module, args, kwargs):  # exactly the batches that reach the model
        counted["tokens"] += int(kwargs["attention_mask"].sum())
        counted["batches"] += 1

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock["begin"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            if torch.cuda.is_available() and device != "cpu":
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

    # same schedule as ours: 6 % linear warmup (transformers 5 takes a float warmup_steps as a ratio)
    import transformers

    warmup = {"warmup_steps": 0.06} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": 0.06}
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-5,
            **warmup, weight_decay=0.01, max_grad_norm=1.0, report_to=[], save_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
            use_cpu=(device == "cpu"), bf16=(device != "cpu"), seed=seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[Clock()])
        out = trainer.train()
    hook.remove()
    wall = time.perf_counter() - t0
    loop = clock["end"] - clock["begin"]
    return {"tokens": counted["tokens"], "steps": counted["batches"], "loop_s": loop,
            "tokens_per_s": counted["tokens"] / loop, "wall_s": wall, "final_loss": float(out.training_loss)}


def hf_trainer_missing() -> str | None:
    """Why the Trainer baseline cannot run here (transformers' Trainer needs accelerate), or None."""
    from importlib.util import find_spec

    for mod, req in (("accelerate", "accelerate>=1.1"), ("psutil", "psutil (needed by accelerate)")):
        if find_spec(mod) is None:
            return f"transformers.Trainer needs {req}, which is not installed: pip install accelerate"
    return None


def n_params(model_dir: str) -> int:
    from transformers import AutoModel

    return sum(p.numel() for p in AutoModel.from_pretrained(model_dir).parameters())


def peak_flops(name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_BF16[key]
    return None


def bench_pretrain(texts: list[str], model_dir: str, steps: int, repeats: int, batch_size: int = 32,
                   max_length: int = 64, device: str = "cpu") -> dict:
    """Alternating HF Trainer / ours; medians of loop tokens/s. ``device`` cpu or cuda (bf16)."""
    log(f"[pretrain] {device}: {steps} steps x batch {batch_size}, max_length {max_length}, {len(texts)} texts, "
        f"{repeats} repeats")
    contenders = {
        "hf_trainer": lambda: run_hf_pretrain(texts, model_dir, steps, batch_size, max_length, device),
        "selftrain": lambda: run_ours_pretrain(texts, model_dir, steps, batch_size, max_length, device),
    }
    missing = hf_trainer_missing()
    if missing:
        log(f"  baseline skipped: {missing}")
        del contenders["hf_trainer"]
    runs = alternate(contenders, repeats, log)
    res: dict = {"device": device, "steps": steps, "batch_size": batch_size, "max_length": max_length,
                 "texts": len(texts), "repeats": repeats, "runs": runs, "hf_trainer": None,
                 "baseline_missing": missing}
    for name, rs in runs.items():
        res[name] = {"tokens_per_s": spread([r["tokens_per_s"] for r in rs]),
                     "wall_s": spread([r["wall_s"] for r in rs]),
                     "tokens_per_step": median([r["tokens"] / max(r["steps"], 1) for r in rs])}
    res["speedup"] = (res["selftrain"]["tokens_per_s"]["median"] / res["hf_trainer"]["tokens_per_s"]["median"]
                      if res["hf_trainer"] else None)
    if device != "cpu":
        import torch

        name = torch.cuda.get_device_name(0)
        params = n_params(model_dir)
        peak = peak_flops(name)
        res["gpu"] = name
        res["params"] = params
        res["peak_bf16_flops"] = peak
        for k in ("hf_trainer", "selftrain"):
            if not res[k]:
                continue
            achieved = 6 * params * res[k]["tokens_per_s"]["median"]
            res[k]["model_tflops"] = achieved / 1e12
            res[k]["mfu"] = achieved / peak if peak else None
    return res


# ============================================================================ profiles
def profile_call(fn, top: int = 12) -> dict:
    """Run ``fn`` once under torch.profiler (CPU); the operators with the most self time.

    ``op_s`` is the time spent inside torch operators; ``wall_s - op_s`` is the rest
    (Python, tokenisation, data collation, the framework around the model)."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    op_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"wall_s": wall, "op_s": op_us / 1e6, "outside_ops_s": max(wall - op_us / 1e6, 0.0),
            "top": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "pct_of_wall": 100 * e.self_cpu_time_total / 1e6 / wall,
                     "calls": e.count} for e in events[:top]]}


def profile_pretrain(texts: list[str], model_dir: str, steps: int = 4, batch_size: int = 32,
                     max_length: int = 64) -> dict:
    """Where one short run of each contender spends its time (model loading included)."""
    log(f"[profile] pretrain, {steps} steps per contender")
    out = {"selftrain": profile_call(lambda: run_ours_pretrain(texts, model_dir, steps, batch_size, max_length))}
    if hf_trainer_missing() is None:
        out["hf_trainer"] = profile_call(lambda: run_hf_pretrain(texts, model_dir, steps, batch_size, max_length))
    return out


def profile_lines(name: str, prof: dict, top: int = 6) -> list[str]:
    """A few human lines of one profile (for the console and the README's closing note)."""
    head = (f"{name}: wall {prof['wall_s']:.1f} s, in torch ops {prof['op_s']:.1f} s, "
            f"outside ops {prof['outside_ops_s']:.1f} s")
    lines = [head]
    lines += [f"    {t['op']:<40} {t['self_s']:7.2f} s {t['pct_of_wall']:5.1f} %  x{t['calls']}" for t in prof["top"][:top]]
    return lines

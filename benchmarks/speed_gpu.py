"""Speed section ``gpu`` of ``python -m benchmarks.speed --device cuda``: the heavy stages sized
for a GPU, against what a user would run on the same card.

g1. pretrain (MLM), on MiniLM-L6 and on a BERT-base-sized backbone (``BertConfig()``'s defaults:
    12 layers, 768 wide, random init, MiniLM's WordPiece vocabulary): our loop (a token budget per
    step, bf16 autocast, fused AdamW, SDPA attention, masked positions found on the host, no
    per-step host sync, ``pretrain.compile``) vs Hugging Face ``Trainer`` with its best flags
    (``bf16``, ``torch_compile``, ``group_by_length``, fused AdamW) at the same rows per step.
g2. pseudo-labelling (the probe's forward: sentence embeddings): our ``Embedder`` (bf16, token-budget
    batches, pinned memory, one read-back) vs sentence-transformers ``encode`` in bf16.

Throughput is taken after ``warmup`` steps (compilation, allocator growth), from the step
timestamps. Model FLOPs utilisation:

    training:  MFU = (6 · N · tokens + 6 · (H² + H·V) · masked) / seconds / peak
    inference: MFU = 2 · N · tokens / seconds / peak

N = non-embedding parameters (the encoder layers), tokens = real (non-pad) tokens, masked = the
positions where the MLM head must run (15 % of the non-special tokens; the head's dense transform
H² and its decoder H·V), peak = the card's dense bf16 FLOP/s (``speed_train.PEAK_BF16``, read
from the device name). The same "needed" FLOPs count for every contender: work a contender
spends on padding or on the head at unmasked positions is not credited.

Without CUDA (``--device cpu``, the GPU script's dry run) the same code runs at tiny sizes in
fp32 and MFU is not reported.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import alternate, log, median, spread

MASK_RATE = 0.15


def bert_base_dir(out_dir: str, like: str) -> str:
    """A BERT-base-sized backbone from config (random weights) with ``like``'s tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(like)
    BertModel(BertConfig(vocab_size=tok.vocab_size)).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def shape_of(model_dir: str) -> dict:
    """Non-embedding parameters N, hidden size H, vocabulary V of a backbone."""
    from transformers import AutoModel

    m = AutoModel.from_pretrained(model_dir)
    emb = sum(p.numel() for p in m.get_input_embeddings().parameters())
    emb += sum(p.numel() for n, p in m.named_parameters() if "position_embeddings" in n or "token_type_embeddings" in n)
    return {"N": sum(p.numel() for p in m.parameters()) - emb, "H": m.config.hidden_size, "V": m.config.vocab_size}


def train_flops(shape: dict, tokens: float) -> float:
    masked = MASK_RATE * tokens
    return 6 * shape["N"] * tokens + 6 * (shape["H"] ** 2 + shape["H"] * shape["V"]) * masked


def _after_warmup(stamps: list[tuple[float, int]], warmup: int) -> float:
    """Tokens/s over the steps after ``warmup``: stamps are (time at the end of step, tokens of the step)."""
    if len(stamps) <= warmup + 1:
        warmup = 0
    t0 = stamps[warmup][0]
    toks = sum(n for _, n in stamps[warmup + 1:])
    return toks / max(stamps[-1][0] - t0, 1e-9)


def run_ours(texts, model_dir, steps, batch_tokens, max_length, device, warmup, compile_):
    import torch

    from selftrain.config import PretrainConfig
    from selftrain.core.train.pretrain import pretrain
    from selftrain.core.train.runtime import runtime
    from selftrain.plugins.objectives.mlm import MaskedLM, MLMConfig

    ctx = runtime(device, 0)
    stamps: list[tuple[float, int]] = []  # (time, step) every 10 steps, when the loop reads its losses back

    def on_log(rec):
        if rec.get("event") == "step":
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), rec["step"]))

    pc = PretrainConfig(max_steps=steps, epochs=1000.0, batch_tokens=batch_tokens, lr_ref_tokens=batch_tokens,
                        lr=5e-5, checkpoint_every=10**9, compile=compile_)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        t0 = time.perf_counter()
        res = pretrain(texts, model_dir, "encoder", MaskedLM, MLMConfig(), pc, max_length, ctx,
                       str(Path(tmp) / "out"), str(Path(tmp) / "ckpt"), key="bench", log=on_log)
        wall = time.perf_counter() - t0
    per_step = res.tokens / max(res.steps, 1)
    first = next((i for i, (_, st) in enumerate(stamps) if st >= warmup), 0)  # skip compilation, allocator growth
    if len(stamps) - first >= 2:
        (ta, sa), (tb, sb) = stamps[first], stamps[-1]
        tps = per_step * (sb - sa) / (tb - ta)
    else:
        tps = res.tokens_per_s
    return {"tokens_per_s": tps, "tokens_per_step": per_step, "steps": res.steps, "wall_s": wall,
            "final_loss": res.losses[-1] if res.losses else None}


def run_hf(texts, model_dir, steps, rows, max_length, device, warmup, compile_):
    import torch
    import transformers
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    enc = tok(list(texts), truncation=True, max_length=max_length)
    data = [{"input_ids": ids} for ids in enc["input_ids"]]
    counted: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: counted.append(int(kw["attention_mask"].sum())),
                                           with_kwargs=True)
    stamps: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), counted[-1] if counted else 0))

    warm = {"warmup_steps": 0.06} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": 0.06}
    cuda = device == "cuda"
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=rows, max_steps=steps, learning_rate=5e-5, **warm,
            weight_decay=0.01, max_grad_norm=1.0, report_to=[], save_strategy="no", logging_strategy="no",
            disable_tqdm=True, dataloader_num_workers=2 if cuda else 0, dataloader_pin_memory=cuda,
            remove_unused_columns=False, use_cpu=not cuda, bf16=cuda, torch_compile=compile_ and cuda,
            **_group_by_length(), optim="adamw_torch_fused" if cuda else "adamw_torch", seed=0)
        t0 = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=data,
                data_collator=DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=MASK_RATE),
                callbacks=[Clock()]).train()
        wall = time.perf_counter() - t0
    hook.remove()
    return {"tokens_per_s": _after_warmup(stamps, warmup), "tokens_per_step": sum(counted) / max(len(counted), 1),
            "steps": len(stamps), "wall_s": wall}


def _group_by_length() -> dict:
    """transformers 5 folded ``group_by_length`` into ``train_sampling_strategy``."""
    import inspect

    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def bench_pretrain_gpu(texts, models: dict[str, str], steps: int, batch_tokens: int, max_length: int, device: str,
                       repeats: int, warmup: int, compile_: bool) -> dict:
    """Per backbone: ours vs HF Trainer (best flags), alternating; tokens/s medians and MFU."""
    import numpy as np

    from benchmarks.speed_train import hf_trainer_missing

    out: dict = {"device": device, "steps": steps, "batch_tokens": batch_tokens, "max_length": max_length,
                 "warmup_steps": warmup, "compile": compile_, "models": {}}
    card, peak = _card(device)
    out.update({"gpu": card, "peak_bf16_flops": peak})
    missing = hf_trainer_missing()
    for name, model_dir in models.items():
        from transformers import AutoTokenizer

        lengths = np.array([len(x) for x in AutoTokenizer.from_pretrained(model_dir)(
            texts[:2000], truncation=True, max_length=max_length)["input_ids"]])
        rows = max(1, int(batch_tokens // lengths.mean()))  # HF: the rows that carry our tokens per step
        log(f"[gpu pretrain] {name} on {device}: {steps} steps, budget {batch_tokens} tokens (HF: {rows} rows), "
            f"max_length {max_length}, compile {compile_}")
        contenders = {"selftrain": lambda: run_ours(texts, model_dir, steps, batch_tokens, max_length, device, warmup,
                                                    compile_)}
        if missing is None:
            contenders["hf_trainer"] = lambda: run_hf(texts, model_dir, steps, rows, max_length, device, warmup,
                                                      compile_)
        runs = alternate(contenders, repeats, log)
        shape = shape_of(model_dir)
        res: dict = {"shape": shape, "hf_rows": rows, "runs": runs, "baseline_missing": missing}
        for k, rs in runs.items():
            tps = median([r["tokens_per_s"] for r in rs])
            res[k] = {"tokens_per_s": spread([r["tokens_per_s"] for r in rs]),
                      "tokens_per_step": median([r["tokens_per_step"] for r in rs]),
                      "model_tflops": train_flops(shape, tps) / 1e12,
                      "mfu": train_flops(shape, tps) / peak if peak else None}
        res["speedup"] = (res["selftrain"]["tokens_per_s"]["median"] / res["hf_trainer"]["tokens_per_s"]["median"]
                          if "hf_trainer" in res else None)
        out["models"][name] = res
    return out


def bench_embed_gpu(texts, model_dir: str, max_length: int, device: str, repeats: int) -> dict:
    """Our Embedder vs sentence-transformers ``encode`` (bf16 on CUDA), examples/s and MFU."""
    import numpy as np
    import torch

    from selftrain.core.train.runtime import runtime
    from selftrain.plugins.classifiers.embed import Embedder

    ctx = runtime(device, 0)  # cuda: bf16 autocast; no cache_dir: every call encodes
    ours = Embedder(model_dir, max_length, ctx)
    ours(texts[:64])  # load + warm up
    contenders = {"selftrain": lambda: _timed(lambda: ours(texts), len(texts), device)}
    try:
        from sentence_transformers import SentenceTransformer

        kw = {"model_kwargs": {"torch_dtype": torch.bfloat16}} if device == "cuda" else {}
        st = SentenceTransformer(model_dir, device=device, **kw)
        st.max_seq_length = max_length
        st.encode(texts[:64])
        contenders["sentence_transformers"] = lambda: _timed(
            lambda: st.encode(texts, batch_size=512, convert_to_numpy=True), len(texts), device)
        st_missing = None
    except ImportError:
        st_missing = "sentence-transformers is not installed: pip install '.[bench]'"
    log(f"[gpu pseudo_label] {len(texts)} texts, max_length {max_length}, {device}")
    runs = alternate(contenders, repeats, log)
    from transformers import AutoTokenizer

    tokens = int(sum(len(x) for x in AutoTokenizer.from_pretrained(model_dir)(
        list(texts), truncation=True, max_length=max_length)["input_ids"]))
    shape = shape_of(model_dir)
    card, peak = _card(device)
    res: dict = {"texts": len(texts), "tokens": tokens, "gpu": card, "runs": runs, "baseline_missing": st_missing}
    for k, rs in runs.items():
        eps = median([r["examples_per_s"] for r in rs])
        res[k] = {"examples_per_s": spread([r["examples_per_s"] for r in rs]),
                  "mfu": 2 * shape["N"] * tokens * eps / len(texts) / peak if peak else None}
    res["speedup"] = (res["selftrain"]["examples_per_s"]["median"] / res["sentence_transformers"]["examples_per_s"]["median"]
                      if "sentence_transformers" in res else None)
    if "sentence_transformers" in res:  # same body, same pooling: the vectors must agree
        a, b = ours(texts[:256]), st.encode(texts[:256], convert_to_numpy=True)
        res["min_cosine_vs_st"] = float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    return res


def _timed(fn, n: int, device: str) -> dict:
    import torch

    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    return {"seconds": s, "examples_per_s": n / s}


def _card(device: str) -> tuple[str, float | None]:
    if device != "cuda":
        return "cpu (dry run)", None
    import torch

    from benchmarks.speed_train import peak_flops

    name = torch.cuda.get_device_name(0)
    return name, peak_flops(name)


def bench_gpu(device: str, sizes: dict, repeats: int) -> dict:
    """Both parts on BBC articles (they fill max_length, as long documents do)."""
    from benchmarks import speed_train
    from selftrain.config import DataConfig
    from selftrain.core.data.ingest import ingest_frame

    texts = ingest_frame(DataConfig(source="builtin:bbc", unlabeled_size=None))["text"].astype(str).tolist()
    texts = speed_train.take(texts, sizes["gpu_texts"])
    minilm = speed_train.minilm_dir()
    with tempfile.TemporaryDirectory(prefix="bench-bert-") as tmp:
        models = {"MiniLM-L6": minilm, "BERT-base (from config)": bert_base_dir(tmp + "/bert", minilm)}
        pre = bench_pretrain_gpu(texts, models, sizes["gpu_steps"], sizes["gpu_batch_tokens"], sizes["gpu_max_length"],
                                 device, repeats, sizes["gpu_warmup"], bool(sizes["gpu_compile"]))
    emb = bench_embed_gpu(speed_train.take(speed_train.tweet_texts("unlabeled"), sizes["pl_texts"]), minilm, 64,
                          device, repeats)
    return {"pretrain": pre, "pseudo_label": emb}

"""Device choice, seeding and tokenisation shared by the training stages."""

from __future__ import annotations

import random

import numpy as np
import torch

from selftrain.plugins import RuntimeContext


def runtime(device: str = "auto", seed: int = 0, cpu_bf16: bool = False,
            inference_compile: str = "off") -> RuntimeContext:
    """cuda (with bf16 autocast when supported) > mps > cpu, unless ``device`` names one;
    ``cpu_bf16``: bf16 autocast on the CPU too (fast on CPUs with AMX / AVX512-BF16);
    ``inference_compile``: auto | on | off, see :mod:`selftrain.plugins.inference`."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if device in ("cuda", "mps") and not (torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()):
        import socket

        from selftrain.config import ConfigError  # a user error: no retry cures it, one line with the fix

        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise ConfigError(f"device: {device} was asked for, but torch on {socket.gethostname()} sees no "
                          f"{'GPU' if device == 'cuda' else 'Apple GPU'} ({build}). Fix: set device: auto (or cpu), "
                          "or run this stage on a host with one (a worker of the gpu pool with a CUDA build of torch)")
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
    if device == "cpu" and cpu_bf16:
        dtype = torch.bfloat16
    return RuntimeContext(device=torch.device(device), autocast_dtype=dtype, seed=seed,
                          compile_inference=inference_compile)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(ctx: RuntimeContext):
    if ctx.autocast_dtype is None:
        return torch.autocast(device_type=ctx.device.type, enabled=False)
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.autocast_dtype)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Texts -> token-id lists with special tokens, truncated, unpadded (fast tokenizer, batched)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return enc["input_ids"]


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length (so padding is small), in random order.

    Shuffle, cut into chunks of ``chunk * batch_size``, sort each chunk by length, slice
    batches, shuffle the batch order. Returns a list of (b,) index arrays.
    """
    order = rng.permutation(len(lengths))
    batches = []
    span = chunk * batch_size
    for start in range(0, len(order), span):
        part = order[start : start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def token_buckets(lengths: np.ndarray, max_tokens: int, rng: np.random.Generator, chunk: int = 4096) -> list[np.ndarray]:
    """Shuffled batches under a token budget: each batch holds as many similar-length rows as
    fit ``rows x its longest row <= max_tokens`` (at least one row), in random order.

    Shuffle, cut into chunks of ``chunk`` rows, sort each chunk by length, cut greedily by the
    budget, shuffle the batch order. Every step then costs about the same compute whatever the
    text lengths (short texts: many rows; long texts: few), which is what keeps a GPU busy and
    its shapes few. Returns a list of (b,) index arrays."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        i = 0
        while i < len(part):
            # ascending lengths: rows i..j-1 cost (j - i) * lengths[part[j - 1]] positions
            cost = np.arange(1, len(part) - i + 1) * lengths[part[i:]]
            n = max(1, int((cost <= max_tokens).sum()))
            batches.append(part[i : i + n])
            i += n
    rng.shuffle(batches)
    return batches


def pack(ids: list[list[int]], block: int) -> list[list[int]]:
    """Concatenate token lists (each keeps its own special tokens) into blocks of ``block`` tokens.

    No token is spent on padding except in the last block; a text may straddle two blocks.
    """
    flat = [t for row in ids for t in row]
    return [flat[i : i + block] for i in range(0, len(flat), block)]


def quiet_transformers() -> None:
    """Load reports and weight-loading bars drown the pipeline's own progress; keep errors."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


quiet_transformers()


def fused_adamw(device: torch.device) -> dict:
    """AdamW's fused kernel where torch has one (CPU, CUDA): one pass over the parameters
    instead of a dozen per tensor; the same update up to float rounding."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}

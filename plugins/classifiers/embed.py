"""Sentence embeddings of a frozen encoder, pooled the way the checkpoint was trained to pool.

A sentence-transformers checkpoint says how it pools in ``modules.json`` -> its Pooling
module's ``config.json`` (all-MiniLM-L6-v2: mean over the non-pad tokens, then L2
normalisation). A plain Hugging Face checkpoint has no such file: we mean-pool (Reimers &
Gurevych 2019 found mean pooling the best of CLS / max / mean for BERT embeddings) and
L2-normalise. Embeddings are cached on disk per (weights content, tokenizer files' content, pooling, max_length, text),
so the pool, validation and test texts are encoded once per body, however many classifiers
(baseline, students of every round) share that body.

``extra_layer`` (the ``probe`` classifier's default: the middle layer) appends a second view
from the same forward pass: the mean-pooled hidden states of that layer. The sentence embedding
a checkpoint is trained to produce is tuned for topical similarity; middle layers keep more of
the lexical and syntactic signal (Tenney et al. 2019, "BERT rediscovers the classical NLP
pipeline"), and a linear probe on both beat the last layer alone on our dev-eval at 4-32 labels
per class (docs/experiments.md, session 6). The feature is
``concat(l2(own embedding), l2(mean_pool(hidden_states[extra_layer]))) / sqrt(2)`` (unit norm,
each view weighted alike), shape (N, 2H).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from selftrain.plugins import PluginUserError, RuntimeContext
from selftrain.plugins.inference import InferenceForward
from selftrain.plugins.objectives.common import mean_pool, pad_batch

CPU_BATCH_TOKENS = 2048
"""On the CPU a batch holds at most this many token positions (rows x its longest row)."""
GPU_BATCH_TOKENS = 65536
"""On CUDA a batch holds up to this many token positions, however many rows that is (short texts:
thousands): large length-sorted batches keep the GPU busy; MiniLM's activations at 64k positions
in bf16 are a few hundred MiB."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# what turns a text into token ids: two bodies with the same weights and another vocabulary embed apart
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def read_pooling(model_dir: str) -> dict:
    """{'mode': 'mean'|'cls'|'max'|'mean_sqrt_len', 'normalize': bool, 'source': where it was read}.

    From the checkpoint's sentence-transformers ``modules.json`` when it has one, else the
    default (mean, normalised)."""
    root = Path(model_dir)
    modules = root / "modules.json"
    if not modules.exists():
        return {"mode": "mean", "normalize": True, "source": "default (no modules.json)"}
    mods = json.loads(modules.read_text())
    pooling = next((m for m in mods if m.get("type", "").endswith("Pooling")), None)
    normalize = any(m.get("type", "").endswith("Normalize") for m in mods)
    mode = "mean"
    if pooling is not None and (root / pooling.get("path", "") / "config.json").exists():
        pc = json.loads((root / pooling["path"] / "config.json").read_text())
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                          ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"), ("pooling_mode_mean_tokens", "mean")):
            if pc.get(key):
                mode = name
                break
    return {"mode": mode, "normalize": normalize, "source": str(modules)}


def resolve_layer(spec: int | str | None, model_dir: str) -> int | None:
    """The hidden-state index of ``extra_layer`` ('middle': num_hidden_layers // 2; 0 is the
    embedding layer's output) for this checkpoint; None for no extra layer (or a 1-layer body)."""
    if spec is None:
        return None
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    if spec == "middle":
        return n // 2 if n >= 2 else None
    if not 0 <= int(spec) < n:
        raise PluginUserError(f"extra_layer={spec} is outside the body's hidden states 0..{n - 1} ({model_dir} has {n} "
                         f"layers; {n} would repeat the last one). Fix: extra_layer: middle, null or 0..{n - 1}.")
    return int(spec)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, H) hidden states, (B, T) mask -> (B, H) sentence embeddings."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    mean = mean_pool(hidden, mask)
    if mode == "mean_sqrt_len":  # sum / sqrt(len) = mean * sqrt(len)
        return mean * mask.sum(1, keepdim=True).clamp(min=1).sqrt()
    return mean


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(model_dir: str) -> str:
    """Content hash of the checkpoint's weights (so a copy or hard link of a body hits the same cache)."""
    for name in WEIGHT_FILES:
        p = Path(model_dir) / name
        if p.exists():
            st = p.stat()
            return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)
    raise FileNotFoundError(f"{model_dir} has none of {', '.join(WEIGHT_FILES)}")


def tokenizer_digest(model_dir: str) -> str:
    """Content hash of the tokenizer files present (``TOKENIZER_FILES``)."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = Path(model_dir) / name
        if p.exists():
            st = p.stat()
            h.update(f"{name}:{_file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)};".encode())
    return h.hexdigest()


def _text_keys(texts: list[str]) -> np.ndarray:
    return np.array([hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest() for t in texts], dtype="S20")


_SEGMENTS: dict[str, tuple[np.ndarray, np.ndarray]] = {}
"""In-process memo of cache segment files (path -> (keys, x)); segments are immutable once written."""


class Embedder:
    """A frozen encoder -> (N, H) float32 embeddings, length-sorted batches, cached on disk.

    The cache of one body is a folder of immutable segments, ``<cache_dir>/<key>/<n>.npz``
    ({keys: (n,) sha1 of each text, x: (n, H)}): a call that encodes new texts adds one
    segment, it never rewrites old ones (a pool scored in chunks costs O(pool), not O(pool²)),
    and segments already read in this process are not read again."""

    def __init__(self, model_dir: str, max_length: int, ctx: RuntimeContext, extra_layer: int | None = None):
        self.model_dir, self.max_length, self.ctx, self.extra_layer = model_dir, max_length, ctx, extra_layer
        self.pooling = read_pooling(model_dir)
        self._model = self._tok = None
        self._forward: InferenceForward | None = None  # with the model; compiles when its workload asks for it
        key = (f"{weights_digest(model_dir)}|{tokenizer_digest(model_dir)}|{self.pooling['mode']}|"
               f"{self.pooling['normalize']}|{max_length}")
        if extra_layer is not None:
            key += f"|layer{extra_layer}"
        if ctx.autocast_dtype is not None:  # bf16 embeddings differ from fp32 ones in the last digits: own cache
            key += f"|{ctx.device.type}:{ctx.autocast_dtype}"
        self.key = hashlib.sha256(key.encode()).hexdigest()[:32]

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
            self._model = AutoModel.from_pretrained(self.model_dir).eval().to(self.ctx.device)
        return self._model, self._tok

    def _cache_folder(self) -> Path | None:
        return Path(self.ctx.cache_dir) / self.key if self.ctx.cache_dir else None

    def _cached(self, folder: Path) -> dict[bytes, tuple[np.ndarray, int]]:
        """text key -> (segment's x, row) over every segment on disk."""
        lookup: dict[bytes, tuple[np.ndarray, int]] = {}
        for f in sorted(folder.glob("*.npz")) if folder.exists() else []:
            seg = _SEGMENTS.get(str(f))
            if seg is None:
                try:
                    with np.load(f) as z:
                        seg = _SEGMENTS[str(f)] = (z["keys"], z["x"])
                except (OSError, ValueError, KeyError):  # a torn or foreign file: ignore it, re-encode
                    continue
            for i, k in enumerate(seg[0].tolist()):
                lookup[k] = (seg[1], i)
        return lookup

    def __call__(self, texts: list[str], batch_size: int = 128, progress=None) -> np.ndarray:
        keys = _text_keys(texts).tolist()
        folder = self._cache_folder()
        lookup = self._cached(folder) if folder is not None else {}
        missing = sorted({i for i, k in enumerate(keys) if k not in lookup})
        if progress and len(texts) > len(missing):
            progress(len(texts) - len(missing))
        if missing:
            uniq = list(dict.fromkeys(keys[i] for i in missing))  # a text repeated in the call is encoded once
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            fresh = self._encode([texts[first[k]] for k in uniq], batch_size, progress)  # (M, H)
            for j, k in enumerate(uniq):
                lookup[k] = (fresh, j)
            if folder is not None:  # a new segment, written whole then renamed: never half a file
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{time.time_ns()}-{os.getpid()}"
                tmp = folder / f".{name}.tmp.npz"
                np.savez(tmp, keys=np.array(uniq, dtype="S20"), x=fresh)
                os.replace(tmp, folder / f"{name}.npz")
                _SEGMENTS[str(folder / f"{name}.npz")] = (np.array(uniq, dtype="S20"), fresh)
            if progress and len(missing) > len(uniq):
                progress(len(missing) - len(uniq))
        if not texts:
            from transformers import AutoConfig

            h = AutoConfig.from_pretrained(self.model_dir).hidden_size
            return np.zeros((0, h if self.extra_layer is None else 2 * h), np.float32)
        return np.stack([lookup[k][0][lookup[k][1]] for k in keys]).astype(np.float32, copy=False)  # (N, H)

    @torch.inference_mode()
    def _encode(self, texts: list[str], batch_size: int, progress=None) -> np.ndarray:
        model, tok = self._load()
        ids = tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.array([len(x) for x in ids])
        order = np.argsort(lengths, kind="stable")
        cuda = self.ctx.device.type == "cuda"
        # CPU: small cache-sized batches; CUDA: a token budget, rows uncapped (large batches, few launches)
        cap = GPU_BATCH_TOKENS if cuda else CPU_BATCH_TOKENS if self.ctx.device.type == "cpu" else None
        rows = len(order) if cuda else batch_size
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._forward = self._forward or InferenceForward(model, self.ctx)
        forward = self._forward.expect(int(lengths.sum()))  # fresh encodings only: cache hits cost nothing
        parts: list[tuple[np.ndarray, torch.Tensor]] = []  # (rows, (b, F) on the device): read back once at the end
        start = 0
        while start < len(order):
            idx = order[start:start + rows]
            if cap is not None:  # ascending lengths: n rows cost n * lengths[idx[n - 1]] positions
                idx = idx[: max(1, int((np.arange(1, len(idx) + 1) * lengths[idx] <= cap).sum()))]
            start += len(idx)
            x, m = pad_batch([ids[i] for i in idx], pad)
            if cuda:  # page-locked: the copy runs asynchronously, overlapping the previous batch's kernels
                x, m = x.pin_memory(), m.pin_memory()
            x, m = x.to(self.ctx.device, non_blocking=True), m.to(self.ctx.device, non_blocking=True)
            with torch.autocast(self.ctx.device.type, dtype=self.ctx.autocast_dtype,
                                enabled=self.ctx.autocast_dtype is not None):
                o = forward(input_ids=x, attention_mask=m, output_hidden_states=self.extra_layer is not None)
            e = pool(o.last_hidden_state.float(), m, self.pooling["mode"])  # (B, H)
            if self.pooling["normalize"] or self.extra_layer is not None:
                e = torch.nn.functional.normalize(e, dim=-1)
            if self.extra_layer is not None:  # (B, 2H): both views at unit norm, the whole at unit norm
                mid = torch.nn.functional.normalize(mean_pool(o.hidden_states[self.extra_layer].float(), m), dim=-1)
                e = torch.cat([e, mid], -1) / math.sqrt(2)
            parts.append((idx, e))
            if progress:
                progress(len(idx))
        dim = model.config.hidden_size * (1 if self.extra_layer is None else 2)
        out = np.zeros((len(texts), dim), np.float32)
        if parts:  # one device -> host copy (a single sync) instead of one per batch
            flat = torch.cat([e for _, e in parts]).cpu().numpy()
            out[np.concatenate([i for i, _ in parts])] = flat
        return out


def save_tuned_body(body, tokenizer, init_dir: str, dst) -> None:
    """Save a finetuned body with ``save_pretrained`` + its tokenizer into ``dst``, keeping the
    checkpoint's sentence-transformers pooling declaration (``modules.json``, ``1_Pooling``,
    ``2_Normalize``) so that ``read_pooling`` and sentence-transformers read it as before."""
    import shutil

    dst = Path(dst)
    body.eval().save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    if (Path(init_dir) / "modules.json").exists():
        shutil.copy2(Path(init_dir) / "modules.json", dst / "modules.json")
    for sub in ("1_Pooling", "2_Normalize"):
        if (Path(init_dir) / sub).is_dir():
            shutil.copytree(Path(init_dir) / sub, dst / sub, dirs_exist_ok=True)

"""Weak and strong views of a text for consistency training, made from its token ids alone (no
model download: no back-translation, no MLM-based replacement).

FixMatch (Sohn et al. 2020) and UDA (Xie et al. 2020) train a classifier to give a *strongly*
perturbed view of an unlabeled example the label it gives a *weakly* perturbed one. For text:

- weak view: the text as it is; the encoder's own dropout (active in train mode) is the only
  noise — SimCSE's observation (Gao et al. 2021) that two dropout masks of one sentence are a
  minimal positive pair;
- strong view (``strong_view``): token dropout (UDA's "TF-IDF word replacement" family without a
  vocabulary model; Noisy Student, Xie et al. 2020), one contiguous span deleted (TSDAE-style
  deletion noise, Wang et al. 2021), and random swaps of neighbouring tokens (EDA's random swap,
  Wei & Zou 2019), applied in that order.

Every function takes and returns a list of token ids *without* special tokens; the caller adds
[CLS]/[SEP] (or the tokenizer's equivalents) after the noise, so they are never dropped. Each
keeps at least one token. Randomness comes only from the ``rng`` passed in: a seeded run is
reproducible.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class StrongViewConfig(BaseModel):
    token_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of dropping each token of the strong view.")
    span_deletion: float = Field(0.1, ge=0, lt=1, description="Length of one contiguous span deleted from the strong view, as a fraction of its tokens (0: none).")
    word_swaps: float = Field(0.1, ge=0, le=1, description="Swaps of two neighbouring tokens in the strong view, as a fraction of its tokens.")


def token_dropout(ids: list[int], p: float, rng: np.random.Generator) -> list[int]:
    """(T,) ids -> the ids with each dropped independently with probability ``p`` (>= 1 kept)."""
    if p <= 0 or len(ids) <= 1:
        return list(ids)
    keep = rng.random(len(ids)) >= p  # (T,)
    if not keep.any():
        keep[rng.integers(len(ids))] = True
    return [t for t, k in zip(ids, keep) if k]


def span_deletion(ids: list[int], frac: float, rng: np.random.Generator) -> list[int]:
    """(T,) ids -> the ids without one contiguous span of round(frac * T) tokens at a random
    start (at most T - 1 deleted)."""
    n = min(int(round(frac * len(ids))), len(ids) - 1)
    if n <= 0:
        return list(ids)
    start = int(rng.integers(len(ids) - n + 1))
    return list(ids[:start]) + list(ids[start + n:])


def word_swap(ids: list[int], frac: float, rng: np.random.Generator) -> list[int]:
    """(T,) ids -> the ids after round(frac * T) swaps of a random token with its right neighbour."""
    out = list(ids)
    n = int(round(frac * len(out)))
    for _ in range(n if len(out) > 1 else 0):
        i = int(rng.integers(len(out) - 1))
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def strong_view(ids: list[int], cfg: StrongViewConfig, rng: np.random.Generator) -> list[int]:
    """(T,) ids -> a strongly perturbed view: token dropout, then one span deleted, then swaps."""
    out = token_dropout(ids, cfg.token_dropout, rng)
    out = span_deletion(out, cfg.span_deletion, rng)
    return word_swap(out, cfg.word_swaps, rng)

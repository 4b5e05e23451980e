"""Small tensor helpers shared by the built-in objectives (public: third parties may use them).

Shapes: B batch rows, T padded length (the longest row of the batch), H hidden size.
All three are pure functions: they keep the device of their tensor inputs (``pad_batch``
builds CPU tensors, as ``Objective.make_batch`` must return) and draw no randomness.
"""

from __future__ import annotations

import torch


def pad_batch(input_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad B token-id lists to the longest one, T = max(len(row)).

    ``input_ids``: B non-empty lists of ints (special tokens included, as ``make_batch``
    gets them); ``pad_id``: the id that fills the padding (``backbone.pad_id``).
    Returns ``(ids, attention_mask)``, both (B, T) ``torch.long`` on the CPU: ``ids[i, j]``
    is ``input_ids[i][j]`` for ``j < len(input_ids[i])`` and ``pad_id`` after it;
    ``attention_mask`` is 1 on real tokens, 0 on padding. Raises ``ValueError`` on an empty
    batch. Batches come length-bucketed from the pretrain stage, so padding here is small.

    >>> pad_batch([[101, 7, 102], [101, 102]], pad_id=0)
    (tensor([[101,   7, 102],
            [101, 102,   0]]), tensor([[1, 1, 1],
            [1, 1, 0]]))
    """
    if not input_ids:
        raise ValueError("pad_batch needs at least one row")
    T = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(input_ids), T), dtype=torch.long)
    for i, row in enumerate(input_ids):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attn[i, : len(row)] = 1
    return ids, attn


def special_token_mask(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Where the special tokens are: never mask, replace or predict these.

    ``ids``: (B, T) long token ids (any device); ``tokenizer``: a Hugging Face tokenizer
    (``backbone.tokenizer``), whose ``all_special_ids`` ([CLS], [SEP], [PAD], [MASK],
    [UNK], BOS/EOS ...) are the special tokens. Returns a (B, T) ``torch.bool`` tensor on
    ``ids``' device, True at special tokens. Padding is True too when the pad id is a
    special token (it is for BERT and GPT-2 style tokenizers); combine with
    ``attention_mask.bool()`` to be sure: ``candidates = attn.bool() & ~special_token_mask(ids, tok)``.
    """
    special = torch.as_tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long, device=ids.device)
    return torch.isin(ids, special)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the real (unmasked) tokens of each row.

    ``hidden``: (B, T, H) float states (``backbone.hidden(ids, attn)``); ``attention_mask``:
    (B, T), 1/True on real tokens, 0 on padding (long, bool or float). Returns (B, H) in
    ``hidden``'s dtype and device: ``sum_t hidden[b, t] * mask[b, t] / sum_t mask[b, t]``.
    A row without any real token gives zeros (the count is clamped to 1), never NaN.
    Differentiable in ``hidden`` (SimCSE and TSDAE embed sentences with it).
    """
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

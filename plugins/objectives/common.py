"""Small tensor helpers shared by the built-in objectives (public: third parties may use them)."""

from __future__ import annotations

import torch


def pad_batch(input_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest one.

    Returns (ids (B, T) long, attention_mask (B, T) long). Batches come length-bucketed
    from the pretrain stage, so padding here is small.
    """
    T = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(input_ids), T), dtype=torch.long)
    for i, row in enumerate(input_ids):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attn[i, : len(row)] = 1
    return ids, attn


def special_token_mask(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """(B, T) bool, True at the tokenizer's special tokens ([CLS], [SEP], [PAD], ...)."""
    special = torch.as_tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    return torch.isin(ids, special)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) states, (B, T) mask -> (B, H) mean over real tokens."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

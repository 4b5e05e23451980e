"""Masked language modelling (BERT).

Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (arXiv:1810.04805), section 3.1: choose ``rate`` of the tokens; of those,
80 % become [MASK], 10 % a random token, 10 % stay; predict the originals.
Masks are drawn per batch (dynamic masking, RoBERTa, arXiv:1907.11692).

Speed: the vocabulary projection (H x V, V = 30k for BERT) costs as much as a small
encoder. We run the head only on the masked positions, (N, H) -> (N, V) with N ~ 15 % of
B*T, instead of Hugging Face's (B, T, V) logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from selftrain.plugins import Backbone, Objective, PluginConfig, PluginUserError, RuntimeContext
from selftrain.plugins.objectives.common import pad_batch, special_token_mask


class MLMConfig(PluginConfig):
    mask_rate: float = Field(0.15, gt=0, lt=1, description="Fraction of non-special tokens chosen for prediction.")
    whole_word: bool = Field(
        False, description="Mask all WordPiece pieces of a word together (whole-word masking, BERT-wwm)."
    )


def mask_tokens(
    input_ids: torch.Tensor,
    candidates: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    rate: float,
    generator: torch.Generator,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT 80/10/10 corruption.

    input_ids: (B, T) long; candidates: (B, T) bool, positions that may be chosen (not
    special, not pad); word_ids: optional (B, T) long, pieces of one word share an id and
    are chosen together. Returns (corrupted (B, T), labels (B, T) with -100 where not
    chosen). At least one position per row is chosen so every row teaches something.
    """
    B, T = input_ids.shape
    if word_ids is None:
        chosen = (torch.rand(B, T, generator=generator) < rate) & candidates
    else:
        # draw once per word, broadcast to its pieces
        n_words = int(word_ids.max()) + 1
        word_pick = torch.rand(B, n_words, generator=generator) < rate  # (B, W)
        chosen = torch.gather(word_pick, 1, word_ids) & candidates
    # guarantee >= 1 chosen position per row that has any candidate
    empty = ~chosen.any(1) & candidates.any(1)
    if empty.any():
        scores = torch.rand(B, T, generator=generator).masked_fill(~candidates, -1.0)
        first = scores.argmax(1)
        if word_ids is None:
            chosen[empty, first[empty]] = True
        else:  # the whole word of the drawn piece, not the piece alone
            same_word = word_ids == word_ids.gather(1, first.unsqueeze(1))  # (B, T)
            chosen |= same_word & candidates & empty.unsqueeze(1)
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(B, T, generator=generator)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_id
    corrupted[to_random] = torch.randint(vocab_size, (int(to_random.sum()),), generator=generator)
    return corrupted, labels


class MLMHead(torch.nn.Module):
    """BERT prediction head: dense -> GELU -> LayerNorm -> decoder tied to the input embeddings."""

    def __init__(self, embeddings: torch.nn.Embedding, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)
        self.embeddings = [embeddings]  # a list keeps it out of this module's parameters
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states -> (N, V) logits."""
        h = self.norm(F.gelu(self.dense(h)))
        return F.linear(h, self.embeddings[0].weight, self.bias)


class MaskedLM(Objective):
    summary = "BERT masked-LM (80/10/10, dynamic masking, optional whole-word), head on masked positions only"
    Config = MLMConfig
    requires = frozenset({"encoder"})

    def __init__(self, backbone: Backbone, config: MLMConfig, ctx: RuntimeContext):
        super().__init__(backbone, config, ctx)
        tok = backbone.tokenizer
        if tok.mask_token_id is None:
            raise PluginUserError("mlm needs a tokenizer with a [MASK] token; pick another objective or tokenizer")
        eps = float(getattr(backbone.model.config, "layer_norm_eps", 1e-12))
        self.head = MLMHead(backbone.model.get_input_embeddings(), backbone.hidden_size, eps).to(ctx.device)
        self._continuation = None
        if config.whole_word:
            vocab = tok.get_vocab()
            cont = torch.zeros(len(vocab) + 1, dtype=torch.bool)
            for piece, idx in vocab.items():
                cont[idx] = piece.startswith("##")
            if not cont.any():
                raise PluginUserError("whole_word masking needs a WordPiece tokenizer ('##' pieces); set whole_word: false")
            self._continuation = cont

    def heads(self) -> torch.nn.Module:
        return self.head

    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, attn = pad_batch(input_ids, self.backbone.pad_id)  # (B, T)
        candidates = attn.bool() & ~special_token_mask(ids, self.backbone.tokenizer)
        word_ids = None
        if self._continuation is not None:
            starts = ~self._continuation[ids.clamp(max=len(self._continuation) - 1)]
            word_ids = starts.long().cumsum(1)  # (B, T) pieces of a word share an id
        corrupted, labels = mask_tokens(
            ids, candidates, self.backbone.tokenizer.mask_token_id, self.backbone.vocab_size,
            self.config.mask_rate, generator, word_ids,
        )
        # (N,) flat indices of the chosen positions, found here on the host: the loss on a GPU then needs
        # no nonzero() (a device -> host sync every step)
        positions = (labels.reshape(-1) != -100).nonzero().squeeze(1)
        return {"input_ids": corrupted, "attention_mask": attn, "labels": labels, "positions": positions}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.backbone.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        labels = batch["labels"].reshape(-1)  # (B*T,)
        pos = batch.get("positions")
        if pos is None:  # a batch made elsewhere: find the chosen positions here (a GPU sync)
            pos = (labels != -100).nonzero().squeeze(1)
        logits = self.head(h.reshape(-1, h.shape[-1]).index_select(0, pos))  # (N, V): only they reach the vocab
        return F.cross_entropy(logits.float(), labels.index_select(0, pos))

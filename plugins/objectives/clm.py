"""Causal language modelling (GPT).

Radford et al., 2018, "Improving Language Understanding by Generative Pre-Training"
(GPT), section 3.1, and Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners" (GPT-2): maximise sum_t log p(x_t | x_<t); the logits at position t predict
the token at t+1. Pad positions are neither inputs that count nor targets.

Speed: as in ``mlm``, the vocabulary projection runs only on the (N, H) positions that
have a real next token, not on the full (B, T, V) logits Hugging Face builds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selftrain.plugins import Backbone, NoOptions, Objective, RuntimeContext
from selftrain.plugins.objectives.common import pad_batch


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) token labels (-100 at pads) -> (B, T-1): the target of position t is label t+1."""
    return labels[:, 1:]


def causal_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Next-token cross-entropy.

    hidden: (B, T, H) states; labels: (B, T) ids with -100 at pads; head: (N, H) -> (N, V).
    Returns the mean over positions that have a real next token. A batch without any
    (every row one token long) gives a zero that still reaches the graph.
    """
    targets = next_token_targets(labels)  # (B, T-1)
    chosen = targets != -100  # (B, T-1)
    if not chosen.any():
        return hidden.sum() * 0.0
    logits = head(hidden[:, :-1][chosen])  # (N, V)
    return F.cross_entropy(logits.float(), targets[chosen])


class LMHead(torch.nn.Module):
    """GPT-2 output layer: a decoder tied to the input embeddings (plus a bias, zero at start)."""

    def __init__(self, embeddings: torch.nn.Embedding):
        super().__init__()
        self.embeddings = [embeddings]  # a list keeps it out of this module's parameters
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states -> (N, V) logits."""
        return F.linear(h, self.embeddings[0].weight, self.bias)


class CausalLM(Objective):
    summary = "GPT next-token prediction, tied output layer, head on real (non-pad) targets only"
    Config = NoOptions
    requires = frozenset({"decoder"})

    def __init__(self, backbone: Backbone, config: NoOptions, ctx: RuntimeContext):
        super().__init__(backbone, config, ctx)
        self.head = LMHead(backbone.model.get_input_embeddings()).to(ctx.device)

    def heads(self) -> torch.nn.Module:
        return self.head

    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        # GPT-2 pads with <|endoftext|>, a real token elsewhere: pads are found by the mask, not the id
        ids, attn = pad_batch(input_ids, self.backbone.pad_id)  # (B, T)
        return {"input_ids": ids, "attention_mask": attn, "labels": ids.masked_fill(attn == 0, -100)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.backbone.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        return causal_lm_loss(h, batch["labels"], self.head)

"""Unsupervised SimCSE.

Gao, Yao and Chen, 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings"
(arXiv:2104.08821), section 3: encode every sentence twice; the two dropout masks are
the only augmentation, so the two views of a sentence are a positive pair and the other
sentences of the batch are negatives. Loss (their eq. 4), with sim the cosine:

    l_i = -log( exp(sim(z1_i, z2_i) / tau) / sum_j exp(sim(z1_i, z2_j) / tau) )

Dropout must be on: the backbone is in train mode during pretraining. Both views go
through one forward pass of the doubled batch (as the authors' code does); the dropout
masks of the two copies are independent. The paper's training-only MLP over [CLS] is
left out: the pooled states are used directly, so train and test pooling agree.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from selftrain.plugins import Backbone, Objective, PluginConfig, RuntimeContext
from selftrain.plugins.objectives.common import mean_pool, pad_batch


class SimCSEConfig(PluginConfig):
    temperature: float = Field(0.05, gt=0, description="Softmax temperature tau over cosine similarities (paper: 0.05).")
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="Sentence vector: mean over real tokens, or the first ([CLS]) token's state."
    )


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) states, (B, T) mask -> (B, H) sentence vectors ('mean' or 'cls')."""
    if how == "cls":
        return hidden[:, 0]
    return mean_pool(hidden, attention_mask)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives.

    z1, z2: (B, H), row i of both are views of sentence i. Builds the (B, B) cosine
    similarity matrix divided by ``temperature`` and returns the mean cross-entropy of
    each row against its diagonal entry. Scalar, float32.
    """
    z1 = F.normalize(z1.float(), dim=-1)
    z2 = F.normalize(z2.float(), dim=-1)
    sim = z1 @ z2.T / temperature  # (B, B)
    return F.cross_entropy(sim, torch.arange(len(z1), device=sim.device))


class SimCSE(Objective):
    summary = "unsupervised SimCSE: dropout views, InfoNCE over in-batch negatives (cosine / temperature)"
    Config = SimCSEConfig
    requires = frozenset({"encoder"})
    packable = False  # one sentence -> one embedding: packed blocks would mix texts

    def __init__(self, backbone: Backbone, config: SimCSEConfig, ctx: RuntimeContext):
        super().__init__(backbone, config, ctx)

    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, attn = pad_batch(input_ids, self.backbone.pad_id)  # (B, T); the noise is dropout, drawn in loss
        return {"input_ids": ids, "attention_mask": attn}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        h = self.backbone.hidden(torch.cat([ids, ids]), torch.cat([attn, attn]))  # (2B, T, H)
        z = pool(h, torch.cat([attn, attn]), self.config.pooling)  # (2B, H)
        z1, z2 = z.chunk(2)  # (B, H) each, different dropout masks
        return info_nce(z1, z2, self.config.temperature)

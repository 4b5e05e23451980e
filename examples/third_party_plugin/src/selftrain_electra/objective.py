"""ELECTRA replaced-token detection.

Clark, Luong, Le and Manning, 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators" (arXiv:2003.10555), section 2:

1. choose a random set of positions ``m`` (``mask_rate`` of the real tokens) and replace
   them with ``[MASK]``: ``x_masked = REPLACE(x, m, [MASK])``;
2. a generator (a masked-LM) predicts the originals at ``m``; replacements are *sampled*
   from its softmax: ``x_corrupt = REPLACE(x, m, x_hat)``, ``x_hat ~ p_G(x_i | x_masked)``;
3. a discriminator predicts, for every real token of ``x_corrupt``, whether it differs
   from the original (a sampled token equal to the original counts as original);
4. ``L = L_MLM(generator) + disc_weight * L_Disc`` (the paper's lambda = 50).

Sampling is discrete: no gradient flows through it into the generator; the generator is
trained by maximum likelihood only, not adversarially (paper, section 2).

Generator: to stay small this plugin's generator is a masked-LM head on the *same*
backbone (the paper's "tie all weights" variant of section 3.2, which it found slightly
better than tied embeddings alone, 83.6 vs 83.5 GLUE, at the cost of a generator as large
as the discriminator). The backbone therefore runs twice per step: on ``x_masked`` for
the generator, on ``x_corrupt`` for the discriminator. The discriminator head is a
``Linear(H, 1)`` on the backbone's last hidden states.

The maths lives in pure functions (:func:`choose_positions`, :func:`mask_input`,
:func:`sample_tokens`, :func:`replace_tokens`, :func:`electra_loss`), tested on their own.

Determinism: :meth:`Electra.make_batch` draws *all* randomness on the CPU from the
step's generator, including the uniforms used for sampling replacements (inverse-CDF
sampling in :func:`sample_tokens`), so a resumed run sees the same noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from selftrain.plugins import Backbone, Objective, PluginConfig, PluginUserError, RuntimeContext
from selftrain.plugins.objectives.common import pad_batch, special_token_mask


class ElectraConfig(PluginConfig):
    mask_rate: float = Field(
        0.15, gt=0, lt=1, description="Fraction of real (non-pad, non-special) tokens masked for the generator."
    )
    disc_weight: float = Field(
        50.0, gt=0, description="lambda: weight of the discriminator's BCE loss relative to the generator's MLM loss."
    )


# ------------------------------------------------------------------ pure functions


def choose_positions(candidates: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Pick positions to mask.

    candidates: (B, T) bool, positions that may be chosen (real tokens). Returns (B, T)
    bool, a subset of ``candidates``, each chosen independently with probability ``rate``;
    every row with at least one candidate gets at least one chosen position.
    """
    B, T = candidates.shape
    chosen = (torch.rand(B, T, generator=generator) < rate) & candidates
    empty = ~chosen.any(1) & candidates.any(1)  # (B,)
    scores = torch.rand(B, T, generator=generator).masked_fill(~candidates, -1.0)  # drawn always: fixed RNG use
    if empty.any():
        first = scores.argmax(1)  # (B,) a random candidate per row
        chosen[empty, first[empty]] = True
    return chosen


def mask_input(input_ids: torch.Tensor, chosen: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B, T) ids, (B, T) bool chosen -> (B, T) ids with ``mask_id`` at the chosen positions."""
    return input_ids.masked_fill(chosen, mask_id)


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from ``softmax(logits)`` by inverse-CDF with given uniforms.

    logits: (N, V); uniform: (N,) in [0, 1). Returns (N,) long token ids. With the
    uniforms drawn in ``make_batch`` the sample is a deterministic function of the batch.
    Call under ``torch.no_grad()``: sampling is not differentiable.
    """
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    probs = torch.softmax(logits.float(), dim=-1)  # (N, V)
    cdf = probs.cumsum(-1)  # (N, V), non-decreasing
    u = uniform.to(device=cdf.device, dtype=cdf.dtype).unsqueeze(-1) * cdf[:, -1:]  # (N, 1), scaled to the total mass
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # (N,) first index with cdf > u
    # u rounding up to the total mass would run off the end: take the mode there instead
    return torch.where(idx < logits.shape[-1], idx, probs.argmax(-1))


def replace_tokens(input_ids: torch.Tensor, chosen: torch.Tensor, sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the generator's samples at the chosen positions.

    input_ids: (B, T) originals; chosen: (B, T) bool with N True; sampled: (N,) ids in the
    row-major order of ``input_ids[chosen]``. Returns (corrupted (B, T) long, replaced
    (B, T) bool): ``replaced`` is True where the corrupted token differs from the original
    (a sample that equals the original is *not* a replacement).
    """
    corrupted = input_ids.clone()
    corrupted[chosen] = sampled.to(corrupted.dtype)
    return corrupted, corrupted != input_ids


def electra_loss(
    gen_logits: torch.Tensor,
    gen_targets: torch.Tensor,
    disc_logits: torch.Tensor,
    replaced: torch.Tensor,
    real: torch.Tensor,
    disc_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ELECTRA's combined loss.

    gen_logits: (N, V) generator logits at the N masked positions; gen_targets: (N,) the
    original ids there; disc_logits: (B, T) discriminator logits; replaced: (B, T) bool
    targets; real: (B, T) bool, the tokens the discriminator is scored on (non-pad,
    non-special). Returns (total, generator MLM loss, discriminator BCE loss), scalars:
    ``total = mlm + disc_weight * bce``; both means are over their own positions.
    """
    mlm = F.cross_entropy(gen_logits.float(), gen_targets)
    bce = F.binary_cross_entropy_with_logits(disc_logits[real].float(), replaced[real].float())
    return mlm + disc_weight * bce, mlm, bce


# ------------------------------------------------------------------ heads


class GeneratorHead(torch.nn.Module):
    """Masked-LM head: dense -> GELU -> LayerNorm -> decoder tied to the input embeddings.

    (N, H) hidden states -> (N, V) logits. The embedding matrix is held in a list so it is
    not a parameter of this module: it stays the backbone's, and the head's state dict
    (saved in checkpoints) holds only the head's own weights.
    """

    def __init__(self, embeddings: torch.nn.Embedding, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)
        self.embeddings = [embeddings]
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h)))
        return F.linear(h, self.embeddings[0].weight, self.bias)


class ElectraHeads(torch.nn.Module):
    """The two heads trained with the backbone (saved in checkpoints, not in the final model)."""

    def __init__(self, embeddings: torch.nn.Embedding, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.generator = GeneratorHead(embeddings, hidden, eps)  # (N, H) -> (N, V)
        self.discriminator = torch.nn.Linear(hidden, 1)  # (B, T, H) -> (B, T, 1)


# ------------------------------------------------------------------ the plugin


class Electra(Objective):
    """ELECTRA replaced-token detection with a weight-shared generator.

    Batch (from :meth:`make_batch`, CPU tensors; B sequences, T the longest):

    ========================  ===========  =============================================
    key                       shape/dtype  meaning
    ========================  ===========  =============================================
    ``input_ids``             (B, T) long  original ids, right-padded
    ``attention_mask``        (B, T) long  1 on tokens, 0 on padding
    ``masked_ids``            (B, T) long  ``input_ids`` with ``[MASK]`` at ``chosen``
    ``chosen``                (B, T) bool  masked positions (N in total)
    ``real``                  (B, T) bool  non-pad, non-special tokens (scored by the
                                           discriminator)
    ``uniform``               (B, T) float uniforms for sampling (used at ``chosen``)
    ========================  ===========  =============================================
    """

    summary = "ELECTRA replaced-token detection (weight-shared MLM generator, Linear discriminator, lambda=50)"
    Config = ElectraConfig
    requires = frozenset({"encoder"})
    api_version = ">=1.7,<2"  # PluginUserError

    def __init__(self, backbone: Backbone, config: ElectraConfig, ctx: RuntimeContext):
        super().__init__(backbone, config, ctx)
        tok = backbone.tokenizer
        if tok.mask_token_id is None:
            raise PluginUserError("electra needs a tokenizer with a [MASK] token; pick another objective or tokenizer")
        eps = float(getattr(backbone.model.config, "layer_norm_eps", 1e-12))
        self.head = ElectraHeads(backbone.model.get_input_embeddings(), backbone.hidden_size, eps).to(ctx.device)
        # special tokens are never proposed as replacements: (V,) 0 or -inf added to the logits
        bias = torch.zeros(backbone.vocab_size)
        special = [i for i in set(tok.all_special_ids) if 0 <= i < backbone.vocab_size]
        bias[special] = float("-inf")
        self._sample_bias = bias.to(ctx.device)

    def heads(self) -> torch.nn.Module:
        return self.head

    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, attn = pad_batch(input_ids, self.backbone.pad_id)  # (B, T) each
        real = attn.bool() & ~special_token_mask(ids, self.backbone.tokenizer)  # (B, T)
        chosen = choose_positions(real, self.config.mask_rate, generator)  # (B, T)
        uniform = torch.rand(ids.shape, generator=generator)  # (B, T)
        masked = mask_input(ids, chosen, self.backbone.tokenizer.mask_token_id)
        return {"input_ids": ids, "attention_mask": attn, "masked_ids": masked, "chosen": chosen, "real": real,
                "uniform": uniform}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        attn, chosen = batch["attention_mask"], batch["chosen"]
        # generator: MLM on the masked input, head only at the N masked positions
        h = self.backbone.hidden(batch["masked_ids"], attn)  # (B, T, H)
        gen_logits = self.head.generator(h[chosen])  # (N, V)
        with torch.no_grad():  # discrete sampling: no gradient into the generator
            sampled = sample_tokens(gen_logits.detach().float() + self._sample_bias, batch["uniform"][chosen])  # (N,)
        corrupted, replaced = replace_tokens(batch["input_ids"], chosen, sampled)  # (B, T), (B, T)
        # discriminator: the same backbone on the corrupted input
        hd = self.backbone.hidden(corrupted, attn)  # (B, T, H)
        disc_logits = self.head.discriminator(hd).squeeze(-1)  # (B, T)
        total, _, _ = electra_loss(gen_logits, batch["input_ids"][chosen], disc_logits, replaced, batch["real"],
                                   self.config.disc_weight)
        return total

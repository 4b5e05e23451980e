"""TSDAE: Transformer-based Sequential Denoising Auto-Encoder.

Wang, Reimers and Gurevych, 2021, "TSDAE: Using Transformer-based Sequential Denoising
Auto-Encoder for Unsupervised Sentence Embedding Learning" (arXiv:2104.06979), section 3:
corrupt the sentence by deleting tokens (their best noise, ratio 0.6), encode the noisy
sentence into ONE fixed vector (the bottleneck), and have a decoder reconstruct the
ORIGINAL sentence while its cross-attention sees only that vector:

    J = -sum_t log p(x_t | x_<t, s),  s = pool(encoder(noisy x))

Two decoders (``decoder``):

- ``small`` (default): a fresh causal decoder of ``decoder_layers`` layers (its capacity is
  not the point, the bottleneck is) that shares its token embeddings and output layer with
  the encoder's input embeddings.
- ``encoder``: the reference implementation's (sentence-transformers'
  ``DenoisingAutoEncoderLoss``, ``tie_encoder_decoder=True``; the paper's section 3 "we tie
  the encoder and decoder parameters"): the backbone's own architecture as a causal LM with
  cross-attention added (``AutoModelForCausalLM`` with ``is_decoder``, ``add_cross_attention``),
  every weight it shares by name with the encoder tied to the encoder's, so from step 0 the
  decoder is a pretrained network; only the cross-attention and the LM head's transform are
  new. (The reference loads the decoder from the checkpoint's name; tied weights make that
  the same tensors.)

Either lives in ``heads()`` (only its untied parameters): trained, checkpointed, dropped from
the final model.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import AutoModelForCausalLM

from selftrain.plugins import Backbone, Objective, PluginConfig, PluginUserError, RuntimeContext
from selftrain.plugins.objectives.common import mean_pool, pad_batch


class TSDAEConfig(PluginConfig):
    deletion_rate: float = Field(0.6, ge=0, lt=1, description="Fraction of non-special tokens deleted from the input (paper: 0.6).")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="Sentence vector fed to the decoder: the first ([CLS]) token's state, or the mean over real tokens."
    )
    decoder: Literal["small", "encoder"] = Field(
        "small", description="small: a fresh causal decoder of decoder_layers layers (embeddings tied to the encoder's); "
        "encoder: the reference implementation's decoder, the backbone's own architecture as a causal LM with "
        "cross-attention, every shared weight tied to the encoder's (needs a transformers causal-LM class for the "
        "backbone's model type, e.g. BERT, RoBERTa).")
    decoder_layers: int = Field(1, ge=1, description="Layers of the small reconstruction decoder (a torch TransformerDecoder).")
    decoder_heads: int | None = Field(
        None, ge=1, description="Attention heads of the decoder; null takes the backbone's (or the largest divisor of H up to 8)."
    )


def delete_tokens(ids: list[int], rate: float, generator: torch.Generator, special_ids: Collection[int] = ()) -> list[int]:
    """Deletion noise: drop each non-special token with probability ``rate``.

    ids: (T,) one sentence's token ids, special tokens included. Special tokens always stay
    in place; if every real token was drawn for deletion, one of them (drawn at random) is
    kept so the input never carries nothing. Returns the (T',) surviving ids in order.
    """
    special = set(special_ids)
    real = [i for i, t in enumerate(ids) if t not in special]
    if not real or rate <= 0:
        return list(ids)
    drop = (torch.rand(len(real), generator=generator) < rate).tolist()
    if all(drop):
        drop[int(torch.randint(len(real), (1,), generator=generator))] = False
    gone = {pos for pos, d in zip(real, drop) if d}
    return [t for i, t in enumerate(ids) if i not in gone]


def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool, True where attention is forbidden (position t sees only <= t)."""
    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=1)


def pick_heads(hidden: int, wanted: int | None) -> int:
    """Decoder heads: ``wanted`` if it divides ``hidden``, else the largest divisor of hidden <= 8."""
    if wanted and hidden % wanted == 0:
        return wanted
    return max(h for h in range(1, min(8, hidden) + 1) if hidden % h == 0)


class TSDAEDecoder(torch.nn.Module):
    """Causal transformer decoder whose only memory is the sentence vector.

    Token embeddings and the output layer are the backbone's input embeddings (tied, kept
    out of this module's parameters); positions are learned here.
    """

    def __init__(self, embeddings: torch.nn.Embedding, hidden: int, heads: int, layers: int,
                 max_positions: int, dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.embeddings = [embeddings]  # a list keeps it out of this module's parameters
        self.positions = torch.nn.Embedding(max_positions, hidden)
        self.norm = torch.nn.LayerNorm(hidden, eps=eps)
        layer = torch.nn.TransformerDecoderLayer(hidden, heads, dim_feedforward=4 * hidden, dropout=dropout,
                                                 activation="gelu", batch_first=True, layer_norm_eps=eps)
        self.decoder = torch.nn.TransformerDecoder(layer, layers)
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.num_embeddings))
        torch.nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) decoder inputs, pad: (B, T) bool True at pads, sentence: (B, H) -> (B, T, H) states."""
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.norm(self.embeddings[0](ids) + self.positions(pos))  # (B, T, H)
        memory = sentence.unsqueeze(1)  # (B, 1, H): the bottleneck is all the decoder sees of the input
        return self.decoder(x, memory, tgt_mask=causal_mask(T, ids.device), tgt_key_padding_mask=pad,
                            tgt_is_causal=True)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) decoder states -> (N, V) logits through the tied embeddings."""
        return F.linear(h, self.embeddings[0].weight, self.bias)

    def target_logits(self, ids: torch.Tensor, pad: torch.Tensor, sentence: torch.Tensor,
                      real: torch.Tensor) -> torch.Tensor:
        """(B, T) inputs, pads, (B, H) sentence, (B, T) bool targets to score -> (N, V) logits:
        only real targets reach the vocabulary projection."""
        return self.logits(self(ids, pad, sentence)[real])


def tie_to(encoder: torch.nn.Module, decoder_base: torch.nn.Module) -> set[int]:
    """Make every parameter of ``decoder_base`` that the encoder has under the same name and
    shape the encoder's own ``Parameter`` (what ``tie_encoder_decoder`` does). Returns the ids
    of the tied parameters."""
    mine = dict(encoder.named_parameters())
    tied: set[int] = set()
    for name, p in list(decoder_base.named_parameters()):
        src = mine.get(name)
        if src is None or src.shape != p.shape:
            continue  # new in the decoder (cross-attention) or shaped otherwise
        owner, _, leaf = name.rpartition(".")
        setattr(decoder_base.get_submodule(owner) if owner else decoder_base, leaf, src)
        tied.add(id(src))
    return tied


class TiedDecoder(torch.nn.Module):
    """The backbone as its own causal-LM decoder, cross-attending to the sentence vector.

    Only the untied parameters (cross-attention, LM-head transform and bias) are this
    module's; the rest are the encoder's (kept out of ``parameters()`` so checkpoints hold
    them once, in the backbone).
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        cfg = copy.deepcopy(encoder.config)
        cfg.is_decoder, cfg.add_cross_attention, cfg.tie_word_embeddings = True, True, True
        try:
            lm = AutoModelForCausalLM.from_config(cfg)
        except ValueError:
            raise PluginUserError(f"pretrain.options.decoder: encoder (tsdae) needs a causal-LM class for the backbone's "
                             f"model type {cfg.model_type!r}, and transformers' AutoModelForCausalLM has none. "
                             "Fix: set the tsdae option decoder: small, or use a BERT/RoBERTa-family backbone") from None
        lm.to(next(encoder.parameters()).device)
        tied = tie_to(encoder, lm.base_model)
        out = lm.get_output_embeddings()
        if out is not None:  # the LM head reads the (tied) input embeddings, as in the reference
            out.weight = encoder.get_input_embeddings().weight
            tied.add(id(out.weight))
        self.lm = [lm]  # a list keeps the tied weights out of this module's parameters
        own = [(n, p) for n, p in lm.named_parameters() if id(p) not in tied]
        self.own = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in own})

    def forward(self, ids: torch.Tensor, pad: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) decoder inputs, pad: (B, T) bool True at pads, sentence: (B, H) -> (B, T, V) logits."""
        self.lm[0].train(self.training)
        memory = sentence.unsqueeze(1)  # (B, 1, H): the bottleneck is all the decoder sees of the input
        return self.lm[0](input_ids=ids, attention_mask=(~pad).long(), encoder_hidden_states=memory,
                          encoder_attention_mask=torch.ones(memory.shape[:2], dtype=torch.long, device=ids.device),
                          use_cache=False).logits

    def target_logits(self, ids: torch.Tensor, pad: torch.Tensor, sentence: torch.Tensor,
                      real: torch.Tensor) -> torch.Tensor:
        """(B, T) inputs, pads, (B, H) sentence, (B, T) bool targets to score -> (N, V) logits."""
        return self(ids, pad, sentence)[real]


def reconstruction_loss(decoder: TSDAEDecoder | TiedDecoder, sentence: torch.Tensor, target_ids: torch.Tensor,
                        target_mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forced reconstruction of the original sentence.

    sentence: (B, H) vectors; target_ids, target_mask: (B, T) original sentence (right-padded).
    Inputs are tokens 0..T-2, targets tokens 1..T-1 (the first token, [CLS], acts as BOS).
    Returns the mean cross-entropy over real target tokens (0 that reaches the graph if none).
    """
    inp, tgt = target_ids[:, :-1], target_ids[:, 1:]  # (B, T-1)
    real = target_mask[:, 1:].bool()  # (B, T-1)
    logits = decoder.target_logits(inp, ~target_mask[:, :-1].bool(), sentence, real)  # (N, V)
    if not real.any():
        return logits.sum() * 0.0  # (0, V): 0 that reaches the graph
    return F.cross_entropy(logits.float(), tgt[real])


class TSDAE(Objective):
    summary = "TSDAE: delete 60% of tokens, reconstruct the original from one pooled vector (tied decoder)"
    Config = TSDAEConfig
    requires = frozenset({"encoder"})
    packable = False  # one sentence -> one embedding: packed blocks would mix texts

    def __init__(self, backbone: Backbone, config: TSDAEConfig, ctx: RuntimeContext):
        super().__init__(backbone, config, ctx)
        mc = backbone.model.config
        H = backbone.hidden_size
        heads = pick_heads(H, config.decoder_heads or getattr(mc, "num_attention_heads", None))
        self.decoder: TSDAEDecoder | TiedDecoder
        if config.decoder == "encoder":
            self.decoder = TiedDecoder(backbone.model)
        else:
            self.decoder = TSDAEDecoder(
                backbone.model.get_input_embeddings(), H, heads, config.decoder_layers,
                max_positions=int(getattr(mc, "max_position_embeddings", 512) or 512),
                dropout=float(getattr(mc, "hidden_dropout_prob", 0.1) or 0.0),
                eps=float(getattr(mc, "layer_norm_eps", 1e-12)),
            ).to(ctx.device)
        self._special = frozenset(int(i) for i in backbone.tokenizer.all_special_ids)

    def heads(self) -> torch.nn.Module:
        return self.decoder

    def make_batch(self, input_ids: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        noisy = [delete_tokens(row, self.config.deletion_rate, generator, self._special) for row in input_ids]
        ids, attn = pad_batch(noisy, self.backbone.pad_id)  # (B, T') noisy input
        target, target_mask = pad_batch(input_ids, self.backbone.pad_id)  # (B, T) original
        return {"input_ids": ids, "attention_mask": attn, "target_ids": target, "target_mask": target_mask}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.backbone.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T', H)
        if self.config.pooling == "cls":
            sentence = h[:, 0]  # (B, H)
        else:
            sentence = mean_pool(h, batch["attention_mask"])  # (B, H)
        return reconstruction_loss(self.decoder, sentence, batch["target_ids"], batch["target_mask"])

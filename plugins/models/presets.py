"""Tiny from-scratch backbones for fast tests: a tokenizer trained on the corpus, random weights."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from selftrain.plugins import ModelInfo, ModelProvider, PluginConfig


class TinyConfig(PluginConfig):
    vocab_size: int = Field(2000, ge=200, description="Tokenizer vocabulary trained on the corpus.")
    hidden_size: int = Field(64, ge=8, description="Width of the transformer.")
    layers: int = Field(2, ge=1, description="Number of transformer layers.")
    heads: int = Field(2, ge=1, description="Attention heads (must divide hidden_size).")
    max_positions: int = Field(256, ge=16, description="Longest sequence the model accepts.")


def _corpus(texts: list[str]) -> list[str]:
    return [t for t in texts if t and t.strip()] or ["empty corpus"]


class TinyBert(ModelProvider):
    summary = "from-scratch tiny BERT encoder with a WordPiece tokenizer trained on the corpus"
    Config = TinyConfig

    def info(self) -> ModelInfo:
        return ModelInfo(kind="encoder", description="tiny BERT (random init)")

    def materialize(self, texts: list[str], out_dir: str, seed: int = 0) -> str:
        import torch
        from tokenizers import BertWordPieceTokenizer
        from transformers import BertConfig, BertModel, BertTokenizerFast

        c = self.config
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        wp = BertWordPieceTokenizer(lowercase=True)
        wp.train_from_iterator(_corpus(texts), vocab_size=c.vocab_size, min_frequency=1,
                               special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                               show_progress=False)  # its bar printed blank lines to stdout
        with tempfile.TemporaryDirectory() as raw:
            # from_pretrained reads vocab.txt on transformers 4 and 5 (5's constructor ignores vocab_file=);
            # a fresh folder so a stale tokenizer.json in out_dir cannot win
            wp.save_model(raw)  # vocab.txt
            tok = BertTokenizerFast.from_pretrained(raw, do_lower_case=True)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.layers,
                         num_attention_heads=c.heads, intermediate_size=4 * c.hidden_size,
                         max_position_embeddings=c.max_positions, pad_token_id=tok.pad_token_id)
        torch.manual_seed(seed)
        BertModel(cfg).save_pretrained(out)
        tok.save_pretrained(out)
        return str(out)


class TinyGPT2(ModelProvider):
    summary = "from-scratch tiny GPT-2 decoder with a byte-level BPE tokenizer trained on the corpus"
    Config = TinyConfig

    def info(self) -> ModelInfo:
        return ModelInfo(kind="decoder", description="tiny GPT-2 (random init)")

    def materialize(self, texts: list[str], out_dir: str, seed: int = 0) -> str:
        import torch
        from tokenizers import ByteLevelBPETokenizer
        from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

        c = self.config
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_corpus(texts), vocab_size=c.vocab_size, min_frequency=1,
                                special_tokens=["<|endoftext|>"], show_progress=False)
        with tempfile.TemporaryDirectory() as raw:
            bpe.save_model(raw)  # vocab.json + merges.txt (see TinyBert on why from_pretrained)
            tok = GPT2TokenizerFast.from_pretrained(raw)
        tok.pad_token = tok.eos_token
        cfg = GPT2Config(vocab_size=len(tok), n_embd=c.hidden_size, n_layer=c.layers, n_head=c.heads,
                         n_positions=c.max_positions, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(seed)
        GPT2Model(cfg).save_pretrained(out)
        tok.save_pretrained(out)
        return str(out)

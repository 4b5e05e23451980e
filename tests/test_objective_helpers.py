"""The public helpers of selftrain.plugins.objectives.common do what docs/plugins.md section 2.1.1 says."""

from __future__ import annotations

import doctest

import pytest
import torch

from selftrain.plugins.objectives import common
from selftrain.plugins.objectives.common import mean_pool, pad_batch, special_token_mask


class _Tok:
    all_special_ids = [0, 101, 102, 103, 101]  # PAD, CLS, SEP, MASK (repeats are fine)


def test_pad_batch_shapes_values_and_mask():
    ids, attn = pad_batch([[101, 7, 8, 102], [101, 102]], pad_id=0)
    assert ids.shape == attn.shape == (2, 4) and ids.dtype == attn.dtype == torch.long
    assert ids.device.type == "cpu"
    assert ids.tolist() == [[101, 7, 8, 102], [101, 102, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="at least one row"):
        pad_batch([], pad_id=0)


def test_special_token_mask_marks_special_ids_on_the_ids_device():
    ids = torch.tensor([[101, 7, 103, 102], [101, 102, 0, 0]])
    mask = special_token_mask(ids, _Tok())
    assert mask.dtype == torch.bool and mask.shape == ids.shape and mask.device == ids.device
    assert mask.tolist() == [[True, False, True, True], [True, True, True, True]]


def test_mean_pool_averages_real_tokens_and_gives_zeros_for_empty_rows():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2).requires_grad_()
    attn = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = mean_pool(hidden, attn)
    assert out.shape == (2, 2) and out.dtype == hidden.dtype
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    out.sum().backward()
    assert hidden.grad is not None
    torch.testing.assert_close(mean_pool(hidden.detach().bfloat16(), attn.bool()).float(), out.detach())


def test_docstring_examples_run():
    assert doctest.testmod(common).failed == 0


def test_the_tiny_presets_print_nothing(tmp_path, capfd):
    """The tokenizers' training bar wrote three blank lines straight to stdout on every tiny run."""
    from selftrain.plugins.models.presets import TinyBert, TinyGPT2
    from selftrain.plugins.testing import SENTENCES

    for cls in (TinyBert, TinyGPT2):
        cls(cls.Config()).materialize(SENTENCES, str(tmp_path / cls.__name__), seed=0)
    assert capfd.readouterr().out == ""

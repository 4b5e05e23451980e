"""Tests of the example plugin: its pure functions, and selftrain's contract checks.

Run from this folder after ``pip install -e '.[test]'``, then ``pytest``: the tests import the
installed package (pyproject sets no ``pythonpath``), so a module left out of the distribution or a
wrong entry point fails here first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selftrain.plugins.models.presets import TinyBert
from selftrain.plugins.testing import check_labeler, check_objective, labeler_inputs
from selftrain_electra.labeler import MarginConfig, MarginLabeler, margins, select_by_margin
from selftrain_electra.objective import (
    Electra,
    ElectraConfig,
    choose_positions,
    electra_loss,
    mask_input,
    replace_tokens,
    sample_tokens,
)

# ------------------------------------------------------------------ objective maths


def test_choose_positions_respects_candidates_and_never_leaves_a_row_empty():
    cand = torch.tensor([[False, True, True, True, False], [False, True, False, False, False], [False] * 5])
    chosen = choose_positions(cand, 0.01, torch.Generator().manual_seed(0))
    assert not (chosen & ~cand).any()
    assert chosen[0].any() and chosen[1, 1] and not chosen[2].any()
    again = choose_positions(cand, 0.01, torch.Generator().manual_seed(0))
    assert torch.equal(chosen, again)


def test_mask_and_replace():
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    chosen = torch.tensor([[False, True, False, True, False]])
    assert mask_input(ids, chosen, 4).tolist() == [[2, 4, 11, 4, 3]]
    corrupted, replaced = replace_tokens(ids, chosen, torch.tensor([10, 99]))  # first sample == original
    assert corrupted.tolist() == [[2, 10, 11, 99, 3]]
    assert replaced.tolist() == [[False, False, False, True, False]]


def test_sample_tokens_follows_the_softmax_and_is_deterministic():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    s = sample_tokens(logits, u)
    freq = torch.bincount(s, minlength=3).float() / len(s)
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.02)
    assert torch.equal(s, sample_tokens(logits, u))
    # -inf logits (special tokens) are never drawn, even at u -> 1
    banned = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).repeat(3, 1)
    assert set(sample_tokens(banned, torch.tensor([0.0, 0.5, 1.0 - 1e-7])).tolist()) <= {0, 2}
    assert sample_tokens(torch.zeros(0, 5), torch.zeros(0)).shape == (0,)


def test_electra_loss_is_mlm_plus_weighted_bce_over_real_tokens():
    gen_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    disc = torch.tensor([[3.0, -2.0, 100.0]])  # the last position is not real: ignored
    replaced = torch.tensor([[True, False, False]])
    real = torch.tensor([[True, True, False]])
    total, mlm, bce = electra_loss(gen_logits, targets, disc, replaced, real, disc_weight=50.0)
    exp_mlm = torch.nn.functional.cross_entropy(gen_logits, targets)
    exp_bce = -(torch.log(torch.sigmoid(torch.tensor(3.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-2.0)))) / 2
    assert torch.isclose(mlm, exp_mlm) and torch.isclose(bce, exp_bce)
    assert torch.isclose(total, exp_mlm + 50.0 * exp_bce)


def test_config_defaults_and_validation():
    assert ElectraConfig().disc_weight == 50.0 and ElectraConfig().mask_rate == 0.15
    with pytest.raises(ValueError):
        ElectraConfig(mask_rate=1.5)
    with pytest.raises(ValueError):
        ElectraConfig(unknown=1)  # PluginConfig forbids unknown keys
    assert Electra.requires == frozenset({"encoder"}) and Electra.api_version == ">=1,<2"


# ------------------------------------------------------------------ objective contract


def test_electra_contract(tmp_path):
    """selftrain's own check: CPU batches, determinism, finite loss and grads, can overfit."""
    out = check_objective(Electra, TinyBert(TinyBert.Config(vocab_size=300, hidden_size=32, layers=1, heads=2)),
                          tmp_path, options={"mask_rate": 0.3})
    assert all(np.isfinite(out["losses"]))


def test_electra_batch_and_heads(tmp_path):
    from selftrain.plugins.testing import build_objective

    obj, ids = build_objective(Electra, TinyBert(TinyBert.Config(vocab_size=300, hidden_size=32, layers=1, heads=2)),
                               tmp_path)
    batch = obj.make_batch(ids[:4], torch.Generator().manual_seed(0))
    assert batch["chosen"].any(1).all()
    assert not (batch["chosen"] & ~batch["real"]).any()
    assert (batch["masked_ids"][batch["chosen"]] == obj.backbone.tokenizer.mask_token_id).all()
    # the heads' state dict holds only the heads' own weights (the tied embedding stays the backbone's)
    keys = set(obj.heads().state_dict())
    assert keys == {"generator.dense.weight", "generator.dense.bias", "generator.norm.weight", "generator.norm.bias",
                    "generator.bias", "discriminator.weight", "discriminator.bias"}


# ------------------------------------------------------------------ labeler


def test_margins():
    p = np.array([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    assert np.allclose(margins(p), [0.3, 0.05, 0.7])
    assert np.allclose(margins(np.array([[1.0], [0.5]])), [1.0, 0.5])


def test_select_by_margin_threshold_and_class_cap():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45], [0.3, 0.7], [0.7, 0.3]])
    assert select_by_margin(p, 0.3, None).tolist() == [0, 1, 3, 4]
    assert select_by_margin(p, 0.3, 1).tolist() == [0, 3]  # class 0: the largest margin only
    assert select_by_margin(p, 0.99, 5).tolist() == []


def test_margin_contract():
    sel = check_labeler(MarginLabeler)
    assert ((sel.targets == 0) | (sel.targets == 1)).all()  # hard one-hot
    inputs = labeler_inputs(n=300, seed=1)
    sel = check_labeler(MarginLabeler, {"min_margin": 0.0, "k_per_class": 7}, inputs=inputs)
    counts = np.bincount(inputs.probs[sel.index].argmax(1), minlength=3)
    assert (counts <= 7).all() and len(sel.index) == 21
    assert np.all(margins(inputs.probs[sel.index]) >= 0.0)
    empty = check_labeler(MarginLabeler, {"min_margin": 1.0})
    assert len(empty.index) == 0


def test_margin_config_validation():
    assert MarginConfig().min_margin == 0.3 and MarginConfig().k_per_class == 500
    with pytest.raises(ValueError):
        MarginConfig(min_margin=-0.1)

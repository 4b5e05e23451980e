"""Step sizing of pretraining: a token budget per step (pretrain.batch_tokens) and its learning-rate rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selftrain.config import PretrainConfig
from selftrain.core.train.pretrain import peak_lr, plan_batches
from selftrain.core.train.runtime import token_buckets


def test_token_buckets_cover_every_row_once_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, 20, 300), rng.integers(40, 64, 100), [200]])  # one row over budget
    batches = token_buckets(lengths, 256, np.random.default_rng(1))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    for b in batches:
        cost = len(b) * lengths[b].max()
        assert cost <= 256 or len(b) == 1, (len(b), lengths[b].max())
    short = [len(b) for b in batches if lengths[b].max() < 20]
    long_ = [len(b) for b in batches if 40 <= lengths[b].max() < 64]
    assert min(short) > max(long_), "short texts fill a step with more rows than long ones"
    again = token_buckets(lengths, 256, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # seeded: the same plan on resume


def test_plan_by_token_budget_spans_epochs_and_respects_max_steps():
    ids = [[1] * n for n in np.random.default_rng(0).integers(4, 30, 200)]
    cfg = PretrainConfig(batch_tokens=128, epochs=2.0)
    _, one_epoch = plan_batches(ids, PretrainConfig(batch_tokens=128, epochs=1.0), 0, 64)
    _, two = plan_batches(ids, cfg, 0, 64)
    assert len(two) == 2 * len(one_epoch)
    assert all(np.array_equal(a, b) for a, b in zip(one_epoch, two))  # epoch 1 is the same plan
    assert sorted(np.concatenate(two[len(one_epoch):]).tolist()) == list(range(200))
    _, capped = plan_batches(ids, PretrainConfig(batch_tokens=128, epochs=2.0, max_steps=5), 0, 64)
    assert len(capped) == 5
    _, rows = plan_batches(ids, PretrainConfig(batch_size=32), 0, 64)
    assert len(rows) == math.ceil(200 / 32)  # without a budget: the row count as before


def test_square_root_learning_rate_rule():
    assert peak_lr(PretrainConfig(lr=1e-4)) == 1e-4
    assert peak_lr(PretrainConfig(lr=1e-4, batch_tokens=2048)) == pytest.approx(1e-4)
    assert peak_lr(PretrainConfig(lr=1e-4, batch_tokens=8192)) == pytest.approx(2e-4)  # 4x the tokens: 2x the rate
    assert peak_lr(PretrainConfig(lr=1e-4, batch_tokens=512, lr_ref_tokens=128)) == pytest.approx(2e-4)


@pytest.mark.slow  # inductor compiles the tiny backbone on the CPU (~1 min)
def test_a_compiled_backbone_trains_and_saves_plain_weights(tiny_config):
    from pathlib import Path

    from safetensors.torch import load_file

    from selftrain.core.run import stages

    cfg = tiny_config("pretrain.max_steps=3", "pretrain.compile=true", "pretrain.batch_tokens=256")
    ing = stages.ingest(cfg)
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    res = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert res["steps"] == 3 and np.isfinite(res["final_loss"])
    weights = load_file(Path(cfg.run_dir) / "models" / "pretrain" / "model.safetensors")
    assert not any("_orig_mod" in k for k in weights), "compiling in place keeps the plain parameter names"

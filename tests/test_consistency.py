"""Consistency training (``plugins/classifiers/{views,consistency,fixmatch}.py``): the strong/weak
views, FlexMatch's per-class thresholds, distribution alignment, the masked FixMatch loss, and the
fixmatch classifier training on a pool end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selftrain.plugins.classifiers import consistency as K
from selftrain.plugins.classifiers import views as V


def test_token_dropout_keeps_order_and_at_least_one_token():
    rng = np.random.default_rng(0)
    ids = list(range(100, 140))
    out = V.token_dropout(ids, 0.3, rng)
    assert 15 < len(out) < 40 and out == sorted(out) and set(out) <= set(ids)  # a subsequence
    assert len(V.token_dropout([5, 6], 0.999, np.random.default_rng(1))) >= 1
    assert V.token_dropout(ids, 0.0, rng) == ids


def test_span_deletion_removes_one_contiguous_span():
    ids = list(range(20))
    out = V.span_deletion(ids, 0.25, np.random.default_rng(3))
    assert len(out) == 15
    gone = sorted(set(ids) - set(out))
    assert gone == list(range(gone[0], gone[0] + 5))  # contiguous
    assert V.span_deletion([7], 0.9, np.random.default_rng(0)) == [7]  # never empty


def test_word_swap_permutes_neighbours_only():
    ids = list(range(30))
    out = V.word_swap(ids, 0.1, np.random.default_rng(2))
    assert sorted(out) == ids and out != ids
    assert max(abs(out.index(t) - t) for t in ids) <= 3  # 3 swaps move a token at most 3 places


def test_strong_view_is_seeded_and_weak_view_is_the_text():
    cfg = V.StrongViewConfig(token_dropout=0.2, span_deletion=0.2, word_swaps=0.2)
    ids = list(range(50))
    a = V.strong_view(ids, cfg, np.random.default_rng(7))
    assert a == V.strong_view(ids, cfg, np.random.default_rng(7)) and a != ids and len(a) < len(ids)
    none = V.StrongViewConfig(token_dropout=0, span_deletion=0, word_swaps=0)
    assert V.strong_view(ids, none, np.random.default_rng(0)) == ids


def test_flexmatch_thresholds_lower_the_bar_for_classes_learnt_less():
    tau = 0.95
    # sigma: class 0 confidently predicted 80 times, class 1 20, class 2 never; 100 rows unused
    thr = K.flexmatch_thresholds(torch.tensor([80, 20, 0]), 100, tau)
    beta = torch.tensor([0.8, 0.2, 0.0])  # / max(max sigma = 80, unused = 100)
    assert torch.allclose(thr, beta / (2 - beta) * tau)
    assert thr[0] > thr[1] > thr[2] == 0
    # after warm-up (few unused rows) the best-learnt class is at tau
    thr2 = K.flexmatch_thresholds(torch.tensor([80, 20, 0]), 10, tau)
    assert torch.isclose(thr2[0], torch.tensor(tau)) and thr2[1] < tau
    assert torch.allclose(K.flexmatch_thresholds(torch.tensor([80, 20, 0]), 100, tau, warmup=False), thr2)


def test_distribution_alignment_moves_the_mean_towards_the_prior():
    probs = torch.tensor([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    prior = torch.tensor([0.5, 0.5])
    out = K.align_distribution(probs, prior, probs.mean(0))
    assert torch.allclose(out.sum(1), torch.ones(4))
    assert abs(out.mean(0)[0] - 0.5) < abs(probs.mean(0)[0] - 0.5)  # closer to the prior
    # mean (0.75, 0.25): class 0 scaled by 2/3, class 1 by 2; the two least class-0 rows flip
    assert out.argmax(1).tolist() == [0, 1, 1, 0]
    assert torch.allclose(K.align_distribution(probs, prior, prior), probs)  # no bias: unchanged


def test_consistency_loss_masks_rows_below_their_class_threshold():
    weak = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    strong = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0]], requires_grad=True)
    loss, mask = K.consistency_loss(strong, weak, torch.tensor([0.8, 0.65]))
    assert mask.tolist() == [True, False, True]
    ce = torch.nn.functional.cross_entropy(strong.detach(), torch.tensor([0, 0, 1]), reduction="none")
    assert torch.isclose(loss, (ce[0] + ce[2]) / 3)  # the mean over all rows, masked ones count 0
    loss.backward()
    assert strong.grad[1].abs().sum() == 0


def test_softmatch_weights_are_one_above_the_running_mean_and_a_gaussian_below():
    """SoftMatch (Chen et al. 2023): the truncated Gaussian of the released code, with n_sigma = 2."""
    mu, var = torch.tensor(0.6), torch.tensor(0.04)
    conf = torch.tensor([0.9, 0.6, 0.5, 0.34])
    w = K.softmatch_weights(conf, mu, var)
    assert w[:2].tolist() == [1.0, 1.0]  # at or above the mean: full weight
    expect = torch.exp(-(conf[2:] - mu) ** 2 / (2 * var / 4))  # below: exp(-(c - mu)^2 / (2 var / n_sigma^2))
    assert torch.allclose(w[2:], expect) and w[2] > w[3] > 0  # the less confident, the less weight


def test_softmatch_update_is_a_moving_average_of_the_batch_mean_and_unbiased_variance():
    conf = torch.tensor([0.4, 0.6, 0.8])
    mu, var = K.softmatch_update(torch.tensor(1 / 3), torch.tensor(1.0), conf, 0.9)
    assert torch.isclose(mu, torch.tensor(0.9 / 3 + 0.1 * 0.6))
    assert torch.isclose(var, torch.tensor(0.9 + 0.1 * 0.04))  # unbiased: ((0.2^2) * 2) / 2 = 0.04
    mu1, var1 = K.softmatch_update(mu, var, torch.tensor([0.7]), 0.5)  # one row: no variance to add
    assert torch.isclose(mu1, 0.5 * mu + 0.35) and torch.isclose(var1, 0.5 * var)


def test_soft_consistency_loss_weights_each_rows_cross_entropy_to_its_weak_argmax():
    weak = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    strong = torch.tensor([[1.0, 0.0], [0.5, 0.0]], requires_grad=True)
    loss = K.soft_consistency_loss(strong, weak, torch.tensor([1.0, 0.25]))
    ce = torch.nn.functional.cross_entropy(strong.detach(), torch.tensor([0, 1]), reduction="none")
    assert torch.isclose(loss, (ce[0] + 0.25 * ce[1]) / 2)
    loss.backward()
    assert strong.grad[1].abs().sum() > 0  # a low weight still trains, unlike a hard mask
    hard = K.soft_consistency_loss(strong.detach(), weak, torch.tensor([1.0, 0.0]))
    assert torch.isclose(hard, K.consistency_loss(strong.detach(), weak, torch.tensor([0.5, 0.8]))[0])  # 0/1 weights = a mask


def test_freematch_update_moves_the_global_bar_the_class_probabilities_and_the_histogram():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])  # argmax 0, 0, 2
    start = torch.full((3,), 1 / 3)
    t, p, h = K.freematch_update(torch.tensor(1 / 3), start, start, probs, 0.9)
    assert torch.isclose(t, 0.9 / 3 + 0.1 * torch.tensor(0.7))  # mean max-probability (0.9 + 0.6 + 0.6) / 3
    assert torch.allclose(p, 0.9 / 3 + 0.1 * probs.mean(0))
    assert torch.allclose(h, 0.9 / 3 + 0.1 * torch.tensor([2 / 3, 0.0, 1 / 3]))
    thr = K.freematch_thresholds(t, p)
    assert torch.isclose(thr[p.argmax()], t) and (thr <= t + 1e-7).all()  # the most probable class gets the global bar
    assert torch.allclose(thr, t * p / p.max()) and thr[1] < thr[0]  # a class predicted less gets a lower bar
    t0, p0, h0 = K.freematch_update(t, p, h, probs, 0.0)  # momentum 0: this batch alone
    assert torch.isclose(t0, torch.tensor(0.7)) and torch.allclose(p0, probs.mean(0))


def test_freematch_fairness_loss_is_the_papers_negative_cross_entropy_of_the_histogram_normalised_means():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 3.0], [0.0, 4.0, 0.0]], requires_grad=True)
    mask = torch.tensor([True, True, True, False])
    p_model, hist = torch.tensor([0.5, 0.2, 0.3]), torch.tensor([0.6, 0.1, 0.3])
    loss = K.freematch_fairness_loss(logits, mask, p_model, hist)
    q = np.exp(logits.detach().numpy()[:3])
    q /= q.sum(1, keepdims=True)  # the masked rows' probabilities; argmax 0, 0, 2: histogram 2/3, 0, 1/3
    a = np.array([0.5 / 0.6, 0.2 / 0.1, 0.3 / 0.3])
    a /= a.sum()
    b = q.mean(0) * np.array([1.5, 0.0, 3.0])  # class 1 never predicted: scaled by 0, as in the authors' code
    b /= b.sum()
    assert np.isclose(float(loss.detach()), float((a * np.log(b + 1e-12)).sum()), atol=1e-6)
    loss.backward()
    assert logits.grad[:3].abs().sum() > 0 and logits.grad[3].abs().sum() == 0  # unmasked rows untouched
    none = K.freematch_fairness_loss(logits, torch.zeros(4, dtype=torch.bool), p_model, hist)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_softmatch_refuses_a_threshold_it_would_ignore():
    from pydantic import ValidationError

    from selftrain.plugins.classifiers.fixmatch import FixMatchConfig

    with pytest.raises(ValidationError, match="softmatch: true replaces the confidence threshold, so tau"):
        FixMatchConfig(softmatch=True, tau=0.8)
    with pytest.raises(ValidationError, match="freematch: true replaces the confidence threshold, so flex, tau_min"):
        FixMatchConfig(freematch=True, tau_min=0.3, flex=False)
    with pytest.raises(ValidationError, match="softmatch: true and freematch: true are two ways"):
        FixMatchConfig(freematch=True, softmatch=True)
    assert FixMatchConfig(freematch=True).freematch
    with pytest.raises(ValidationError, match="keep_teacher: true saves the mean teacher's body, but teacher_ema is 0"):
        FixMatchConfig(keep_teacher=True)
    assert FixMatchConfig(keep_teacher=True, teacher_ema=0.99).keep_teacher
    assert FixMatchConfig(softmatch=True).softmatch and FixMatchConfig(tau=0.8, flex=False).tau == 0.8


def _tiny_topic_fit(tmp_path):
    """A tiny BERT body, the two-topic rows (texts, labels) and their LabeledRows with SENTENCES as the pool."""
    from selftrain.plugins import LabeledRows, one_hot
    from selftrain.plugins.models.presets import TinyBert
    from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    return body, texts, y, LabeledRows(texts, one_hot(y, 2), np.ones(len(y), np.float32), len(y),
                                       unlabeled=list(SENTENCES))


def test_fixmatch_trains_the_body_on_the_pool_and_saves_a_probe(tmp_path):
    """On a tiny model: the pool reaches fit and the consistency term runs, the body moves, the saved
    model loads as a probe and predicts; without a pool (mu = 0) it still trains the body."""
    import json

    from safetensors.numpy import load_file

    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.testing import SENTENCES

    body, texts, y, rows = _tiny_topic_fit(tmp_path)
    clf = FixMatch(FixMatch.Config(steps=4, batch_size=4, mu=2, lr=1e-3), RuntimeContext(seed=0), 32)
    rep = clf.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "m"))
    before = load_file(str(tmp_path / "body" / "model.safetensors"))
    after = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert any(not np.allclose(before[k], after[k]) for k in before), "the body was not trained"
    assert f"{len(SENTENCES)} pool rows" in rep.notes[-1] and "consistency loss nan" not in rep.notes[-1], rep.notes
    assert "per-class thresholds at the last step: a 0." in rep.notes[-1] and "floor" in rep.notes[-1], rep.notes
    assert json.loads((tmp_path / "m" / "selftrain_classifier.json").read_text())["classifier"] == "fixmatch"
    p = clf.load(str(tmp_path / "m"), ["a", "b"]).predict_proba(texts)
    assert p.shape == (12, 2) and np.allclose(p.sum(1), 1, atol=1e-5) and not (tmp_path / "m" / ".body").exists()
    soft = FixMatch(FixMatch.Config(steps=3, batch_size=4, mu=2, lr=1e-3, softmatch=True, softmatch_momentum=0.0), RuntimeContext(seed=0), 32)
    rep_s = soft.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "ms"))
    assert "mean SoftMatch weight of a pool row 0." in rep_s.notes[-1] and "thresholds" not in rep_s.notes[-1], rep_s.notes
    assert "consistency loss nan" not in rep_s.notes[-1]
    after_s = load_file(str(tmp_path / "ms" / "model.safetensors"))
    assert any(not np.allclose(after[k], after_s[k]) for k in after), "the soft mask trained the body no differently"
    # the fairness term has no gradient in a step whose masked strong views all predict one class (its b
    # is then constant), so this fit runs more pool rows over more steps than the others: on a tiny body
    # 4 steps of 8 rows once left every step one-class (a CI run) and the bodies equal
    free = FixMatch(FixMatch.Config(steps=8, batch_size=4, mu=4, lr=1e-3, freematch=True, freematch_momentum=0.0,
                                    freematch_fairness=1.0), RuntimeContext(seed=0), 32)
    rep_f = free.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "mf"))
    assert "(FreeMatch's, from the moving average" in rep_f.notes[-1] and "floor" not in rep_f.notes[-1], rep_f.notes
    assert "consistency loss nan" not in rep_f.notes[-1]
    assert json.loads((tmp_path / "mf" / "selftrain_classifier.json").read_text())["freematch"] is True
    after_f = load_file(str(tmp_path / "mf" / "model.safetensors"))
    assert any(not np.allclose(after[k], after_f[k]) for k in after), "FreeMatch trained the body as FlexMatch did"
    unfair = FixMatch(free.config.model_copy(update={"freematch_fairness": 0.0}), RuntimeContext(seed=0), 32)
    unfair.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "mf0"))
    after_f0 = load_file(str(tmp_path / "mf0" / "model.safetensors"))
    assert any(not np.allclose(after_f[k], after_f0[k]) for k in after), "the fairness term did not reach the body"
    # the same soft-mask fit with the weak view scored by an EMA of the model (the soft weights see any
    # change of confidence, where a hard target on a tiny model rarely flips within a few steps)
    mt = FixMatch(FixMatch.Config(steps=3, batch_size=4, mu=2, lr=1e-3, softmatch=True, softmatch_momentum=0.0,
                                  teacher_ema=0.5), RuntimeContext(seed=0), 32)
    rep_t = mt.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "mt"))
    assert "mean teacher (EMA decay 0.5)" in rep_t.notes[-1] and "consistency loss nan" not in rep_t.notes[-1], rep_t.notes
    after_t = load_file(str(tmp_path / "mt" / "model.safetensors"))
    assert any(not np.allclose(after_s[k], after_t[k]) for k in after), "the mean teacher's targets trained the body no differently"
    kept = FixMatch(mt.config.model_copy(update={"keep_teacher": True}), RuntimeContext(seed=0), 32)
    rep_k = kept.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "mk"))
    assert "the saved body is the teacher's" in rep_k.notes[-1] and "the saved body" not in rep_t.notes[-1]
    meta_k = json.loads((tmp_path / "mk" / "selftrain_classifier.json").read_text())
    assert meta_k["teacher_ema"] == 0.5 and meta_k["keep_teacher"] is True, meta_k  # the model dir says how it was made
    after_k = load_file(str(tmp_path / "mk" / "model.safetensors"))  # the same training run, the EMA weights saved
    assert any(not np.allclose(after_t[k], after_k[k]) for k in after), "the teacher's body was not the one saved"
    nopool = FixMatch(FixMatch.Config(steps=2, batch_size=4, mu=0), RuntimeContext(seed=0), 32)
    rep0 = nopool.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "m0"))
    assert "0 pool rows" in rep0.notes[-1] and "no pool: the body finetuned on the labelled rows alone" in rep0.notes[-1]
    assert "nan" not in rep0.notes[-1], rep0.notes  # no consistency loss or pool share to report
    assert "thresholds" not in rep0.notes[-1] and "mean teacher" not in rep0.notes[-1]


def test_threshold_note_reports_the_last_bars_and_the_time_spent_on_the_floor():
    """FlexMatch's bars over a fit: the last step's per class, and the share of class-steps on ``tau_min``."""
    from selftrain.plugins.classifiers.fixmatch import FixMatchConfig, threshold_note

    path = [torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.8]), torch.tensor([0.6, 0.9])]  # 3 steps, 2 classes
    note = threshold_note(path, ["neg", "pos"], FixMatchConfig(tau_min=0.5))
    assert "neg 0.60, pos 0.90" in note and "floor 50% of class-steps" in note, note
    fixed = threshold_note([torch.tensor([0.95, 0.95])], ["neg", "pos"], FixMatchConfig(flex=False))
    assert "neg 0.95, pos 0.95" in fixed and "floor" not in fixed, fixed
    assert threshold_note([], ["neg", "pos"], FixMatchConfig()) == ""
    free = threshold_note(path, ["neg", "pos"], FixMatchConfig(freematch=True))
    assert "neg 0.60, pos 0.90" in free and "first step's mean 0.50" in free and "floor" not in free, free


def test_the_finetune_stage_hands_the_pool_to_a_pool_classifier_but_not_to_the_baseline(tmp_path, monkeypatch):
    """The baseline stays the supervised core (no pool); the teacher of a classifier that ``uses_unlabeled``
    gets the pool's texts, and a probe never does."""
    import pandas as pd

    from selftrain.config import load_config
    from selftrain.core.run import stages
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.classifiers.probe import Probe

    df = pd.DataFrame({"id": [f"r{i}" for i in range(8)], "text": [f"text number {i}" for i in range(8)],
                       "label": ["a", "b", "a", "b", None, None, None, "a"],
                       "split": ["train", "train", "train", "train", "unlabeled", "unlabeled", "unlabeled", "test"]})
    clean = tmp_path / "clean.parquet"
    df.to_parquet(clean)
    seen = {}

    def fake_fit(self, init_dir, labels, train, *a, **k):  # record what the stage hands over, train nothing
        seen["unlabeled"] = train.unlabeled
        from selftrain.plugins import FitReport
        return FitReport(None, None, [])

    for cls in (FixMatch, Probe):
        monkeypatch.setattr(cls, "fit", fake_fit)
    monkeypatch.setattr(stages, "backbone", lambda cfg, clean: (str(tmp_path), None))
    for clf in ("fixmatch", "probe"):
        cfg = load_config(None, [f"classifier.name={clf}", f"output_dir={tmp_path / clf}", "data.labels=[a, b]"])
        for name in ("baseline", "teacher"):
            seen.clear()
            stages.finetune_stage(cfg, str(clean), None, name)
            (got,) = seen.values()
            want = ["text number 4", "text number 5", "text number 6"] if (clf, name) == ("fixmatch", "teacher") else None
            assert got == want, (clf, name, got)


def test_evaluate_baseline_classifier_makes_the_probe_the_yardstick_of_a_pool_classifier(tmp_path, monkeypatch):
    """``evaluate.baseline_classifier: probe``: the baseline is fitted (and saved, named in its meta
    file) by the probe, the teacher by the run's classifier; an unknown name fails in the config."""
    import pandas as pd

    from selftrain.config import ConfigError, load_config
    from selftrain.core.run import stages
    from selftrain.core.train.classifiers import saved_info
    from selftrain.plugins import FitReport
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.classifiers.probe import Probe

    df = pd.DataFrame({"id": ["r0", "r1", "r2", "r3"], "text": ["one", "two", "three", "four"],
                       "label": ["a", "b", None, "a"], "split": ["train", "train", "unlabeled", "test"]})
    clean = tmp_path / "clean.parquet"
    df.to_parquet(clean)
    fitted = {}

    def fake_fit(self, init_dir, labels, train, *a, **k):
        fitted["by"], fitted["unlabeled"] = type(self).__name__, train.unlabeled
        return FitReport(None, None, [])

    for cls in (FixMatch, Probe):
        monkeypatch.setattr(cls, "fit", fake_fit)
    monkeypatch.setattr(stages, "backbone", lambda cfg, clean: (str(tmp_path), None))
    cfg = load_config(None, ["classifier.name=fixmatch", "evaluate.baseline_classifier=probe",
                             f"output_dir={tmp_path / 'run'}", "data.labels=[a, b]"])
    base = stages.finetune_stage(cfg, str(clean), None, "baseline")
    assert fitted == {"by": "Probe", "unlabeled": None} and base["classifier"] == "probe"
    assert saved_info(base["model"])[0] == "probe"
    teacher = stages.finetune_stage(cfg, str(clean), None, "teacher")
    assert fitted == {"by": "FixMatch", "unlabeled": ["three"]} and saved_info(teacher["model"])[0] == "fixmatch"
    with pytest.raises(ConfigError, match="Unknown classifier 'prob'.*Fix evaluate.baseline_classifier"):
        load_config(None, ["classifier.name=fixmatch", "evaluate.baseline_classifier=prob"])


def test_interpolate_weights_is_the_wise_ft_line_between_two_bodies():
    import torch

    from selftrain.plugins.classifiers.wise import interpolate_weights

    init = {"w": torch.zeros(2, 3), "b": torch.ones(3), "ids": torch.arange(4)}
    tuned = {"w": torch.full((2, 3), 4.0), "b": torch.full((3,), 3.0), "ids": torch.arange(4) + 1}
    half = interpolate_weights(init, tuned, 0.25)
    assert torch.equal(half["w"], torch.full((2, 3), 1.0)) and torch.equal(half["b"], torch.full((3,), 1.5))
    assert torch.equal(half["ids"], tuned["ids"])  # integer buffers are not averaged
    assert all(torch.equal(interpolate_weights(init, tuned, 1.0)[k], tuned[k]) for k in tuned)
    with pytest.raises(ValueError, match="only in the tuned one"):
        interpolate_weights({"w": init["w"]}, tuned, 0.5)


def test_fixmatch_wise_alpha_saves_the_body_between_the_checkpoint_and_the_adapted_one(tmp_path):
    """wise_alpha = 0.5 from the same seed: every saved body tensor is the midpoint of the initial
    one and the one wise_alpha = 1 saves (the same training, then the interpolation)."""
    from safetensors.torch import load_file

    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.fixmatch import FixMatch

    body, texts, y, rows = _tiny_topic_fit(tmp_path)
    saved = {}
    for a in (1.0, 0.5):
        clf = FixMatch(FixMatch.Config(steps=3, batch_size=4, mu=2, lr=1e-3, wise_alpha=a), RuntimeContext(seed=0), 32)
        clf.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / f"m{a}"))
        saved[a] = load_file(str(tmp_path / f"m{a}" / "model.safetensors"))
    init = load_file(str(tmp_path / "body" / "model.safetensors"))
    moved = [k for k in saved[1.0] if saved[1.0][k].is_floating_point() and not torch.equal(saved[1.0][k], init[k])]
    assert moved, "the body did not train"
    for k in moved:
        torch.testing.assert_close(saved[0.5][k], (init[k] + saved[1.0][k]) / 2, atol=1e-6, rtol=0, msg=k)


def test_fixmatch_frozen_weight_blends_the_adapted_model_with_the_frozen_probe(tmp_path):
    """frozen_weight = 0.25 from the same seed: the saved model's probabilities are exactly 0.75 * the
    frozen_weight = 0 model's + 0.25 * a plain probe's (uncalibrated) on the starting body, the embeddings are the
    adapted body's, validation is scored on the blend, and a dir without its frozen_core/ is refused."""
    import shutil

    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.classifiers.probe import Probe

    body, texts, y, rows = _tiny_topic_fit(tmp_path)
    fits = {}
    for w in (0.0, 0.25):
        clf = FixMatch(FixMatch.Config(steps=3, batch_size=4, mu=2, lr=1e-3, frozen_weight=w), RuntimeContext(seed=0), 32)
        rep = clf.fit(body, ["a", "b"], rows, texts[:4], y[:4], str(tmp_path / f"m{w}"))
        fits[w] = (clf.load(str(tmp_path / f"m{w}"), ["a", "b"]), rep)
    probe = Probe(Probe.Config(calibrate=False), RuntimeContext(seed=0), 32)  # the blend mixes heads as fitted
    probe.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / "p"))
    p_frozen = probe.load(str(tmp_path / "p"), ["a", "b"]).predict_proba(texts)  # (12, 2)
    adapted, blend = fits[0.0][0], fits[0.25][0]
    assert not np.allclose(adapted.predict_proba(texts), p_frozen, atol=1e-3), "the tiny body did not move"
    np.testing.assert_allclose(blend.predict_proba(texts), 0.75 * adapted.predict_proba(texts) + 0.25 * p_frozen, atol=1e-6)
    probs, emb = blend.score(texts, embeddings=True)
    np.testing.assert_allclose(emb, adapted.embed(texts), atol=1e-6)
    assert fits[0.25][1].val_pred == blend.predict_proba(texts[:4]).argmax(1).tolist()
    assert "blend the frozen probe at weight 0.25" in fits[0.25][1].notes[-1]
    assert not (tmp_path / "m0.0" / "frozen_core").exists()
    shutil.rmtree(tmp_path / "m0.25" / "frozen_core")
    with pytest.raises(ValueError, match="holds no frozen_core/ probe"):
        FixMatch(FixMatch.Config(frozen_weight=0.25), RuntimeContext(seed=0), 32).load(str(tmp_path / "m0.25"), ["a", "b"])

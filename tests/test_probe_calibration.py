"""The probe's temperature (plugins/classifiers/calibration.py): fitted on out-of-fold logits of its
own training rows, folded into the saved head, never changing a prediction, frozen bodies only."""

from __future__ import annotations

import json

import numpy as np

from selftrain.plugins import LabeledRows, RuntimeContext, one_hot
from selftrain.plugins.classifiers.calibration import cv_temperature, fit_soft_temperature
from selftrain.plugins.classifiers.probe import Probe, fit_head, softmax
from selftrain.plugins.models.presets import TinyBert
from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS


def _ece(p: np.ndarray, y: np.ndarray) -> float:
    from selftrain.core.run.evaluate import expected_calibration_error

    return expected_calibration_error(p, y)


def test_soft_temperature_recovers_the_sharpening_of_overconfident_logits():
    """Labels drawn from softmax(z); the logits handed over are 3 z (overconfident): T comes out ~3,
    with hard (one-hot) and with soft targets, and row weights count."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 4))  # (N, C)
    y = np.array([rng.choice(4, p=p) for p in softmax(z)])
    t_hard = fit_soft_temperature(3 * z, one_hot(y, 4), np.ones(len(y)))
    t_soft = fit_soft_temperature(3 * z, softmax(z), np.ones(len(y)))
    assert abs(t_hard - 3) < 0.3 and abs(t_soft - 3) < 0.05
    w = np.where(np.arange(len(y)) < 2000, 1.0, 0.0)  # only the first half counts ...
    z2 = np.vstack([3 * z[:2000], 0.5 * z[2000:]])  # ... the second half is underconfident instead
    assert abs(fit_soft_temperature(z2, softmax(z), w) - 3) < 0.05


def test_cv_temperature_sharpens_a_hedging_head_and_lowers_its_calibration_error():
    """A strongly regularised head on well-separated clusters hedges; the cross-fitted T < 1 makes
    fresh rows' probabilities calibrated (lower ECE) and leaves every prediction as it was."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 16))

    def rows(n):
        y = np.repeat(np.arange(3), n)
        return (centres[y] + rng.normal(0, 0.6, (len(y), 16))).astype(np.float32), y

    x, y = rows(30)
    t, w = one_hot(y, 3), np.ones(len(y), np.float32)
    fit = lambda idx: fit_head(x[idx], t[idx], w[idx], 3, C=0.01)  # noqa: E731
    T, folds = cv_temperature(fit, x, t, w, seed=0)
    assert folds == 5 and T < 0.5
    W, b = fit(np.arange(len(y)))
    xf, yf = rows(200)
    raw, cal = softmax(xf @ W.T + b), softmax((xf @ W.T + b) / T)
    assert (raw.argmax(1) == cal.argmax(1)).all()
    assert _ece(cal, yf) < _ece(raw, yf) - 0.1


def test_cv_temperature_needs_two_rows_in_every_class():
    x = np.eye(5, dtype=np.float32)
    y = np.array([0, 0, 0, 0, 1])  # class 1: a single row
    t = one_hot(y, 2)
    assert cv_temperature(lambda idx: fit_head(x[idx], t[idx], np.ones(len(idx)), 2), x, t, np.ones(5)) == (None, 0)
    y3 = np.array([0, 0, 0, 1, 1])  # the folds follow the smallest class: 2
    assert cv_temperature(lambda idx: fit_head(x[idx], one_hot(y3, 2)[idx], np.ones(len(idx)), 2), x, one_hot(y3, 2),
                          np.ones(5))[1] == 2


def test_probe_folds_its_temperature_into_the_head_and_keeps_every_prediction(tmp_path):
    """calibrate: true (the default) saves head / T and records T; predictions equal calibrate: false's;
    a plugin whose body trains on the rows (body_fits_labels) keeps T = 1; too few rows: a note, T = 1."""
    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    rows = LabeledRows(texts, one_hot(y, 2), np.ones(len(y), np.float32), n_gold=len(y))
    fitted = {}
    for name, cls, opts in (("on", Probe, {}), ("off", Probe, {"calibrate": False}),
                            ("tuned", type("TunedBody", (Probe,), {"body_fits_labels": True}), {})):
        clf = cls(cls.Config(**opts), RuntimeContext(seed=0), 32)
        rep = clf.fit(body, ["a", "b"], rows, [], np.zeros(0, np.int64), str(tmp_path / name))
        meta = json.loads((tmp_path / name / "selftrain_classifier.json").read_text())
        assert meta["temperature"] == rep.temperature
        fitted[name] = (rep, clf.load(str(tmp_path / name), ["a", "b"]).predict_proba(SENTENCES))  # (N, 2)
    assert fitted["on"][0].temperature != 1.0 and fitted["off"][0].temperature == fitted["tuned"][0].temperature == 1.0
    p_on, p_off = fitted["on"][1], fitted["off"][1]
    assert (p_on.argmax(1) == p_off.argmax(1)).all() and not np.allclose(p_on, p_off, atol=1e-4)
    T = fitted["on"][0].temperature
    np.testing.assert_allclose(p_on, softmax(np.log(p_off) / T), atol=1e-4)  # the same head, logits / T
    np.testing.assert_allclose(fitted["tuned"][1], p_off, atol=1e-6)
    one = LabeledRows(texts[:4] + texts[-1:], one_hot(np.array([0, 0, 0, 0, 1]), 2), np.ones(5, np.float32), n_gold=5)
    rep = Probe(Probe.Config(), RuntimeContext(seed=0), 32).fit(body, ["a", "b"], one, [], np.zeros(0, np.int64),
                                                              str(tmp_path / "one"))
    assert rep.temperature == 1.0 and any("single training row" in n for n in rep.notes)


def test_uncalibrated_gives_the_head_as_fitted_and_pseudo_labelling_reads_it(tiny_config):
    """A calibrated probe teacher and an uncalibrated one select the same pool rows with the same
    probabilities: the pseudo-label stage reads ``uncalibrated()`` (the labelers were measured on the
    head as fitted), while ``predict_proba`` (evaluation, batch prediction) is the calibrated head."""
    import pandas as pd

    from selftrain.core.run import stages
    from selftrain.core.train.classifiers import load_trained

    common = ["classifier.name=probe", "pretrain.enabled=false", "pseudo_label.labeler=agree",
              "pseudo_label.options={guard: false}", "pseudo_label.refit_on_gold=false",
              "pseudo_label.ensemble_baseline=false", "data.unlabeled_size=200"]
    out, probs = {}, {}
    for name, extra in (("cal", []), ("raw", ["classifier.options={calibrate: false}"])):
        cfg = tiny_config(*common, *extra)
        ing = stages.ingest(cfg)
        clean = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])["clean"]
        teacher = stages.finetune_stage(cfg, clean, None, f"teacher-{name}")["model"]
        model = load_trained(cfg, teacher)
        texts = pd.read_parquet(clean)["text"].astype(str).tolist()[:50]
        probs[name] = (model.predict_proba(texts), model.uncalibrated().predict_proba(texts))
        out[name] = pd.read_parquet(stages.pseudo_label_stage(cfg, clean, teacher)["pseudo_labels"])
    assert len(out["cal"]) > 0 and list(out["cal"]["id"]) == list(out["raw"]["id"])
    assert list(out["cal"]["label"]) == list(out["raw"]["label"])
    np.testing.assert_array_equal(np.stack(out["cal"]["probs"]), np.stack(out["raw"]["probs"]))
    np.testing.assert_array_equal(probs["cal"][1], probs["raw"][0])  # uncalibrated() = the head as fitted, bit for bit
    assert not np.allclose(probs["cal"][0], probs["raw"][0], atol=1e-4)  # what users read: the calibrated head
    assert (probs["cal"][0].argmax(1) == probs["raw"][0].argmax(1)).all()


def test_the_adapt_check_scores_the_probe_as_fitted(tmp_path):
    """core_cv.cv_probs reads ``uncalibrated()``: the probe's held-out probabilities are the same with
    calibrate on and off, so the check's raw log_loss metric never compares a calibrated probe with an
    uncalibrated adapted core."""
    from selftrain.core.run.core_cv import cv_probs, fold_indices

    body = TinyBert(TinyBert.Config()).materialize(SENTENCES, str(tmp_path / "body"), seed=0)
    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    held = fold_indices(y, 3, seed=0)
    probs = {name: cv_probs(lambda: Probe(Probe.Config(**opts), RuntimeContext(seed=0), 32), body, ["a", "b"],
                            texts, y, None, held)
             for name, opts in (("on", {}), ("off", {"calibrate": False}))}
    assert probs["on"].shape == (len(y), 2) and np.isfinite(probs["on"]).all()
    np.testing.assert_array_equal(probs["on"], probs["off"])

"""The guard chooses the core: {frozen core, frozen core + pool, adapted body + pool}.

The agree labeler's round-1 guard (cross-validation over the gold rows) refuses the pool where
self-training in the frozen embedding space does not pay; ``classifier.adapt`` then names the core
that moves the body (fixmatch), which is trained on gold + pool and becomes final. The choice, the
guard's scores and why go into metrics.json (``core``) and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selftrain.core.run.pipeline import core_choice

# the frozen tiny-BERT probe + agree; guard_margin -5: self-training must lead by 5 nats per row,
# so the guard refuses whatever the draw (the real decision is tested in test_agree.py)
TINY_PROBE = ["classifier.name=probe", "pretrain.enabled=false", "data.val_per_class=0",
              "pseudo_label.labeler=agree", "pseudo_label.rounds=2", "pseudo_label.refit_on_gold=false",
              "pseudo_label.ensemble_baseline=false", "pseudo_label.options={guard_folds: 2}"]
ADAPT = ["classifier.adapt.name=fixmatch", "classifier.adapt.options={steps: 3, batch_size: 4, mu: 1}"]


def test_core_choice_names_the_core_and_why(tiny_config):
    cfg = tiny_config(*TINY_PROBE, *ADAPT)
    guard = {"metric": "log_loss", "selftrained_log_loss": 1.4, "supervised_log_loss": 1.1, "use_pool": False}
    refused = core_choice(cfg, "baseline", {"pool_refused": True, "guard": guard})
    assert refused["chosen"] == "adapted" and refused["refused"] and refused["guard"] == guard
    assert "1.400 vs supervised 1.100" in refused["why"] and "fixmatch" in refused["why"]
    assert refused["candidates"] == {"supervised": "probe", "pool": "probe + agree pseudo-labels",
                                     "adapted": "fixmatch on gold + pool"}
    passed = core_choice(cfg, "student-2", {"guard": {**guard, "selftrained_log_loss": 0.4, "use_pool": True}})
    assert passed["chosen"] == "pool" and not passed["refused"] and passed["guard"]["use_pool"]
    assert "let the pool through (held-out log_loss per gold row: self-trained 0.400 vs supervised 1.100)" in passed["why"]
    nothing = core_choice(cfg, "baseline", None)  # no pseudo-labelling ran
    assert nothing["chosen"] == "supervised" and nothing["guard"] is None and not nothing["refused"]
    no_adapt = core_choice(tiny_config(*TINY_PROBE), "baseline", {"pool_refused": True, "guard": guard})
    assert no_adapt["chosen"] == "supervised" and "classifier.adapt.name: fixmatch" in no_adapt["why"]


@pytest.mark.parametrize("overrides,match", [
    (["pseudo_label.labeler=soft", "pseudo_label.options={}"], "has no guard"),
    (["pseudo_label.enabled=false"], "no guard ever runs"),
    (["classifier.adapt.name=fixmacth"], "classifier.adapt.name"),
    (["classifier.adapt.options={stepz: 3}"], "classifier.adapt.options"),
])
def test_impossible_adapt_combinations_are_refused_up_front(tiny_config, overrides, match):
    from selftrain.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        tiny_config(*TINY_PROBE, *ADAPT, *overrides)


def test_the_agree_guard_marks_a_refused_pool():
    from selftrain.plugins import LabelerInputs
    from selftrain.plugins.labelers.agree import AgreeConfig, AgreementLabeler

    rng = np.random.default_rng(0)
    gold_y = np.repeat([0, 1], 6)
    gold_x = rng.normal(size=(12, 8)) + gold_y[:, None]
    gold_x /= np.linalg.norm(gold_x, axis=1, keepdims=True)
    pool_x = rng.normal(size=(40, 8))
    pool_x /= np.linalg.norm(pool_x, axis=1, keepdims=True)
    probs = np.full((40, 2), 0.5)
    inputs = LabelerInputs(probs=probs, val_probs=np.zeros((0, 2)), val_labels=np.zeros(0, np.int64),
                           train_counts=np.array([6, 6]), label_names=["a", "b"], pool_embeddings=pool_x,
                           train_embeddings=gold_x, train_labels=gold_y, rounds=2)
    assert AgreementLabeler.guards_pool
    refused = AgreementLabeler(AgreeConfig(guard_margin=-5, guard_folds=3)).select(inputs)
    assert refused.pool_refused and len(refused.index) == 0 and refused.notes["guard"]["use_pool"] is False
    passed = AgreementLabeler(AgreeConfig(guard_margin=5, guard_folds=3)).select(inputs)
    assert not passed.pool_refused and passed.notes["guard"]["use_pool"] is True


@pytest.mark.slow
def test_a_refused_pool_trains_the_adapted_core_and_reports_the_choice(tiny_config):
    from selftrain.core.run.pipeline import run_stages

    cfg = tiny_config(*TINY_PROBE, *ADAPT, "pseudo_label.options={guard_folds: 2, guard_margin: -5}")
    res = run_stages(cfg)
    run = Path(cfg.run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert res["final"] == metrics["final"] == "adapted"
    assert metrics["core"]["chosen"] == "adapted" and metrics["core"]["refused"]
    assert metrics["core"]["guard"]["use_pool"] is False
    assert set(metrics["models"]) == {"baseline", "adapted"}  # no student: the pool was refused for the frozen core
    from selftrain.core.train.classifiers import saved_info

    assert saved_info(str(run / "models" / "adapted"))[0] == "fixmatch"
    report = (run / "report.md").read_text()
    assert "## Core" in report and "Chosen: **adapted**" in report and "the guard refused the pool" in report

    # the same run without classifier.adapt: the supervised core stands, and the report says how to adapt
    cfg2 = tiny_config(*TINY_PROBE, "pseudo_label.options={guard_folds: 2, guard_margin: -5}",
                       f"output_dir={run.parent / 'run2'}")
    res2 = run_stages(cfg2)
    m2 = json.loads((Path(cfg2.run_dir) / "metrics.json").read_text())
    assert res2["final"] == "baseline" and m2["core"]["chosen"] == "supervised"
    assert "classifier.adapt.name: fixmatch" in m2["core"]["why"]


def test_the_agree_guard_does_not_trust_a_body_that_fit_the_gold_rows():
    """A teacher whose body trained on the gold rows (LabelerInputs.embeddings_fit_labels) would make
    the guard's cross-validation optimistic: by default agree keeps nothing and says why, without
    marking a measured refusal (classifier.adapt is not trained on it); 'trust' runs the guard."""
    from selftrain.plugins import LabelerInputs
    from selftrain.plugins.labelers.agree import AgreeConfig, AgreementLabeler

    rng = np.random.default_rng(0)
    gold_y = np.repeat([0, 1], 6)
    gold_x = rng.normal(size=(12, 8)) + 2 * gold_y[:, None]
    gold_x /= np.linalg.norm(gold_x, axis=1, keepdims=True)
    pool_x = rng.normal(size=(40, 8))
    pool_x /= np.linalg.norm(pool_x, axis=1, keepdims=True)
    inputs = LabelerInputs(probs=np.full((40, 2), 0.5), val_probs=np.zeros((0, 2)), val_labels=np.zeros(0, np.int64),
                           train_counts=np.array([6, 6]), label_names=["a", "b"], pool_embeddings=pool_x,
                           train_embeddings=gold_x, train_labels=gold_y, rounds=2, embeddings_fit_labels=True)
    lenient = {"guard_margin": 5, "guard_folds": 3}  # a guard that would pass anything it measured
    kept_none = AgreementLabeler(AgreeConfig(**lenient)).select(inputs)
    assert len(kept_none.index) == 0 and not kept_none.pool_refused
    assert kept_none.notes["guard"]["folds"] == 0 and "guard_adapted: trust" in kept_none.notes["reason"]
    trusted = AgreementLabeler(AgreeConfig(**lenient, guard_adapted="trust")).select(inputs)
    assert trusted.notes["guard"]["folds"] == 3 and trusted.notes["guard"]["use_pool"] and len(trusted.index) > 0
    frozen = AgreementLabeler(AgreeConfig(**lenient)).select(
        LabelerInputs(**{**inputs.__dict__, "embeddings_fit_labels": False}))
    assert frozen.notes["guard"]["folds"] == 3 and len(frozen.index) == len(trusted.index)


def test_only_the_frozen_probe_leaves_its_body_untouched_by_the_labels():
    from selftrain.plugins.registry import get

    flags = {n: get("selftrain.classifiers", n).body_fits_labels for n in ("probe", "fixmatch", "setfit", "finetune")}
    assert flags == {"probe": False, "fixmatch": True, "setfit": True, "finetune": True}


@pytest.mark.slow
def test_a_fixmatch_teacher_keeps_no_pseudo_label_and_stays_final(tiny_config):
    """classifier.name: fixmatch + agree at its defaults: the stage tells the labeler the teacher's body
    fit the gold rows, round 1 keeps nothing, the teacher (fixmatch on gold + pool) is final and the
    core record says why; classifier.adapt is not trained."""
    from selftrain.core.run.pipeline import run_stages

    cfg = tiny_config("classifier.name=fixmatch", "classifier.options={steps: 3, batch_size: 4, mu: 1}",
                      "pretrain.enabled=false", "data.val_per_class=0", "pseudo_label.labeler=agree",
                      "pseudo_label.rounds=2", "pseudo_label.refit_on_gold=false",
                      "pseudo_label.ensemble_baseline=false", "evaluate.baseline_classifier=probe", *ADAPT)
    res = run_stages(cfg)
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    r1 = metrics["pseudo_labels"][0]
    assert r1["kept"] == 0 and r1["notes"]["guard"]["skipped"] == "the teacher's body was trained on the gold rows"
    assert res["final"] == "teacher" and set(metrics["models"]) == {"baseline", "teacher"}
    assert metrics["core"]["chosen"] == "supervised" and not metrics["core"]["refused"]
    assert "guard_adapted: trust" in metrics["core"]["why"] and "teacher (fixmatch) is final" in metrics["core"]["why"]


# ---------------------------------------------------------------------------------------
# classifier.adapt.check: cv -- both cores cross-validated on the gold rows before the body moves
# ---------------------------------------------------------------------------------------

def _check(adapted_ll: float, frozen_ll: float, margin: float = 0.0, metric: str = "log_loss") -> dict:
    other = {"log_loss": "calibrated_log_loss", "calibrated_log_loss": "log_loss"}[metric]
    return {"metric": metric, "folds": 4, "margin": margin, "use_adapted": adapted_ll <= frozen_ll - margin,
            "adapted": {"classifier": "fixmatch", metric: adapted_ll, other: 9.0, "accuracy": 0.5, "fold_log_loss": []},
            "supervised": {"classifier": "probe", metric: frozen_ll, other: 9.0, "accuracy": 0.5, "fold_log_loss": []}}


def test_the_check_keeps_or_overrules_the_adapted_core(tiny_config):
    from selftrain.core.run.pipeline import checked_choice

    cfg = tiny_config(*TINY_PROBE, *ADAPT)
    guard = {"metric": "log_loss", "selftrained_log_loss": 1.4, "supervised_log_loss": 1.1, "use_pool": False}
    adapted = core_choice(cfg, "baseline", {"pool_refused": True, "guard": guard})
    kept = checked_choice(adapted, _check(0.9, 1.0))
    assert kept["chosen"] == "adapted" and kept["check"]["use_adapted"]
    assert "cross-validation agreed (held-out log-loss per gold row over 4 folds: fixmatch 0.9000 vs probe 1.0000" in kept["why"]
    overruled = checked_choice(adapted, _check(1.2, 1.0))
    assert overruled["chosen"] == "supervised" and overruled["refused"] and overruled["check"]["adapted"]["log_loss"] == 1.2
    assert "the guard refused the pool (held-out log_loss per gold row: self-trained 1.400" in overruled["why"]
    assert "kept the supervised core (held-out log-loss per gold row over 4 folds: fixmatch 1.2000 vs probe 1.0000" in overruled["why"]
    scaled = checked_choice(adapted, _check(1.05, 0.95, metric="calibrated_log_loss"))  # the metric the check used
    assert scaled["chosen"] == "supervised"
    assert "(held-out temperature-scaled log-loss per gold row over 4 folds: fixmatch 1.0500 vs probe 0.9500" in scaled["why"]


def test_fold_indices_hold_out_every_class_and_cover_each_row_once():
    from selftrain.core.run.core_cv import fold_indices

    y = np.array([0] * 3 + [1] * 7 + [2] * 5)
    held = fold_indices(y, folds=4, seed=0)
    assert len(held) == 3  # capped at the smallest class (3 rows)
    assert sorted(np.concatenate(held).tolist()) == list(range(len(y)))
    assert all(set(y[h]) == {0, 1, 2} for h in held)
    assert len(fold_indices(np.repeat([0, 1], 8), folds=4, seed=0)) == 4
    with pytest.raises(ValueError, match="at least 2 gold rows of every class"):
        fold_indices(np.array([0, 1, 1, 1]), folds=4, seed=0)


def test_heldout_scores_are_log_loss_and_hits():
    from selftrain.core.run.core_cv import heldout_scores

    probs = np.array([[0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    loss, right = heldout_scores(probs, np.array([0, 1, 0]))
    assert np.allclose(loss, [-np.log(0.8), -np.log(0.5), -np.log(1e-12)])
    assert right.tolist() == [True, False, False]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_temperature_scaling_undoes_a_core_s_sharpness_but_not_its_picks():
    """The same logits at three sharpnesses -> temperatures in the ratio of the sharpness (the scaled
    probabilities agree), and cross-fitted scaling never changes a row's argmax."""
    from selftrain.core.run.core_cv import fit_temperature, fold_indices, temperature_scaled

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 1.5  # (N, C) right on ~70 % of rows
    t1, t_hedged, t_sharp = (fit_temperature(_softmax(logits * s), y) for s in (1.0, 0.25, 3.0))
    assert t_hedged == pytest.approx(t1 * 0.25, rel=1e-3) and t_sharp == pytest.approx(t1 * 3.0, rel=1e-3)
    held = fold_indices(y, 4, seed=0)
    hedged, sharp = _softmax(logits * 0.25), _softmax(logits * 3.0)
    a, b = temperature_scaled(hedged, y, held), temperature_scaled(sharp, y, held)
    assert (a.argmax(1) == hedged.argmax(1)).all() and np.allclose(a.sum(1), 1)
    assert np.allclose(a, b, atol=1e-3)  # one core at two sharpnesses scores the same once scaled
    # the raw log-loss tells the two apart; which is lower depends only on sharpness
    nll = lambda p: -np.log(p[np.arange(300), y]).mean()
    assert abs(nll(hedged) - nll(sharp)) > 0.05 and abs(nll(a) - nll(b)) < 1e-3


@pytest.mark.parametrize("overrides,match", [
    (["classifier.adapt.name=null", "classifier.adapt.check=cv"], "classifier.adapt.name is null"),
    (["data.val_per_class=2", "classifier.adapt.name=finetune", "classifier.adapt.options={}",
      "classifier.adapt.check=cv"], "classifier.adapt.name='finetune' needs them"),
])
def test_impossible_check_combinations_are_refused_up_front(tiny_config, overrides, match):
    from selftrain.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        tiny_config(*TINY_PROBE, *ADAPT, *overrides)


@pytest.mark.slow
def test_the_check_decides_whether_the_adapted_core_is_trained(tiny_config, tmp_path):
    """A refused pool with check: cv -> both cores fit on each fold of the gold rows; a margin no
    core can meet keeps the supervised core (no adapted model trained), a margin any core meets
    trains the adapted one; the check's scores are in metrics.json either way."""
    from selftrain.core.run.pipeline import run_stages

    common = [*TINY_PROBE, *ADAPT, "pseudo_label.options={guard_folds: 2, guard_margin: -5}",
              "classifier.adapt.check=cv", "classifier.adapt.folds=2"]
    runs = {}
    for margin in (100, -100):
        metric = "log_loss" if margin > 0 else "calibrated_log_loss"
        cfg = tiny_config(*common, f"classifier.adapt.margin={margin}", f"classifier.adapt.metric={metric}",
                          f"output_dir={tmp_path / f'm{margin}'}")
        res = run_stages(cfg)
        runs[margin] = (res, json.loads((Path(cfg.run_dir) / "metrics.json").read_text()))
    res, m = runs[100]
    check = m["core"]["check"]
    assert res["final"] == "baseline" and m["core"]["chosen"] == "supervised" and set(m["models"]) == {"baseline"}
    assert check["folds"] == 2 and check["use_adapted"] is False
    for core, plugin in (("supervised", "probe"), ("adapted", "fixmatch")):
        rec = check[core]
        assert rec["classifier"] == plugin and len(rec["fold_log_loss"]) == 2
        assert 0 < rec["log_loss"] < 20 and 0 < rec["calibrated_log_loss"] < 20 and 0 <= rec["accuracy"] <= 1
        assert rec["log_loss"] == pytest.approx(np.mean(rec["fold_log_loss"]), rel=0.35)  # folds of near-equal size
    assert "kept the supervised core" in m["core"]["why"]
    res2, m2 = runs[-100]
    assert res2["final"] == "adapted" and m2["core"]["chosen"] == "adapted" and m2["core"]["check"]["use_adapted"]
    assert m2["core"]["check"]["folds"] == 2 and "cross-validation agreed" in m2["core"]["why"]
    assert check["metric"] == "log_loss" and m2["core"]["check"]["metric"] == "calibrated_log_loss"
    assert "held-out temperature-scaled log-loss per gold row over 2 folds" in m2["core"]["why"]
    # (the two runs' scores are not compared: tiny-bert's tokenizer is not reproducible, tokenizers#1794)

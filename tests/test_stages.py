"""Pure stage functions on real (tiny) data and models: resume, outputs, pseudo-labels, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from selftrain.core.run import stages
from selftrain.core.run.evaluate import expected_calibration_error


def _prepare(cfg):
    ing = stages.ingest(cfg)
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    return val


@pytest.mark.parametrize("sizing", [(), ("pretrain.batch_tokens=256",)], ids=["rows", "token-budget"])
def test_pretrain_resumes_from_last_checkpoint_and_matches_uninterrupted(tiny_config, sizing):
    cfg = tiny_config("pretrain.max_steps=6", "pretrain.checkpoint_every=2", *sizing)
    val = _prepare(cfg)
    with pytest.raises(InterruptedError):
        stages.pretrain_stage(cfg, val["clean"], val["fingerprint"], stop_after=4)
    ckpts = sorted(p.name for p in (Path(cfg.run_dir) / "checkpoints" / "pretrain").glob("step-*"))
    assert ckpts == ["step-2", "step-4"]
    assert not (Path(cfg.run_dir) / "models" / "pretrain").exists(), "a failed stage must not publish a model"
    resumed = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6

    resumed_weights = load_file(Path(cfg.run_dir) / "models" / "pretrain" / "model.safetensors")

    # the same job uninterrupted (same run dir, same initial backbone) ends with the same weights
    shutil.rmtree(Path(cfg.run_dir) / "checkpoints")
    straight = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert straight["resumed_from"] == 0
    straight_weights = load_file(Path(cfg.run_dir) / "models" / "pretrain" / "model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for k in resumed_weights:
        np.testing.assert_allclose(resumed_weights[k].numpy(), straight_weights[k].numpy(), atol=1e-5, err_msg=k)


def test_checkpoints_of_another_config_are_ignored(tiny_config):
    cfg = tiny_config("pretrain.max_steps=4", "pretrain.checkpoint_every=2")
    val = _prepare(cfg)
    with pytest.raises(InterruptedError):
        stages.pretrain_stage(cfg, val["clean"], val["fingerprint"], stop_after=2)
    cfg_b = tiny_config("pretrain.max_steps=4", "pretrain.checkpoint_every=2", "pretrain.lr=0.002")
    res = stages.pretrain_stage(cfg_b, val["clean"], val["fingerprint"])
    assert res["resumed_from"] == 0


def test_pipeline_outputs(shared_tiny_run):
    cfg, result = shared_tiny_run
    run = Path(cfg.run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) >= {"baseline", "teacher", "student-1-distilled", "student-1"}
    pl = pd.read_parquet(run / "pseudo_labels.parquet")
    assert {"id", "label", "confidence", "probs", "target", "weight"} <= set(pl.columns)
    assert pl["label"].isin(metrics["labels"]).all()
    assert np.allclose(np.stack(pl["probs"]).sum(1), 1, atol=1e-4)
    clean = pd.read_parquet(run / "data" / "clean.parquet")
    assert set(pl["id"]) <= set(clean.loc[clean.split == "unlabeled", "id"]), "pseudo-labels only from the pool"
    rep = metrics["pseudo_labels"][0]
    assert rep["kept"] == len(pl) and sum(rep["per_class"].values()) == len(pl)
    assert "accuracy_vs_hidden_gold" in rep
    assert "| baseline" in (run / "report.md").read_text()
    assert metrics["recipe"] == {"model": "tiny-bert", "classifier": "finetune", "pretrain_objective": cfg.pretrain.objective,
                                 "labeler": "soft", "gold_labels_per_class": {"train": 8, "val": 8}}


def test_student_worse_than_teacher_keeps_teacher(tiny_config):
    """Weighting pseudo-labels absurdly low and training one epoch makes students useless:
    the pipeline must say so and keep the teacher (known failure mode at few labels)."""
    from selftrain.core.run.pipeline import Stages, run_stages

    cfg = tiny_config("evaluate.baseline=false", "pretrain.enabled=false", "finetune.epochs=8", "finetune.patience=8")
    real = Stages()

    def bad_finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        if name.startswith("student"):  # force the student to look worse on validation
            res["val_macro_f1"] = -1.0
        return res

    out = run_stages(cfg, Stages(finetune=bad_finetune))
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "teacher" == metrics["final"]
    assert any("worse than teacher" in n for n in metrics["notes"])


@pytest.mark.parametrize("refit", [True, False])
def test_student_is_distilled_then_refit_on_gold(tiny_config, refit):
    """pseudo_label.refit_on_gold: the round's student is the distilled model finetuned again on
    the gold rows alone; without it the distilled model is the student."""
    from selftrain.core.run.pipeline import Stages, run_stages

    cfg = tiny_config("evaluate.baseline=false", "pretrain.enabled=false", "finetune.epochs=1",
                      f"pseudo_label.refit_on_gold={str(refit).lower()}", "pseudo_label.keep_teacher_if_worse=false")
    real, calls = Stages(), []

    def finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        calls.append((name, base, pseudo is not None, res["train_gold"], res["train_pseudo"], res["model"]))
        return res

    out = run_stages(cfg, Stages(finetune=finetune))
    names = [c[0] for c in calls]
    if refit:
        assert names == ["teacher", "student-1-distilled", "student-1"]
        distilled, student = calls[1], calls[2]
        assert distilled[2] and distilled[4] > 0, "the distilled student learns from the pseudo-labels"
        assert student[1] == distilled[5] and not student[2] and student[4] == 0, "refit: from the distilled model, gold only"
        assert student[3] == distilled[3] > 0
    else:
        assert names == ["teacher", "student-1"] and calls[1][2]
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "student-1" == metrics["final"]
    assert ("student-1-distilled" in metrics["models"]) == refit


def test_finetune_folds_a_validation_temperature_into_the_output_layer(tiny_config):
    """finetune.calibrate: the saved model emits the uncalibrated model's logits divided by the
    temperature fitted on validation (so its predictions are unchanged); off, T stays 1."""
    from selftrain.core.train.classify import fit_temperature, load_classifier, predict_logits
    from selftrain.core.train.runtime import runtime

    cfg = tiny_config()
    val = _prepare(cfg)
    df = pd.read_parquet(val["clean"])
    labels = stages.label_names(cfg, df)
    texts, y = stages._gold(df, "val", labels)

    def val_logits(uri):
        model, tok = load_classifier(uri, labels)
        return predict_logits(model, tok, texts, cfg.model.max_length, 64, runtime("cpu", 0))

    raw = stages.finetune_stage(tiny_config("finetune.calibrate=false"), val["clean"], None, "raw")
    assert raw["temperature"] == 1.0
    cal = stages.finetune_stage(cfg, val["clean"], None, "calibrated")  # same seed and data: same training
    raw_logits, cal_logits = val_logits(raw["model"]), val_logits(cal["model"])
    t = fit_temperature(raw_logits, y)
    assert cal["temperature"] == pytest.approx(t) and t != 1.0
    np.testing.assert_allclose(cal_logits, raw_logits / t, rtol=1e-4, atol=1e-6)
    assert cal_logits.argmax(1).tolist() == raw_logits.argmax(1).tolist() == cal["val_pred"]


def test_ece_known_values():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin 0.9: acc 0.5, conf 0.9 -> 0.4 * 2/4 ; bin 0.6: acc 1.0, conf 0.6 -> 0.4 * 2/4
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.4)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == pytest.approx(0.0)


def test_baseline_is_recommended_when_it_validates_best(tiny_config):
    from selftrain.core.run.pipeline import Stages, run_stages

    cfg = tiny_config("pseudo_label.enabled=false", "finetune.epochs=2")  # pretrained: teacher != baseline
    real = Stages()

    def finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        truth = np.array(res["val_true"])
        # the baseline is right on every validation row, the teacher on none
        res["val_pred"] = (truth if name == "baseline" else (truth + 1) % 4).tolist()
        res["val_macro_f1"] = 1.0 if name == "baseline" else 0.0
        return res

    out = run_stages(cfg, Stages(finetune=finetune))
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "baseline" == metrics["final"]
    assert metrics["fallback"]["p_worse_than_baseline"] == 1.0 and metrics["fallback"]["chosen"] == "baseline"
    assert any("worse than the supervised-only baseline" in n for n in metrics["notes"])


def test_small_validation_dip_keeps_the_self_trained_model(tiny_config):
    """One validation row of difference is noise: the teacher stays the pick, with a note."""
    from selftrain.core.run.pipeline import Stages, run_stages

    cfg = tiny_config("pseudo_label.enabled=false", "finetune.epochs=1")  # pretrained: teacher != baseline
    real = Stages()

    def finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        truth = np.array(res["val_true"])
        pred = truth.copy()
        if name == "teacher":
            pred[0] = (pred[0] + 1) % 4  # one row worse than the baseline
        res["val_pred"], res["val_macro_f1"] = pred.tolist(), (1.0 if name == "baseline" else 0.95)
        return res

    out = run_stages(cfg, Stages(finetune=finetune))
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "teacher" == metrics["final"]
    assert 0.5 < metrics["fallback"]["p_worse_than_baseline"] < 0.9
    assert any("within validation noise" in n for n in metrics["notes"])


def test_prob_worse_matches_sklearn_and_orders_models():
    from sklearn.metrics import f1_score

    from selftrain.core.run.evaluate import _macro_f1_rows, prob_worse

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=(5, 40))
    p = np.where(rng.random((5, 40)) < 0.6, y, rng.integers(0, 3, size=(5, 40)))
    ours = _macro_f1_rows(y, p, 3)
    ref = [f1_score(y[i], p[i], labels=[0, 1, 2], average="macro", zero_division=0) for i in range(5)]
    assert np.allclose(ours, ref)
    truth = rng.integers(0, 3, 200)
    good = np.where(rng.random(200) < 0.8, truth, (truth + 1) % 3)
    bad = np.where(rng.random(200) < 0.5, truth, (truth + 1) % 3)
    assert prob_worse(truth, bad, good, 3) > 0.99
    assert prob_worse(truth, good, bad, 3) < 0.01
    assert prob_worse(truth, good, good, 3) == 0.5


def test_drop_tokens_keeps_the_ends_and_one_inner_token():
    from selftrain.core.train.classify import drop_tokens

    rng = np.random.default_rng(0)
    ids = [101, *range(1000, 1040), 102]
    kept = [drop_tokens(ids, 0.25, rng) for _ in range(200)]
    assert all(k[0] == 101 and k[-1] == 102 for k in kept)
    assert all(set(k[1:-1]) <= set(ids[1:-1]) and k[1:-1] == sorted(k[1:-1]) for k in kept)  # deletions only, order kept
    rate = 1 - np.mean([len(k) - 2 for k in kept]) / 40
    assert 0.2 < rate < 0.3
    assert all(len(drop_tokens(ids, 0.999, rng)) == 3 for _ in range(20))
    assert drop_tokens(ids, 0.0, rng) == ids


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_student_noise_drops_tokens_of_pseudo_rows_only(tiny_config, monkeypatch, noise):
    """pseudo_label.noise: every epoch, each pseudo-labelled row (never a gold row) goes through
    token dropout at that rate; at 0 nothing is dropped."""
    from selftrain.core.train import classify

    cfg = tiny_config("finetune.epochs=1", "finetune.student_epochs=2", f"pseudo_label.noise={noise}")
    val = _prepare(cfg)
    teacher = stages.finetune_stage(cfg, val["clean"], None, "teacher")
    pl = stages.pseudo_label_stage(cfg, val["clean"], teacher["model"])
    seen, real = [], classify.drop_tokens

    def spy(ids, rate, rng):
        out = real(ids, rate, rng)
        seen.append((tuple(ids), rate, len(out) <= len(ids)))
        return out

    monkeypatch.setattr(classify, "drop_tokens", spy)
    res = stages.finetune_stage(cfg, val["clean"], None, "student", pl["pseudo_labels"])
    n_pseudo = res["train_pseudo"]
    assert n_pseudo > 0 and res["train_gold"] > 0
    if noise == 0:
        assert seen == []
        return
    assert len(seen) == 2 * n_pseudo, "each pseudo row is noised once per epoch, gold rows never"
    assert {r for _, r, _ in seen} == {noise} and all(shorter for *_, shorter in seen)
    from transformers import AutoTokenizer

    df = pd.read_parquet(val["clean"])
    tok = AutoTokenizer.from_pretrained(stages.backbone(cfg, val["clean"])[0])
    gold_ids = {tuple(x) for x in tok(df.loc[df["split"] == "train", "text"].astype(str).tolist(), truncation=True,
                                      max_length=cfg.model.max_length)["input_ids"]}
    pseudo_ids = {tuple(x) for x in tok(pd.read_parquet(pl["pseudo_labels"])["text"].astype(str).tolist(),
                                        truncation=True, max_length=cfg.model.max_length)["input_ids"]}
    noised = {ids for ids, *_ in seen}
    assert noised <= pseudo_ids and not (noised & (gold_ids - pseudo_ids))


@pytest.mark.parametrize("labeler", [r.name for r in __import__("selftrain.plugins.registry", fromlist=["discover"])
                                     .discover("selftrain.labelers") if r.status == "ok"])
def test_every_labelers_empty_selection_goes_through_the_stages(tiny_config, monkeypatch, labeler):
    """docs/plugins.md 2.8: an empty selection (M = 0) is valid. Whatever the labeler, the run
    completes, trains no student on it, and metrics.json / report.md say no pseudo-label was kept."""
    from selftrain.config import plugin_options
    from selftrain.core.run.pipeline import run_stages
    from selftrain.plugins import Selection

    cfg = tiny_config("pretrain.enabled=false", "classifier.name=probe", "pseudo_label.refit_on_gold=false",
                      f"pseudo_label.labeler={labeler}", "pseudo_label.rounds=2")
    cls, _ = plugin_options("selftrain.labelers", labeler, {}, "pseudo_label")
    real = cls.select

    def empty(self, inputs):
        sel = real(self, inputs)
        return Selection(np.asarray(sel.index)[:0], np.asarray(sel.targets)[:0], np.asarray(sel.weights)[:0],
                         dict(sel.notes or {}))

    monkeypatch.setattr(cls, "select", empty)
    out = run_stages(cfg)
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == metrics["final"] and not metrics["final"].startswith("student")
    assert metrics["pseudo_labels"][0]["kept"] == 0
    assert any("no pseudo-label kept" in n for n in metrics["notes"]), metrics["notes"]
    assert "no pseudo-label kept" in (Path(cfg.run_dir) / "report.md").read_text()


def test_switching_a_plugin_from_the_cli_drops_the_files_options():
    from selftrain.config import load_config

    from tests.conftest import TINY

    cfg = load_config(TINY, ["pseudo_label.labeler=threshold"])  # tiny.yaml sets soft's k_per_class
    assert cfg.pseudo_label.labeler == "threshold" and cfg.pseudo_label.options == {}
    cfg = load_config(TINY, ["pseudo_label.labeler=threshold", "pseudo_label.options={threshold: 0.9}"])
    assert cfg.pseudo_label.options == {"threshold": 0.9}
    assert load_config(TINY, ["pseudo_label.labeler=soft"]).pseudo_label.options == {"k_per_class": 20}


def test_an_invalid_selection_names_the_labeler_plugin_and_its_distribution(shared_tiny_run, tmp_path, monkeypatch):
    """A third-party labeler returning repeated rows ended in a bare 'Selection index has repeated rows'
    traceback that named neither the plugin nor its package."""
    from selftrain.core.run import stages
    from selftrain.plugins import Labeler, Selection, one_hot

    cfg, _ = shared_tiny_run
    run = Path(cfg.run_dir)

    class Repeats(Labeler):
        def select(self, inputs):
            return Selection(np.array([0, 0]), one_hot(np.array([0, 0]), inputs.probs.shape[1]), np.ones(2, np.float32))

    real = stages.plugin_options
    monkeypatch.setattr(stages, "plugin_options", lambda group, *a, **k: (Repeats, Repeats.Config()) if group == "selftrain.labelers"
                        else real(group, *a, **k))
    mine = cfg.model_copy(update={"output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=r"pseudo_label.labeler='soft' \(selftrain [^)]+\) returned an invalid Selection "
                                         r"in round 1: .*repeated.*bug in that plugin"):
        stages.pseudo_label_stage(mine, str(run / "data" / "clean.parquet"), str(run / "models" / "teacher"))


def test_a_failed_rerun_leaves_the_finished_runs_config_and_a_clean_one_no_stale_quarantine(tiny_config, tmp_path):
    """ingest wrote config.yaml before any work, so a re-run that failed (bad data, a GPU that is not
    there) left the last good run's models beside a config they were not trained with, and
    `selftrain predict --run` read it. Now config.yaml is written with metrics.json; and a validation
    that rejects nothing removes an earlier run's quarantine.parquet."""
    from selftrain.core.data.ingest import DataSourceError
    from selftrain.core.run import stages
    from selftrain.core.run.pipeline import run_stages

    cfg = tiny_config("pretrain.enabled=false", "pseudo_label.enabled=false")
    run_stages(cfg)
    run = Path(cfg.run_dir)
    good = {n: (run / n).read_bytes() for n in ("config.yaml", "metrics.json")}
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataSourceError):
        run_stages(tiny_config("pretrain.enabled=false", "pseudo_label.enabled=false", f"data.source={missing}"))
    assert {n: (run / n).read_bytes() for n in good} == good, "the finished run's config and metrics must stay"

    (run / "quarantine.parquet").write_bytes(b"an earlier run's rejects")
    res = stages.validate(cfg, str(run / "data" / "clean.parquet"))  # clean rows: nothing to reject
    assert res["quarantine"] is None and not (run / "quarantine.parquet").exists()


def test_cuda_asked_on_a_host_without_a_gpu_is_a_user_error_naming_the_host(monkeypatch):
    """A plain RuntimeError: Prefect retried it twice and predict printed a 28-line traceback, exit 1.
    It is a ConfigError now (tasks.retry.USER_ERRORS: not retried, one line, exit 2)."""
    import socket

    import torch

    from selftrain.config import ConfigError
    from selftrain.core.train.runtime import runtime
    from selftrain.tasks.retry import USER_ERRORS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"device: cuda was asked for, but torch on {socket.gethostname()} sees no GPU"
                                          r".*Fix: set device: auto") as exc:
        runtime("cuda")
    assert isinstance(exc.value, USER_ERRORS)
    assert runtime("auto").device.type in ("cpu", "mps")


def test_the_core_choice_does_not_credit_a_guard_the_labeler_does_not_have():
    """report.md said 'the guard let the pool through' for the soft labeler, which has no guard."""
    from selftrain.config import load_config
    from selftrain.core.run.pipeline import core_choice
    from tests.conftest import TINY

    soft = core_choice(load_config(TINY, ["pseudo_label.labeler=soft"]), "student-1", {"kept": 10})
    assert soft["chosen"] == "pool" and "has no guard" in soft["why"] and "guard let" not in soft["why"]
    guard = {"metric": "log_loss", "selftrained_log_loss": 0.5, "supervised_log_loss": 0.9}
    agree = core_choice(load_config(TINY, ["pseudo_label.labeler=agree"]), "student-1", {"guard": guard})
    assert agree["why"].startswith("the guard let the pool through (held-out log_loss per gold row")

"""Pure stage functions on real (tiny) data and models: resume, outputs, pseudo-labels, evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from selftrain.core import stages
from selftrain.core.evaluate import expected_calibration_error


def _prepare(cfg):
    ing = stages.ingest(cfg)
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    return val


def test_pretrain_resumes_from_last_checkpoint_and_matches_uninterrupted(tiny_config):
    cfg = tiny_config("pretrain.max_steps=6", "pretrain.checkpoint_every=2")
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
    assert set(metrics["models"]) >= {"baseline", "teacher", "student-1"}
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


def test_student_worse_than_teacher_keeps_teacher(tiny_config):
    """Weighting pseudo-labels absurdly low and training one epoch makes students useless:
    the pipeline must say so and keep the teacher (known failure mode at few labels)."""
    from selftrain.core.pipeline import Stages, run_stages

    cfg = tiny_config("evaluate.baseline=false", "pretrain.enabled=false", "finetune.epochs=8", "finetune.patience=8")
    real = Stages()

    def bad_finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        if pseudo is not None:  # force the student to look worse on validation
            res["val_macro_f1"] = -1.0
        return res

    out = run_stages(cfg, Stages(finetune=bad_finetune))
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "teacher" == metrics["final"]
    assert any("worse than teacher" in n for n in metrics["notes"])


def test_ece_known_values():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin 0.9: acc 0.5, conf 0.9 -> 0.4 * 2/4 ; bin 0.6: acc 1.0, conf 0.6 -> 0.4 * 2/4
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.4)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == pytest.approx(0.0)


def test_baseline_is_recommended_when_it_validates_best(tiny_config):
    from selftrain.core.pipeline import Stages, run_stages

    cfg = tiny_config("pretrain.enabled=false", "pseudo_label.enabled=false", "finetune.epochs=2")
    real = Stages()

    def finetune(cfg_, clean, base, name, pseudo=None):
        res = real.finetune(cfg_, clean, base, name, pseudo)
        res["val_macro_f1"] = 0.9 if name == "baseline" else 0.1  # the baseline validates best
        return res

    out = run_stages(cfg, Stages(finetune=finetune))
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert out["final"] == "baseline" == metrics["final"]
    assert any("does not beat the supervised-only baseline" in n for n in metrics["notes"])

"""Self-trained SetFit is a recipe, not a new plugin: ``classifier.name: setfit`` with the agree
labeler. Each round the current SetFit model's *tuned* body embeds the pool (so the k-NN vote sees
the adapted space), agree keeps class-balanced rows on which the classifier and the vote agree
(weight 0.5), and the student is SetFit again on pairs of the gold + those rows, its head refit on
gold + weighted pseudo rows. This runs it for two rounds on the tiny BERT and checks that wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SETFIT_AGREE = ["classifier.name=setfit", "classifier.options={iterations: 1, lr: 0.001}", "pretrain.enabled=false",
                "data.val_per_class=0", "pseudo_label.labeler=agree", "pseudo_label.rounds=2",
                "pseudo_label.refit_on_gold=false", "pseudo_label.ensemble_baseline=false",
                "pseudo_label.options={guard: false, max_drift: 1.0}"]


@pytest.mark.slow
def test_self_trained_setfit_grows_pairs_from_pseudo_labels_over_rounds(tiny_config):
    from selftrain.core.run.pipeline import run_stages
    from selftrain.core.train.classifiers import saved_info

    cfg = tiny_config(*SETFIT_AGREE)
    res = run_stages(cfg)
    run = Path(cfg.run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    rounds = metrics["pseudo_labels"]
    assert [r["round"] for r in rounds] == [1, 2] and 0 < rounds[0]["kept"] <= rounds[1]["kept"]
    assert res["final"] == "student-2"
    for name in ("baseline", "student-1", "student-2"):
        assert saved_info(str(run / "models" / name))[0] == "setfit"
    # the students' pairs include the kept pool rows (agree weighs them 0.5 = pseudo_min_weight)
    notes = " ".join(metrics["notes"])
    assert f"({rounds[0]['kept']} pseudo-labelled)" in notes and f"({rounds[1]['kept']} pseudo-labelled)" in notes

"""benchmarks.dev_eval_run: a recipe run end to end on a dev-eval draw, its rows where they belong
(gold -> train, pool -> unlabelled, dev-eval -> the run's test split), every model it trained scored
there, and the pseudo-labels scored against the pool's hidden labels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY


@pytest.fixture(scope="module")
def bbc():
    from benchmarks.dev_eval import load

    return load("bbc")


def test_source_frame_puts_each_row_of_the_draw_in_its_split(bbc):
    from benchmarks.dev_eval import draw
    from benchmarks.dev_eval_run import source_frame

    texts, y, labels = bbc
    gold, pool, ev = draw(y, 4, 30, seed=0)
    ev = ev[:25]
    df = source_frame(texts, y, labels, gold, pool, ev)
    assert len(df) == len(gold) + len(pool) + len(ev) and df["id"].is_unique
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    assert train["label"].notna().sum() == len(gold) == 4 * len(labels)  # the pool's labels are hidden
    assert train["label"].isna().sum() == len(pool) and len(test) == len(ev) and test["label"].notna().all()
    assert sorted(train.loc[train["label"].notna(), "text"]) == sorted(texts[i] for i in gold)
    assert list(test["label"]) == [labels[y[i]] for i in ev]


@pytest.mark.slow
def test_run_draw_scores_every_model_of_the_run_on_the_dev_eval_rows(bbc, tmp_path):
    """The tiny recipe with the probe and top-k pseudo-labels: baseline, one student; the run's test
    split is the dev-eval rows validation kept, and the pseudo-labels' accuracy is computed against
    the pool's true labels (a wrong truth map scores 0)."""
    import pandas as pd

    from benchmarks.dev_eval import draw
    from benchmarks.dev_eval_run import run_draw, source_frame

    texts, y, labels = bbc
    gold, pool, ev = draw(y, 4, 60, seed=1)
    ev = ev[:40]
    frame = source_frame(texts, y, labels, gold, pool, ev)
    truth = {texts[i]: labels[y[i]] for i in pool}
    over = ["classifier.name=probe", "pretrain.enabled=false", "pseudo_label.labeler=topk",
            "pseudo_label.options={k_per_class: 3}", "pseudo_label.refit_on_gold=false",
            "pseudo_label.ensemble_baseline=false", "pseudo_label.keep_teacher_if_worse=false", "data.labels_per_class=4"]
    r = run_draw(str(TINY), over, frame, tmp_path / "a", 1, truth)
    assert r["final"] == "student-1" and set(r["scores"]) == {"baseline", "student-1"}
    assert all(0.0 <= v <= 1.0 for v in r["scores"].values())
    assert set(r["ece"]) == set(r["scores"]) and all(0.0 <= v <= 1.0 for v in r["ece"].values())  # calibration, per model
    clean = pd.read_parquet(r["clean"])
    test = clean[clean["split"] == "test"]
    assert 0 < len(test) <= len(ev) and set(test["text"]) <= {texts[i] for i in ev}
    assert (clean["split"] == "unlabeled").sum() <= len(pool)
    (rd,) = r["rounds"]
    assert 0 < rd["kept"] <= 3 * len(labels) and 0.0 <= rd["accuracy_vs_hidden"] <= 1.0
    from benchmarks.dev_eval_run import pseudo_label_rounds

    kept = pd.read_parquet(f"{r['run_dir']}/pseudo_labels.parquet")
    right = np.mean([lab == truth[t] for t, lab in zip(kept["text"], kept["label"])])
    assert rd["accuracy_vs_hidden"] == pytest.approx(right)
    wrong = {t: next(n for n in labels if n != lab) for t, lab in zip(kept["text"], kept["label"])}
    metrics = {"pseudo_labels": [{"kept": rd["kept"]}]}
    assert pseudo_label_rounds(r["run_dir"], metrics, wrong)[0]["accuracy_vs_hidden"] == 0.0
    assert pseudo_label_rounds(r["run_dir"], metrics, truth) == r["rounds"]
    assert np.isfinite(r["seconds"])


def test_render_pairs_records_of_several_runs_against_the_named_base(tmp_path, capsys):
    """--render reads record files of separate invocations and pairs every method against --base
    per seed: the mean difference and the seeds ahead."""
    import json

    from benchmarks.dev_eval_run import main

    rec = lambda m, s, f: {"dataset": "tweets", "k": 16, "seed": s, "method": m, "macro_f1": f}  # noqa: E731
    (tmp_path / "a.json").write_text(json.dumps({"records": [rec("default", 0, 0.50), rec("default", 1, 0.60)]}))
    (tmp_path / "b.json").write_text(json.dumps({"records": [rec("other", 0, 0.53), rec("other", 1, 0.59)]}))
    main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--base", "default"])
    out = capsys.readouterr().out
    assert "| tweets | 16 | 0.550 ± 0.071 | 0.560 ± 0.042 (+0.010, 1/2) |" in out


def test_a_run_needs_a_recipe():
    from benchmarks.dev_eval_run import main

    with pytest.raises(SystemExit):
        main(["--seeds", "0"])

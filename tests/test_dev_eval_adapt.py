"""benchmarks.dev_eval_adapt (with dev_eval_bodies and dev_eval_students): the pretrained bodies,
the readouts of a fixmatch fit it scores, the students, and the summary it prints
(benchmarks.dev_eval.summary)."""

import numpy as np
import pytest

from benchmarks import speed_train

TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "layers": 2, "heads": 2}  # 2 layers: the probe has a middle one


@pytest.fixture(scope="module")
def tweets():
    return speed_train.tweet_texts(exclude_test=True)[:200]


@pytest.fixture(scope="module")
def tiny_body(tmp_path_factory, tweets):
    return speed_train.make_tiny_bert(tweets, str(tmp_path_factory.mktemp("dev-adapt") / "backbone"), **TINY_BERT)


def test_dev_eval_adapt_pretrains_a_body_as_the_pretrain_stage_does(tweets, tiny_body, tmp_path):
    """--pretrain's body: the objective plugin at the pretrain defaults (+ overrides) on the given texts,
    saved where the classifier plugins load a body from; its weights moved."""
    from safetensors.numpy import load_file

    from benchmarks.dev_eval_bodies import pretrain_body

    out = tmp_path / "body"
    res = pretrain_body(tweets[:64], "simcse", 32, 0, str(out), body=tiny_body, overrides={"batch_size": 16})
    assert res["steps"] == 4 and np.isfinite(res["final_loss"])  # 64 texts / 16, one epoch (the default)
    before, after = load_file(f"{tiny_body}/model.safetensors"), load_file(str(out / "model.safetensors"))
    moved = [k for k in after if k in before and not np.allclose(before[k], after[k])]
    assert moved and (out / "config.json").exists()


def test_dev_eval_adapt_pretrained_only_needs_an_objective(capsys):
    """--pretrained-only skips the checkpoint's methods, so without --pretrain nothing would run: refused."""
    from benchmarks.dev_eval_adapt import main

    with pytest.raises(SystemExit):
        main(["--pretrained-only", "--seeds", "0"])
    assert "--pretrained-only needs --pretrain OBJECTIVE" in capsys.readouterr().err


def test_variant_scores_reads_one_fixmatch_fit_four_more_ways(tiny_body, tmp_path):
    """Every readout of the same adapted body gets a dev-eval score; ``last`` refits the head on the
    body's own embedding alone (width H), the default reads it + the middle layer (2H); the agree
    readouts say whether their guard kept the pool; ``blend<w>`` mixes the adapted model's and the
    frozen probe's probabilities, scores what fixmatch's ``frozen_weight: w`` saves, and refuses to run
    without the body the fit started from."""
    from sklearn.metrics import f1_score

    from benchmarks.dev_eval_adapt import VARIANTS
    from benchmarks.dev_eval_bodies import variant_scores
    from selftrain.plugins import LabeledRows, RuntimeContext, one_hot
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS

    texts, y = [t for t, _ in TOPIC_ROWS], np.array([c for _, c in TOPIC_ROWS])
    rows = LabeledRows(texts, one_hot(y, 2), np.ones(len(y), np.float32), len(y), unlabeled=list(SENTENCES))
    clf = FixMatch(FixMatch.Config(steps=2, batch_size=4, mu=2, lr=1e-3), RuntimeContext(seed=0), 32)
    clf.fit(tiny_body, ["sport", "food"], rows, [], np.zeros(0, np.int64), str(tmp_path / "m"))
    out = variant_scores(str(tmp_path / "m"), [*VARIANTS, "blend0", "blend0.5"], ["sport", "food"], rows, y,
                         list(SENTENCES), texts, y, 0, 32, body_dir=tiny_body)
    assert sorted(out) == sorted([*VARIANTS, "blend0", "blend0.5"])
    assert out["blend0"]["macro_f1"] == pytest.approx(f1_score(y, clf.load(str(tmp_path / "m"), ["sport", "food"])
                                                               .predict_proba(texts).argmax(1), average="macro"))
    half = FixMatch(FixMatch.Config(steps=2, batch_size=4, mu=2, lr=1e-3, frozen_weight=0.5), RuntimeContext(seed=0), 32)
    half.fit(tiny_body, ["sport", "food"], rows, [], np.zeros(0, np.int64), str(tmp_path / "half"))
    assert out["blend0.5"]["macro_f1"] == pytest.approx(f1_score(y, half.load(str(tmp_path / "half"), ["sport", "food"])
                                                                 .predict_proba(texts).argmax(1), average="macro"))
    H = TINY_BERT["hidden_size"]
    assert out["last"]["features"] == out["last+agree"]["features"] == H
    assert out["agree"]["features"] == 2 * H
    for v, rec in out.items():
        assert 0.0 <= rec["macro_f1"] <= 1.0, v
        assert ("use_pool" in rec) == v.endswith("agree"), v
    with pytest.raises(ValueError, match="needs body_dir"):
        variant_scores(str(tmp_path / "m"), ["blend0.5"], ["sport", "food"], rows, y, list(SENTENCES), texts, y, 0, 32)


def test_dev_eval_summary_prints_the_sample_sd_and_paired_gain():
    """dev_eval.summary's spread is the sample sd (ddof 1), as quality.json's and the docs' figures."""
    from benchmarks.dev_eval import summary

    recs = [{"dataset": "tweets", "k": 16, "seed": s, "method": m, "macro_f1": v}
            for m, vals in {"probe": (0.50, 0.52, 0.54), "fixmatch": (0.53, 0.51, 0.58)}.items()
            for s, v in enumerate(vals)]
    line = summary(recs, ["probe", "fixmatch"]).splitlines()[-1]
    assert line == "| tweets | 16 | 0.520 ± 0.020 | 0.540 ± 0.036 (+0.020, 2/3) |"


def test_check_draw_runs_the_products_adapt_check_on_a_draw(tiny_body):
    """--check: both cores fitted on each fold of the draw's gold rows through core_cv; the pick
    follows the held-out log-losses."""
    from benchmarks.dev_eval_adapt import check_draw
    from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS

    texts = [t for t, _ in TOPIC_ROWS] + list(SENTENCES)
    y = np.array([c for _, c in TOPIC_ROWS] + [0] * len(SENTENCES))
    gold, pool = np.arange(len(TOPIC_ROWS)), np.arange(len(TOPIC_ROWS), len(texts))
    chk = check_draw(texts, y, ["a", "b"], gold, pool, 0, 32, 2, {"steps": 2, "batch_size": 4, "mu": 1}, body=tiny_body)
    assert chk["folds"] == 2
    for core, plugin in (("supervised", "probe"), ("adapted", "fixmatch")):
        assert chk[core]["classifier"] == plugin and np.isfinite(chk[core]["log_loss"]) and chk[core]["log_loss"] > 0
        assert len(chk[core]["fold_log_loss"]) == 2
    assert chk["use_adapted"] == (chk["adapted"]["log_loss"] <= chk["supervised"]["log_loss"])
    assert chk["use_adapted_calibrated"] == (chk["adapted"]["calibrated_log_loss"] <= chk["supervised"]["calibrated_log_loss"])
    # every gold row's held-out probabilities are kept, and rescoring them reproduces the record
    from selftrain.core.run.core_cv import heldout_scores

    rows = chk["heldout"]
    assert rows["y"] == y[gold].tolist() and sorted(set(rows["fold"])) == [0, 1]
    for core in ("supervised", "adapted"):
        loss, _ = heldout_scores(np.array(rows[core]), np.array(rows["y"]))
        assert loss.mean() == pytest.approx(chk[core]["log_loss"], abs=1e-4)


def test_cotraining_grows_a_class_balanced_labelled_set_from_both_views():
    """benchmarks.dev_eval_cotrain: balanced_top takes the most confident new rows per class; a draw
    on separable toy features and texts scores every method and records the added rows' accuracy."""
    from benchmarks.dev_eval_cotrain import balanced_top, run_draw

    P = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05]])
    idx, lab = balanced_top(P, 1)
    assert idx.tolist() == [4, 2] and lab.tolist() == [0, 1]
    idx, lab = balanced_top(P, 1, exclude=np.array([False, False, True, False, True]))
    assert idx.tolist() == [0, 3] and lab.tolist() == [0, 1]

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    V = rng.normal(size=(n, 8)) + 1.5 * y[:, None]
    words = np.array([["dull", "awful", "bad"], ["great", "fine", "good"]])
    texts = [f"{rng.choice(words[c])} {rng.choice(words[c])} thing {i % 7}" for i, c in enumerate(y)]
    gold = np.concatenate([np.flatnonzero(y == c)[:4] for c in (0, 1)])
    rest = np.setdiff1d(np.arange(n), gold)
    res = run_draw(V, np.array([[-1.0] * 8, [2.5] * 8]), texts, y, gold, rest[:400], rest[400:])
    assert {"probe", "tfidf", "cotrain50", "cotrainAB150", "distil0.3", "A+distil1"} <= set(res)
    assert res["cotrain50_pl_acc"] > 0.9 and res["cotrainAB50"] > 0.9  # separable views label the pool right


def test_fit_seeds_refit_the_same_draw_with_another_classifier_seed(tiny_body, capsys):
    """--fit-seeds: fit_and_score's fit_seed seeds the classifier alone (the draw stays): the same
    fit seed reproduces the probabilities, another gives another fit; the offsets must start at 0."""
    from benchmarks.dev_eval_adapt import fit_and_score, main
    from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS

    texts = [t for t, _ in TOPIC_ROWS] + list(SENTENCES)
    y = np.array([c for _, c in TOPIC_ROWS] + [0] * len(SENTENCES))
    gold, pool = np.arange(len(TOPIC_ROWS)), np.arange(len(TOPIC_ROWS), len(texts))
    ev = gold  # scoring rows: any labelled ones will do here
    fit = lambda fs: fit_and_score("fixmatch", {"steps": 3, "batch_size": 4, "mu": 1}, texts, y, ["a", "b"],  # noqa: E731
                                   gold, pool, ev, 0, 32, body=tiny_body, fit_seed=fs)
    a, b, c = fit(0), fit(0), fit(7)
    assert a["proba"].shape == (len(ev), 2) and np.allclose(a["proba"].sum(1), 1, atol=1e-5)
    assert np.allclose(a["proba"], b["proba"], atol=1e-6)
    assert not np.allclose(a["proba"], c["proba"], atol=1e-6)
    with pytest.raises(SystemExit):
        main(["--fit-seeds", "100", "200", "--seeds", "0"])
    assert "the first offset must be 0" in capsys.readouterr().err


def test_nested_draws_pair_pool_sizes_on_the_same_gold_and_dev_eval_rows():
    """dev_eval --pools: every pool size sees the same gold and dev-eval rows, the smaller pool is the
    head of the larger, and no pool row is a gold or dev-eval row; too large a pool is refused."""
    from benchmarks.dev_eval import nested_draws

    y = np.repeat([0, 1, 2], 400)
    gold, pools, ev = nested_draws(y, 4, [100, 500], 200, seed=3)
    assert np.bincount(y[gold]).tolist() == [4, 4, 4] and len(ev) == 200
    assert pools[500][:100].tolist() == pools[100].tolist()
    seen = np.concatenate([gold, ev])
    assert len(set(seen.tolist())) == len(seen) and not set(pools[500].tolist()) & set(seen.tolist())
    again = nested_draws(y, 4, [300], 200, seed=3)
    assert again[0].tolist() == gold.tolist() and again[2].tolist() == ev.tolist()  # pool size does not move the draw
    with pytest.raises(ValueError, match="--sample 0"):
        nested_draws(y, 4, [1100], 200, seed=3)


def test_student_scores_fit_frozen_and_tuned_students_on_the_loops_rows(tiny_body, monkeypatch):
    """--students: the agree loop's kept rows (its guard passing) become the training rows of both
    students; the tuned one is fixmatch on those same rows; a refusing guard leaves every student
    the probe on the gold rows."""
    from benchmarks import dev_eval_students as D
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.labelers import agree
    from selftrain.plugins.testing import SENTENCES, TOPIC_ROWS

    texts = [t for t, _ in TOPIC_ROWS] * 2 + list(SENTENCES)
    y = np.array([c for _, c in TOPIC_ROWS] * 2 + [0] * len(SENTENCES))
    n = len(TOPIC_ROWS)
    gold, pool, ev = np.arange(n), np.arange(n, len(texts)), np.arange(n)
    seen = []
    fit = FixMatch.fit
    monkeypatch.setattr(FixMatch, "fit", lambda self, init, labels, rows, *a, **kw: seen.append(rows) or fit(self, init, labels, rows, *a, **kw))
    monkeypatch.setattr(agree, "cv_guard", lambda *a, **kw: {"use_pool": True})
    out = D.student_scores(texts, y, ["a", "b"], gold, pool, ev, 0, 32, {"tuned": {"steps": 2, "batch_size": 4, "mu": 0}},
                           body=tiny_body, fit_seed=7)
    assert set(out) == {"agree-probe", "agree-tuned"} and out["agree-tuned"]["fit_seed"] == 7
    kept = out["agree-probe"]["kept"]
    assert kept > 0 and out["agree-tuned"]["kept"] == kept
    (rows,) = seen
    assert rows.n_gold == n and len(rows.texts) == n + kept
    assert rows.weights[:n].tolist() == [1.0] * n and set(rows.weights[n:].tolist()) == {agree.AgreeConfig().weight}
    assert all(0 <= r["macro_f1"] <= 1 for r in out.values())
    monkeypatch.setattr(agree, "cv_guard", lambda *a, **kw: {"use_pool": False})
    refused = D.student_scores(texts, y, ["a", "b"], gold, pool, ev, 0, 32, {"tuned": {"steps": 2}}, body=tiny_body)
    assert {r["kept"] for r in refused.values()} == {0} and len(seen) == 1
    assert refused["agree-tuned"]["macro_f1"] == refused["agree-probe"]["macro_f1"]


def test_students_run_on_each_pretrained_body_and_pretrained_only_skips_the_checkpoint(monkeypatch, tmp_path):
    """--students with --pretrain: the pool step and students run on the checkpoint (body None) and on
    each pretrained body, recorded as agree-NAME+<objective> with the pretraining's record;
    --pretrained-only leaves out the checkpoint's students."""
    import json

    from benchmarks import dev_eval_adapt as D

    texts, y = [f"text {i}" for i in range(30)], np.repeat([0, 1, 2], 10)
    monkeypatch.setattr(D, "load", lambda ds, sample=None: (texts, y, ["a", "b", "c"]))
    monkeypatch.setattr(D, "eval_draw", lambda y_, ds, k, seed, n: (np.arange(3), np.arange(3, 20), np.arange(20, 30)))
    monkeypatch.setattr(D, "pretrain_body", lambda seen, obj, ml, seed, out, overrides=None:
                        {"steps": len(seen), "seconds": 1.0, "final_loss": 0.5})
    bodies = []

    def students(texts_, y_, labels, gold, pool, ev, seed, max_length, tuned, body=None, fit_seed=None):
        bodies.append(body)
        base = 0.5 if body is None else 0.6
        return {f"agree-{n}": {"macro_f1": base + i / 10, "seconds": 0.0, "kept": 5, "pseudo_accuracy": 1.0, "notes": []}
                for i, n in enumerate(["probe", *tuned])}
    monkeypatch.setattr(D, "student_scores", students)
    out = tmp_path / "r.json"
    D.main(["--datasets", "tweets", "--seeds", "0", "--methods", "--students", "tuned={mu: 0}",
            "--pretrain", "simcse", "--out", str(out)])
    recs = {r["method"]: r for r in json.loads(out.read_text())["records"]}
    assert set(recs) == {"agree-probe", "agree-tuned", "agree-probe+simcse", "agree-tuned+simcse"}
    assert bodies[0] is None and bodies[1] is not None  # the checkpoint, then the pretrained body
    assert recs["agree-tuned+simcse"]["macro_f1"] == pytest.approx(0.7) and recs["agree-tuned"]["macro_f1"] == pytest.approx(0.6)
    assert recs["agree-tuned+simcse"]["pretrain"]["steps"] == 20 and "pretrain" not in recs["agree-tuned"]  # gold + pool seen
    bodies.clear()
    D.main(["--datasets", "tweets", "--seeds", "0", "--methods", "--students", "tuned={mu: 0}",
            "--pretrain", "simcse", "--pretrained-only", "--out", str(out)])
    assert {r["method"] for r in json.loads(out.read_text())["records"]} == {"agree-probe+simcse", "agree-tuned+simcse"}
    assert len(bodies) == 1 and bodies[0] is not None

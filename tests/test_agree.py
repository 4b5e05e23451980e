"""The agreement labeler (``plugins/labelers/agree.py``): its prior-corrected kNN vote, class
quotas that grow over rounds, the rows it keeps, and its guards (held-out log-loss, drift)."""

from __future__ import annotations

import numpy as np
import pytest

from selftrain.plugins import LabelerInputs, one_hot
from selftrain.plugins.labelers import agree as A
from selftrain.plugins.testing import labeler_inputs


def test_prior_corrected_knn_vote_is_not_outvoted_by_count():
    keys = np.array([[1.0, 0.0]] * 9 + [[0.0, 1.0]] * 2)  # 9 rows of class 0, 2 of class 1
    labels = np.array([0] * 9 + [1] * 2)
    q = np.array([[0.6, 0.8]])  # nearer the class-1 rows
    assert A.knn_vote(q, keys, labels, 10, 2)[0] == 0  # plain majority: class 0 by count
    assert A.knn_vote(q, keys, labels, 10, 2, prior=np.array([0.5, 0.5]))[0] == 1


def test_knn_vote_in_blocks_is_the_one_matrix_vote():
    """Blocks of query rows (memory: block x L, not N x L) give every row the vote it got from the
    whole (N, L) matrix, with and without the prior correction, for any block size."""
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(60, 8)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=60)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for prior in (None, np.array([0.2, 0.3, 0.5])):
        whole = A.knn_vote(q, keys, labels, 7, 3, prior, block=len(q))
        assert len(set(whole.tolist())) > 1  # a vote that says something
        for block in (1, 5, 36):
            assert A.knn_vote(q, keys, labels, 7, 3, prior, block=block).tolist() == whole.tolist()


def test_grow_votes_only_on_rows_not_kept_yet(monkeypatch):
    """grow asks the k-NN vote about the untaken rows alone (a fifth of the pool by round 5) and
    keeps what voting on every row kept."""
    rng = np.random.default_rng(1)
    pool_x = rng.normal(size=(40, 4))
    pool_x /= np.linalg.norm(pool_x, axis=1, keepdims=True)
    lab_x, lab_y = pool_x[:6] + 0.01, np.array([0, 1, 0, 1, 0, 1])
    probs = rng.dirichlet([1, 1], size=40)
    taken = np.zeros(40, bool)
    taken[::3] = True
    quota = np.array([5, 5])
    asked = []
    vote = A.knn_vote
    monkeypatch.setattr(A, "knn_vote", lambda query, *a, **kw: asked.append(len(query)) or vote(query, *a, **kw))
    new, ys = A.grow(probs, pool_x, lab_x, lab_y, taken, quota, 3)
    assert asked == [int((~taken).sum())]
    every = vote(pool_x, lab_x, lab_y, 3, 2)  # the vote on every row, as grow did before
    ok = ~taken & (every == probs.argmax(1))
    want = np.sort(np.concatenate([np.flatnonzero(ok & (probs.argmax(1) == c))[np.argsort(
        -probs.max(1)[ok & (probs.argmax(1) == c)], kind="stable")][:5] for c in range(2)]))
    assert len(new) > 0 and new.tolist() == want.tolist() and not taken[new].any()


def test_prior_is_the_gold_mix_or_the_mean_prediction():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    assert np.allclose(A.estimate_prior("gold", probs, np.array([0, 0, 1, 1]), 2), [0.5, 0.5])
    assert np.allclose(A.estimate_prior("predicted", probs, np.array([0, 0, 1, 1]), 2), [0.7667, 0.2333], atol=1e-3)


def test_quotas_grow_to_the_prior_over_rounds():
    prior = np.array([0.5, 0.3, 0.2])
    q1 = A.quotas(prior, 100, 1, 5, 1.0, np.zeros(3, np.int64))
    assert q1.tolist() == [10, 6, 4]
    q5 = A.quotas(prior, 100, 5, 5, 1.0, np.array([40, 24, 16]))
    assert q5.tolist() == [10, 6, 4]


def test_grow_keeps_only_agreeing_rows_most_confident_first():
    lab_x = np.array([[1.0, 0.0], [0.0, 1.0]])
    lab_y = np.array([0, 1])
    pool_x = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.95, 0.05]])
    pool_x = pool_x / np.linalg.norm(pool_x, axis=1, keepdims=True)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])  # row 2: classifier says 0, its neighbour 1
    new, ys = A.grow(probs, pool_x, lab_x, lab_y, np.zeros(4, bool), np.array([2, 2]), knn=1)
    assert new.tolist() == [0, 3] and ys.tolist() == [0, 0]


def _inputs(rounds=3, round_=1, previous=None, **kw) -> LabelerInputs:
    base = labeler_inputs(n=300, n_val=0, seed=1, **kw)
    base.round, base.rounds, base.previous = round_, rounds, previous
    return base


def test_agree_grows_class_balanced_over_rounds_and_is_accurate():
    lab = A.AgreementLabeler(A.AgreeConfig(guard=False))
    inp = _inputs()
    hidden = inp.pool_embeddings  # the clusters are the hidden classes: recover them from the centres
    prev, sizes = None, []
    for r in (1, 2, 3):
        inp.round, inp.previous = r, prev
        prev = lab.select(inp)
        prev.validate(300, 3)
        sizes.append(len(prev.index))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert len(np.unique(prev.index)) == len(prev.index)
    rng_hidden = np.random.default_rng(1).integers(0, 3, size=300)  # labeler_inputs' first draw
    acc = (prev.targets.argmax(1) == rng_hidden[prev.index]).mean()
    assert acc > 0.9, acc
    assert hidden is not None and set(prev.weights.tolist()) == {0.5}


def test_agree_guard_keeps_nothing_when_the_loop_loses_on_held_out_gold(monkeypatch):
    inp = _inputs()
    cfg = A.AgreeConfig(guard=True)
    # a loop that drifts to one class for everything (what happened on two-class sentiment at k=4)
    monkeypatch.setattr(A, "simulate", lambda gx, gy, px, rounds, c, n: (lambda q: one_hot(np.zeros(len(q), int), n)))
    g = A.cv_guard(inp.train_embeddings, inp.train_labels, inp.pool_embeddings, 3, cfg, 3)
    assert g["supervised_log_loss"] < g["selftrained_log_loss"] and not g["use_pool"], g
    sel = A.AgreementLabeler(cfg).select(inp)
    assert len(sel.index) == 0 and sel.notes["reason"].startswith("guard:"), sel.notes


def test_agree_guard_compares_log_loss_and_refuses_confident_errors(monkeypatch):
    """A loop that drifted: sharp (0.998) where it is right, as sharp on the wrong class for a fifth of the
    held-out gold rows, vs a supervised fit that hedges (0.45 on its argmax). The Brier score prefers the
    drifted loop; the log-loss (default ``guard_metric``) does not, and the guard keeps nothing."""
    inp = _inputs()
    gold_x, gold_y = inp.train_embeddings, np.asarray(inp.train_labels)
    wrong = set(range(0, len(gold_y), 5))  # every 5th gold row: 20 %
    true_lr = A._lr

    def rows_of(q):  # held-out rows -> their gold indices
        return [int(np.flatnonzero((gold_x == r).all(1))[0]) for r in q]

    def hedging(x, y, w, n, C):  # the supervised fit: right (the toy clusters are easy), but unsure
        f = true_lr(x, y, w, n, C)
        return lambda q: 0.45 * one_hot(f(q).argmax(1), n) + 0.275 * (1 - one_hot(f(q).argmax(1), n))

    def drifted(gx, gy, px, rounds, c, n):
        def proba(q):
            y = gold_y[rows_of(q)]
            y = np.where([i in wrong for i in rows_of(q)], (y + 1) % n, y)
            return 0.998 * one_hot(y, n) + 0.001 * (1 - one_hot(y, n))
        return proba

    monkeypatch.setattr(A, "_lr", hedging)
    monkeypatch.setattr(A, "simulate", drifted)
    g = A.cv_guard(gold_x, gold_y, inp.pool_embeddings, 3, A.AgreeConfig(), 3)
    assert g["metric"] == "log_loss" and g["selftrained_right"] < g["supervised_right"], g
    assert g["selftrained_brier"] < g["supervised_brier"], g  # Brier alone would take the pool ...
    assert g["selftrained_log_loss"] > g["supervised_log_loss"] and not g["use_pool"], g  # ... log-loss does not
    assert A.cv_guard(gold_x, gold_y, inp.pool_embeddings, 3, A.AgreeConfig(guard_metric="brier"), 3)["use_pool"]
    lax = A.AgreeConfig(guard_margin=g["selftrained_log_loss"] - g["supervised_log_loss"] + 0.01)
    assert A.cv_guard(gold_x, gold_y, inp.pool_embeddings, 3, lax, 3)["use_pool"]  # the margin is what it may trail by
    monkeypatch.setattr(A, "_lr", true_lr)
    sel = A.AgreementLabeler(A.AgreeConfig()).select(inp)
    assert len(sel.index) == 0 and "held-out log_loss" in sel.notes["reason"], sel.notes


def test_agree_guard_lets_a_clustered_pool_through():
    inp = _inputs(n_train=12)  # 4 gold rows per class (the demo's k): the clustered pool beats them by far
    g = A.cv_guard(inp.train_embeddings, inp.train_labels, inp.pool_embeddings, 3, A.AgreeConfig(), 3)
    # below 10 rows per class: class-balanced folds, as many as the largest class has rows
    assert g["use_pool"] and g["folds"] == np.bincount(inp.train_labels).max(), g
    assert len(A.AgreementLabeler(A.AgreeConfig()).select(inp).index) > 0


def test_agree_drift_stop_adds_nothing_and_stops():
    lab = A.AgreementLabeler(A.AgreeConfig(guard=False, max_drift=0.05))
    inp = _inputs()
    first = lab.select(inp)
    inp.round, inp.previous = 2, first
    inp.probs = np.tile(np.array([[0.9, 0.05, 0.05]], np.float32), (300, 1))  # every row now class 0
    sel = lab.select(inp)
    assert sel.notes["stop"] and "drift" in sel.notes["reason"]
    assert np.array_equal(sel.index, first.index)


def test_agree_refuses_inputs_without_embeddings():
    inp = _inputs()
    inp.pool_embeddings = None
    with pytest.raises(ValueError, match="needs pool and gold embeddings"):
        A.AgreementLabeler(A.AgreeConfig()).select(inp)


def test_balanced_folds_hold_out_one_row_of_every_class_and_every_row_once():
    y = np.array([0] * 4 + [1] * 4 + [2] * 3)  # a class that lost a row (the BBC demo split)
    folds = A.balanced_folds(y, 10, seed=3)
    assert len(folds) == 4  # as many folds as the largest class has rows
    held = np.concatenate([te for _, te in folds])
    assert sorted(held.tolist()) == list(range(len(y)))  # every row held out exactly once
    for tr, te in folds:
        assert np.bincount(y[te], minlength=3).max() == 1  # at most one row of each class per fold
        assert set(tr) | set(te) == set(range(len(y))) and not set(tr) & set(te)
    big = A.balanced_folds(np.repeat([0, 1], [12, 5]), 10, seed=0)  # capped at max_folds
    assert len(big) == 10 and max(np.bincount(np.repeat([0, 1], [12, 5])[te], minlength=2)[0] for _, te in big) == 2


def _weak_two_class_draw(rng, n_gold=4, n_pool=200):
    """Two classes whose embeddings share one direction and differ by a small one: a logistic
    regression at C = 1 on 8 unit-norm rows leans on its intercept, i.e. the training class mix."""
    common, d = np.eye(8)[0], np.eye(8)[1]

    def rows(c, n):
        x = common + (0.08 if c else -0.08) * d + 0.01 * rng.normal(size=(n, 8))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    gold_x = np.vstack([rows(0, n_gold), rows(1, n_gold)])
    gold_y = np.repeat([0, 1], n_gold)
    pool_x = np.vstack([rows(0, n_pool // 2), rows(1, n_pool // 2)])
    return gold_x, gold_y, pool_x


def test_guard_on_a_two_class_k4_draw_is_not_wrong_by_construction():
    """Issue #22: with 4 + 4 gold rows plain 8-fold CV is leave-one-out, which leaves the held-out row's
    class in the minority (3 vs 4) and the supervised classifier misses every held-out row. The
    class-balanced folds train on 3 + 3 and get the rows right."""
    from sklearn.model_selection import KFold

    gold_x, gold_y, pool_x = _weak_two_class_draw(np.random.default_rng(0))
    loo_right = 0
    for tr, te in KFold(8, shuffle=True, random_state=0).split(gold_x):  # the guard's folds before the fix
        loo_right += int((A._lr(gold_x[tr], gold_y[tr], None, 2, 1.0)(gold_x[te]).argmax(1) == gold_y[te]).sum())
    assert loo_right == 0  # the failure the issue describes, reproduced
    g = A.cv_guard(gold_x, gold_y, pool_x, 3, A.AgreeConfig(), 2)
    assert g["folds"] == 4 and g["rows"] == 8
    assert g["supervised_right"] >= 6, g  # now the held-out rows are scored by a fair classifier

"""Agreement self-training in embedding space: keep a pool row only when the classifier and a
k-nearest-neighbour vote over the rows labelled so far agree; grow the labelled set over rounds,
class-balanced to the pool's estimated class prior, and stop when that mix drifts.

Why: where classes form clusters in the sentence-embedding space, a pool row whose nearest
labelled neighbours and the linear classifier name the same class is very likely right, and
labelling the pool from the cluster cores outwards (the most confident rows first, a slice per
round) propagates labels along the clusters (cf. label propagation, Zhu & Ghahramani 2002;
co-training's agreement of two views, Blum & Mitchell 1998; class-balanced self-training, Zou
et al. 2018; distribution alignment, Berthelot et al. 2020, ReMixMatch). Where the labels set the
ceiling (classes do not cluster), the same loop drifts; the guard below measures that on the
gold rows themselves before any pool row is used.

Guards (all measured from the gold rows and the pool, never from test):
- round 1, ``guard``: k-fold cross-validation over the gold rows runs the whole loop (a logistic
  regression on the embeddings) without the held-out fold; if the self-trained model's Brier
  score on the held-out gold rows does not beat the supervised one's by at least 0.1 per row
  (``guard_margin: -0.1``), nothing is kept and the run trains no student (the supervised core
  stands). Brier, not accuracy: with 12-48 gold rows the count of rows right moves by +-3 between
  seeds on its own, while the Brier difference (10 folds) separated every BBC cell (-0.44..-0.66
  per row; the pool paid +0.03..+0.13 macro-F1) from every tweets cell (+0.00..+0.84; the pool
  cost up to 0.12) in our 5-seed dev-eval at k = 4, 8, 16 (docs/experiments.md, session 5). With
  the probe's middle-layer features (session 6, 10 seeds) BBC stayed at -0.17..-0.63 (k = 4-32)
  while two tweets draws at k = 8 came out at -0.01 and -0.05 and lost 0.10-0.12 macro-F1: hence
  the required lead of 0.1 rather than a tie. Ten
  folds rather than four: at k = 3-4 a 4-fold training split leaves 2-3 rows per class and the
  estimate turns pessimistic (a BBC demo seed: -0.05 at 4 folds, -0.54 at 10);
- distribution alignment: probabilities are rescaled by prior / (their mean over the pool) before
  picking, and the per-class quotas follow the same prior — by default the gold rows' class mix
  (``prior: gold``; uniform when they were drawn per class). The mean of round 1's predictions
  (``prior: predicted``) scored the same on our dev-eval but breaks when validation calibration
  makes the probabilities sharp (T ~ 0.1) and the first classifier under-predicts a class: that
  class then got 0 pseudo-labels in a BBC run at 4+4 labels per class (0.45 macro-F1; 0.94 with
  the gold prior);
- drift stop: when the current predicted mix over the pool is more than ``max_drift`` (total
  variation) from round 1's, no new row is added and the rounds end.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from selftrain.plugins import Labeler, LabelerInputs, PluginConfig, Selection, one_hot


class AgreeConfig(PluginConfig):
    knn: int = Field(10, ge=1, description="Neighbours (cosine, among the rows labelled so far) whose majority vote must agree with the classifier.")
    knn_prior: bool = Field(True, description="Prior-corrected k-NN vote (votes per class / labelled rows of the class x estimated prior) instead of the plain majority, so a class with few labelled rows is not outvoted by count.")
    weight: float = Field(0.5, gt=0, le=1, description="Loss weight of a pseudo-labelled row (gold rows weigh 1).")
    grow_to: float = Field(1.0, gt=0, le=1, description="Fraction of the pool labelled after the last round (a 1/rounds slice per round).")
    align: bool = Field(True, description="Distribution alignment: rescale probabilities by the prior over their current mean before picking.")
    max_drift: float = Field(0.2, gt=0, le=1, description="Add no row once the predicted class mix over the pool is this far (total variation) from round 1's.")
    guard: bool = Field(True, description="Round 1: cross-validate the loop on the gold rows and keep nothing if it loses to the supervised classifier.")
    guard_folds: int = Field(10, ge=2, description="Folds of that cross-validation (stratified up to the smallest class's gold count, plain k-fold beyond; at most one per gold row).")
    guard_margin: float = Field(-0.1, ge=-2, le=2, description="Held-out Brier score per gold row by which the self-trained model may trail the supervised one and still be used; negative: by which it must lead (default -0.1: lead by 0.1, picked on dev-eval, docs/experiments.md session 6).")
    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the guard's logistic regression (match the probe's C).")
    prior: Literal["gold", "predicted"] = Field("gold", description="Class prior the pseudo-labels are balanced and aligned to: 'gold', the class mix of the gold training rows (uniform when they were drawn per class); 'predicted', the mean of round 1's probabilities over the pool (skewed when those are sharp and the first classifier under-predicts a class).")


def knn_vote(query: np.ndarray, keys: np.ndarray, key_labels: np.ndarray, k: int, n_classes: int,
             prior: np.ndarray | None = None) -> np.ndarray:
    """(N, H) queries, (L, H) labelled keys (L2-normalised), (L,) labels -> (N,) the class with the
    largest k-NN posterior among the k most cosine-similar keys (ties: the lower class id).

    ``prior`` (C,) given: votes_c / n_c * prior_c, the k-NN density estimate p(x|c) ~ k_c / n_c
    times the class prior, so a class with few labelled rows so far (a class whose gold rows sit
    off its cluster, say) is not outvoted by sheer count and starved of pseudo-labels for good.
    None: the plain majority vote."""
    k = min(k, len(keys))
    sim = query @ keys.T  # (N, L)
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (N, k)
    votes = np.zeros((len(query), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(query)), k), key_labels[nn].ravel()), 1.0)
    if prior is not None:
        n_c = np.bincount(key_labels, minlength=n_classes).astype(np.float64)
        votes = votes * (np.asarray(prior, np.float64) / np.clip(n_c, 1.0, None))
    return votes.argmax(1)


def align(probs: np.ndarray, prior_ref: np.ndarray) -> np.ndarray:
    """(N, C) probabilities -> the same rescaled by prior_ref / (their own mean), renormalised."""
    cur = probs.mean(0)
    p = probs * (prior_ref / np.clip(cur, 1e-8, None))
    return p / p.sum(1, keepdims=True)


def grow(probs: np.ndarray, pool_x: np.ndarray, lab_x: np.ndarray, lab_y: np.ndarray, taken: np.ndarray,
         quota: np.ndarray, knn: int, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One round's new rows. probs (N, C), pool_x (N, H), lab_x (L, H) / lab_y (L,) the rows
    labelled so far, taken (N,) bool already kept, quota (C,) new rows wanted per class ->
    (M,) pool indices and (M,) their classes: per class, the most confident untaken rows on
    which the classifier and the k-NN vote (prior-corrected when ``prior`` is given) agree."""
    C = probs.shape[1]
    pred, conf = probs.argmax(1), probs.max(1)
    ok = ~taken & (knn_vote(pool_x, lab_x, lab_y, knn, C, prior) == pred)
    idx = []
    for c in range(C):
        rows = np.flatnonzero(ok & (pred == c))
        idx.append(rows[np.argsort(-conf[rows], kind="stable")][: max(int(quota[c]), 0)])
    new = np.sort(np.concatenate(idx)).astype(np.int64) if idx else np.zeros(0, np.int64)
    return new, pred[new]


def quotas(prior: np.ndarray, n_pool: int, round_: int, rounds: int, grow_to: float, have: np.ndarray) -> np.ndarray:
    """(C,) new rows per class so that after ``round_`` of ``rounds`` the kept rows of class c reach
    round_/rounds * grow_to * n_pool * prior_c (class-balanced to the estimated prior)."""
    target = np.floor(grow_to * n_pool * prior * round_ / rounds)
    return np.maximum(target - have, 0).astype(np.int64)


def estimate_prior(mode: str, probs: np.ndarray, gold_y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) class prior: the gold rows' class mix ('gold') or the mean predicted distribution ('predicted')."""
    if mode == "gold":
        counts = np.bincount(np.asarray(gold_y, np.int64), minlength=n_classes).astype(np.float64)
        return counts / counts.sum()
    return np.asarray(probs, np.float64).mean(0)


def drift(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two class mixes (C,)."""
    return float(0.5 * np.abs(p - q).sum())


def _lr(x, y, w, n_classes, C):
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    if len(present) == 1:
        return lambda q: one_hot(np.full(len(q), present[0]), n_classes)
    clf = LogisticRegression(C=C, max_iter=2000).fit(x, y, sample_weight=w)

    def proba(q):
        out = np.zeros((len(q), n_classes))
        out[:, clf.classes_] = clf.predict_proba(q)
        return out
    return proba


def simulate(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int):
    """The whole loop with a logistic regression as the classifier -> predict_proba of the last model."""
    lab_x, lab_y, lab_w = gold_x, gold_y, np.ones(len(gold_y))
    taken = np.zeros(len(pool_x), bool)
    prior1 = mix1 = None
    for r in range(1, rounds + 1):
        probs = _lr(lab_x, lab_y, lab_w, n_classes, cfg.C)(pool_x)
        if prior1 is None:
            prior1, mix1 = estimate_prior(cfg.prior, probs, gold_y, n_classes), probs.mean(0)
        elif drift(probs.mean(0), mix1) > cfg.max_drift:
            break
        if cfg.align:
            probs = align(probs, prior1)
        have = np.bincount(lab_y[len(gold_y):], minlength=n_classes)
        new, ys = grow(probs, pool_x, lab_x, lab_y, taken, quotas(prior1, len(pool_x), r, rounds, cfg.grow_to, have), cfg.knn,
                       prior1 if cfg.knn_prior else None)
        taken[new] = True
        lab_x, lab_y = np.vstack([lab_x, pool_x[new]]), np.concatenate([lab_y, ys])
        lab_w = np.concatenate([lab_w, np.full(len(new), cfg.weight)])
    return _lr(lab_x, lab_y, lab_w, n_classes, cfg.C)


def cv_guard(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int, seed: int = 0) -> dict:
    """Held-out gold rows, supervised vs self-trained over the same stratified folds: rows right
    and the Brier score (sum over classes of (p_c - y_c)^2, mean over rows); use the pool when the
    self-trained Brier is at most the supervised one + ``guard_margin`` (default -0.1: better by 0.1)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(gold_y, minlength=n_classes)[np.unique(gold_y)]
    if counts.min() < 2:
        return {"folds": 0, "skipped": "fewer than 2 gold rows in some class"}
    folds = min(cfg.guard_folds, len(gold_y))
    # stratified while every class can give a row to every fold; beyond that, plain k-fold (more folds
    # = training folds closer to the real gold set, a less pessimistic estimate at k = 3-4)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if folds <= counts.min()
                else KFold(folds, shuffle=True, random_state=seed))
    sup = st = 0
    b_sup = b_st = 0.0
    for tr, te in splitter.split(gold_x, gold_y):
        oh = one_hot(gold_y[te], n_classes)  # (F, C)
        p_sup = _lr(gold_x[tr], gold_y[tr], None, n_classes, cfg.C)(gold_x[te])  # (F, C)
        p_st = simulate(gold_x[tr], gold_y[tr], pool_x, rounds, cfg, n_classes)(gold_x[te])
        sup += int((p_sup.argmax(1) == gold_y[te]).sum())
        st += int((p_st.argmax(1) == gold_y[te]).sum())
        b_sup += float(((p_sup - oh) ** 2).sum())
        b_st += float(((p_st - oh) ** 2).sum())
    n = len(gold_y)
    return {"folds": folds, "rows": n, "supervised_right": sup, "selftrained_right": st,
            "supervised_brier": b_sup / n, "selftrained_brier": b_st / n,
            "use_pool": b_st / n <= b_sup / n + cfg.guard_margin}


class AgreementLabeler(Labeler):
    summary = "embedding-space self-training: classifier and k-NN agree, class-balanced growth over rounds, drift guards"
    Config = AgreeConfig
    needs_embeddings = True

    def select(self, inputs: LabelerInputs) -> Selection:
        c, P = self.config, np.asarray(inputs.probs, np.float64)
        N, C = P.shape
        if inputs.pool_embeddings is None or inputs.train_embeddings is None or inputs.train_labels is None:
            raise ValueError("the 'agree' labeler needs pool and gold embeddings (LabelerInputs.pool_embeddings, "
                             "train_embeddings, train_labels); the pseudo-label stage fills them for needs_embeddings labelers")
        pool_x, gold_x, gold_y = inputs.pool_embeddings, inputs.train_embeddings, np.asarray(inputs.train_labels)
        prev = inputs.previous
        notes: dict = {"round": inputs.round}
        if prev is None:
            prev = Selection(np.zeros(0, np.int64), np.zeros((0, C), np.float32), np.zeros(0, np.float32))
            prior1, mix1 = estimate_prior(c.prior, P, gold_y, C), P.mean(0)
            if c.guard:
                g = cv_guard(gold_x, gold_y, pool_x, inputs.rounds, c, C, inputs.seed)
                notes["guard"] = g
                if not g.get("use_pool", True):
                    notes["reason"] = (f"guard: on {g['folds']}-fold cross-validation over the {g['rows']} gold rows, "
                                       f"self-training scored a held-out Brier of {g['selftrained_brier']:.3f} vs "
                                       f"{g['supervised_brier']:.3f} for the supervised classifier "
                                       f"({g['selftrained_right']} vs {g['supervised_right']} rows right; margin "
                                       f"{c.guard_margin}): the pool does not pay here, keeping no pseudo-label")
                    return Selection(prev.index, prev.targets, prev.weights,
                                     {**notes, "prior": prior1.tolist(), "mix1": mix1.tolist()})
        else:
            prior1 = np.asarray(prev.notes.get("prior", estimate_prior(c.prior, P, gold_y, C)))
            mix1 = np.asarray(prev.notes.get("mix1", P.mean(0)))
        notes["prior"], notes["mix1"] = prior1.tolist(), mix1.tolist()
        notes["drift"] = drift(P.mean(0), mix1)  # the predicted class mix now vs round 1's
        if inputs.round > 1 and notes["drift"] > c.max_drift:
            notes["reason"] = (f"drift stop: the predicted class mix moved {notes['drift']:.3f} (total variation) from "
                               f"round 1's, above max_drift={c.max_drift}; no new row added")
            return Selection(prev.index, prev.targets, prev.weights, {**notes, "stop": True})
        if c.align:
            P = align(P, prior1)
        taken = np.zeros(N, bool)
        taken[prev.index] = True
        prev_y = prev.targets.argmax(1) if len(prev.index) else np.zeros(0, np.int64)
        lab_x = np.vstack([gold_x, pool_x[prev.index]])
        lab_y = np.concatenate([gold_y, prev_y]).astype(np.int64)
        have = np.bincount(prev_y, minlength=C)
        new, ys = grow(P, pool_x, lab_x, lab_y, taken, quotas(prior1, N, inputs.round, inputs.rounds, c.grow_to, have), c.knn,
                       prior1 if c.knn_prior else None)
        notes["added"] = len(new)
        if inputs.round > 1 and len(new) == 0:
            notes["stop"], notes["reason"] = True, "no new pool row on which the classifier and the k-NN vote agree"
        idx = np.concatenate([prev.index, new]).astype(np.int64)
        targets = np.concatenate([prev.targets, one_hot(ys, C)]).astype(np.float32)
        weights = np.concatenate([prev.weights, np.full(len(new), c.weight, np.float32)]).astype(np.float32)
        if len(idx) == 0:
            notes["reason"] = "no pool row on which the classifier and the k-NN vote agree"
        return Selection(idx, targets, weights, notes)

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
  regression on the embeddings) without the held-out fold; if the self-trained model's held-out
  **log-loss** (cross-entropy of the true class, mean per gold row) is worse than the supervised
  one's (``guard_metric: log_loss``, ``guard_margin: 0``), nothing is kept and the run trains no
  student (the supervised core stands). Why log-loss: a loop that drifts becomes confidently wrong
  on some rows, which log-loss punishes without bound, while a sharper model that is merely
  confident where the supervised probe hedges wins it only when it is right. On dev-eval
  (docs/experiments.md, session 7; 5-10 draws per cell, 10 folds) it separates every BBC draw
  (k = 4-32: -1.19 .. -0.11 per row; the pool paid -0.006 .. +0.099 macro-F1) from every tweets
  draw (k = 4-32: +0.19 .. +2.64; at k = 8 the pool cost up to 0.12). The Brier score
  (``guard_metric: brier``, used before) left a gap of only 0.11 between them (BBC <= -0.17, two
  tweets k = 8 draws at -0.01 and -0.05 that lost 0.10-0.12, and on the product's test splits
  tweets draws at -0.12 and -0.19) and needed a required lead of 0.1 that BBC k = 32 (-0.22) was
  close to. Not accuracy: with 12-48 gold rows the count of rows right moves by +-3 between seeds
  on its own (it rose on 9 of 10 tweets k = 8 draws, 7 of which lost). Ten folds rather than four:
  at k = 3-4 a 4-fold training split leaves 2-3 rows per class and the estimate turns pessimistic
  (a BBC demo seed: Brier -0.05 at 4 folds, -0.54 at 10). Up to 4 gold rows per class the folds
  are **class-balanced** (``balanced_folds``: each fold holds out at most one row of every class,
  in lockstep), not plain k-fold: with 4 + 4 rows of two classes plain 8-fold is leave-one-out,
  which leaves the held-out row's class in the minority of its training split (3 vs 4), so a
  nearest-mean-like classifier mispredicts every held-out row by construction ("0 vs 0 rows
  right") and the decision rests on the log-loss of a classifier wrong by design;
- distribution alignment: probabilities are rescaled by prior / (their mean over the pool) before
  picking, and the per-class quotas follow the same prior — by default the gold rows' class mix
  (``prior: gold``; uniform when they were drawn per class). The mean of round 1's predictions
  (``prior: predicted``) scored the same on our dev-eval but breaks when validation calibration
  makes the probabilities sharp (T ~ 0.1) and the first classifier under-predicts a class: that
  class then got 0 pseudo-labels in a BBC run at 4+4 labels per class (0.45 macro-F1; 0.94 with
  the gold prior);
- an adapted teacher (``guard_adapted``): when the teacher's body was trained on the gold rows
  (fixmatch, setfit, finetune: ``LabelerInputs.embeddings_fit_labels``), the held-out rows of the
  guard's folds are not held out from the body, which has pulled them towards their classes: the
  guard passes where the pool does not pay (dev-eval, tweets k = 16, a fixmatch teacher: it let
  the pool through on 5 of 5 draws and agreement self-training then lost -0.021 +- 0.013 to
  the teacher, 0 of 5; session 12). By default nothing is kept there and the teacher stays final;
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
    guard_folds: int = Field(10, ge=2, description="Folds of that cross-validation: stratified k-fold when every class has at least this many gold rows; up to 4 rows in the smallest class, class-balanced folds (each holds out at most one row of every class, as many folds as the largest class has rows, at most this many); plain k-fold in between.")
    guard_metric: Literal["log_loss", "brier"] = Field("log_loss", description="What the guard compares on the held-out gold rows (mean per row): 'log_loss', the cross-entropy of the true class (punishes the confident errors of a drifting loop; picked on dev-eval, docs/experiments.md session 7), or 'brier', the sum over classes of (p_c - y_c)^2 (the guard before session 7; pair it with guard_margin: -0.1).")
    guard_margin: float = Field(0.0, ge=-5, le=5, description="Held-out guard_metric per gold row by which the self-trained model may trail the supervised one and still be used; negative: by which it must lead (default 0: a tie passes, a loss does not).")
    guard_adapted: Literal["refuse", "trust"] = Field("refuse", description="When the teacher's body was trained on the gold rows (a classifier with body_fits_labels: fixmatch, setfit, finetune), the guard's cross-validation holds out rows the body has already fit, so it is optimistic: on dev-eval (tweets k = 16, fixmatch teacher) it let the pool through on 5 of 5 draws while agreement self-training lost -0.021 +- 0.013 to the teacher, 0 of 5 (docs/experiments.md, session 12). 'refuse': keep no pseudo-label there and say why (the teacher stays final); 'trust': run the guard anyway.")
    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the guard's logistic regression (match the probe's C).")
    prior: Literal["gold", "predicted"] = Field("gold", description="Class prior the pseudo-labels are balanced and aligned to: 'gold', the class mix of the gold training rows (uniform when they were drawn per class); 'predicted', the mean of round 1's probabilities over the pool (skewed when those are sharp and the first classifier under-predicts a class).")


#: Similarities computed at once by the k-NN vote: query rows go in blocks of KNN_BLOCK_ENTRIES // L
#: rows against the L labelled keys, so the vote holds ~4.2 M floats (64 MiB in float64 with the
#: negated copy the partition needs) however large the pool; smaller blocks also ran faster than
#: 16.8 M ones (cache-sized; 10.4 s against 12.0 s at 35,000 rows). In one (N, L) matrix, a 35,000-row pool
#: against the ~28,000 rows labelled by round 5 peaked at 14.4 GiB, and a 100,000-row pool would need
#: ~120 GiB (benchmarks/speed_agree.py).
KNN_BLOCK_ENTRIES = 2**22


def knn_vote(query: np.ndarray, keys: np.ndarray, key_labels: np.ndarray, k: int, n_classes: int,
             prior: np.ndarray | None = None, block: int | None = None) -> np.ndarray:
    """(N, H) queries, (L, H) labelled keys (L2-normalised), (L,) labels -> (N,) the class with the
    largest k-NN posterior among the k most cosine-similar keys (ties: the lower class id).

    ``prior`` (C,) given: votes_c / n_c * prior_c, the k-NN density estimate p(x|c) ~ k_c / n_c
    times the class prior, so a class with few labelled rows so far (a class whose gold rows sit
    off its cluster, say) is not outvoted by sheer count and starved of pseudo-labels for good.
    None: the plain majority vote. The queries go ``block`` rows at a time (default: as many as keep a
    block's similarities within ``KNN_BLOCK_ENTRIES``); each row's vote is its own, so blocks change
    nothing but the memory."""
    k = min(k, len(keys))
    block = block or max(1, KNN_BLOCK_ENTRIES // max(len(keys), 1))
    scale = None
    if prior is not None:
        n_c = np.bincount(key_labels, minlength=n_classes).astype(np.float64)
        scale = np.asarray(prior, np.float64) / np.clip(n_c, 1.0, None)  # (C,)
    out = np.empty(len(query), np.int64)
    for start in range(0, len(query), block):
        q = query[start:start + block]  # (b, H)
        sim = q @ keys.T  # (b, L)
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (b, k)
        votes = np.zeros((len(q), n_classes))  # (b, C)
        np.add.at(votes, (np.repeat(np.arange(len(q)), k), key_labels[nn].ravel()), 1.0)
        if scale is not None:
            votes = votes * scale
        out[start:start + block] = votes.argmax(1)
    return out


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
    ok = ~taken  # (N,) only rows not kept yet are voted on: by round 5 that is a fifth of the pool
    free = np.flatnonzero(ok)
    ok[free] = knn_vote(pool_x[free], lab_x, lab_y, knn, C, prior) == pred[free]
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


def loop_rows(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole loop with a logistic regression as the classifier -> (M,) the pool rows it kept and
    (M,) their classes, in the order kept (round by round)."""
    lab_x, lab_y, lab_w = gold_x, gold_y, np.ones(len(gold_y))
    taken = np.zeros(len(pool_x), bool)
    kept: list[np.ndarray] = []
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
        kept.append(new)
        lab_x, lab_y = np.vstack([lab_x, pool_x[new]]), np.concatenate([lab_y, ys])
        lab_w = np.concatenate([lab_w, np.full(len(new), cfg.weight)])
    idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    return idx, lab_y[len(gold_y):]


def simulate(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int):
    """The whole loop with a logistic regression as the classifier -> predict_proba of the last model
    (gold rows weigh 1, the kept pool rows ``cfg.weight``)."""
    idx, ys = loop_rows(gold_x, gold_y, pool_x, rounds, cfg, n_classes)
    x, y = np.vstack([gold_x, pool_x[idx]]), np.concatenate([gold_y, ys])
    w = np.concatenate([np.ones(len(gold_y)), np.full(len(idx), cfg.weight)])
    return _lr(x, y, w, n_classes, cfg.C)


#: Up to this many gold rows in the smallest class the guard's folds are class-balanced
#: (``balanced_folds``). Holding one row out of 4 leaves 3 vs 4 (25 % fewer) and tips a hedging
#: classifier's intercept against the held-out class: on 4 + 4 two-class rows plain k-fold is
#: leave-one-out and the supervised side scores 0 rows right by construction. At 8 rows per class
#: dev-eval kept plain k-fold: balanced folds let one tweets draw of five through (Δ log-loss
#: -0.013) that lost 0.120, where plain 10-fold refused all ten (docs/experiments.md, session 8).
BALANCED_FOLDS_UP_TO = 4


def balanced_folds(y: np.ndarray, max_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R,) labels -> [(train index, held-out index)] over F = min(max_folds, largest class count) folds:
    each class's rows, shuffled, go round-robin to the folds from a random start, so a fold holds
    out at most ceil(n_c / F) rows of class c and every class keeps n_c - 1 or more rows in
    training wherever n_c <= F. Why not plain k-fold below 10 rows per class: with 4 + 4 rows it is
    leave-one-out, whose training split always has the held-out row's class in the minority
    (3 vs 4), so the held-out row is mispredicted by construction; here each fold holds out one
    row of each class and trains on 3 + 3."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    F = int(min(max_folds, np.bincount(y).max()))
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(len(rows)) + rng.integers(F)) % F
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(F)]


def guard_rows(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int, seed: int = 0) -> dict | None:
    """The guard's cross-validation, per held-out gold row: ``{supervised,selftrained}_{brier,log_loss,right}``
    -> (R,) arrays (Brier: sum over classes of (p_c - y_c)^2; log-loss: -log p_true; right: 0/1) and
    ``folds``; None when some class has fewer than 2 gold rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(gold_y, minlength=n_classes)[np.unique(gold_y)]
    if counts.min() < 2:
        return None
    if counts.min() >= cfg.guard_folds:  # every class can give a row to every fold
        splits = list(StratifiedKFold(cfg.guard_folds, shuffle=True, random_state=seed).split(gold_x, gold_y))
    elif counts.min() <= BALANCED_FOLDS_UP_TO:  # plain k-fold would tip the training mix against the held-out class
        splits = balanced_folds(gold_y, cfg.guard_folds, seed)
    else:  # plain k-fold (more folds = training folds closer to the real gold set)
        folds = min(cfg.guard_folds, len(gold_y))
        splits = list(KFold(folds, shuffle=True, random_state=seed).split(gold_x, gold_y))
    out: dict = {f"{m}_{s}": np.zeros(len(gold_y)) for m in ("supervised", "selftrained") for s in ("brier", "log_loss", "right")}
    for tr, te in splits:
        oh = one_hot(gold_y[te], n_classes)  # (F, C)
        probs = {"supervised": _lr(gold_x[tr], gold_y[tr], None, n_classes, cfg.C)(gold_x[te]),  # (F, C)
                 "selftrained": simulate(gold_x[tr], gold_y[tr], pool_x, rounds, cfg, n_classes)(gold_x[te])}
        for m, p in probs.items():
            out[f"{m}_right"][te] = p.argmax(1) == gold_y[te]
            out[f"{m}_brier"][te] = ((p - oh) ** 2).sum(1)
            # clipped: the one-class fallback of _lr gives exact zeros (a row it gets wrong then costs ~20.7)
            out[f"{m}_log_loss"][te] = -np.log(np.clip((p * oh).sum(1), 1e-9, 1.0))
    out["folds"] = len(splits)
    return out


def cv_guard(gold_x, gold_y, pool_x, rounds: int, cfg: AgreeConfig, n_classes: int, seed: int = 0) -> dict:
    """Held-out gold rows (``guard_rows``), supervised vs self-trained over the same folds: rows right,
    the mean log-loss and the mean Brier score; use the pool when the self-trained ``guard_metric`` is
    at most the supervised one + ``guard_margin`` (default: log-loss, margin 0)."""
    rows = guard_rows(gold_x, gold_y, pool_x, rounds, cfg, n_classes, seed)
    if rows is None:
        return {"folds": 0, "skipped": "fewer than 2 gold rows in some class"}
    out = {"folds": rows["folds"], "rows": len(gold_y), "metric": cfg.guard_metric, "margin": cfg.guard_margin,
           **{f"{m}_right": int(rows[f"{m}_right"].sum()) for m in ("supervised", "selftrained")},
           **{f"{m}_{s}": float(rows[f"{m}_{s}"].mean()) for m in ("supervised", "selftrained") for s in ("brier", "log_loss")}}
    out["use_pool"] = out[f"selftrained_{cfg.guard_metric}"] <= out[f"supervised_{cfg.guard_metric}"] + cfg.guard_margin
    return out


class AgreementLabeler(Labeler):
    summary = "embedding-space self-training: classifier and k-NN agree, class-balanced growth over rounds, drift guards"
    Config = AgreeConfig
    needs_embeddings = True
    guards_pool = True  # round 1's guard may refuse the pool: notes["pool_refused"] (API 1.4)

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
            if c.guard and inputs.embeddings_fit_labels and c.guard_adapted == "refuse":
                # not a measurement, so not pool_refused: classifier.adapt is not trained on it
                notes["guard"] = {"folds": 0, "skipped": "the teacher's body was trained on the gold rows"}
                notes["reason"] = ("guard: the teacher's body was trained on the gold rows, so cross-validating on "
                                   "them would be optimistic (the held-out rows are not held out from the body); "
                                   "keeping no pseudo-label. Fix, to use the pool anyway: set "
                                   "pseudo_label.options.guard_adapted: trust (or guard: false)")
                return Selection(prev.index, prev.targets, prev.weights, notes)
            if c.guard:
                g = cv_guard(gold_x, gold_y, pool_x, inputs.rounds, c, C, inputs.seed)
                notes["guard"] = g
                if not g.get("use_pool", True):
                    notes["reason"] = (f"guard: on {g['folds']}-fold cross-validation over the {g['rows']} gold rows, "
                                       f"self-training scored a held-out {c.guard_metric} of {g['selftrained_' + c.guard_metric]:.3f} "
                                       f"vs {g['supervised_' + c.guard_metric]:.3f} for the supervised classifier "
                                       f"({g['selftrained_right']} vs {g['supervised_right']} rows right; margin "
                                       f"{c.guard_margin}): the pool does not pay here, keeping no pseudo-label")
                    return Selection(prev.index, prev.targets, prev.weights,
                                     {**notes, "prior": prior1.tolist(), "mix1": mix1.tolist(), "pool_refused": True})
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

"""Dev-eval of co-training: does a second, lexical view let the pool pay where the frozen space is stuck?

    python -m benchmarks.dev_eval_cotrain [--datasets tweets] [--k 16] [--seeds 0 1 2 3 4] [--out FILE]

Why: on the tweets the frozen MiniLM space does not separate the classes, and self-training inside
it (the agree labeler) cannot pay: its guard refuses the pool on every draw (docs/experiments.md
sessions 5-7). Co-training (Blum & Mitchell 1998) lets two views with different errors label the
pool for each other; here view A is the probe's own features (embedding + middle layer + label-name
rows, logistic regression C = 1) and view B is TF-IDF of word 1-2-grams (fit on gold + pool texts)
with logistic regression C = 10. Methods, per draw of ``benchmarks.dev_eval.eval_draw`` (k gold rows
per class, the pool's labels hidden, 2,000 dev-eval rows; the product's test split plays no part):

- ``probe``: view A on the gold rows; ``tfidf``: view B on the gold rows; ``probe+tfidf``: their
  averaged probabilities;
- ``distil<f>``: B trained on gold + A's most confident pool rows (a fraction f of the pool,
  class-balanced), and ``A+distil<f>`` the average of A and that B;
- ``cotrain<m>``: 10 rounds; each round both views are refit on gold + the rows added so far and
  each adds its ``m / 2`` most confident new pool rows per class with its own label; the final A
  (``cotrain<m>``) and the average of the final A and B (``cotrainAB<m>``); ``pl_acc`` records how
  many of the added rows' labels were right (the pool's hidden labels; diagnostics only).

Prints macro-F1 mean ± sd and the paired gain over ``probe`` (wins / seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log
from benchmarks.dev_eval import MAX_LENGTH, embed, eval_draw, load, summary

bench_env()

ROUNDS = 10


def _lr(C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000)


def view_a(X: np.ndarray, names_x: np.ndarray, y: np.ndarray):
    """The probe's head: (N, F) features + one label-name row per class -> fitted LR."""
    C = len(names_x)
    return _lr(1.0).fit(np.vstack([X, names_x]), np.concatenate([y, np.arange(C)]))


def balanced_top(P: np.ndarray, per_class: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, C) probabilities -> indices and labels of the ``per_class`` most confident rows predicted
    as each class (rows in ``exclude`` skipped)."""
    pred = P.argmax(1)
    idx, lab = [], []
    for c in range(P.shape[1]):
        cand = np.flatnonzero((pred == c) & (True if exclude is None else ~exclude))
        top = cand[np.argsort(-P[cand, c], kind="stable")][:per_class]
        idx.extend(top.tolist())
        lab.extend([c] * len(top))
    return np.array(idx, dtype=np.int64), np.array(lab, dtype=np.int64)


def run_draw(V: np.ndarray, names_x: np.ndarray, texts: list[str], y: np.ndarray, gold, pool, ev) -> dict:
    """Every method on one draw -> {method: macro-F1, ``cotrain<m>_pl_acc``: pseudo-label accuracy}."""
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import f1_score

    C = len(names_x)

    def f1(P):
        return float(f1_score(y[ev], P.argmax(1), average="macro", labels=list(range(C))))

    tf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
    tf.fit([texts[i] for i in np.concatenate([gold, pool])])
    Tg, Tp, Te = (tf.transform([texts[i] for i in idx]) for idx in (gold, pool, ev))
    A0 = view_a(V[gold], names_x, y[gold])
    B0 = _lr(10.0).fit(Tg, y[gold])
    pa, pb = A0.predict_proba(V[ev]), B0.predict_proba(Te)
    out = {"probe": f1(pa), "tfidf": f1(pb), "probe+tfidf": f1(pa + pb)}
    pp = A0.predict_proba(V[pool])  # (P, C)
    for frac in (0.3, 1.0):
        keep, lab = balanced_top(pp, int(frac * len(pool) / C))
        B = _lr(10.0).fit(vstack([Tg, Tp[keep]]), np.concatenate([y[gold], lab]))
        pbd = B.predict_proba(Te)
        out[f"distil{frac:g}"], out[f"A+distil{frac:g}"] = f1(pbd), f1(pa + pbd)
    for step in (50, 150):
        used = np.zeros(len(pool), bool)
        added, labels = np.zeros(0, np.int64), np.zeros(0, np.int64)
        for _ in range(ROUNDS):
            ya = np.concatenate([y[gold], labels])
            A = view_a(np.vstack([V[gold], V[pool[added]]]), names_x, ya)
            B = _lr(10.0).fit(vstack([Tg, Tp[added]]), ya)
            for P in (A.predict_proba(V[pool]), B.predict_proba(Tp)):  # each view labels for both
                idx, lab = balanced_top(P, step // 2, exclude=used)
                used[idx] = True
                added, labels = np.concatenate([added, idx]), np.concatenate([labels, lab])
        ya = np.concatenate([y[gold], labels])
        A = view_a(np.vstack([V[gold], V[pool[added]]]), names_x, ya)
        B = _lr(10.0).fit(vstack([Tg, Tp[added]]), ya)
        pa2, pb2 = A.predict_proba(V[ev]), B.predict_proba(Te)
        out[f"cotrain{step}"], out[f"cotrainAB{step}"] = f1(pa2), f1(pa2 + pb2)
        out[f"cotrain{step}_pl_acc"] = float(np.mean(labels == y[pool[added]]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    records = []
    for ds in a.datasets:
        texts, y, labels = load(ds)
        label_texts = [" ".join(n.replace("_", " ").replace("-", " ").split()) for n in labels]
        V, names_x = embed(texts, MAX_LENGTH[ds], 3), embed(label_texts, MAX_LENGTH[ds], 3)  # the probe's features
        for k in a.k:
            for seed in a.seeds:
                t0 = time.perf_counter()
                gold, pool, ev = eval_draw(y, ds, k, seed, a.eval_rows)
                res = run_draw(V, names_x, texts, y, gold, pool, ev)
                for m, v in res.items():
                    if not m.endswith("_pl_acc"):
                        records.append({"dataset": ds, "k": k, "seed": seed, "method": m, "macro_f1": v,
                                        **({"pl_acc": res[m + "_pl_acc"]} if m + "_pl_acc" in res else {})})
                log(f"  {ds} k={k} seed={seed} ({time.perf_counter() - t0:.0f} s): "
                    + "  ".join(f"{m} {v:.3f}" for m, v in res.items()))
                if a.out:
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[2], "records": records}, indent=1))
    print(summary(records, list(dict.fromkeys(r["method"] for r in records))))


if __name__ == "__main__":
    main()

"""Speed section i (``agree``) of ``python -m benchmarks.speed``: the agreement labeler's loop on
large pools, seconds and peak memory.

What is timed: ``selftrain.plugins.labelers.agree.simulate`` — the whole self-training loop with
the labeler's defaults (5 rounds, 10-NN votes, class-balanced growth to the whole pool), which the
guard runs once per fold of the gold rows (10 folds) and the pseudo-label stage runs over its
rounds. Inputs: the probe's features of real tweets (frozen MiniLM at 64 tokens, the checkpoint's
embedding + the middle layer, as ``benchmarks.dev_eval`` embeds them), 16 gold rows per class,
pools of growing size drawn from the other distinct tweets.

Contenders, alternating in one process (A B A B ...):
- ``unblocked``: the loop as shipped until 2026-12-07 — each round one (N, L) similarity matrix of
  the whole pool (kept rows included) against the L rows labelled so far, and its negated copy for
  the partition (``grow_unblocked`` below, the old code verbatim);
- ``selftrain``: the current loop — only rows not kept yet are voted on, in blocks of
  ``KNN_BLOCK_ENTRIES`` similarities.

Peak memory: tracemalloc's peak over the call (numpy's buffers are traced), the loop's own
allocations above what was live before it. Both contenders must return the same pool predictions
(``argmax_agreement``).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from benchmarks.common import log


def knn_vote_unblocked(query, keys, key_labels, k, n_classes, prior=None):
    """``agree.knn_vote`` before 2026-12-07: one (N, L) similarity matrix."""
    k = min(k, len(keys))
    sim = query @ keys.T  # (N, L)
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (N, k)
    votes = np.zeros((len(query), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(query)), k), key_labels[nn].ravel()), 1.0)
    if prior is not None:
        n_c = np.bincount(key_labels, minlength=n_classes).astype(np.float64)
        votes = votes * (np.asarray(prior, np.float64) / np.clip(n_c, 1.0, None))
    return votes.argmax(1)


def grow_unblocked(probs, pool_x, lab_x, lab_y, taken, quota, knn, prior=None):
    """``agree.grow`` before 2026-12-07: every pool row voted on, kept ones included."""
    C = probs.shape[1]
    pred, conf = probs.argmax(1), probs.max(1)
    ok = ~taken & (knn_vote_unblocked(pool_x, lab_x, lab_y, knn, C, prior) == pred)
    idx = []
    for c in range(C):
        rows = np.flatnonzero(ok & (pred == c))
        idx.append(rows[np.argsort(-conf[rows], kind="stable")][: max(int(quota[c]), 0)])
    new = np.sort(np.concatenate(idx)).astype(np.int64) if idx else np.zeros(0, np.int64)
    return new, pred[new]


def run_loop(gold_x, gold_y, pool_x, n_classes: int, unblocked: bool) -> dict:
    """One ``simulate`` call: seconds, traced peak MiB, and the final model's pool predictions."""
    from selftrain.plugins.labelers import agree as A

    cfg = A.AgreeConfig()
    shipped = A.grow
    if unblocked:
        A.grow = grow_unblocked
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        model = A.simulate(gold_x, gold_y, pool_x, 5, cfg, n_classes)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        A.grow = shipped
    return {"seconds": seconds, "peak_mb": peak / 2**20, "pred": model(pool_x).argmax(1)}


def bench_agree(x: np.ndarray, y: np.ndarray, pools: list[int], repeats: int = 1, k: int = 16, seed: int = 0) -> dict:
    """``x`` (R, F) L2-normalised features, ``y`` (R,) class ids: per pool size, both contenders
    ``repeats`` times, alternating; medians of seconds and peak MiB."""
    rng = np.random.default_rng(seed)
    C = int(y.max()) + 1
    gold = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(C)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), gold))
    runs = []
    for n in pools:
        if n > len(rest):
            raise ValueError(f"pool {n:,} is larger than the {len(rest):,} rows left after the gold rows; pass a smaller one "
                             "(benchmarks.speed: --size agree_pool=N)")
        pool = rest[:n]
        got: dict[str, list] = {"unblocked": [], "selftrain": []}
        for r in range(repeats):
            for name in got:
                res = run_loop(x[gold], y[gold], x[pool], C, unblocked=name == "unblocked")
                got[name].append(res)
                log(f"  [agree] pool {n:,} repeat {r + 1}/{repeats} {name}: {res['seconds']:.1f} s, "
                    f"peak {res['peak_mb']:.0f} MiB")
        med = {name: {"seconds": float(np.median([g["seconds"] for g in v])),
                      "peak_mb": float(np.median([g["peak_mb"] for g in v]))} for name, v in got.items()}
        agree = float((got["unblocked"][0]["pred"] == got["selftrain"][0]["pred"]).mean())
        runs.append({"pool": n, **med, "speedup": med["unblocked"]["seconds"] / med["selftrain"]["seconds"],
                     "memory_ratio": med["unblocked"]["peak_mb"] / max(med["selftrain"]["peak_mb"], 1e-9),
                     "argmax_agreement": agree})
    return {"gold_rows": int(len(gold)), "features": int(x.shape[1]), "repeats": repeats, "runs": runs}


def tweet_features(rows: int = 0, max_length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The probe's features of a seeded sample of ``rows`` distinct tweets (0: all 37,243; the
    product's embedding cache: minutes the first time) and their class ids."""
    from benchmarks.dev_eval import embed, load

    texts, y, _ = load("tweets", rows)
    return embed(texts, max_length, 3), y

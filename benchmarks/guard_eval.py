"""Dev-eval of the agree labeler's guard: does its held-out score on the gold rows predict whether
the pool pays?

    python -m benchmarks.guard_eval [--datasets bbc tweets] [--k 4 8 16 32] [--seeds 10]
                                    [--out benchmarks/results/dev_eval/guard.json]

Same draws as ``benchmarks.dev_eval`` (k gold rows per class, a pool of 1,500 BBC / 3,000 tweets
with hidden labels, dev-eval = every remaining row; the product's test split plays no part), the
probe's default features (the checkpoint's embedding + the middle layer). Per draw:

- the guard's own cross-validation over the gold rows (``agree.guard_rows``: 10 folds, stratified
  while every class can fill every fold), supervised logistic regression vs the whole
  self-training loop (``agree.simulate``) on each training fold, scored per held-out gold row:
  Brier score (sum over classes of (p_c - y_c)^2), log-loss (-log p_true, clipped at 1e-9), right
  or not;
- the gain the guard should predict: dev-eval macro-F1 of the self-trained loop on all gold rows
  minus the supervised probe's.

A guard metric is good when its sign (self-trained - supervised, per row) separates the draws
that gain from those that lose; docs/experiments.md, session 7, has the table this prints.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log
from benchmarks.dev_eval import MAX_LENGTH, draw, embed, load

bench_env()


def table(records: list[dict]) -> str:
    cells = defaultdict(list)
    for r in records:
        cells[(r["dataset"], r["k"])].append(r)
    rows = ["| data | k | draws | Δ Brier range | Δ log-loss range | gain range | log-loss ≤ 0 (gain > 0) |",
            "|---|---:|---:|---|---|---|---|"]
    for (ds, k), rs in sorted(cells.items()):
        b, ll, g = (np.array([r[f] for r in rs]) for f in ("d_brier", "d_log_loss", "gain"))
        rows.append(f"| {ds} | {k} | {len(rs)} | {b.min():+.2f} … {b.max():+.2f} | {ll.min():+.2f} … {ll.max():+.2f} | "
                    f"{g.min():+.3f} … {g.max():+.3f} | {int((ll <= 0).sum())} ({int(((ll <= 0) & (g > 0)).sum())}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import f1_score

    from selftrain.plugins.labelers.agree import AgreeConfig, _lr, guard_rows, simulate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["bbc", "tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[4, 8, 16, 32])
    ap.add_argument("--seeds", type=int, default=10, help="draws per cell (seeds 0..N-1)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg, records = AgreeConfig(), []
    for ds in a.datasets:
        texts, y, labels = load(ds)
        X, C = embed(texts, MAX_LENGTH[ds], 3), len(labels)  # (N, 768): the probe's default view
        for k in a.k:
            for seed in range(a.seeds):
                t0 = time.perf_counter()
                g, p, e = draw(y, k, 1500 if ds == "bbc" else 3000, seed)
                s = guard_rows(X[g], y[g], X[p], 5, cfg, C, seed)  # the product's guard, per gold row
                f_sup = f1_score(y[e], _lr(X[g], y[g], None, C, cfg.C)(X[e]).argmax(1), average="macro")
                f_st = f1_score(y[e], simulate(X[g], y[g], X[p], 5, cfg, C)(X[e]).argmax(1), average="macro")
                r = {"dataset": ds, "k": k, "seed": seed, "gain": float(f_st - f_sup), "supervised_f1": float(f_sup),
                     **{f"d_{m}": float(s[f"selftrained_{m}"].mean() - s[f"supervised_{m}"].mean()) for m in ("brier", "log_loss")},
                     "supervised_right": int(s["supervised_right"].sum()), "selftrained_right": int(s["selftrained_right"].sum())}
                records.append(r)
                log(f"{ds} k={k} seed={seed}: Δ Brier {r['d_brier']:+.3f}, Δ log-loss {r['d_log_loss']:+.3f}, "
                    f"gain {r['gain']:+.3f} ({time.perf_counter() - t0:.0f} s)")
    print(table(records))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[2], "records": records}, indent=1))


if __name__ == "__main__":
    main()

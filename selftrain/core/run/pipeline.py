"""How the stages compose: written once, run either as plain functions or as Prefect tasks.

``run_stages`` receives the stage callables (the pure functions of ``stages`` or their
Prefect task wrappers) and a ``publish`` hook (Prefect artifacts, or nothing), so the
flow and the benchmark's Prefect-free baseline execute the very same composition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from selftrain.config import PipelineConfig
from selftrain.core.label import shards
from selftrain.core.run import core_cv, stages
from selftrain.core.run.evaluate import prob_worse
from selftrain.plugins.registry import get as get_plugin


@dataclass
class Stages:
    ingest: Callable = stages.ingest
    validate: Callable = stages.validate
    pretrain: Callable = stages.pretrain_stage
    finetune: Callable = stages.finetune_stage
    pseudo_label: Callable = stages.pseudo_label_stage
    score_pool: Callable = shards.score_pool  # only with execution.pool_workers >= 1
    evaluate: Callable = stages.evaluate_stage
    adapt_check: Callable = core_cv.adapt_check  # only with classifier.adapt.check: cv


def _no_publish(kind: str, key: str, payload: str) -> None:
    return None


def run_stages(cfg: PipelineConfig, S: Stages | None = None, publish: Callable[[str, str, str], None] = _no_publish) -> dict:
    """ingest -> validate -> pretrain -> baseline -> teacher -> (pseudo-label -> student [-> refit on gold]) x rounds -> evaluate."""
    S = S or Stages()
    ing = S.ingest(cfg)
    val = S.validate(cfg, ing["snapshot"], ing["fingerprint"])
    publish("markdown", "validation", val["markdown"])
    clean = val["clean"]
    pre = S.pretrain(cfg, clean, val["fingerprint"]) if cfg.pretrain.enabled else None
    base = pre["model"] if pre else None

    done: dict[str, dict] = {}  # name -> its finetune result: model URI, validation score and predictions

    def finetune(base_model: str | None, name: str, pseudo_labels: str | None = None, adapt: bool = False) -> dict:
        # adapt= only when set: a stage callable written before classifier.adapt (a test double, a user's
        # Stages) takes (cfg, clean, base, name, pseudo) and still works for every other model
        done[name] = S.finetune(cfg, clean, base_model, name, pseudo_labels, **({"adapt": True} if adapt else {}))
        return done[name]

    notes: list[str] = []
    baseline = None
    if cfg.evaluate.baseline:
        finetune(None, "baseline")
        baseline = "baseline"
    # no pretraining: the teacher would be the baseline trained again -- unless the classifier trains on
    # the pool too (fixmatch): then the teacher is the pool-adapted model and the baseline its yardstick
    if pre is None and baseline and not getattr(get_plugin("selftrain.classifiers", cfg.classifier.name),
                                                "uses_unlabeled", False):
        final, current = "baseline", done["baseline"]
    else:
        final, current = "teacher", finetune(base, "teacher")
    pseudo_reports, previous, first = [], None, None
    if cfg.pseudo_label.enabled:
        for r in range(1, cfg.pseudo_label.rounds + 1):
            # round 1 may average the teacher with the baseline (see pseudo_label.ensemble_baseline)
            also = ([done["baseline"]["model"]] if r == 1 and cfg.pseudo_label.ensemble_baseline and baseline
                    and final != "baseline" else None)
            if cfg.execution.pool_workers:  # the pool scored in shards (on a Dask cluster under Prefect)
                scores = S.score_pool(cfg, clean, [current["model"], *(also or [])], val["labels"])
                pl = S.pseudo_label(cfg, clean, current["model"], r, also, previous, scores)
            else:
                pl = S.pseudo_label(cfg, clean, current["model"], r, also, previous)
            pseudo_reports.append(pl["report"])
            if r == 1:
                first = pl["report"]["notes"]  # the guard's verdict and scores, if the labeler has one
            if pl["report"]["kept"] == 0:
                reason = pl["report"].get("empty_reason", "the labeler kept no row")
                notes.append(f"round {r}: no pseudo-label kept ({reason}); no student trained, {final} stays")
                break
            if pl["report"]["notes"].get("stop"):  # e.g. agree's drift stop: nothing new to learn from
                notes.append(f"round {r}: the labeler added no row ({pl['report']['notes'].get('reason', 'nothing new')}); "
                             f"stopping self-training with {final}")
                break
            previous = pl["pseudo_labels"]
            init = current["model"] if cfg.pseudo_label.student_init == "teacher" else base
            if cfg.pseudo_label.refit_on_gold:  # distil on pool + gold, then the gold labels alone have the last word
                distilled = finetune(init, f"student-{r}-distilled", pl["pseudo_labels"])
                s = finetune(distilled["model"], f"student-{r}")
            else:
                s = finetune(init, f"student-{r}", pl["pseudo_labels"])
            if (s["val_macro_f1"] is not None and current["val_macro_f1"] is not None
                    and s["val_macro_f1"] < current["val_macro_f1"] and cfg.pseudo_label.keep_teacher_if_worse):
                notes.append(f"{s['name']} is worse than {final} on validation macro-F1 "
                             f"({s['val_macro_f1']:.4f} < {current['val_macro_f1']:.4f}): keeping {final} and stopping "
                             "self-training (pseudo-labels hurt here; try more labels, a stricter labeler or pretraining)")
                break
            final, current = s["name"], s
    core = core_choice(cfg, final, first)
    if core["chosen"] == "adapted" and cfg.classifier.adapt.check == "cv":  # ask the gold rows before moving the body
        core = checked_choice(core, S.adapt_check(cfg, clean, base))
        if core["chosen"] != "adapted":
            notes.append(core["why"])
    if core["chosen"] == "adapted":  # the frozen space does not separate the classes: move the body on gold + pool
        notes.append(core["why"])
        final = finetune(base, "adapted", adapt=True)["name"]
    vals = {name: res["val_macro_f1"] for name, res in done.items()}
    for name, res in done.items():
        notes.extend(f"{name}: {n}" for n in res.get("notes", []))
    fallback = None
    if baseline is None:
        baseline = "teacher"
    elif not done[final].get("val_true"):
        notes.append(f"no validation split (data.val_per_class: 0): {final} is the last self-trained model the "
                     "labeler's guards let through; no validation-based fallback")
    else:
        final, fallback = _fallback(cfg, final, baseline, vals, done, len(val["labels"]), notes)
    extra = {"notes": notes, "fallback": fallback, "core": core, "pseudo_labels": pseudo_reports, "validation": val["report"],
             "pretrain": {k: v for k, v in (pre or {}).items() if k != "model"}, "run_dir": cfg.run_dir}
    ev = S.evaluate(cfg, clean, {name: res["model"] for name, res in done.items()}, vals, baseline, final, extra)
    publish("markdown", "metrics", ev["markdown"])
    return {"metrics": ev["metrics"], "report": ev["report"], "final": final, "baseline": baseline,
            "summary": ev["summary"], "table": ev["table"], "run_dir": cfg.run_dir, "notes": notes}


def core_choice(cfg: PipelineConfig, final: str, round1: dict | None) -> dict:
    """Which of {the frozen core, the core + the pool, the adapted body + the pool} the run takes,
    with the guard's scores and why (``metrics.json`` under ``core``). The labeler's guard measures
    on the gold rows' cross-validation whether self-training in the frozen embedding space pays
    (``plugins/labelers/agree.py``); when it refuses, that space does not separate the classes and
    ``classifier.adapt`` (a core that moves the body with the pool: fixmatch) is trained instead.
    ``round1``: the labeler's notes of round 1 (None: no pseudo-labelling ran)."""
    frozen, adapt = cfg.classifier.name, cfg.classifier.adapt.name
    guard = (round1 or {}).get("guard")
    refused = bool((round1 or {}).get("pool_refused"))
    score = _guard_score(guard)
    out = {"candidates": {"supervised": frozen, "pool": f"{frozen} + {cfg.pseudo_label.labeler} pseudo-labels"
                          if cfg.pseudo_label.enabled else None,
                          "adapted": f"{adapt} on gold + pool" if adapt else None},
           "guard": guard, "refused": refused}
    if not refused and final.startswith("student"):
        chosen = "pool"
        why = (f"the guard let the pool through{score} and a student was trained" if guard else
               f"a student was trained on {cfg.pseudo_label.labeler} pseudo-labels (that labeler has no guard)")
    elif not refused:  # no student: the baseline, or a teacher that trained on the pool itself (fixmatch)
        reason = (round1 or {}).get("reason") or "pseudo-labelling off, or no row kept"
        chosen, why = "supervised", f"no student was trained ({reason}); {final} ({frozen}) is final"
    elif adapt is None:
        chosen, why = "supervised", (f"the guard refused the pool{score} and classifier.adapt is null: the supervised core stands "
                                     "(set classifier.adapt.name: fixmatch to move the body with the pool instead)")
    else:
        chosen = "adapted"
        why = (f"the guard refused the pool{score}: self-training in the frozen embedding space does not pay here, "
               f"so {adapt} moves the body on gold + pool and becomes final")
    return {**out, "chosen": chosen, "why": why}


def _guard_score(guard: dict | None) -> str:
    """" (held-out log_loss per gold row: self-trained x vs supervised y)", or "" without a guard."""
    if not guard:
        return ""
    metric = guard.get("metric", "log_loss")
    return (f" (held-out {metric} per gold row: self-trained {guard.get('selftrained_' + metric, float('nan')):.3f} vs "
            f"supervised {guard.get('supervised_' + metric, float('nan')):.3f})")


def checked_choice(core: dict, check: dict) -> dict:
    """``core_choice``'s "adapted" after ``classifier.adapt.check: cv`` (``core_cv.adapt_check``): kept
    when the adapted core's held-out log-loss (raw or temperature-scaled: ``check["metric"]``) leads the
    supervised core's by the margin, else the supervised core stands. The check's scores go into the
    record (``core.check``)."""
    a, s, metric = check["adapted"], check["supervised"], check.get("metric", "log_loss")
    what = {"log_loss": "log-loss", "calibrated_log_loss": "temperature-scaled log-loss"}[metric]
    scores = (f"held-out {what} per gold row over {check['folds']} folds: {a['classifier']} {a[metric]:.4f} vs "
              f"{s['classifier']} {s[metric]:.4f}, margin {check['margin']:g}")
    if check["use_adapted"]:
        return {**core, "check": check, "why": f"{core['why']}; the gold rows' cross-validation agreed ({scores})"}
    return {**core, "check": check, "chosen": "supervised",
            "why": f"the guard refused the pool{_guard_score(core['guard'])}, but the gold rows' cross-validation kept the "
                   f"supervised core ({scores}): moving the body is not shown to pay on this draw"}


def _fallback(cfg: PipelineConfig, final: str, baseline: str, vals: dict, preds: dict, n_classes: int,
              notes: list[str]) -> tuple[str, dict]:
    """Recommend the baseline instead of ``final`` only when validation shows ``final`` is worse
    (paired bootstrap probability >= evaluate.fallback_confidence), not on a noisy small dip."""
    a, b = preds[final], preds[baseline]
    p = prob_worse(a.get("val_true") or [], a.get("val_pred") or [], b.get("val_pred") or [], n_classes,
                   cfg.evaluate.bootstrap_samples, cfg.seed)
    info = {"candidate": final, "p_worse_than_baseline": p, "confidence": cfg.evaluate.fallback_confidence}
    if p >= cfg.evaluate.fallback_confidence:
        notes.append(f"{final} is worse than the supervised-only baseline on validation (macro-F1 {vals[final]:.3f} vs "
                     f"{vals[baseline]:.3f}; paired bootstrap P(worse) = {p:.2f} >= evaluate.fallback_confidence="
                     f"{cfg.evaluate.fallback_confidence}): pretraining and pseudo-labels did not pay on this data; "
                     "recommending the baseline")
        return baseline, {**info, "chosen": baseline}
    if vals[final] < vals[baseline]:
        notes.append(f"{final} validates slightly below the baseline ({vals[final]:.3f} vs {vals[baseline]:.3f}) but "
                     f"the difference is within validation noise (paired bootstrap P(worse) = {p:.2f} < "
                     f"{cfg.evaluate.fallback_confidence}); keeping {final}")
    return final, {**info, "chosen": final}

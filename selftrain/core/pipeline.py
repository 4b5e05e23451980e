"""How the stages compose: written once, run either as plain functions or as Prefect tasks.

``run_stages`` receives the stage callables (the pure functions of ``stages`` or their
Prefect task wrappers) and a ``publish`` hook (Prefect artifacts, or nothing), so the
flow and the benchmark's Prefect-free baseline execute the very same composition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from selftrain.config import PipelineConfig
from selftrain.core import stages


@dataclass
class Stages:
    ingest: Callable = stages.ingest
    validate: Callable = stages.validate
    pretrain: Callable = stages.pretrain_stage
    finetune: Callable = stages.finetune_stage
    pseudo_label: Callable = stages.pseudo_label_stage
    evaluate: Callable = stages.evaluate_stage


def _no_publish(kind: str, key: str, payload: str) -> None:
    return None


def run_stages(cfg: PipelineConfig, S: Stages | None = None, publish: Callable[[str, str, str], None] = _no_publish) -> dict:
    """ingest -> validate -> pretrain -> baseline -> teacher -> (pseudo-label -> student) x rounds -> evaluate."""
    S = S or Stages()
    ing = S.ingest(cfg)
    val = S.validate(cfg, ing["snapshot"], ing["fingerprint"])
    publish("markdown", "validation", val["markdown"])
    clean = val["clean"]
    pre = S.pretrain(cfg, clean, val["fingerprint"]) if cfg.pretrain.enabled else None
    base = pre["model"] if pre else None

    models: dict[str, str] = {}
    vals: dict[str, float] = {}
    notes: list[str] = []
    baseline = None
    if cfg.evaluate.baseline:
        b = S.finetune(cfg, clean, None, "baseline")
        models["baseline"], vals["baseline"], baseline = b["model"], b["val_macro_f1"], "baseline"
    t = S.finetune(cfg, clean, base, "teacher")
    models["teacher"], vals["teacher"] = t["model"], t["val_macro_f1"]
    final, current = "teacher", t
    pseudo_reports = []
    if cfg.pseudo_label.enabled:
        for r in range(1, cfg.pseudo_label.rounds + 1):
            pl = S.pseudo_label(cfg, clean, current["model"], r)
            pseudo_reports.append(pl["report"])
            init = current["model"] if cfg.pseudo_label.student_init == "teacher" else base
            s = S.finetune(cfg, clean, init, f"student-{r}", pl["pseudo_labels"])
            models[s["name"]], vals[s["name"]] = s["model"], s["val_macro_f1"]
            if s["val_macro_f1"] < current["val_macro_f1"] and cfg.pseudo_label.keep_teacher_if_worse:
                notes.append(f"{s['name']} is worse than {final} on validation macro-F1 "
                             f"({s['val_macro_f1']:.3f} < {current['val_macro_f1']:.3f}): keeping {final} and stopping "
                             "self-training (pseudo-labels hurt here; try more labels, a stricter labeler or pretraining)")
                break
            final, current = s["name"], s
    if baseline is None:
        baseline = "teacher"
    elif vals[final] < vals[baseline] + cfg.evaluate.min_val_gain:
        # never recommend a model that does not clearly validate better than the labels alone
        notes.append(f"{final} does not beat the supervised-only baseline on validation by evaluate.min_val_gain="
                     f"{cfg.evaluate.min_val_gain} ({vals[final]:.3f} vs {vals[baseline]:.3f}): pretraining and "
                     "pseudo-labels did not clearly pay on this data; recommending the baseline")
        final = baseline
    extra = {"notes": notes, "pseudo_labels": pseudo_reports, "validation": val["report"],
             "pretrain": {k: v for k, v in (pre or {}).items() if k != "model"}, "run_dir": cfg.run_dir}
    ev = S.evaluate(cfg, clean, models, vals, baseline, final, extra)
    publish("markdown", "metrics", ev["markdown"])
    return {"metrics": ev["metrics"], "report": ev["report"], "final": final, "baseline": baseline,
            "summary": ev["summary"], "table": ev["table"], "run_dir": cfg.run_dir, "notes": notes}

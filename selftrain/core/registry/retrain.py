"""Scheduled retraining with a champion model, as Prefect-free steps (tasks wrap them in
``selftrain.tasks.retrain``; the ``retrain`` flow injects them into :func:`run_retrain`).

1. ``plan``: read the source, fingerprint it; nothing new since the last run (same data
   fingerprints, same training config) means nothing to do. On the first run the registry is
   created with its frozen evaluation set. Otherwise the challenger's source is written: the
   current source minus every row of the frozen evaluation set (matched by id when the source has
   an id column, and by normalised text, which also catches near-duplicates).
2. the pipeline runs on it (the challenger);
3. ``evaluate_frozen``: challenger and champion on the same frozen evaluation set;
4. ``decide``: promote only if the challenger beats the champion by ``retrain.min_gain``;
5. ``register_challenger``: every challenger becomes a version (model, config, metrics, data
   fingerprints, plugin and code versions, model card); ``promote_if_better`` moves the pointer;
6. ``record_run``: what this run saw, so the next one knows what is new.

Pseudo-labels stay in the challenger's run directory: nothing is ever written back into the
source, and the registry's only label data is the frozen evaluation set, copied from the source.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from selftrain import __version__
from selftrain.config import PipelineConfig, used_versions, validate_config
from selftrain.core.common import io
from selftrain.core.train.classifiers import load_trained, saved_info
from selftrain.core.data.ingest import normalize_columns, read_source
from selftrain.core.run.evaluate import classification_metrics
from selftrain.core.registry.model_card import model_card, registry_rows, retrain_markdown
from selftrain.core.registry.store import Registry, RegistryError, now
from selftrain.core.data.text import normalize_text

log = logging.getLogger("selftrain")

# config sections that change what a challenger would learn; the others say where, how fast or
# under what name it runs, and changing only those does not trigger a retrain (every top-level
# field is in exactly one of the two: tests/test_model_registry.py keeps it so)
TRAINING_SECTIONS = ("data", "validate", "model", "classifier", "pretrain", "finetune", "pseudo_label", "evaluate",
                     "seed")
RUN_SECTIONS = ("run_name", "output_dir", "device", "cpu_bf16", "inference_compile", "execution", "retrain")


class RetrainError(ValueError):
    """The data or config cannot be retrained as asked; the message says what and how to fix it."""


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """selftrain's version plus the git commit of the checkout it runs from, when there is one."""
    out = {"selftrain": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=False)
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def training_digest(cfg: PipelineConfig) -> str:
    d = cfg.dump()
    return io.digest({k: d[k] for k in TRAINING_SECTIONS})


def read_rows(cfg: PipelineConfig) -> tuple[pd.DataFrame, bool]:
    """The source as ``id, text, label, split`` rows (before any split), and whether ids are the
    source's own (stable) rather than generated row numbers."""
    raw, mapping = read_source(cfg.data)
    return normalize_columns(raw, mapping, cfg.data.source), mapping["id"] is not None


def _labels(cfg: PipelineConfig, df: pd.DataFrame) -> list[str]:
    return list(cfg.data.labels) if cfg.data.labels else sorted(df.loc[df["label"].notna(), "label"].astype(str).unique())


def build_frozen_eval(cfg: PipelineConfig, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Draw the frozen evaluation set: up to ``retrain.eval_per_class`` rows per class (at most half
    of the class's labeled rows), one per normalised text, from the source's test split when it
    has one, else from every labeled row; seeded by ``data.seed``."""
    labels = _labels(cfg, df)
    labeled = df[df["label"].notna() & df["label"].astype(str).isin(labels) & df["text"].notna()]
    has_test = df["split"].notna().all() and (labeled["split"] == "test").any()
    cand = labeled[labeled["split"] == "test"] if has_test else labeled
    cand = cand.assign(_key=normalize_text(cand["text"])).drop_duplicates("_key")
    rng = np.random.default_rng(cfg.data.seed)
    parts, short = [], []
    for label in labels:
        rows = cand[cand["label"] == label]
        take = min(cfg.retrain.eval_per_class, len(rows), int((labeled["label"] == label).sum()) // 2)
        if take < 1:
            short.append(f"{label!r} ({int((labeled['label'] == label).sum())} labeled)")
            continue
        parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=take, replace=False))])
    if short:
        raise RetrainError(f"cannot draw the frozen evaluation set from {cfg.data.source}: class(es) {', '.join(short)} "
                           "need at least 2 labeled rows (one to evaluate on, one to train on). Fix: label more rows, "
                           "or drop the class from data.labels.")
    ev = pd.concat(parts)[["id", "text", "label"]].reset_index(drop=True)
    return ev, "test split" if has_test else "labeled rows"


def exclude_frozen(df: pd.DataFrame, frozen: pd.DataFrame, by_id: bool) -> pd.DataFrame:
    """``df`` without the frozen evaluation rows: same normalised text (near-duplicates included)
    or, when the source has its own ids, the same id."""
    keys = set(normalize_text(frozen["text"]).dropna())
    drop = normalize_text(df["text"]).isin(keys).fillna(False).to_numpy(bool, copy=True)
    if by_id:
        drop = drop | df["id"].isin(set(frozen["id"].dropna())).fillna(False).to_numpy(bool)
    return df[~drop].reset_index(drop=True)


def _ensure_registry(cfg: PipelineConfig, reg: Registry, df: pd.DataFrame) -> dict:
    if reg.exists():
        return reg.info()
    ev, origin = build_frozen_eval(cfg, df)
    info = reg.create({"labels": _labels(cfg, df), "eval": {
        "uri": "eval/frozen.parquet", "rows": len(ev), "fingerprint": io.frame_fingerprint(ev), "drawn_from": origin,
        "source": cfg.data.source, "per_class": {k: int(v) for k, v in ev["label"].value_counts().sort_index().items()},
    }, "selftrain_version": __version__}, ev)
    log.info("created the model registry at %s with a frozen evaluation set of %d rows (%s)", reg.root, len(ev), origin)
    return info


def plan(cfg: PipelineConfig, force: bool = False) -> dict:
    """What is new since the last run; when something is, the challenger's config (its source is
    the current source minus the frozen evaluation rows, written into its run directory)."""
    t0 = time.perf_counter()
    reg = Registry.for_config(cfg)
    df, by_id = read_rows(cfg)
    fingerprints = {cfg.data.source: io.frame_fingerprint(df)}
    digest = training_digest(cfg)
    info = _ensure_registry(cfg, reg, df)
    reg.check()  # a damaged registry file fails here, before a challenger is trained
    labels, registered = _labels(cfg, df), list(info["labels"])
    if sorted(labels) != sorted(registered):  # here, not after the challenger has trained for nothing
        new, gone = sorted(set(labels) - set(registered)), sorted(set(registered) - set(labels))
        raise RetrainError(f"the challenger would learn the labels {labels}, but the registry at {reg.root} holds "
                           f"models of {registered} ({'new: ' + ', '.join(new) if new else ''}"
                           f"{'; ' if new and gone else ''}{'missing: ' + ', '.join(gone) if gone else ''}): models with "
                           "another label set cannot be compared on its frozen evaluation set. Fix: keep data.labels "
                           "(or the source's labels) as they were, or start a new registry (another retrain.model_name)")
    last = reg.last_run()
    champion = reg.champion()
    base = {"registry": reg.root, "fingerprints": fingerprints, "config_digest": digest, "rows": len(df),
            "champion": champion, "name": reg.name}
    if last and last.get("fingerprints") == fingerprints and last.get("config_digest") == digest and not force:
        reason = (f"Nothing new since the last retrain ({last.get('finished')}): the data ({len(df)} rows, fingerprint "
                  f"{fingerprints[cfg.data.source]}) and the training config are unchanged. Champion: {champion}.")
        return {**base, "changed": False, "reason": reason, "seconds": round(time.perf_counter() - t0, 3)}
    if force:
        reason = "forced (force=True)"
    elif not last:
        reason = "first retrain of this registry"
    else:
        what = []
        if last.get("fingerprints") != fingerprints:
            what.append(f"data changed ({last.get('rows')} -> {len(df)} rows in {cfg.data.source})")
        if last.get("config_digest") != digest:
            what.append("training config changed")
        reason = "; ".join(what)
    frozen = io.read_parquet(reg.uri("eval", "frozen.parquet"))
    train = exclude_frozen(df, frozen, by_id)
    # the same data + config + eval set -> the same run dir (a re-run after a crash reuses its cached
    # stages, and registration finds the version it already made); a forced retrain is a new challenger
    # by definition: its own run dir, trained afresh, registered as the next version
    key = io.digest(fingerprints, digest, info["eval"]["fingerprint"], *(["forced", now()] if force else []))
    run_dir = reg.uri("runs", key)
    source = io.write_parquet(train, io.join(run_dir, "data", "source.parquet"))
    d = cfg.dump()
    d["output_dir"] = run_dir
    d["data"] = {**d["data"], "source": source, "format": "parquet", "max_rows": None, "columns": {
        "id": "id", "text": "text", "label": "label", "split": "split" if train["split"].notna().any() else None}}
    challenger = validate_config(d, "retrain challenger").dump()
    log.info("retrain: %s; challenger trains on %d of %d rows (%d frozen-eval rows excluded) in %s",
             reason, len(train), len(df), len(df) - len(train), run_dir)
    return {**base, "changed": True, "reason": reason, "run_key": key, "run_dir": run_dir,
            "excluded": len(df) - len(train), "challenger_config": challenger,
            "seconds": round(time.perf_counter() - t0, 3)}


def frozen_metrics(cfg: PipelineConfig, model_uri: str, frozen: pd.DataFrame, labels: list[str]) -> dict:
    """Metrics of the model at ``model_uri`` on the frozen evaluation set (classes matched by name)."""
    local = io.local_dir(model_uri)
    _, names = saved_info(local)
    if sorted(names) != sorted(labels):
        raise RetrainError(f"the model at {model_uri} predicts {names}, but the registry's frozen evaluation set has "
                           f"labels {labels}: models with another label set cannot be compared. Fix: keep data.labels "
                           "as they were, or start a new registry (another retrain.model_name).")
    probs = load_trained(cfg, local, names).predict_proba(frozen["text"].astype(str).tolist(), cfg.pseudo_label.batch_size)
    probs = probs[:, [names.index(n) for n in labels]]  # columns in the registry's label order
    y = frozen["label"].astype(str).map({n: i for i, n in enumerate(labels)}).to_numpy(np.int64)
    return classification_metrics(y, probs, labels, cfg.evaluate.ece_bins)


def evaluate_frozen(cfg: PipelineConfig, run_dir: str, final: str) -> dict:
    """The challenger (the run's final model) and the champion on the frozen evaluation set."""
    reg = Registry.for_config(cfg)
    frozen = io.read_parquet(reg.uri("eval", "frozen.parquet"))
    labels = reg.info()["labels"]
    chall = io.join(run_dir, "models", final)
    out = {"rows": len(frozen), "metric": cfg.retrain.metric,
           "challenger": {"model_uri": chall, "stage": final, "metrics": frozen_metrics(cfg, chall, frozen, labels)},
           "champion": None}
    champ = reg.champion()
    if champ is not None:
        out["champion"] = {"version": champ, "model_uri": reg.model_uri(champ),
                           "metrics": frozen_metrics(cfg, reg.model_uri(champ), frozen, labels)}
    return out


def decide(cfg: PipelineConfig, evals: dict) -> dict:
    """Promote iff there is no champion, or the challenger beats it by at least ``min_gain`` (strictly)."""
    m, min_gain = cfg.retrain.metric, cfg.retrain.min_gain
    c = evals["challenger"]["metrics"][m]
    if evals["champion"] is None:
        return {"promote": True, "metric": m, "challenger": c, "champion": None, "gain": None, "min_gain": min_gain,
                "reason": f"first version: the registry had no champion (challenger {m} {c:.4f} on the frozen "
                          f"evaluation set, {evals['rows']} rows)"}
    k = evals["champion"]["metrics"][m]
    gain = c - k
    promote = gain > 0 and gain >= min_gain - 1e-12
    verdict = "promoted" if promote else "not promoted"
    return {"promote": promote, "metric": m, "challenger": c, "champion": k, "gain": gain, "min_gain": min_gain,
            "reason": f"{verdict}: challenger {m} {c:.4f} vs champion {evals['champion']['version']} {k:.4f} on the "
                      f"frozen evaluation set ({evals['rows']} rows): gain {gain:+.4f} "
                      f"{'>=' if promote else '<'} retrain.min_gain {min_gain}" + ("" if promote or gain > 0 else
                                                                                   " (no improvement)")}


def _summary(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "macro_f1", "ece", "n")}


def register_challenger(cfg: PipelineConfig, plan_: dict, run_dir: str, final: str, evals: dict, decision: dict) -> dict:
    """The challenger as the next version: model, config, metrics, fingerprints, versions, model card."""
    reg = Registry.for_config(cfg)
    existing = reg.find("run_key", plan_["run_key"])  # a retried or re-run registration
    if existing is not None:
        return {"version": existing, "version_uri": reg.version_uri(existing), "new": False}
    run_metrics = io.read_json(io.join(run_dir, "metrics.json"))
    clean = io.read_parquet(io.join(run_dir, "data", "clean.parquet"), columns=["label", "split"])
    counts = clean[clean["label"].notna()].groupby(["split", "label"]).size()
    labels = reg.info()["labels"]
    gold = {s: {lab: int(counts.get((s, lab), 0)) for lab in labels} for s in ("train", "val", "test")}
    pseudo = [{"round": r["round"], "pool": r["pool"], "kept": r["kept"], "per_class": r["per_class"]}
              for r in run_metrics.get("pseudo_labels", [])]
    meta = {
        "created": now(), "run_key": plan_["run_key"], "run_dir": run_dir, "stage": final, "labels": labels,
        "classifier": saved_info(io.local_dir(io.join(run_dir, "models", final)))[0],
        "data": {"sources": plan_["fingerprints"], "rows": plan_["rows"], "frozen_eval_rows_excluded": plan_["excluded"],
                 "gold_per_class": gold, "pseudo_labels": pseudo, "retrain_reason": plan_["reason"]},
        "frozen_eval": {"rows": evals["rows"], "fingerprint": reg.info()["eval"]["fingerprint"],
                        "metrics": _summary(evals["challenger"]["metrics"]),
                        "champion_at_registration": evals["champion"] and {
                            "version": evals["champion"]["version"], "metrics": _summary(evals["champion"]["metrics"])}},
        "decision": decision, "config_digest": plan_["config_digest"], "plugins": used_versions(cfg),
        "code": code_version(),
    }
    metrics = {"metric": cfg.retrain.metric, "frozen_eval": evals["challenger"]["metrics"],
               "run_test": run_metrics["models"][final], "run": run_metrics}
    def files(version: str) -> dict[str, str]:
        return {"config.yaml": yaml.safe_dump(cfg.dump(), sort_keys=False),
                "metrics.json": json.dumps(metrics, indent=2, default=str) + "\n",
                "README.md": model_card(reg, {**meta, "version": version}, metrics, cfg)}

    version = reg.register(io.join(run_dir, "models", final), meta, files)
    log.info("registered %s at %s (%s)", version, reg.uri("versions", version), decision["reason"])
    return {"version": version, "version_uri": reg.version_uri(version), "new": True}


def promote_if_better(cfg: PipelineConfig, version: str, decision: dict, evals: dict) -> dict:
    """Move the champion pointer to ``version`` when the decision says so; report what happened."""
    reg = Registry.for_config(cfg)
    if not decision["promote"]:
        return {"promoted": False, "version": version, "champion": reg.champion(), "reason": decision["reason"]}
    change = reg.promote(version, reason=decision["reason"], by="retrain")
    return {"promoted": True, "version": version, "champion": version, "previous": change["previous"],
            "changed": change["changed"], "reason": decision["reason"], "registry": reg.root, "name": reg.name,
            "model_uri": reg.model_uri(version), "metrics": _summary(evals["challenger"]["metrics"]), "action": "retrain"}


def record_run(cfg: PipelineConfig, plan_: dict, outcome: dict) -> dict:
    """Remember what this run saw and did: the next run compares its data and config with this."""
    rec = {"finished": now(), "fingerprints": plan_["fingerprints"], "config_digest": plan_["config_digest"],
           "rows": plan_["rows"], "run_key": plan_.get("run_key"), "version": outcome.get("version"),
           "promoted": outcome.get("promoted"), "champion": outcome.get("champion"), "reason": outcome.get("reason")}
    Registry.for_config(cfg).write_last_run(rec)
    return rec


# ---------------------------------------------------------------- composition
@dataclass
class RetrainSteps:
    plan: Callable = plan
    evaluate: Callable = evaluate_frozen
    register: Callable = register_challenger
    promote: Callable = promote_if_better
    record: Callable = record_run


def _run_pipeline_plain(cfg: PipelineConfig) -> dict:
    from selftrain.core.run.pipeline import run_stages

    return run_stages(cfg)


def _no_publish(kind: str, key: str, payload) -> None:
    return None


def run_retrain(cfg: PipelineConfig, S: RetrainSteps | None = None, run_pipeline: Callable[[PipelineConfig], dict] | None = None,
                publish: Callable = _no_publish, notify: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """plan -> (nothing new: done) | pipeline -> evaluate on the frozen set -> decide -> register -> promote -> record.

    ``run_pipeline`` runs the challenger (the pipeline flow, or ``run_stages``); ``publish(kind,
    key, payload)`` shows reports (Prefect artifacts); ``notify(change)`` is told of a promotion."""
    S = S or RetrainSteps()
    t0 = time.perf_counter()
    p = S.plan(cfg, force)
    reg = Registry(p["registry"], p["name"])
    if not p["changed"]:
        out = {"status": "unchanged", "promoted": False, "version": None, "champion": p["champion"],
               "reason": p["reason"], "registry": p["registry"]}
        log.info("retrain: %s", p["reason"])
    else:
        run = (run_pipeline or _run_pipeline_plain)(validate_config(p["challenger_config"], "retrain challenger"))
        evals = S.evaluate(cfg, run["run_dir"], run["final"])
        decision = decide(cfg, evals)
        registered = S.register(cfg, p, run["run_dir"], run["final"], evals, decision)
        prom = S.promote(cfg, registered["version"], decision, evals)
        if prom["promoted"] and prom.get("changed") and notify is not None:
            notify(prom)
        out = {"status": "promoted" if prom["promoted"] else "rejected", "promoted": prom["promoted"],
               "version": registered["version"], "champion": prom["champion"], "previous": prom.get("previous"),
               "reason": decision["reason"], "decision": decision, "registry": p["registry"], "run_dir": run["run_dir"],
               "champion_before": evals["champion"] and evals["champion"]["version"],
               "frozen_eval": {k: v and _summary(v["metrics"]) for k, v in
                               (("challenger", evals["challenger"]), ("champion", evals["champion"]))}}
        S.record(cfg, p, out)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    publish("markdown", "retrain", retrain_markdown(reg, out))
    if reg.exists():
        publish("table", "registry", registry_rows(reg))
    return out


__all__ = ["RegistryError", "RetrainError", "RetrainSteps", "code_version", "decide", "evaluate_frozen", "plan",
           "promote_if_better", "record_run", "register_challenger", "run_retrain"]

"""The pipeline's stages as pure, Prefect-free functions.

Each takes the run config and URIs and returns a small JSON-able dict of URIs and
numbers; tensors and models never travel between stages, only their locations. The
Prefect tasks in ``selftrain.tasks`` are one-line wrappers over these.

Run directory layout (``cfg.run_dir``, local or s3://)::

    config.yaml  data/snapshot.parquet  data/clean.parquet  quarantine.parquet
    validation.md  checkpoints/pretrain/step-N/  models/<stage>/  pseudo_labels.parquet
    metrics.json  report.md  confusion_<model>.png
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from selftrain import __version__
from selftrain.config import PipelineConfig, plugin_options, used_versions
from selftrain.core.common import io
from selftrain.core.train.classifiers import classifier, load_trained, trained_by, write_meta
from selftrain.core.train.classify import fit_temperature, softmax
from selftrain.core.data.clean import BATCH_ROWS, scan_clean
from selftrain.core.data.ingest import ingest_frame
from selftrain.core.train.ddp import pretrain_ddp
from selftrain.core.run.evaluate import classification_metrics, confusion_png, markdown_table
from selftrain.core.train.pretrain import pretrain
from selftrain.core.train.runtime import runtime
from selftrain.core.data.validate import check_thresholds, validate_frame
from selftrain.core.data.validate_report import DataValidationError
from selftrain.plugins import LabeledRows, LabelerInputs, Selection, one_hot
from selftrain.plugins.registry import versions_of

log = logging.getLogger("selftrain")


def _uri(cfg: PipelineConfig, *parts: str) -> str:
    return io.join(cfg.run_dir, *parts)


def label_names(cfg: PipelineConfig, df: pd.DataFrame) -> list[str]:
    if cfg.data.labels:
        return list(cfg.data.labels)
    return sorted(df.loc[df["label"].notna(), "label"].astype(str).unique())


# ---------------------------------------------------------------- ingest / validate
def ingest(cfg: PipelineConfig) -> dict:
    """Source -> ``data/snapshot.parquet`` + content fingerprint; the resolved config, unless the run
    directory holds a finished run (``metrics.json``): that one's ``config.yaml`` is what ``selftrain
    predict --run`` reads with its models, so a re-run that fails must not replace it (``evaluate_stage``
    writes the new one beside the new ``metrics.json``)."""
    if not io.exists(_uri(cfg, "metrics.json")):
        io.write_text(_uri(cfg, "config.yaml"), yaml.safe_dump(cfg.dump(), sort_keys=False))
    df = ingest_frame(cfg.data)
    uri = io.write_parquet(df, _uri(cfg, "data", "snapshot.parquet"))
    counts = {k: int(v) for k, v in df["split"].value_counts().items()}
    log.info("ingested %d rows from %s: %s", len(df), cfg.data.source, counts)
    return {"snapshot": uri, "fingerprint": io.frame_fingerprint(df), "rows": len(df), "splits": counts}


def validate(cfg: PipelineConfig, snapshot: str, fingerprint: str = "") -> dict:
    """Snapshot -> ``data/clean.parquet``; rejected rows -> ``quarantine.parquet`` with reasons."""
    df = io.read_parquet(snapshot)
    labels = label_names(cfg, df)
    res = validate_frame(df, cfg.validate_, labels)
    q_uri = None
    if len(res.quarantine):
        q_uri = io.write_parquet(res.quarantine, _uri(cfg, "quarantine.parquet"))
    elif io.exists(_uri(cfg, "quarantine.parquet")):  # an earlier run's rejects: not this data's
        fs, path = io.fs_path(_uri(cfg, "quarantine.parquet"))
        fs.rm(path)
    io.write_text(_uri(cfg, "validation.md"), res.markdown)
    check_thresholds(res, cfg.validate_, q_uri)  # raises with what/where/fix; quarantine already written
    if cfg.pseudo_label.enabled and res.report["per_split"]["unlabeled"] == 0:  # now, not after the baseline trained
        raise DataValidationError(
            f"no unlabeled rows left for the pool after the split ({res.report['per_split']}): pseudo-labelling needs "
            "some. Fix: add rows without a label (or lower data.labels_per_class / val_per_class / test_per_class so "
            "labeled rows join the pool), or set pseudo_label.enabled: false")
    clean = io.write_parquet(res.clean.reset_index(drop=True), _uri(cfg, "data", "clean.parquet"))
    log.info("validated: %d clean, %d quarantined", len(res.clean), len(res.quarantine))
    return {"clean": clean, "quarantine": q_uri, "fingerprint": io.frame_fingerprint(res.clean),
            "labels": labels, "report": res.report, "markdown": res.markdown}


# ---------------------------------------------------------------- backbones
def backbone(cfg: PipelineConfig, clean: str) -> tuple[str, str]:
    """(local model dir, kind) of the configured model plugin, materialised once per run."""
    cls, opts = plugin_options("selftrain.models", cfg.model.name, cfg.model.options, "model")
    provider = cls(opts)
    kind = provider.info().kind
    if not cls.builds_weights:  # an existing checkpoint: nothing to build
        return provider.materialize([], ""), kind
    uri = _uri(cfg, "models", "init")
    if not io.exists(io.join(uri, ".complete")):
        texts = io.read_parquet(clean, columns=["text", "split"])
        texts = texts.loc[texts["split"] != "test", "text"].astype(str).tolist()
        with io.output_dir(uri) as tmp:
            provider.materialize(texts, tmp, seed=cfg.seed)
            open(f"{tmp}/.complete", "w").close()
    return io.local_dir(uri), kind


def pretrain_stage(cfg: PipelineConfig, clean: str, fingerprint: str, stop_after: int | None = None) -> dict:
    """Self-supervised training on every non-test text (labels hidden) -> ``models/pretrain``."""
    pc = cfg.pretrain
    ocls, oopts = plugin_options("selftrain.objectives", pc.objective, pc.options, "pretrain")
    df = io.read_parquet(clean, columns=["text", "split"])
    keep = df["split"] == "unlabeled" if pc.corpus == "unlabeled" else df["split"] != "test"
    texts = df.loc[keep, "text"].astype(str).tolist()
    if pc.max_texts is not None and len(texts) > pc.max_texts:
        # a seeded sample, not the first rows: sources are often sorted by label or date
        pick = np.sort(np.random.default_rng([cfg.seed, 17]).choice(len(texts), pc.max_texts, replace=False))
        texts = [texts[i] for i in pick]
    model_dir, kind = backbone(cfg, clean)
    # a checkpoint is resumed only by the same job: data, config, seed and the versions of the code that
    # trains it (selftrain, the model provider's and the objective's packages; not every installed plugin)
    key = io.digest(fingerprint, pc.model_dump(mode="json"), cfg.model.model_dump(mode="json"), cfg.seed,
                    versions_of([("selftrain.models", cfg.model.name), ("selftrain.objectives", pc.objective)]))
    ctx = runtime(cfg.device, cfg.seed)
    bar = tqdm(total=None, desc=f"pretrain[{pc.objective}]", unit="step", disable=None)

    def on_log(rec: dict) -> None:
        if rec["event"] == "step":
            bar.total = rec["total"]
            bar.n = rec["step"]
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            bar.refresh()
            log.info("pretrain step %d/%d loss %.4f %.0f tokens/s", rec["step"], rec["total"], rec["loss"], rec["tokens_per_s"])
        else:
            log.info("pretrain %s", rec)

    out = _uri(cfg, "models", "pretrain")
    ckpt = io.local_dir(_uri(cfg, "checkpoints", "pretrain")) if not io.is_remote(cfg.run_dir) else str(
        io.cache_root() / "checkpoints" / key)
    with io.output_dir(out) as tmp:
        # nproc_per_node > 1: the same job in N torchrun processes (DDP), same checkpoints and result
        run = pretrain if pc.nproc_per_node == 1 else pretrain_ddp
        res = run(texts, model_dir, kind, ocls, oopts, pc, cfg.model.max_length, ctx, tmp, ckpt, key,
                  log=on_log, stop_after=stop_after)
    bar.close()
    log.info("pretrained %d steps (resumed from %d) at %.0f tokens/s", res.steps, res.resumed_from, res.tokens_per_s)
    return {"model": out, "steps": res.steps, "resumed_from": res.resumed_from, "tokens_per_s": res.tokens_per_s,
            "final_loss": float(np.mean(res.losses[-10:])) if res.losses else None, "texts": len(texts)}


# ---------------------------------------------------------------- finetuning
def _gold(df: pd.DataFrame, split: str, labels: list[str]) -> tuple[list[str], np.ndarray]:
    part = df[df["split"] == split]
    y = part["label"].astype(str).map({n: i for i, n in enumerate(labels)}).to_numpy(dtype=np.int64)
    return part["text"].astype(str).tolist(), y


def _pool_texts(df: pd.DataFrame) -> list[str]:
    """The unlabelled pool's texts (split ``unlabeled``), as a core that trains on the pool gets them."""
    return df.loc[df["split"] == "unlabeled", "text"].astype(str).tolist()


def finetune_stage(cfg: PipelineConfig, clean: str, base_model: str | None, name: str,
                   pseudo_labels: str | None = None, adapt: bool = False) -> dict:
    """Classifier from ``base_model`` (None: the un-pretrained backbone) on gold train rows
    (+ pseudo-labelled rows) with early stopping on validation -> ``models/<name>``.
    ``adapt``: train ``classifier.adapt`` (the core that moves the body) instead of ``classifier``."""
    df = io.read_parquet(clean)
    labels = label_names(cfg, df)
    texts, y = _gold(df, "train", labels)
    targets, weights = one_hot(y, len(labels)), np.ones(len(y), np.float32)
    n_pseudo = 0
    if pseudo_labels is not None:
        pl = io.read_parquet(pseudo_labels)
        n_pseudo = len(pl)
        if n_pseudo:  # an empty selection is valid: the student then sees the gold rows only
            texts = texts + pl["text"].astype(str).tolist()
            targets = np.concatenate([targets, np.stack(pl["target"].to_numpy()).astype(np.float32).reshape(-1, len(labels))])
            weights = np.concatenate([weights, pl["weight"].to_numpy(np.float32) * cfg.pseudo_label.weight])
    val_texts, val_y = _gold(df, "val", labels)
    model_dir = io.local_dir(base_model) if base_model else backbone(cfg, clean)[0]
    # the baseline may be another core than the run's (evaluate.baseline_classifier: the best one without the pool)
    plugin, options = cfg.classifier.name, None  # None: the classifier's own options (classifiers.classifier)
    if adapt:
        if cfg.classifier.adapt.name is None:
            raise ValueError("finetune_stage(adapt=True) needs classifier.adapt.name; it is null")
        plugin, options = cfg.classifier.adapt.name, cfg.classifier.adapt.options
    elif name == "baseline":
        plugin = cfg.evaluate.baseline_classifier or cfg.classifier.name
    clf = classifier(cfg, plugin, options=options)
    epochs = cfg.finetune.student_epochs if n_pseudo else cfg.finetune.epochs

    def on_log(rec: dict) -> None:
        def f(x):
            return "n/a" if x is None or x != x else f"{x:.4f}"  # x != x: NaN
        log.info("finetune[%s] (%s) epoch %d loss %s val macro-F1 %s on %d rows (%d gold)", name, plugin,
                 rec["epoch"], f(rec.get("train_loss")), f(rec.get("val_macro_f1")), len(texts), len(y))

    noisy = np.arange(len(texts)) >= len(y)  # (N,) the pseudo-labelled rows (they follow the gold ones)
    # a classifier that trains on the pool too (consistency training) gets its texts, except the baseline:
    # the baseline is the supervised core, the pool's yardstick
    unlabeled = _pool_texts(df) if getattr(clf, "uses_unlabeled", False) and name != "baseline" else None
    train = LabeledRows(texts, targets, weights, len(y), noisy, cfg.pseudo_label.noise, unlabeled)
    out = _uri(cfg, "models", name)
    with io.output_dir(out) as tmp:
        res = clf.fit(model_dir, labels, train, val_texts, val_y, tmp, epochs, log=on_log)
        write_meta(tmp, plugin, labels)
    for note in res.notes:
        log.warning("%s: %s", name, note)
    return {"model": out, "name": name, "classifier": plugin, "val_macro_f1": res.val_macro_f1,
            "val_loss": res.val_loss, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "seconds": res.seconds,
            "temperature": res.temperature, "train_gold": len(y), "train_pseudo": n_pseudo, "val_pred": res.val_pred,
            "val_true": val_y.tolist(), "notes": res.notes}


# ---------------------------------------------------------------- pseudo-labels
POOL_CHUNK_ROWS = BATCH_ROWS
"""Unlabeled rows the teacher scores at once: the pseudo-label stage's memory is bounded by this,
not by the pool (a pool up to this size is scored in one call, exactly as before chunking)."""


def _pool_text_chunks(uri: str):
    """The unlabeled texts in file order, in lists of ``POOL_CHUNK_ROWS`` (the last one shorter)."""
    rows, buf = POOL_CHUNK_ROWS, []
    for rb in scan_clean(uri, ["text"], unlabeled=True, batch_rows=POOL_CHUNK_ROWS):
        buf.extend(str(t) for t in rb.column("text").to_pylist())
        while len(buf) >= rows:
            yield buf[:rows]
            buf = buf[rows:]
    if buf:
        yield buf


def _pool_rows(uri: str, positions: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The unlabeled rows at ``positions`` (0-based within the pool), in that order."""
    import pyarrow as pa

    parts, found, offset = [], [], 0
    for rb in scan_clean(uri, columns, unlabeled=True, batch_rows=POOL_CHUNK_ROWS):
        local = np.unique(positions[(positions >= offset) & (positions < offset + rb.num_rows)]) - offset
        if len(local):
            parts.append(rb.take(pa.array(local)))
            found.append(local + offset)
        offset += rb.num_rows
    if not parts:
        return pd.DataFrame(columns=columns)
    rows = pa.Table.from_batches(parts).to_pandas()
    rows.index = np.concatenate(found)
    return rows.loc[positions].reset_index(drop=True)


def _previous(uri: str | None, n_classes: int) -> Selection | None:
    """The selection a labeler kept in the round before (pool positions, targets, weights, notes)."""
    if uri is None:
        return None
    pl = io.read_parquet(uri)
    notes = io.read_json(uri.removesuffix(".parquet") + ".json").get("notes", {}) if io.exists(
        uri.removesuffix(".parquet") + ".json") else {}
    targets = np.stack(pl["target"].to_numpy()).astype(np.float32).reshape(-1, n_classes) if len(pl) else np.zeros(
        (0, n_classes), np.float32)
    return Selection(pl["pool_index"].to_numpy(np.int64), targets, pl["weight"].to_numpy(np.float32), notes)


def pseudo_label_stage(cfg: PipelineConfig, clean: str, teacher: str, round_: int = 1,
                       also: list[str] | None = None, previous: str | None = None,
                       scores: dict[str, list[str]] | None = None) -> dict:
    """Teacher scores the unlabeled pool; the labeler plugin keeps a subset -> ``pseudo_labels[-rN].parquet``.

    ``also``: more models (e.g. the baseline) whose calibrated probabilities are averaged with
    the teacher's before selection: an ensemble teacher. ``previous``: the pseudo-labels of the
    round before, handed to the labeler (``LabelerInputs.previous``) so it can grow them.
    Models are loaded through the classifier plugin that saved them.

    The pool is streamed from ``clean`` in chunks of ``POOL_CHUNK_ROWS`` rows: only its (N, C)
    probabilities (and (N, H) embeddings for labelers that need them) stay in memory, and each
    chunk is encoded once for both. ``scores`` (model URI -> shard outputs, ``selftrain.core.label.shards``):
    the pool was scored in shards elsewhere (``execution.pool_workers``); merge those instead."""
    plc = cfg.pseudo_label
    lcls, lopts = plugin_options("selftrain.labelers", plc.labeler, plc.options, "pseudo_label")
    df = pd.concat([rb.to_pandas() for rb in scan_clean(clean, ["text", "label", "split"], unlabeled=False, batch_rows=POOL_CHUNK_ROWS)],
                   ignore_index=True)  # the labeled rows (train / val / test): small
    labels = label_names(cfg, df)
    n_pool = sum(rb.num_rows for rb in scan_clean(clean, ["split"], unlabeled=True, batch_rows=POOL_CHUNK_ROWS))
    if n_pool == 0:
        raise ValueError("the unlabeled pool is empty: add unlabeled rows or set pseudo_label.enabled: false")
    val_texts, val_y = _gold(df, "val", labels)
    train_texts, train_y = _gold(df, "train", labels)
    t0 = time.perf_counter()
    members = [teacher, *(also or [])]
    probs, val_probs, temps, pool_emb, train_emb = 0.0, np.zeros((len(val_y), len(labels))), [], None, None
    fit_labels = False  # the teacher's body trained on the gold rows: its embeddings of them are not held out
    for i, uri in enumerate(members):  # each member calibrated on validation on its own, then averaged
        # the head as fitted, without the temperature a probe folds in for its users: the labelers' guards,
        # quotas and drift stop were measured on it (dev-eval session 25: the calibrated teacher -0.001 / -0.002)
        model = load_trained(cfg, uri, labels).uncalibrated()
        want_emb = i == 0 and lcls.needs_embeddings  # the teacher's own sentence embeddings
        if scores is not None and uri in scores:
            from selftrain.core.label.shards import merge

            pool_p, emb = merge(scores[uri])  # (N, C), (N, H) | None
            if len(pool_p) != n_pool or (want_emb and emb is None):
                raise ValueError(f"the shard scores of {uri} cover {len(pool_p)} rows (embeddings: {emb is not None}), "
                                 f"the pool has {n_pool}: re-run the pool scoring")
        else:
            bar = tqdm(total=n_pool, desc=f"pseudo-label r{round_}", unit="ex", disable=None)
            parts = [model.score(texts, plc.batch_size, embeddings=want_emb, progress=bar.update)
                     for texts in _pool_text_chunks(clean)]
            bar.close()
            pool_p = np.concatenate([p for p, _ in parts])  # (N, C)
            emb = np.concatenate([e for _, e in parts]) if want_emb else None  # (N, H)
        val_p = model.predict_proba(val_texts, plc.batch_size) if val_texts else np.zeros((0, len(labels)))
        temp = fit_temperature(np.log(np.clip(val_p, 1e-12, 1)), val_y) if plc.calibrate and len(val_y) else 1.0
        temps.append(temp)
        probs = probs + softmax(np.log(np.clip(pool_p, 1e-12, 1)), temp) / len(members)  # (N, C)
        if len(val_y):
            val_probs = val_probs + softmax(np.log(np.clip(val_p, 1e-12, 1)), temp) / len(members)
        if want_emb:
            pool_emb, train_emb = emb, model.embed(train_texts, plc.batch_size)  # (N, H), (G, H)
            fit_labels = trained_by(uri).body_fits_labels
    secs = time.perf_counter() - t0
    sel = lcls(lopts).select(LabelerInputs(
        probs=probs, val_probs=val_probs, val_labels=val_y, train_counts=np.bincount(train_y, minlength=len(labels)),
        label_names=labels, pool_embeddings=pool_emb, train_embeddings=train_emb, train_labels=train_y,
        round=round_, rounds=plc.rounds, previous=_previous(previous, len(labels)), seed=cfg.seed,
        embeddings_fit_labels=fit_labels))
    try:
        sel.validate(n_pool, len(labels))
    except ValueError as exc:  # a bug in the labeler: say whose, and how its author checks it
        from selftrain.plugins.registry import origin

        raise ValueError(f"pseudo_label.labeler={plc.labeler!r} ({origin('selftrain.labelers', plc.labeler)}) returned an "
                         f"invalid Selection in round {round_}: {exc}. This is a bug in that plugin: report it to its "
                         "authors (selftrain.plugins.testing.check_labeler reproduces such errors)") from exc
    index = np.asarray(sel.index, dtype=np.int64)
    kept = _pool_rows(clean, index, ["id", "text", "hidden_label"])
    hard = sel.targets.argmax(1)
    out_df = pd.DataFrame({
        "id": kept["id"].to_numpy(), "text": kept["text"].to_numpy(), "pool_index": index,
        "label": [labels[i] for i in hard], "confidence": probs[index].max(1) if len(index) else np.zeros(0),
        "probs": list(probs[index].astype(np.float32)), "target": list(sel.targets.astype(np.float32)),
        "weight": sel.weights.astype(np.float32), "round": round_,
    })
    report = {
        "round": round_, "pool": n_pool, "kept": len(index), "kept_fraction": len(index) / n_pool,
        "per_class": {labels[c]: int((hard == c).sum()) for c in range(len(labels))},
        "temperature": temps[0], "temperatures": temps, "teachers": len(members),
        "examples_per_s": n_pool * len(members) / secs if secs > 0 and scores is None else None,
        "scored_in_shards": scores is not None, "labeler": plc.labeler,
        "notes": sel.notes,
    }
    if len(index) == 0:
        report["empty_reason"] = sel.notes.get("reason", f"the labeler {plc.labeler!r} kept no row of the pool")
    if "hidden_label" in kept and kept["hidden_label"].notna().any():
        # diagnostics only: rows whose gold label the split hid from training
        known = kept["hidden_label"].notna().to_numpy()
        out_df["hidden_label"] = kept["hidden_label"].to_numpy()
        report["accuracy_vs_hidden_gold"] = float((out_df["label"].to_numpy()[known] == kept["hidden_label"].to_numpy()[known]).mean())
    name = "pseudo_labels" if round_ == 1 else f"pseudo_labels-r{round_}"
    uri = io.write_parquet(out_df, _uri(cfg, f"{name}.parquet"))
    io.write_json(_uri(cfg, f"{name}.json"), report)
    log.info("pseudo-labels r%d: kept %d/%d %s", round_, len(index), n_pool, report["per_class"])
    return {"pseudo_labels": uri, "report": report}


# ---------------------------------------------------------------- evaluation
def evaluate_stage(cfg: PipelineConfig, clean: str, models: dict[str, str], val_scores: dict[str, float | None],
                   baseline: str | None, final: str, extra: dict | None = None) -> dict:
    """Every model on the test split -> ``metrics.json``, ``report.md``, ``confusion_<model>.png``."""
    df = io.read_parquet(clean)
    labels = label_names(cfg, df)
    texts, y = _gold(df, "test", labels)
    results: dict[str, dict] = {}
    for name, uri in models.items():
        probs = load_trained(cfg, uri, labels).predict_proba(texts, cfg.pseudo_label.batch_size)
        m = classification_metrics(y, probs, labels, cfg.evaluate.ece_bins)
        m["val_macro_f1"] = val_scores.get(name)
        m["model_uri"] = uri
        results[name] = m
        io.write_bytes(_uri(cfg, f"confusion_{name}.png"), confusion_png(m["confusion"], labels, f"{name} (test)"))
    extra = dict(extra or {})
    one_class = [n for n, r in results.items() if int((np.asarray(r["confusion"]).sum(0) > 0).sum()) <= 1]
    if one_class:
        msg = (f"{', '.join(one_class)} predict{'s' if len(one_class) == 1 else ''} one class for every test row: "
               "at chance level, nothing was learned (tiny presets are smoke tests; use a real backbone and more labels)")
        log.warning(msg)
        extra["notes"] = [*extra.get("notes", []), msg]
    table = markdown_table(results, baseline, final)
    metrics = {"models": results, "baseline": baseline, "final": final, "labels": labels,
               "test_size": len(y), "selftrain_version": __version__, "plugins": used_versions(cfg),
               "recipe": {"model": cfg.model.name, "classifier": cfg.classifier.name,
                          "pretrain_objective": cfg.pretrain.objective if cfg.pretrain.enabled else None,
                          "labeler": cfg.pseudo_label.labeler if cfg.pseudo_label.enabled else None,
                          "gold_labels_per_class": {"train": cfg.data.labels_per_class, "val": cfg.data.val_per_class}},
               **extra}
    # published together, the config first: metrics.json is what marks a finished run
    io.write_text(_uri(cfg, "config.yaml"), yaml.safe_dump(cfg.dump(), sort_keys=False))
    io.write_json(_uri(cfg, "metrics.json"), metrics)
    notes = "\n".join(f"- {n}" for n in extra.get("notes", []))
    core = extra.get("core")
    core_md = (f"## Core\nChosen: **{core['chosen']}** ({core['candidates'].get(core['chosen'])}) — {core['why']}.\n\n"
               if core else "")
    report = (f"# selftrain run `{cfg.run_name}`\n\nTest split: {len(y)} rows, labels {', '.join(labels)}. "
              f"`final` is chosen on validation macro-F1 when there are validation rows, else it is the last model the labeler's guards let through; never on test.\n\n{table}\n\n"
              + core_md + (f"## Notes\n{notes}\n" if notes else ""))
    io.write_text(_uri(cfg, "report.md"), report)
    return {"metrics": _uri(cfg, "metrics.json"), "report": _uri(cfg, "report.md"), "markdown": report,
            "table": table, "summary": {n: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for n, r in results.items()}}

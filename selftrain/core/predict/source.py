"""Where a model to predict with comes from: a run directory or a registry version (pure).

Both give the same things, read from small JSON / YAML files only (no model is loaded here):

==================  =============================================  ==========================================
                    run directory (``--run``)                      registry (``--root [--name] [--version]``)
==================  =============================================  ==========================================
model               ``models/<name>``, default ``final`` of        ``versions/vNNNN/model``, default the
                    ``metrics.json``                               champion
config              ``config.yaml`` (row rules, device, batch)     ``versions/vNNNN/config.yaml``
training prior      ``metrics.json`` validation.per_class.train,   ``version.json`` data.gold_per_class.train
                    else the gold labels of ``data/clean.parquet``
PSI reference       the test split of ``data/clean.parquet``       the frozen evaluation set
==================  =============================================  ==========================================

Neither stores per-row test predictions, so the PSI reference is those rows scored again with the
same model (at most ``REFERENCE_MAX_ROWS``, a seeded sample): the confidences the model had on data
it was evaluated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import yaml

from selftrain.config import PipelineConfig, validate_config
from selftrain.core.common import io
from selftrain.core.registry.store import Registry, RegistryError

REFERENCE_MAX_ROWS = 2000
"""Rows of the evaluation data scored for the PSI reference (a sample beyond that: a bounded cost)."""


class PredictError(ValueError):
    """The input or the model cannot be used as asked; the message says what, where and the fix."""


@dataclass
class ModelSource:
    model_uri: str
    version: str              # written to every output row (model_version)
    name: str                 # the registry's model name, or the run's name (the drift event's resource)
    config: PipelineConfig
    prior: dict | None = None
    prior_source: str = ""
    reference_uri: str | None = None
    reference_split: str | None = None  # only rows of this split (the run's test split); None: every row
    reference_source: str = ""
    notes: list[str] = field(default_factory=list)
    input: str = ""


def load_run_config(uri: str, error=PredictError) -> PipelineConfig:
    """A saved ``config.yaml`` (a run's or a registry version's), validated; damaged: ``error``."""
    try:
        raw = yaml.safe_load(io.read_bytes(uri)) or {}
    except yaml.YAMLError as exc:
        raise error(f"{uri} is damaged: not valid YAML ({exc}). It records how the model was trained. Fix: restore "
                    "it, or copy the config the run was started with there") from None
    if not isinstance(raw, dict):
        raise error(f"{uri} is damaged: not a mapping of config sections. Fix: restore it")
    return validate_config(raw, uri)


def read_record(uri: str, error=PredictError) -> dict:
    """A run's JSON record (metrics.json ...); damaged: ``error`` naming it."""
    try:
        return io.read_json(uri)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{uri} is damaged: not valid JSON ({exc}). Fix: restore it, or name the model yourself "
                    "(--model NAME) so it is not needed") from None


def open_registry(root: str, name: str | None = None) -> Registry:
    """The registry ``<root>/<name>``; ``root`` may also be the registry folder itself (no name given)."""
    if name is None and io.exists(io.join(root, "registry.json")):
        return Registry(root)
    from selftrain.config import RetrainConfig

    name = name or RetrainConfig().model_name
    return Registry(io.join(root, name), name)


def _is_classifier(uri: str) -> bool:
    """A saved classifier: a plugin's ``selftrain_classifier.json``, or a finetuned model's config.json
    with its labels (``id2label``); a backbone (models/init, models/pretrain) has neither."""
    if io.exists(io.join(uri, "selftrain_classifier.json")):
        return True
    cfg_uri = io.join(uri, "config.json")
    if not io.exists(cfg_uri):
        return False
    try:
        cfg = io.read_json(cfg_uri)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    # a bare AutoModel body saves architectures ["BertModel"] (and, on transformers 4, a default id2label)
    return bool(cfg.get("id2label")) and any("ForSequenceClassification" in a for a in cfg.get("architectures") or [])


def classifier_models(run_dir: str) -> list[str]:
    """The classifier models of a run directory (``models/*``, temp and hidden folders excluded)."""
    fs, path = io.fs_path(io.join(run_dir, "models"))
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) if fs.exists(path) else []
    return [n for n in names if not n.startswith(".") and _is_classifier(io.join(run_dir, "models", n))]


def _from_run(run_dir: str, model: str | None, error=PredictError) -> ModelSource:
    if not io.exists(run_dir):
        raise error(f"the run directory {run_dir} does not exist. Fix: --run <the --output of a finished "
                    "`selftrain run`, e.g. runs/demo>, or --root for the model registry")
    metrics_uri = io.join(run_dir, "metrics.json")
    metrics = read_record(metrics_uri, error) if io.exists(metrics_uri) else {}
    if model is None:
        if not metrics.get("final"):
            raise error(f"{run_dir} has no metrics.json naming its final model (an unfinished run, or not a run "
                        "directory). Fix: pass --model NAME (one of models/*) or point --run at a finished run")
        model = metrics["final"]
    uri = io.join(run_dir, "models", model)
    if not _is_classifier(uri):
        have = classifier_models(run_dir)
        what = ("a backbone, not a classifier (pretrained or initial weights: nothing to predict with)"
                if io.exists(io.join(uri, "config.json")) else "not a saved model")
        raise error(f"{io.join(run_dir, 'models', model)} is {what}; the classifiers there: "
                    f"{', '.join(have) or 'none'}. Fix: --model one of those")
    cfg_uri = io.join(run_dir, "config.yaml")
    if not io.exists(cfg_uri):
        raise error(f"{run_dir} has no config.yaml (a run writes it when it starts): cannot tell the row rules and "
                    "the classifier settings the model was trained with. Fix: point --run at a run directory")
    cfg = load_run_config(cfg_uri, error)
    src = ModelSource(uri, f"{run_dir.rstrip('/').rsplit('/', 1)[-1]}/{model}", cfg.run_name, cfg)
    prior = ((metrics.get("validation") or {}).get("per_class") or {}).get("train")
    clean = io.join(run_dir, "data", "clean.parquet")
    if prior:
        src.prior, src.prior_source = prior, "metrics.json validation.per_class.train (gold train rows)"
    elif io.exists(clean):
        lab = io.read_parquet(clean, columns=["label", "split"])
        lab = lab.loc[(lab["split"] == "train") & lab["label"].notna(), "label"].astype(str)
        src.prior = {k: int(v) for k, v in lab.value_counts().sort_index().items()} or None
        src.prior_source = "data/clean.parquet train split (gold labels)"
    if io.exists(clean):
        src.reference_uri, src.reference_split = clean, "test"
    else:
        src.notes.append(f"{clean} is gone: no test split to compare confidences with")
    return src


def _from_registry(root: str, name: str | None, version: str | None) -> ModelSource:
    reg = open_registry(root, name)
    reg.info()  # a clear RegistryError when there is none
    v = reg.resolve(version or "champion")
    cfg = load_run_config(io.join(reg.version_uri(v), "config.yaml"))
    info = reg.version_info(v)
    src = ModelSource(reg.model_uri(v), v, reg.name, cfg)
    prior = ((info.get("data") or {}).get("gold_per_class") or {}).get("train")
    if prior:
        src.prior, src.prior_source = prior, f"{v}/version.json data.gold_per_class.train (gold train rows)"
    frozen = reg.uri("eval", "frozen.parquet")
    if io.exists(frozen):
        src.reference_uri = frozen
    return src


def resolve_model(*, run_dir: str | None = None, model: str | None = None, root: str | None = None,
                  name: str | None = None, version: str | None = None) -> ModelSource:
    """Exactly one of ``run_dir`` (+ ``model``) or ``root`` (+ ``name``, ``version``)."""
    error = PredictError
    if (run_dir is None) == (root is None):
        raise error("say which model to predict with: --run RUN_DIR [--model NAME] or --root ARTIFACTS "
                    "[--name MODEL] [--version N] (one of the two)")
    if run_dir is not None:
        if name or version:
            raise error("--name / --version select a registry version: use them with --root, not --run")
        return _from_run(run_dir, model, error)
    if model:
        raise error("--model selects a model of a run directory: use it with --run, not --root")
    try:
        return _from_registry(root, name, version)
    except RegistryError as exc:
        raise error(str(exc)) from None


def reference_texts(src: ModelSource) -> tuple[list[str], str]:
    """(texts of the PSI reference, where they come from); no texts: the second item says why."""
    if src.reference_uri is None:
        return [], "no evaluation data of the model is recorded: PSI skipped"
    df = io.read_parquet(src.reference_uri, columns=["text", "split"] if src.reference_split else ["text"])
    if src.reference_split:
        df = df[df["split"] == src.reference_split]
    texts = df["text"].dropna().astype(str).tolist()
    if not texts:
        return [], f"{src.reference_uri} has no {src.reference_split or ''} rows: PSI skipped"
    if len(texts) > REFERENCE_MAX_ROWS:
        pick = np.sort(np.random.default_rng(0).choice(len(texts), REFERENCE_MAX_ROWS, replace=False))
        texts = [texts[i] for i in pick]
    what = f"the {src.reference_split} split of {src.reference_uri}" if src.reference_split else src.reference_uri
    return texts, what

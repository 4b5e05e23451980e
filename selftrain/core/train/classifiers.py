"""The classifier plugin of a run, and loading any saved model through the plugin that trained it.

Every saved model directory carries ``selftrain_classifier.json`` (``{"classifier": <plugin
name>, "labels": [...]}``), so pseudo-labelling, evaluation and the retrain flow's frozen-set
scoring load it with the right plugin even when the run's config names another one. A model
directory without it is a plain transformers classifier (saved before classifier plugins).
"""

from __future__ import annotations

import json
from pathlib import Path

from selftrain.config import PipelineConfig, plugin_options
from selftrain.core.common import io
from selftrain.core.train.runtime import runtime
from selftrain.plugins import Classifier, TrainedClassifier

META_FILE = "selftrain_classifier.json"


def classifier(cfg: PipelineConfig, name: str | None = None, cache: bool = True, options: dict | None = None) -> Classifier:
    """The configured classifier plugin (or ``name``, with ``options`` or its defaults), ready to fit
    or load. ``cache``: the plugin may cache derived arrays (embeddings) under the user's cache; off
    for rows seen once (batch prediction), which a cache would only pile up."""
    name = name or cfg.classifier.name
    if options is None:
        options = cfg.classifier.options if name == cfg.classifier.name else {}
    cls, opts = plugin_options("selftrain.classifiers", name, options, "classifier")
    ctx = runtime(cfg.device, cfg.seed, cfg.cpu_bf16, cfg.inference_compile)
    ctx.cache_dir = str(io.cache_root() / "embeddings") if cache else None
    return cls(opts, ctx, cfg.model.max_length, cfg.finetune.model_dump())


def write_meta(model_dir: str, plugin: str, labels: list[str]) -> None:
    """Record which plugin saved ``model_dir`` (merged into the plugin's own meta file, if any)."""
    path = Path(model_dir) / META_FILE
    meta = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**meta, "classifier": plugin, "labels": list(labels)}, indent=2))


def saved_info(local_dir: str) -> tuple[str, list[str]]:
    """(plugin name, label names) of a saved model directory."""
    path = Path(local_dir) / META_FILE
    if path.exists():
        meta = json.loads(path.read_text())
        return meta["classifier"], list(meta["labels"])
    id2label = io.read_json(str(Path(local_dir) / "config.json")).get("id2label", {})
    return "finetune", [id2label[k] for k in sorted(id2label, key=int)]


def trained_by(uri: str) -> type[Classifier]:
    """The classifier plugin class that saved the model at ``uri`` (its capability flags, e.g.
    ``body_fits_labels``)."""
    from selftrain.plugins.registry import get

    return get("selftrain.classifiers", saved_info(io.local_dir(uri))[0])


def load_trained(cfg: PipelineConfig, uri: str, labels: list[str] | None = None, cache: bool = True) -> TrainedClassifier:
    """The saved model at ``uri`` (local or remote), loaded by the plugin that trained it."""
    local = io.local_dir(uri)
    plugin, saved = saved_info(local)
    return classifier(cfg, plugin, cache).load(local, labels if labels is not None else saved)

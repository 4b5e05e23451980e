"""The ``pipeline`` flow and per-stage flows. Flows only compose tasks and pass URIs.

Task results are stored under the run directory (``<run_dir>/.prefect-results``), so a
cached stage is one whose outputs still exist: delete a run directory and its cache goes
with it.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.filesystems import LocalFileSystem

from selftrain import tasks
from selftrain.config import PipelineConfig
from selftrain.core import io
from selftrain.core.pipeline import Stages, run_stages


def _storage(cfg: PipelineConfig):
    """A result-storage block rooted in the run directory, saved server-side (Prefect needs
    persisted storage for cached results) under a name derived from the run directory."""
    root = io.join(cfg.run_dir, ".prefect-results")
    if io.is_remote(root):
        from prefect.filesystems import RemoteFileSystem

        block = RemoteFileSystem(basepath=root)
    else:
        block = LocalFileSystem(basepath=str(Path(root).resolve()))
    block.save(f"selftrain-results-{io.digest(root if io.is_remote(root) else str(Path(root).resolve()))}", overwrite=True)
    return block


def task_stages(cfg: PipelineConfig) -> Stages:
    storage = _storage(cfg)
    wrapped = {name: t.with_options(result_storage=storage) if name != "ingest" else t for name, t in tasks.ALL.items()}
    return Stages(**wrapped)


def publish(cfg: PipelineConfig):
    def _publish(kind: str, key: str, payload: str) -> None:
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.run_name}-{key}".lower()).strip("-")
        create_markdown_artifact(markdown=payload, key=slug, description=f"selftrain {key} ({cfg.run_name})")

    return _publish


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """ingest -> validate -> pretrain -> finetune teacher -> pseudo-label -> student -> evaluate."""
    return run_stages(config, task_stages(config), publish(config))


@flow(name="ingest")
def ingest_flow(config: PipelineConfig = PipelineConfig()) -> dict:
    return task_stages(config).ingest(config)


@flow(name="validate")
def validate_flow(config: PipelineConfig, snapshot: str, fingerprint: str = "") -> dict:
    res = task_stages(config).validate(config, snapshot, fingerprint)
    publish(config)("markdown", "validation", res["markdown"])
    return res


@flow(name="pretrain")
def pretrain_flow(config: PipelineConfig, clean: str, fingerprint: str) -> dict:
    return task_stages(config).pretrain(config, clean, fingerprint)


@flow(name="finetune")
def finetune_flow(config: PipelineConfig, clean: str, base_model: str | None, name: str,
                  pseudo_labels: str | None = None) -> dict:
    return task_stages(config).finetune(config, clean, base_model, name, pseudo_labels)


@flow(name="pseudo-label")
def pseudo_label_flow(config: PipelineConfig, clean: str, teacher: str, round_: int = 1) -> dict:
    return task_stages(config).pseudo_label(config, clean, teacher, round_)


@flow(name="evaluate")
def evaluate_flow(config: PipelineConfig, clean: str, models: dict[str, str], val_scores: dict[str, float],
                  baseline: str | None, final: str) -> dict:
    res = task_stages(config).evaluate(config, clean, models, val_scores, baseline, final)
    publish(config)("markdown", "metrics", res["markdown"])
    return res

"""The ``retrain`` flow: new data in, better model out, nothing broken (docs/retraining.md).

It only composes: the steps are the tasks of ``selftrain.tasks.retrain`` (pure functions in
``selftrain.core.registry.retrain``) injected into ``run_retrain``; the challenger is the ``pipeline``
flow, run as a subflow on the challenger's config (heavy stages go wherever
``execution.heavy_stages`` says). A promotion emits the Prefect event ``selftrain.model.promoted``;
the report and the registry table are Prefect artifacts.
"""

from __future__ import annotations

import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.core.registry.retrain import RetrainSteps, run_retrain
from selftrain.flows.pipeline import pipeline
from selftrain.tasks import retrain as retrain_tasks

PROMOTED = "selftrain.model.promoted"


def emit_promoted(change: dict) -> None:
    """The champion of model ``change['name']`` changed (retrain, ``models promote`` or ``models rollback``)."""
    emit_event(
        event=PROMOTED,
        resource={"prefect.resource.id": f"selftrain.model.{change['name']}", "prefect.resource.name": change["name"],
                  "selftrain.registry": io.absolute(change["registry"])},
        # absolute: the deployment a promotion triggers (e.g. a model server's reload) runs in another directory
        payload={"version": change["version"], "previous": change.get("previous"), "metrics": change.get("metrics"),
                 "action": change.get("action", "retrain"), "model_uri": io.absolute(change.get("model_uri")),
                 "registry": io.absolute(change["registry"]), "reason": change.get("reason", "")},
    )


def _publish(name: str):
    def publish(kind: str, key: str, payload) -> None:
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{key}".lower()).strip("-")
        if kind == "table":
            create_table_artifact(table=payload, key=slug, description=f"selftrain model registry ({name})")
        else:
            create_markdown_artifact(markdown=payload, key=slug, description=f"selftrain {key} ({name})")

    return publish


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig = PipelineConfig(), force: bool = False) -> dict:
    """Retrain when the data or config changed; promote the challenger only if it beats the champion
    on the frozen evaluation set by ``retrain.min_gain``.

    Args:
        config: The pipeline config the challenger trains with (its retrain section names the registry).
        force: Retrain even if the data and the training config are unchanged: a new challenger, trained
            afresh in its own run directory and registered as the next version."""
    return run_retrain(config, RetrainSteps(**retrain_tasks.ALL), run_pipeline=pipeline,
                       publish=_publish(config.retrain.model_name), notify=emit_promoted, force=force)

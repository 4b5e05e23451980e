"""Prefect flows: ``pipeline`` (the whole job) and one flow per stage."""

from selftrain.flows.pipeline import (  # noqa: F401
    HEAVY,
    StageRunError,
    evaluate_flow,
    finetune_flow,
    flow_stages,
    ingest_flow,
    pipeline,
    pretrain_flow,
    pseudo_label_flow,
    remote_stage,
    validate_flow,
)

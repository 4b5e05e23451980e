"""Prefect flows: ``pipeline`` (the whole job) and one flow per stage."""

from selftrain.flows.pipeline import (  # noqa: F401
    evaluate_flow,
    finetune_flow,
    ingest_flow,
    pipeline,
    pretrain_flow,
    pseudo_label_flow,
    validate_flow,
)

"""Prefect flows: ``pipeline`` (the whole job), one flow per stage, ``retrain`` (champion/challenger), ``predict`` (batch prediction) and ``predict_landing`` (the files new under a prefix)."""

from selftrain.flows.pipeline import (  # noqa: F401
    HEAVY,
    StageRunError,
    adapt_check_flow,
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
from selftrain.flows.retrain import PROMOTED, emit_promoted, retrain  # noqa: F401
from selftrain.flows.predict import DRIFT, drift_event, emit_drift, predict, predict_landing  # noqa: F401

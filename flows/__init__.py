"""Prefect flows: ``pipeline`` (the whole job), one flow per stage, ``retrain`` (champion/challenger), ``predict`` (batch prediction) and ``predict_landing`` (the files new under a prefix)."""

from selftrain.prefect_env import prefect_env

prefect_env()  # before Prefect is imported: a Python caller gets what the CLI sets (startup timeout, services)

from selftrain.flows.pipeline import (  # noqa: E402,F401
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
from selftrain.flows.retrain import PROMOTED, emit_promoted, retrain  # noqa: E402,F401
from selftrain.flows.predict import DRIFT, drift_event, emit_drift, predict, predict_landing  # noqa: E402,F401

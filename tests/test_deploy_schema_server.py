"""`selftrain deploy-schema` on a real Prefect server: typed run forms, bad options refused.

A `prefect server start` (temporary PREFECT_HOME, loopback), the pools of deployments/setup.sh
and `prefect deploy --all`, as in tests/test_deployment_runs.py (whose ``Service`` helper this
reuses), but no workers and no S3: nothing runs, runs are only created through the REST API
as the UI's *Custom run* does. The schema itself is checked without a server in
tests/test_deploy_schema.py.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELFTRAIN = str(Path(sys.executable).with_name("selftrain"))
CONFIG_DEPLOYMENTS = ["pipeline/retrain", "retrain/nightly", "pretrain/gpu", "finetune/gpu", "pseudo-label/gpu",
                      "adapt-check/gpu"]


def _runs_module():
    spec = importlib.util.spec_from_file_location("_deployment_runs_helpers", ROOT / "tests" / "test_deployment_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Server + pools + the deployments of deployments/prefect.yaml, with their untyped schemas."""
    runs = _runs_module()
    svc = runs.Service(tmp_path_factory.mktemp("prefect-home"))
    try:
        svc.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(svc.port), "--no-ui",
                  "--no-scheduler", "--analytics-off")
        svc.wait_healthy()
        svc.env["PREFECT"] = runs.PREFECT
        svc.run("bash", str(ROOT / "deployments" / "setup.sh"), timeout=300)
        svc.run(runs.PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", timeout=600)
        yield svc
    finally:
        svc.stop_all()


def _create_run(svc, deployment: str, config: dict):
    dep = svc.deployment(deployment)
    return svc.request("POST", f"/deployments/{dep['id']}/create_flow_run",
                       {"parameters": {"config": config}, "state": {"type": "SCHEDULED", "message": "Run from the UI"}})


def _count(svc) -> int:
    return svc.post("/flow_runs/count", {})


BAD = {"run_name": "bad", "pseudo_label": {"labeler": "threshold", "options": {"threshold": "abc"}}}
GOOD = {"run_name": "good", "pseudo_label": {"labeler": "threshold", "options": {"threshold": 0.8}},
        "model": {"name": "tiny-bert", "options": {"layers": 1}}}


@pytest.mark.slow
def test_deploy_schema_types_the_run_forms_and_the_server_refuses_bad_options(deployed):
    from selftrain.flows import pipeline

    svc = deployed
    # as `prefect deploy` leaves it: options is a free-form dict, the bad value goes through
    r = _create_run(svc, "pipeline/retrain", BAD)
    assert r.status_code == 201, r.text
    svc.request("DELETE", f"/flow_runs/{r.json()['id']}")

    t0 = time.time()
    out = svc.run(SELFTRAIN, "deploy-schema")
    took = time.time() - t0
    for name in CONFIG_DEPLOYMENTS:
        assert f"{name}: typed model (" in out, out
        dep = svc.deployment(name)
        assert dep["enforce_parameter_schema"] is True
        props = dep["parameter_openapi_schema"]["definitions"]["PipelineConfig"]["properties"]
        assert {"model", "classifier", "pretrain", "pseudo_label"} <= {k for k, v in props.items() if "anyOf" in v}
    defs = svc.deployment("pipeline/retrain")["parameter_openapi_schema"]["definitions"]
    thr = defs["PseudoLabelConfig.threshold.fields"]["properties"]["options"]["properties"]["threshold"]
    assert (thr["minimum"], thr["maximum"]) == (0, 1) and thr["description"]

    # refused before any work: 409 naming the field, and no flow run exists
    before = _count(svc)
    for bad, field in [(BAD, "config.pseudo_label.options.threshold"),
                       ({"pseudo_label": {"labeler": "threshold", "options": {"threshold": 1.5}}},
                        "config.pseudo_label.options.threshold"),
                       ({"model": {"name": "tiny-bert", "options": {"layers": 0}}}, "config.model")]:
        r = _create_run(svc, "pipeline/retrain", bad)
        assert r.status_code == 409 and field in r.json()["detail"], r.text
    assert _count(svc) == before

    # a typed valid value is accepted, and the flow takes the parameters as they were stored
    r = _create_run(svc, "pipeline/retrain", GOOD)
    assert r.status_code == 201, r.text
    run = svc.flow_run(r.json()["id"])
    cfg = pipeline.validate_parameters(run["parameters"])["config"]
    assert cfg.pseudo_label.labeler == "threshold" and cfg.pseudo_label.options == {"threshold": 0.8}
    assert cfg.model.name == "tiny-bert" and cfg.model.options == {"layers": 1}
    svc.request("DELETE", f"/flow_runs/{run['id']}")
    print(f"\nselftrain deploy-schema on {len(CONFIG_DEPLOYMENTS)} deployments: {took:.1f} s")


@pytest.mark.slow
def test_the_predict_deployment_refuses_out_of_bound_parameters(deployed):
    """predict/cpu created runs with threshold=1.5, workers=-3 or chunk_rows=0 that then failed at start."""
    svc = deployed
    dep = svc.deployment("predict/cpu")
    props = dep["parameter_openapi_schema"]["properties"]
    assert props["threshold"]["maximum"] == 1 and props["threshold"]["description"]
    before = _count(svc)
    for bad in ({"threshold": 1.5}, {"workers": -3}, {"chunk_rows": 0}):
        r = svc.request("POST", f"/deployments/{dep['id']}/create_flow_run",
                        {"parameters": {"input": "in.csv", "output": "p.parquet", **bad},
                         "state": {"type": "SCHEDULED", "message": "Run from the UI"}})
        assert r.status_code == 409 and next(iter(bad)) in r.json()["detail"], r.text
    assert _count(svc) == before

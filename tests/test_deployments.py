"""Deployments (deployments/prefect.yaml) as declared, and where the pipeline sends its stages.

Fast tests, no server: the deployment file, the automation file and the stage placement logic
(re-submission of crashed stage runs) with a stand-in for ``run_deployment``. The same
deployments on a real Prefect server with real workers: ``tests/test_deployment_runs.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"


def _deploy_configs() -> dict[str, dict]:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.utilities.importtools import import_object

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_FILE.read_text()))
    out = {}
    for d in model.deployments:
        fl = import_object(d.entrypoint)
        out[f"{fl.name}/{d.name}"] = {"deployment": d, "flow": fl}
    return out


def test_prefect_yaml_declares_the_pipeline_and_the_heavy_stage_deployments():
    from selftrain.config import validate_config
    from selftrain.flows import HEAVY

    configs = _deploy_configs()
    assert set(configs) == {"pipeline/retrain", "retrain/nightly", "predict-landing/hourly", "predict/cpu", "predict/gpu",
                            "pretrain/gpu", "finetune/gpu", "pseudo-label/gpu", "adapt-check/gpu"}
    retrain = configs["pipeline/retrain"]["deployment"]
    assert retrain.work_pool.name == "cpu"
    (sched,) = retrain.schedules
    assert (sched.cron, sched.timezone, sched.active) == ("0 2 * * *", "UTC", False), "retrain/nightly is the scheduled job"
    (nightly,) = configs["retrain/nightly"]["deployment"].schedules
    assert (nightly.cron, nightly.timezone, nightly.active) == ("0 3 * * *", "UTC", True)
    hourly = configs["predict-landing/hourly"]["deployment"]
    (sched,) = hourly.schedules
    assert (hourly.work_pool.name, sched.cron, sched.active) == ("cpu", "0 * * * *", False)
    assert configs["predict/cpu"]["deployment"].work_pool.name == "cpu"
    assert configs["predict/gpu"]["deployment"].work_pool.name == "gpu"
    for key in ("predict-landing/hourly", "predict/cpu", "predict/gpu"):  # every parameter is one the flow takes
        d = configs[key]
        assert set(d["deployment"].parameters) <= set(d["flow"].parameters.properties), key
    cfg = validate_config(retrain.parameters["config"], "deployments/prefect.yaml")
    assert cfg.execution.heavy_stages == "deployments"
    # the pipeline finds each heavy stage's deployment under <flow name>/<execution.deployment>
    for fl in HEAVY.values():
        d = configs[f"{fl.name}/{cfg.execution.deployment}"]
        assert d["flow"] is fl and d["deployment"].work_pool.name == "gpu"


def test_zombie_automation_file_is_valid():
    from prefect.events.schemas.automations import AutomationCore

    a = AutomationCore.model_validate(yaml.safe_load((ROOT / "deployments" / "zombie-automation.yaml").read_text()))
    assert a.actions[0].state.value == "CRASHED" and a.trigger.posture == "Proactive"


def test_placement_swaps_only_the_heavy_stages(monkeypatch, tiny_config):
    import importlib

    from selftrain.core.run.pipeline import Stages

    fp = importlib.import_module("selftrain.flows.pipeline")  # the module (selftrain.flows.pipeline is also the flow)
    monkeypatch.setattr(fp, "task_stages", lambda cfg: Stages())  # no Prefect API needed
    local = fp.flow_stages(tiny_config())
    remote = fp.flow_stages(tiny_config("execution.heavy_stages=deployments"))
    assert vars(local) == vars(Stages())
    for name, fn in vars(remote).items():
        if name in fp.HEAVY:
            assert fn.__name__ == f"remote_{name}"
        else:
            assert fn is getattr(local, name)


def _fake_run_deployment(cfg, outcomes: list[str], calls: list):
    """Stand-in for prefect.deployments.run_deployment: each call ends in the next outcome;
    a completed run writes its result where the stage flow would."""
    from prefect import states

    from selftrain.core.common import io
    from selftrain.flows.pipeline import stage_result_uri

    def run_deployment(name, parameters, **kw):
        calls.append((name, parameters, kw))
        outcome = outcomes[len(calls) - 1]
        run = SimpleNamespace(id=uuid.uuid4(), name=kw.get("flow_run_name"), work_pool_name="gpu",
                              state=getattr(states, outcome)(message=f"{outcome.lower()} on purpose"))
        if outcome == "Completed":
            io.write_json(stage_result_uri(cfg, run.id), {"model": "m", "name": parameters["name"], "attempt": len(calls)})
        return run

    return run_deployment


def test_remote_stage_resubmits_crashed_runs_only(monkeypatch, tiny_config):
    import prefect.deployments

    from selftrain.flows.pipeline import StageRunError, remote_stage

    cfg = tiny_config("execution.heavy_stages=deployments", "execution.max_crash_retries=2")
    calls: list = []
    monkeypatch.setattr(prefect.deployments, "run_deployment", _fake_run_deployment(cfg, ["Crashed", "Crashed", "Completed"], calls))
    res = remote_stage(cfg, "finetune")(cfg, "clean.parquet", None, "teacher")
    assert res == {"model": "m", "name": "teacher", "attempt": 3}
    assert [c[0] for c in calls] == ["finetune/gpu"] * 3
    assert [c[2]["flow_run_name"] for c in calls] == ["tiny-finetune-teacher", "tiny-finetune-teacher-resubmit1",
                                                      "tiny-finetune-teacher-resubmit2"]
    params = calls[0][1]
    assert params["config"] == cfg.dump() and params["clean"] == "clean.parquet" and params["base_model"] is None

    calls.clear()  # crashed more often than allowed
    monkeypatch.setattr(prefect.deployments, "run_deployment", _fake_run_deployment(cfg, ["Crashed"] * 3, calls))
    with pytest.raises(StageRunError, match="Crashed.*after 2 re-submission"):
        remote_stage(cfg, "pretrain")(cfg, "clean.parquet", "fp")
    assert len(calls) == 3

    calls.clear()  # a failed run (its task retries are spent) is not re-submitted
    monkeypatch.setattr(prefect.deployments, "run_deployment", _fake_run_deployment(cfg, ["Failed"], calls))
    with pytest.raises(StageRunError, match="Failed: failed on purpose"):
        remote_stage(cfg, "pseudo_label")(cfg, "clean.parquet", "teacher-uri", 1)
    assert len(calls) == 1


def test_remote_stage_explains_a_deployment_from_another_version(monkeypatch, tiny_config):
    import httpx
    import prefect.deployments
    from prefect.exceptions import PrefectHTTPStatusError

    from selftrain.flows.pipeline import StageRunError, remote_stage

    def run_deployment(name, parameters, **kw):  # what the server answers when the schema is older
        req = httpx.Request("POST", "http://127.0.0.1/api/deployments/x/create_flow_run")
        resp = httpx.Response(409, request=req, json={"detail": "Error creating flow run: Validation failed for field "
                                                                "'config.pseudo_label'. Additional properties are not allowed"})
        raise PrefectHTTPStatusError("409 Conflict", request=req, response=resp)

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    cfg = tiny_config("execution.heavy_stages=deployments")
    with pytest.raises(StageRunError, match="config.pseudo_label.*re-run `prefect deploy"):
        remote_stage(cfg, "pretrain")(cfg, "clean.parquet", "fp")


def test_the_predict_and_retrain_run_forms_are_bounded_and_explained():
    """predict/cpu took threshold=1.5, workers=-3 and chunk_rows=0 (the runs were created, then failed at
    start) and showed no help text; retrain's force had none either. Every parameter now has its help
    text (the flow docstring's Args), and the bounded ones are refused by the schema itself."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from selftrain.flows import predict, predict_landing, retrain

    for fl in (predict, predict_landing, retrain):
        props = parameter_schema(fl.fn).model_dump()["properties"]
        assert not [k for k, v in props.items() if not v.get("description")], fl.name
    props = parameter_schema(predict.fn).model_dump()["properties"]
    assert (props["threshold"]["minimum"], props["threshold"]["maximum"]) == (0.0, 1.0)
    assert props["workers"]["minimum"] == 0 and props["chunk_rows"]["minimum"] == 1
    assert props["format"]["enum"] == ["auto", "csv", "jsonl", "parquet"]
    for bad in ({"threshold": 1.5}, {"workers": -3}, {"chunk_rows": 0}, {"format": "xlsx"}):
        with pytest.raises(ParameterTypeError):
            predict.validate_parameters({"input": "in.csv", "output": "p.parquet", **bad})

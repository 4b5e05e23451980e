"""The pipeline as a Prefect flow on a real (ephemeral) Prefect API: outputs, artifacts,
caching of unchanged stages, retries, and a stage failure that leaves prior outputs intact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _task_runs(flow_run_id, timeout: float = 60, expect: tuple[str, ...] = ()):
    """The flow run's task runs once their states have settled.

    Task-run states reach the API asynchronously (events), so right after a flow run ends
    a task can still read as Running, or be missing altogether (on a loaded machine the last
    tasks' events land seconds later); poll until none is Pending/Running and a run named
    with each prefix in ``expect`` is there (bounded)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    deadline = time.time() + timeout
    while True:
        runs = asyncio.run(go())
        settled = all(r.state is not None and r.state.is_final() for r in runs)
        present = all(any(r.name.startswith(p) for r in runs) for p in expect)
        if (settled and present) or time.time() > deadline:
            return runs
        time.sleep(0.5)


def _artifacts(key_prefix: str):
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return [a for a in await client.read_artifacts() if (a.key or "").startswith(key_prefix)]

    return asyncio.run(go())


def test_pipeline_flow_end_to_end_then_cached(prefect_api, tiny_config):
    from transformers import AutoModelForSequenceClassification

    from selftrain.flows import pipeline

    cfg = tiny_config()
    state = pipeline(cfg, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    run = Path(cfg.run_dir)
    for name in ["metrics.json", "report.md", "config.yaml", "pseudo_labels.parquet", "data/clean.parquet",
                 "confusion_baseline.png", "confusion_teacher.png", "validation.md"]:
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["baseline"] == "baseline" and metrics["final"] in metrics["models"]
    for m in metrics["models"].values():
        assert 0.0 <= m["macro_f1"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0 and "ece" in m and "per_class" in m
    assert result["final"] == metrics["final"]
    # every stage's model is a standard HF classifier with its tokenizer
    for name in metrics["models"]:
        model = AutoModelForSequenceClassification.from_pretrained(run / "models" / name)
        assert model.config.num_labels == len(metrics["labels"])
        assert (run / "models" / name / "tokenizer_config.json").exists()
    keys = {a.key for a in _artifacts("tiny-")}
    assert {"tiny-validation", "tiny-metrics"} <= keys

    # unchanged data + config: every cacheable stage is served from Prefect's cache
    state2 = pipeline(cfg, return_state=True)
    assert state2.is_completed()
    runs = _task_runs(state2.state_details.flow_run_id)
    by_name = {r.name: r.state.name for r in runs}
    cached = [n for n, s in by_name.items() if s == "Cached"]
    assert any(n.startswith("pretrain") for n in cached), by_name
    assert any(n.startswith("finetune-teacher") for n in cached), by_name
    assert state2.result()["summary"] == result["summary"]


def test_changed_section_recomputes_only_what_depends_on_it(prefect_api, tiny_config):
    from selftrain.flows import pipeline

    cfg = tiny_config("pseudo_label.enabled=false", "evaluate.baseline=false")
    assert pipeline(cfg, return_state=True).is_completed()
    cfg2 = tiny_config("pseudo_label.enabled=false", "evaluate.baseline=false", "finetune.lr=0.002")
    state = pipeline(cfg2, return_state=True)
    by_name = {r.name: r.state.name for r in _task_runs(state.state_details.flow_run_id)}
    assert any(n.startswith("pretrain") and s == "Cached" for n, s in by_name.items()), by_name
    assert any(n.startswith("finetune-teacher") and s == "Completed" for n, s in by_name.items()), by_name


def test_retry_succeeds_without_redoing_finished_stages(prefect_api, tiny_config, tmp_path):
    """A stage that fails once is retried by Prefect; a stage that keeps failing fails the
    run, leaves earlier outputs intact, and the next run resumes from cache."""
    from prefect import task

    from selftrain import tasks
    from selftrain.core.run import stages
    from selftrain.core.run.pipeline import run_stages
    from selftrain.flows.pipeline import task_stages

    cfg = tiny_config("pseudo_label.enabled=false")
    calls = tmp_path / "calls"

    def flaky_evaluate(*args, **kwargs):
        n = int(calls.read_text()) + 1 if calls.exists() else 1
        calls.write_text(str(n))
        if n == 1:
            raise ConnectionError("transient storage error")
        return stages.evaluate_stage(*args, **kwargs)

    from prefect import flow

    @flow
    def run_with(evaluate_fn):
        S = task_stages(cfg)
        S.evaluate = task(evaluate_fn, name="evaluate", retries=tasks.RETRY["retries"], retry_delay_seconds=0)
        return run_stages(cfg, S)

    state = run_with(flaky_evaluate, return_state=True)
    assert state.is_completed()
    assert calls.read_text() == "2"  # failed once, retried once
    ev = [r for r in _task_runs(state.state_details.flow_run_id) if r.name.startswith("evaluate")][0]
    assert ev.run_count == 2

    metrics_before = (Path(cfg.run_dir) / "metrics.json").read_bytes()
    teacher = Path(cfg.run_dir) / "models" / "teacher" / "model.safetensors"
    teacher_before = teacher.read_bytes()

    def broken_evaluate(*args, **kwargs):
        raise RuntimeError("evaluation is broken")

    state = run_with(broken_evaluate, return_state=True)
    assert state.is_failed()
    assert teacher.read_bytes() == teacher_before and (Path(cfg.run_dir) / "metrics.json").read_bytes() == metrics_before
    finished = {r.name: r.state.name for r in _task_runs(state.state_details.flow_run_id,
                                                         expect=("finetune-teacher", "evaluate"))}
    assert any(n.startswith("finetune-teacher") and s == "Cached" for n, s in finished.items()), finished


def test_a_user_error_is_not_retried_a_transient_one_is(prefect_api, tmp_path):
    """tasks.RETRY's condition: a PredictError (e.g. a column that is not in the file), a
    DataSourceError (an empty or broken data file) or a plugin's PluginUserError (a backbone its
    objective cannot use) fails on the first attempt; a ConnectionError and a failed hf: download
    (DataDownloadError) go through the retries."""
    from prefect import flow, task

    from selftrain import tasks
    from selftrain.core.data.ingest import DataDownloadError, DataSourceError
    from selftrain.core.predict.source import PredictError
    from selftrain.plugins import PluginUserError

    errors = {"user": PredictError("column 'body' not in new.csv. Fix: --column text=..."),
              "plugin": PluginUserError("electra needs a tokenizer with a [MASK] token; pick another objective"),
              "source": DataSourceError("new.jsonl line 2 is not a JSON object"),
              "transient": ConnectionError("storage hiccup"),
              "download": DataDownloadError("could not load Hugging Face dataset 'x': timed out")}
    attempts = dict.fromkeys(errors, 0)

    def failing(kind: str):
        attempts[kind] += 1
        raise errors[kind]

    t = task(failing, name="failing", **{**tasks.RETRY, "retry_delay_seconds": 0, "retry_jitter_factor": None})

    @flow
    def every():
        return [t(k, return_state=True) for k in errors]

    state = every(return_state=True)
    retried = 1 + tasks.RETRY["retries"]
    assert attempts == {"user": 1, "plugin": 1, "source": 1, "transient": retried, "download": retried}
    counts = sorted(r.run_count for r in _task_runs(state.state_details.flow_run_id))
    assert counts == [1, 1, 1, retried, retried], counts

"""The ``pipeline`` flow and per-stage flows. Flows only compose tasks and pass URIs.

Task results are stored under the run directory (``<run_dir>/.prefect-results``), so a
cached stage is one whose outputs still exist: delete a run directory and its cache goes
with it.

Stage placement (``config.execution.heavy_stages``): ``local`` runs every stage as a task
of the pipeline's own flow run; ``deployments`` hands pretrain, finetune and pseudo-label
to their stage deployments (work pool ``gpu``, see ``deployments/prefect.yaml``) through
``run_deployment`` and waits. Either way the composition is ``run_stages``: only the
callables injected into it differ. A stage flow writes its small JSON result to
``<run_dir>/.stage-results/<flow run id>.json``, in the storage every host shares, and the
pipeline reads it from there.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.filesystems import LocalFileSystem

from selftrain import tasks
from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.core.run.pipeline import Stages, run_stages


def _storage(cfg: PipelineConfig):
    """A result-storage block rooted in the run directory, saved server-side (Prefect needs
    persisted storage for cached results) under a name derived from the run directory."""
    root = io.join(cfg.run_dir, ".prefect-results")
    if io.is_remote(root):
        from prefect.filesystems import RemoteFileSystem

        block = RemoteFileSystem(basepath=root)
    else:
        root = str(Path(root).resolve())
        block = LocalFileSystem(basepath=root)
    block.save(f"selftrain-results-{io.digest(root)}", overwrite=True)
    return block


def task_stages(cfg: PipelineConfig) -> Stages:
    storage = _storage(cfg)
    wrapped = {name: t.with_options(result_storage=storage) if name != "ingest" else t for name, t in tasks.ALL.items()}
    return Stages(**wrapped, score_pool=score_pool)


def dask_runner(cfg: PipelineConfig):
    """The task runner of ``score_pool_flow``: the Dask cluster at ``execution.dask_address``,
    or ``execution.pool_workers`` local worker processes started for the stage and closed after."""
    from prefect_dask import DaskTaskRunner

    ex = cfg.execution
    if ex.dask_address:
        return DaskTaskRunner(address=ex.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": ex.pool_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@flow(name="score-pool")
def score_pool_flow(config: PipelineConfig, clean: str, members: list[str], labels: list[str]) -> dict:
    """Score the unlabeled pool in shards: one ``score-shard`` task per (model, shard), mapped over
    the flow's task runner (a Dask cluster); returns the shard outputs per model (URIs)."""
    from prefect import unmapped

    from selftrain.core.label.shards import outputs, shard_jobs

    jobs = shard_jobs(config, clean, members, labels)
    t0 = time.perf_counter()
    futures = tasks.score_shard.map(unmapped(config), jobs, threads=unmapped(config.execution.threads_per_worker))
    done = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    fresh = [d for d in done if not d["skipped"]]
    rows = sum(d["rows"] for d in fresh)
    _logger().info("score-pool: %d shard jobs (%d already done) on %d worker process(es), %d rows in %.1f s (%.0f rows/s)",
                   len(jobs), len(done) - len(fresh), len({d["pid"] for d in fresh}), rows, wall,
                   rows / wall if wall > 0 else 0.0)
    return outputs(jobs)


def score_pool(cfg: PipelineConfig, clean: str, members: list[str], labels: list[str]) -> dict:
    """``Stages.score_pool`` of the flow: ``score_pool_flow`` as a subflow on the Dask task runner."""
    return score_pool_flow.with_options(task_runner=dask_runner(cfg))(cfg, clean, members, labels)


def flow_stages(cfg: PipelineConfig) -> Stages:
    """The stages the pipeline flow runs: its own tasks, with the heavy ones replaced by
    callers of their deployments when ``execution.heavy_stages`` is ``deployments``."""
    S = task_stages(cfg)
    if cfg.execution.heavy_stages == "deployments":
        for stage in HEAVY:
            setattr(S, stage, remote_stage(cfg, stage))
    return S


class StageRunError(RuntimeError):
    """A stage's flow run did not complete (failed, cancelled, timed out or crashed too often)."""


def stage_result_uri(cfg: PipelineConfig, flow_run_id) -> str:
    return io.join(cfg.run_dir, ".stage-results", f"{flow_run_id}.json")


def _record(cfg: PipelineConfig, result: dict) -> dict:
    """Write a stage flow's result where the pipeline flow (maybe on another host) reads it."""
    from prefect.runtime import flow_run

    if flow_run.id:
        io.write_json(stage_result_uri(cfg, flow_run.id), result)
    return result


def _read_stage_result(cfg: PipelineConfig, flow_run_id) -> dict:
    uri = stage_result_uri(cfg, flow_run_id)
    if io.is_remote(uri):
        fs, path = io.fs_path(uri)
        fs.invalidate_cache(path.rsplit("/", 1)[0])  # written by another process: do not trust listings
    try:
        return io.read_json(uri)
    except FileNotFoundError:
        raise StageRunError(f"the stage run {flow_run_id} completed but wrote no result at {uri}; is the worker "
                            "running the same selftrain version, and can both hosts reach the run dir?") from None


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a run
        return logging.getLogger("selftrain.flows")


def remote_stage(cfg: PipelineConfig, stage: str) -> Callable[..., dict]:
    """A drop-in for ``Stages.<stage>`` that runs the stage as a flow run of its deployment
    (``<flow name>/<execution.deployment>``), waits for it and returns its JSON result.

    Prefect does not retry a Crashed flow run (process killed, node lost): it is re-submitted
    here, up to ``execution.max_crash_retries`` times. Completed stages are never re-submitted
    (the pipeline has their results); a re-submitted stage whose task already finished is
    served from the task cache in the run dir, and pretraining resumes from its checkpoints.
    """
    fl = HEAVY[stage]
    sig = inspect.signature(fl.fn)
    name = f"{fl.name}/{cfg.execution.deployment}"
    ex = cfg.execution

    def call(*args, **kwargs) -> dict:
        from prefect.deployments import run_deployment

        bound = sig.bind(*args, **kwargs)
        params = dict(bound.arguments)
        params["config"] = cfg.dump()
        label = "-".join(str(params[k]) for k in ("name", "round_") if params.get(k) is not None)
        run_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(filter(None, [cfg.run_name, fl.name, label])))
        log = _logger()
        for attempt in range(ex.max_crash_retries + 1):
            try:
                run = run_deployment(name, parameters=params, timeout=ex.stage_timeout_s,
                                     poll_interval=ex.poll_interval_s, tags=["selftrain", f"stage:{fl.name}"],
                                     flow_run_name=run_name if attempt == 0 else f"{run_name}-resubmit{attempt}")
            except ObjectNotFound:
                raise StageRunError(
                    f"execution.heavy_stages=deployments but the Prefect API at hand has no deployment {name!r}. "
                    "Fix: run `prefect deploy --prefect-file deployments/prefect.yaml --all` against the server the "
                    "pipeline uses (PREFECT_API_URL), or set execution.heavy_stages: local.") from None
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 409 or "Validation failed" not in exc.response.text:
                    raise
                raise StageRunError(
                    f"{name} rejected the stage's parameters: {exc.response.json().get('detail')}. The deployment's "
                    "parameter schema is from another selftrain version than this pipeline's: re-run `prefect deploy "
                    "--prefect-file deployments/prefect.yaml --all` after upgrading, and keep workers on that version.") from None
            state = run.state
            if state is not None and state.is_completed():
                log.info("%s: flow run %s (work pool %s) completed", name, run.name, run.work_pool_name)
                return _read_stage_result(cfg, run.id)
            if state is not None and state.is_crashed() and attempt < ex.max_crash_retries:
                log.warning("%s: flow run %s crashed (%s); re-submitting (%d/%d)", name, run.name, state.message,
                            attempt + 1, ex.max_crash_retries)
                continue
            what = state.name if state is not None and state.is_final() else f"not finished after {ex.stage_timeout_s} s"
            raise StageRunError(f"{name}: flow run {run.name} ({run.id}) {what}"
                                + (f": {state.message}" if state is not None and state.message else "")
                                + (f" after {attempt} re-submission(s)" if attempt else ""))
        raise AssertionError("unreachable")

    call.__name__ = f"remote_{stage}"
    return call


def publish(cfg: PipelineConfig):
    def _publish(kind: str, key: str, payload: str) -> None:
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{cfg.run_name}-{key}".lower()).strip("-")
        create_markdown_artifact(markdown=payload, key=slug, description=f"selftrain {key} ({cfg.run_name})")

    return _publish


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """ingest -> validate -> pretrain -> finetune teacher -> pseudo-label -> student -> evaluate."""
    return run_stages(config, flow_stages(config), publish(config))


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
    """Self-supervised pretraining of the backbone (a heavy stage: the gpu pool's work)."""
    return _record(config, task_stages(config).pretrain(config, clean, fingerprint))


@flow(name="finetune")
def finetune_flow(config: PipelineConfig, clean: str, base_model: str | None, name: str,
                  pseudo_labels: str | None = None, adapt: bool = False) -> dict:
    """Classifier finetuning: baseline, teacher, student-N or the adapted core (a heavy stage: the gpu pool's work)."""
    return _record(config, task_stages(config).finetune(config, clean, base_model, name, pseudo_labels, adapt=adapt))


@flow(name="pseudo-label")
def pseudo_label_flow(config: PipelineConfig, clean: str, teacher: str, round_: int = 1,
                      also: list[str] | None = None, previous: str | None = None,
                      scores: dict[str, list[str]] | None = None) -> dict:
    """The teacher (averaged with ``also``) scores the unlabeled pool; the labeler keeps a subset,
    growing ``previous`` (the round before's pseudo-labels) if it does (a heavy stage: the gpu pool's work)."""
    return _record(config, task_stages(config).pseudo_label(config, clean, teacher, round_, also, previous, scores))


@flow(name="adapt-check")
def adapt_check_flow(config: PipelineConfig, clean: str, base_model: str | None) -> dict:
    """classifier.adapt.check: cv -- the frozen and the adapted core fitted on each fold of the gold rows
    (a heavy stage: the gpu pool's work)."""
    return _record(config, task_stages(config).adapt_check(config, clean, base_model))


# the heavy stages (Stages field -> stage flow) that execution.heavy_stages=deployments sends away
HEAVY = {"pretrain": pretrain_flow, "finetune": finetune_flow, "pseudo_label": pseudo_label_flow,
         "adapt_check": adapt_check_flow}


@flow(name="evaluate")
def evaluate_flow(config: PipelineConfig, clean: str, models: dict[str, str], val_scores: dict[str, float | None],
                  baseline: str | None, final: str) -> dict:
    res = task_stages(config).evaluate(config, clean, models, val_scores, baseline, final)
    publish(config)("markdown", "metrics", res["markdown"])
    return res

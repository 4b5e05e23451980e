"""The ``predict`` flow: put a trained model to work on a batch of rows (docs/predict.md).

It only composes: the scoring is the task of ``selftrain.tasks.predict`` (``predict_file``, pure, in
``selftrain.core.predict.batch``), or with ``workers`` / ``dask_address`` the sharded tasks (``plan_shards``,
one ``predict-shard`` per shard mapped on the pool's Dask task runner in the subflow
``predict-shards``, ``finish_shards``; pure, in ``selftrain.core.predict.shards``); the flow publishes the drift report as a markdown artifact and emits the
Prefect event ``selftrain.predict.drift`` with the drift numbers, which an automation can turn into a
retrain (``deployments/drift-retrain-automation.yaml``).

Prefect event triggers match resource labels, not numbers in the payload, so the comparison with
the thresholds (``max_class_shift``, ``max_psi``) happens here and its outcome is the resource label
``selftrain.drift`` ("true" / "false"); the numbers themselves are in the payload.
"""

from __future__ import annotations

import inspect
import re
from typing import Annotated, Literal

from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import Field

from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.core.predict.drift import LOW_CONFIDENCE, MAX_CLASS_SHIFT, MAX_PSI
from selftrain.core.predict.batch import CHUNK_ROWS
from selftrain.core.predict.shards import SHARD_ROWS, check_scored
from selftrain.tasks import predict as predict_tasks

DRIFT = "selftrain.predict.drift"


def drift_event(result: dict) -> dict:
    """The ``emit_event`` arguments for one predicted batch: its drift numbers, on the resource
    ``selftrain.model.<name>`` (the one ``selftrain.model.promoted`` uses), labelled ``selftrain.drift``."""
    d = result["drift"]
    return dict(
        event=DRIFT,
        resource={"prefect.resource.id": f"selftrain.model.{result['model_name']}",
                  "prefect.resource.name": result["model_name"], "selftrain.drift": str(d["drift"]).lower(),
                  "selftrain.model.version": result["model_version"]},
        payload={"drift": d["drift"], "flags": d["flags"], "class_shift": d["class_shift"],
                 "max_class_shift": d["max_class_shift"], "psi": d["psi"], "max_psi": d["max_psi"],
                 "low_confidence_share": d["low_confidence_share"], "low_confidence_threshold": d["low_confidence_threshold"],
                 "predicted_mix": d["predicted_mix"], "prior": d["prior"], "rows": result["rows"],
                 "predicted": result["predicted"], "quarantined": result["quarantined"],
                 "model_version": result["model_version"], "model_fingerprint": result["model_fingerprint"],
                 # absolute: the automation or deployment that reads them runs in another directory
                 "model_uri": io.absolute(result["model_uri"]), "input": io.absolute(result["input"]),
                 "output": io.absolute(result["output"])},
    )


def emit_drift(result: dict):
    return emit_event(**drift_event(result))


@flow(name="predict-shards")
def predict_shards_flow(config: PipelineConfig, jobs: list[dict], work: str) -> list[dict]:
    """One ``predict-shard`` task per shard, mapped over the flow's task runner (a Dask cluster). Every
    shard is waited for before a failure is raised, so a re-run finds every part that could be scored."""
    futures = predict_tasks.predict_shard.map(unmapped(config), jobs, threads=unmapped(config.execution.threads_per_worker))
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result())
        except Exception as exc:  # a lost worker (KilledWorker), a task out of retries
            outcomes.append(exc)
    return check_scored(jobs, outcomes, work)


# The deployments' run forms: bounded types (the server refuses a bad value with HTTP 409 before a run
# exists); each field's help text is an ``Args:`` entry of the flow's docstring, where Prefect reads it
# (``_args_help`` writes them).
Format = Literal["auto", "csv", "jsonl", "parquet"]
ChunkRows = Annotated[int, Field(ge=1)]
Threshold = Annotated[float, Field(ge=0.0, le=1.0)]
MaxShift = Annotated[float, Field(gt=0.0, le=1.0)]
MaxPsi = Annotated[float, Field(gt=0.0)]
AtLeast0 = Annotated[int, Field(ge=0)]
AtLeast1 = Annotated[int, Field(ge=1)]

#: Help text of the parameters both prediction flows take.
ARG_HELP = {
    "run_dir": "Score with this run directory's model (or give root).",
    "model": "With run_dir: which of its models (default: the run's final).",
    "root": "A model registry's artifacts root: score with its champion (or version).",
    "name": "With root: the registry's model name.",
    "version": "With root: a version such as v0003 (default: the champion).",
    "columns": 'Column mapping, e.g. {"text": "body", "id": "ticket_id"} (default: the model\'s own).',
    "encoding": "Text encoding of a csv / jsonl input, e.g. latin-1.",
    "chunk_rows": "Rows read and scored at a time (bounded memory); at least 1.",
    "threshold": "Confidence below which a prediction counts as low-confidence in the drift report (0 to 1).",
    "max_class_shift": "Drift when the predicted class mix moves more than this (total variation, above 0, at most "
                       "1) from the training prior.",
    "max_psi": "Drift when the confidence PSI against the reference exceeds this (0.25 is the usual 'shifted').",
    "reference": "Score the run's reference texts for the confidence PSI.",
}


def _args_help(**own: str):
    """Append the ``Args:`` section of the decorated function's docstring: for every parameter its
    ``own`` entry, else ``ARG_HELP``'s (a parameter with neither fails at import)."""
    def document(fn):
        lines = [f"        {p}: {own.get(p) or ARG_HELP[p]}" for p in inspect.signature(fn).parameters]
        fn.__doc__ = fn.__doc__.rstrip() + "\n\n    Args:\n" + "\n".join(lines)
        return fn
    return document

@flow(name="predict", log_prints=True)
@_args_help(input="The file to score: csv, jsonl or parquet; a local path or an s3:// URI.",
            output="Where the predictions go: a .parquet file (a folder of parts when sharded); the quarantined "
                   "rows go beside it as <name>.quarantine.parquet.",
            format="Input format (auto: from the file name).",
            workers="Local Dask worker processes for sharded scoring (0: one process, no shards).",
            shard_rows="Rows per shard when sharded; at least 1.",
            threads_per_worker="Torch threads per Dask worker; at least 1.",
            dask_address="A running Dask scheduler to shard on (instead of local workers).",
            work_dir="Where a sharded run keeps its parts until done (default: beside the output).")
def predict(input: str, output: str, run_dir: str | None = None, model: str | None = None, root: str | None = None,
            name: str | None = None, version: str | None = None, columns: dict[str, str] | None = None,
            format: Format = "auto", encoding: str = "utf-8", chunk_rows: ChunkRows = CHUNK_ROWS,
            threshold: Threshold = LOW_CONFIDENCE, max_class_shift: MaxShift = MAX_CLASS_SHIFT, max_psi: MaxPsi = MAX_PSI,
            reference: bool = True, workers: AtLeast0 = 0, shard_rows: AtLeast1 = SHARD_ROWS,
            threads_per_worker: AtLeast1 = 1, dask_address: str | None = None, work_dir: str | None = None) -> dict:
    """Score ``input`` with a run's model (``run_dir`` [+ ``model``]) or a registry version (``root`` [+
    ``name``, ``version``; default the champion]) into ``output``; drift report as artifact and event.

    ``workers`` >= 1 (local Dask worker processes) or ``dask_address`` (a running cluster): scored in
    shards of ``shard_rows`` rows, ``output`` is a directory of parquet parts (docs/predict.md)."""
    sel = dict(run_dir=run_dir, model=model, root=root, name=name, version=version, columns=columns, format=format,
               encoding=encoding, chunk_rows=chunk_rows)
    drift = dict(threshold=threshold, max_class_shift=max_class_shift, max_psi=max_psi, reference=reference)
    if workers or dask_address:
        from selftrain.flows.pipeline import dask_runner

        plan = predict_tasks.plan_shards(input, output, **sel, shard_rows=shard_rows, workers=workers,
                                         threads_per_worker=threads_per_worker, dask_address=dask_address,
                                         work_dir=work_dir, threshold=threshold, max_class_shift=max_class_shift,
                                         max_psi=max_psi)
        scored = predict_shards_flow.with_options(task_runner=dask_runner(plan["config"]))(
            plan["config"], plan["jobs"], plan["work"])
        result = predict_tasks.finish_shards(plan, scored, **drift)
    else:
        result = predict_tasks.predict_file(input, output, **sel, **drift)
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{result['model_name']}-predict-drift".lower()).strip("-")
    create_markdown_artifact(markdown=result["markdown"], key=slug,
                             description=f"selftrain prediction drift ({result['model_version']}, {input})")
    emit_drift(result)
    print(f"predicted {result['predicted']} of {result['rows']} rows ({result['quarantined']} quarantined) -> {output}; "
          f"drift: {', '.join(result['drift']['flags']) or 'none'}")
    return result


@flow(name="predict-landing", log_prints=True)
@_args_help(prefix="The landing folder or s3:// prefix to watch.",
            output_prefix="Where each file's predictions go (the same relative path, .parquet).",
            max_files="The most files one run takes (the rest wait for the next run); at least 1.")
def predict_landing(prefix: str, output_prefix: str, run_dir: str | None = None, model: str | None = None,
                    root: str | None = None, name: str | None = None, version: str | None = None,
                    columns: dict[str, str] | None = None, encoding: str = "utf-8", chunk_rows: ChunkRows = CHUNK_ROWS,
                    threshold: Threshold = LOW_CONFIDENCE, max_class_shift: MaxShift = MAX_CLASS_SHIFT,
                    max_psi: MaxPsi = MAX_PSI, reference: bool = True, max_files: AtLeast1 = 100) -> list[dict]:
    """Score every file that landed under ``prefix`` since the last run into ``output_prefix`` (same
    relative path, ``.parquet``): one ``predict`` subflow per file, each with its drift artifact and event.
    A file that fails leaves no output, so the next run tries it again; the others go on, and this run
    then fails naming it."""
    jobs = predict_tasks.pending_files(prefix, output_prefix, max_files)
    print(f"{len(jobs)} new file(s) under {prefix}")
    done, failed = [], []
    for job in jobs:
        state = predict(job["input"], job["output"], run_dir=run_dir, model=model, root=root, name=name,
                        version=version, columns=columns, encoding=encoding, chunk_rows=chunk_rows,
                        threshold=threshold, max_class_shift=max_class_shift, max_psi=max_psi, reference=reference,
                        return_state=True)
        if state.is_completed():
            res = state.result()
            done.append({**job, "rows": res["rows"], "predicted": res["predicted"], "quarantined": res["quarantined"],
                         "drift": res["drift"]["drift"], "flags": res["drift"]["flags"]})
        else:
            failed.append(f"{job['input']} ({state.message})")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} landed file(s) failed; they have no output, so the next run "
                           f"tries them again: {'; '.join(failed)}")
    return done

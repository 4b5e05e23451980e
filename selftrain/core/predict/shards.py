"""Batch prediction in shards, so that it can run on many workers (pure functions, Prefect-free).

The pool's scheme (``selftrain.core.label.shards``) applied to a file to predict. The input is read once,
in chunks, through the training row rules (``selftrain.core.predict.batch``), and its valid rows are cut
into shard files of ``shard_rows`` rows; a *job* scores one shard with one model and writes its part
of the output in one piece::

    <work>/<input key>/manifest.json                    rows, quarantined, shards: written last
    <work>/<input key>/shard-00000.parquet              row, id, text
    <work>/<input key>/quarantine.parquet               the refused rows (the quarantine's columns)
    <work>/<input key>/parts/<model key>/part-00000.parquet   the output's columns for that shard

``<work>`` is ``.<output name>.shards`` beside the output; ``<input key>`` is the input's content
identity (fsspec checksum) with the column mapping, the format and the row rules; ``<model key>`` the
model's content fingerprint and version. A part that exists is whole (written beside its target and
renamed; an S3 object appears when its upload completes), so a job whose part exists is skipped: a
re-run after a killed worker or a failed run scores only the missing shards. Memory is bounded by a
shard (and a read chunk), never by the input.

``finish`` publishes the output once every part exists: a **directory** of ``part-NNNNN.parquet``
files (the columns of the single-file output, in input order) and ``_SUCCESS`` (a JSON summary),
with ``<output>.quarantine.parquet`` beside it. Locally the directory is assembled beside its target
and renamed into place: whole or absent. On object storage the parts are copied under the output
prefix and ``_SUCCESS`` is written last: the output is complete when ``_SUCCESS`` exists. Then the
work folder is removed.

Which engine runs the jobs is not decided here: ``predict_sharded`` runs them in this process; the
``predict`` flow maps them as Prefect tasks on a Dask cluster (``execution.pool_workers`` /
``execution.dask_address``, the pool's ``dask_runner``).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pandas as pd

from selftrain.config import ExecutionConfig
from selftrain.core.common import io
from selftrain.core.predict import batch as P
from selftrain.core.train.classifiers import saved_info
from selftrain.core.predict.drift import LOW_CONFIDENCE, MAX_CLASS_SHIFT, MAX_PSI
from selftrain.core.predict.source import PredictError, resolve_model

SHARD_ROWS = ExecutionConfig.model_fields["pool_shard_rows"].default
"""Valid input rows per shard (``execution.pool_shard_rows``): the memory bound of one job."""

SUCCESS = "_SUCCESS"


def work_root(output: str, work_dir: str | None = None) -> str:
    """Where the shards of a prediction into ``output`` live until it is published (private to it)."""
    if work_dir:
        return work_dir
    out = output.rstrip("/")
    parent, name = out.rsplit("/", 1) if "/" in out else (".", out)
    return io.join(parent, f".{name}.shards")


def _copy(src: str, dst: str) -> None:
    """One file, any storage to any storage: a hard link or a server-side copy where possible."""
    if not io.is_remote(src) and not io.is_remote(dst):
        try:
            os.link(src, dst)  # same filesystem: no second copy
        except OSError:
            shutil.copy2(src, dst)
        return
    (sfs, spath), (dfs, dpath) = io.fs_path(src), io.fs_path(dst)
    if io.is_remote(src) and io.is_remote(dst) and type(sfs) is type(dfs):
        sfs.copy(spath, dpath)  # an object appears whole
    elif io.is_remote(dst):
        dfs.put(spath, dpath)
    else:
        sfs.get(spath, dpath)


def _publish_file(src: str, dst: str) -> None:
    if io.is_remote(dst):
        _copy(src, dst)  # a server-side copy where both are on the same store; an object appears whole
    else:
        io.write_file(dst, lambda tmp: _copy(src, tmp))


def _cut(source, chunks, mapping: dict, loaded, root: str, shard_rows: int) -> dict:
    """Stream the input through the row rules into shard files and the quarantine; the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, q_schema = P._schemas(loaded.labels)
    shards: list[dict] = []
    counts = {"rows": 0, "quarantined": 0, "checks": {}}

    def flush(frame: pd.DataFrame) -> None:
        uri = io.join(root, f"shard-{len(shards):05d}.parquet")
        io.write_parquet(frame.reset_index(drop=True), uri)
        shards.append({"uri": uri, "rows": len(frame), "first_row": int(frame["row"].iloc[0])})

    def write(local_q: str) -> None:
        pending: list[pd.DataFrame] = []
        n = 0
        with pq.ParquetWriter(local_q, q_schema) as wq:
            for offset, frame, ok, q in P._checked(chunks, mapping, loaded):
                counts["rows"] += len(frame)
                counts["quarantined"] += len(q)
                for checks in q["check"]:
                    for c in checks.split("; "):
                        counts["checks"][c] = counts["checks"].get(c, 0) + 1
                if len(q):
                    wq.write_table(pa.Table.from_pandas(q, schema=q_schema, preserve_index=False))
                good = frame.loc[ok, ["id", "text"]].astype(str)
                good.insert(0, "row", (offset + np.flatnonzero(ok)).astype(np.int64))
                pending.append(good)
                n += len(good)
                while n >= shard_rows:
                    buf = pd.concat(pending, ignore_index=True)
                    flush(buf.iloc[:shard_rows])
                    pending, n = [buf.iloc[shard_rows:]], n - shard_rows
            if n:
                flush(pd.concat(pending, ignore_index=True))

    io.write_file(io.join(root, "quarantine.parquet"), write)
    manifest = {"input": source.input, "rows": counts["rows"], "quarantined": counts["quarantined"],
                "quarantine_checks": dict(sorted(counts["checks"].items())), "shard_rows": shard_rows,
                "shards": shards}
    io.write_json(io.join(root, "manifest.json"), manifest)  # last: a manifest that exists lists shards that exist
    return manifest


def plan(input: str, output: str, *, run_dir: str | None = None, model: str | None = None, root: str | None = None,
         name: str | None = None, version: str | None = None, columns: dict[str, str] | list[str] | None = None,
         format: str = "auto", encoding: str = "utf-8", chunk_rows: int = P.CHUNK_ROWS, shard_rows: int = SHARD_ROWS,
         workers: int = 1, threads_per_worker: int = 1, dask_address: str | None = None,
         work_dir: str | None = None, threshold: float = LOW_CONFIDENCE, max_class_shift: float = MAX_CLASS_SHIFT,
         max_psi: float = MAX_PSI) -> dict:
    """Check the input and the model, cut the input into shards (once: a re-run finds them) -> the plan:
    ``jobs`` (one per shard), ``config`` (the model's, with this prediction's ``execution``: the
    engine's Dask settings) and what ``finish`` needs. ``threshold`` / ``max_class_shift`` /
    ``max_psi`` are ``finish``'s, only checked here, so a bad one fails before any shard is scored."""
    t0 = time.time()
    if shard_rows < 1:
        raise PredictError(f"shard_rows={shard_rows}: must be at least 1 (e.g. --shard-rows {SHARD_ROWS})")
    P.check_arguments(output, chunk_rows, threshold, max_class_shift, max_psi)  # chunk_rows too
    explicit = P.parse_columns(columns)
    fs, opath = io.fs_path(output)
    if fs.exists(opath) and not fs.isdir(opath):
        raise PredictError(f"{output} is a file, and a sharded prediction writes a directory of parts there. "
                           "Fix: -o a new path (e.g. preds/), or delete the file")
    source = resolve_model(run_dir=run_dir, model=model, root=root, name=name, version=version)
    source.input = input
    try:  # the model's execution section with this prediction's engine settings (what dask_runner reads)
        ex = ExecutionConfig(**{**source.config.execution.model_dump(), "pool_workers": workers,
                                "pool_shard_rows": shard_rows, "threads_per_worker": threads_per_worker,
                                "dask_address": dask_address})
    except ValueError as exc:
        raise PredictError(f"workers={workers}, threads_per_worker={threads_per_worker}: {exc}. Fix: --workers N "
                           "(0 or more) and --threads-per-worker T (1 or more)") from None
    fmt = P.input_format(input, format)
    found, chunks = P._chunks(input, fmt, encoding, chunk_rows)
    mapping = P.resolve_mapping(found, explicit, source.config.data.columns.model_dump(), input)
    local = io.local_dir(source.model_uri)
    labels = saved_info(local)[1]
    loaded = P._Loaded(source, source.config, labels, P.model_fingerprint(local), None)  # no model in this process
    cfg = source.config.model_copy(update={"execution": ex})
    vb = cfg.validate_
    key = io.digest(input, io.content_id(input), fmt, encoding, mapping, shard_rows, vb.min_chars, vb.max_chars)
    where = io.join(work_root(output, work_dir), key)
    manifest_uri = io.join(where, "manifest.json")
    manifest = io.read_json(manifest_uri) if io.exists(manifest_uri) else _cut(source, chunks, mapping, loaded, where,
                                                                                shard_rows)
    model_key = io.digest(loaded.fingerprint, source.version, labels, cfg.model.max_length)
    jobs = [{"index": s, "shard": sh["uri"], "rows": sh["rows"], "model": source.model_uri, "labels": labels,
             "version": source.version, "fingerprint": loaded.fingerprint,
             "out": io.join(where, "parts", model_key, f"part-{s:05d}.parquet")} for s, sh in enumerate(manifest["shards"])]
    return {"input": input, "output": output.rstrip("/"), "quarantine": P.quarantine_uri(output), "work": where,
            # removed once published: the default work folder is private to this output; a given one only its key
            "cleanup": where if work_dir else work_root(output), "columns": mapping, "manifest": manifest, "jobs": jobs,
            "config": cfg, "source": source, "labels": labels, "fingerprint": loaded.fingerprint, "started": t0}


def score_shard(cfg, job: dict, threads: int | None = None) -> dict:
    """Score one shard -> its part (``job['out']``), skipped when the part exists already.
    ``threads``: torch intra-op threads for this process (a Dask worker gets its share of the cores)."""
    from selftrain.core.label.shards import load_model  # the pool's loader: one model per process, loaded once

    if io.exists(job["out"]):
        return {"index": job["index"], "out": job["out"], "skipped": True, "rows": job["rows"], "seconds": 0.0,
                "pid": os.getpid()}
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    df = io.read_parquet(job["shard"])
    model = load_model(cfg, job["model"], job["labels"], cache=False)
    probs = model.score(df["text"].astype(str).tolist(), cfg.pseudo_label.batch_size)[0]
    io.write_parquet(P.output_frame(df["id"].to_numpy(), probs, job["labels"], job["version"], job["fingerprint"]),
                     job["out"])
    return {"index": job["index"], "out": job["out"], "skipped": False, "rows": len(df),
            "seconds": time.perf_counter() - t0, "pid": os.getpid()}


def check_scored(jobs: list[dict], outcomes: list[dict | BaseException], work: str) -> list[dict]:
    """The jobs' results, or one error naming the shards that failed (their worker lost, their task out
    of retries) and that a re-run scores only those."""
    failed = [(j["index"], o) for j, o in zip(jobs, outcomes) if isinstance(o, BaseException)]
    if failed:
        what = "; ".join(f"shard {i}: {type(e).__name__}: {str(e).strip()[:200]}" for i, e in failed[:3])
        raise PredictError(f"{len(failed)} of {len(jobs)} shard(s) were not scored ({what}{' ...' if len(failed) > 3 else ''}). "
                           f"The {len(jobs) - len(failed)} scored are kept under {work}: run the same prediction again "
                           "and only the missing shards are scored")
    return list(outcomes)


def _publish_dir(output: str, parts: list[str], success: dict, labels: list[str]) -> list[str]:
    """The parts as ``<output>/part-NNNNN.parquet`` + ``_SUCCESS``, published as a whole (see the module doc)."""
    names = [f"part-{i:05d}.parquet" for i in range(max(1, len(parts)))]
    body = json.dumps({**success, "parts": names}, indent=2) + "\n"
    if not io.is_remote(output):
        with io.output_dir(output) as tmp:
            for src, dst in zip(parts, names):
                _copy(src, os.path.join(tmp, dst))
            if not parts:  # no valid row: one empty part with the columns
                P._schemas(labels)[0].empty_table().to_pandas().to_parquet(os.path.join(tmp, names[0]), index=False)
            with open(os.path.join(tmp, SUCCESS), "w") as f:
                f.write(body)
        return names
    fs, path = io.fs_path(output)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    for src, dst in zip(parts, names):
        _copy(src, f"{output}/{dst}")
    if not parts:
        io.write_parquet(P._schemas(labels)[0].empty_table().to_pandas(), f"{output}/{names[0]}")
    io.write_text(f"{output}/{SUCCESS}", body)  # last: the output is complete when _SUCCESS exists
    return names


def finish(plan: dict, results: list[dict] | None = None, *, threshold: float = LOW_CONFIDENCE,
           max_class_shift: float = MAX_CLASS_SHIFT, max_psi: float = MAX_PSI, reference: bool = True) -> dict:
    """Every part scored -> the published output and quarantine, the drift report, the counts (the
    result of ``predict_file`` plus ``shards``, ``shards_scored``, ``shards_skipped``, ``parts``)."""
    import pyarrow.parquet as pq

    jobs, man, labels, source = plan["jobs"], plan["manifest"], plan["labels"], plan["source"]
    missing = [j["index"] for j in jobs if not io.exists(j["out"])]
    if missing:
        raise PredictError(f"shard(s) {', '.join(map(str, missing[:10]))} of {len(jobs)} have no scored part under "
                           f"{plan['work']}: run the same prediction again to score them")
    tally = P._Tally(labels, threshold)
    no_quarantine = P._schemas(labels)[1].empty_table().to_pandas()  # the parts hold valid rows only
    for j in jobs:  # class counts and the confidence histogram, one part at a time
        fs, path = io.fs_path(j["out"])
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["label", "confidence"]).to_pandas()
        pred = pd.Categorical(t["label"], categories=labels).codes.astype(np.int64)
        tally.add(len(t), pred, t["confidence"].to_numpy(), no_quarantine)
    tally.rows, tally.quarantined, tally.checks = man["rows"], man["quarantined"], dict(man["quarantine_checks"])
    if tally.rows - tally.quarantined != sum(j["rows"] for j in jobs):
        raise PredictError(f"the parts under {plan['work']} do not add up to the manifest's rows; delete "
                           f"{plan['work']} and run the prediction again")
    _publish_file(io.join(plan["work"], "quarantine.parquet"), plan["quarantine"])  # first, the output last
    success = {"rows": tally.rows, "predicted": tally.rows - tally.quarantined, "quarantined": tally.quarantined,
               "input": plan["input"], "model_version": source.version, "model_fingerprint": plan["fingerprint"]}
    names = _publish_dir(plan["output"], [j["out"] for j in jobs], success, labels)
    model = None
    if reference and tally.rows > tally.quarantined:
        from selftrain.core.label.shards import load_model

        model = load_model(plan["config"], source.model_uri, labels, cache=False)
    loaded = P._Loaded(source, plan["config"], labels, plan["fingerprint"], model)
    drift = P._drift(loaded, tally, reference, threshold, max_class_shift, max_psi)
    fs, path = io.fs_path(plan["cleanup"])
    try:  # the shards hold a copy of the input's texts: gone once the output is published
        fs.rm(path, recursive=True)
    except (OSError, FileNotFoundError):
        pass
    scored = [r for r in (results or []) if not r["skipped"]]
    out = P._result(loaded, tally, drift, 0.0, input=plan["input"], output=plan["output"],
                    quarantine=plan["quarantine"], columns=plan["columns"], shards=len(jobs),
                    shards_scored=len(scored) if results is not None else None,
                    shards_skipped=len(jobs) - len(scored) if results is not None else None,
                    scored_by=sorted({r["pid"] for r in scored}), parts=[io.join(plan["output"], n) for n in names])
    out["seconds"] = round(time.time() - plan["started"], 3)
    return out


def predict_sharded(input: str, output: str, *, threshold: float = LOW_CONFIDENCE,
                    max_class_shift: float = MAX_CLASS_SHIFT, max_psi: float = MAX_PSI, reference: bool = True,
                    **kw) -> dict:
    """``plan`` -> every job in this process, one after the other -> ``finish`` (the engine-free path;
    ``kw``: ``plan``'s arguments)."""
    p = plan(input, output, threshold=threshold, max_class_shift=max_class_shift, max_psi=max_psi, **kw)
    results = [score_shard(p["config"], j) for j in p["jobs"]]
    return finish(p, results, threshold=threshold, max_class_shift=max_class_shift, max_psi=max_psi,
                  reference=reference)

"""Scoring the unlabeled pool in shards, so that it can run on many workers (pure functions).

The pool of ``data/clean.parquet`` is cut once into shard files (``execution.pool_shard_rows``
rows each)::

    <run_dir>/pool/<plan key>/manifest.json            {"pool": N, "shard_rows": R, "shards": [...]}
    <run_dir>/pool/<plan key>/shard-00000.parquet      pool_index, text
    <run_dir>/scores/<model key>/shard-00000.safetensors   probs (n, C), pool_index (n,), embeddings (n, H)?

A *job* scores one shard with one model (the teacher, or an ensemble member) and writes its
output in one piece: a local file is written beside its target and renamed, an S3 object only
appears when its upload completes. So an output that exists is whole; a job whose output
exists is skipped (a re-run redoes only unfinished shards), and a worker killed mid-shard loses
only that shard. ``merge`` reads the outputs back in pool order for the pseudo-label stage.

Which engine runs the jobs is not decided here: ``score_jobs`` runs them in this process
(``--no-prefect``); the pipeline flow maps them as Prefect tasks on a Dask cluster
(``selftrain.flows.pipeline.score_pool_flow``).
"""

from __future__ import annotations

import os
import time

import numpy as np

from selftrain.config import PipelineConfig, plugin_options
from selftrain.core.common import io
from selftrain.core.data.clean import scan_clean

_LOADED: dict[tuple, object] = {}
"""Models loaded in this process (key: model URI + its content + labels): a worker scoring many
shards of one teacher loads it once."""


def _pool_key(cfg: PipelineConfig, clean: str) -> str:
    return io.digest(io.content_id(clean), cfg.execution.pool_shard_rows)


def plan_shards(cfg: PipelineConfig, clean: str) -> dict:
    """Cut the unlabeled rows of ``clean`` into shard files (once per clean snapshot and shard size)."""

    import pandas as pd

    root = io.join(cfg.run_dir, "pool", _pool_key(cfg, clean))
    manifest = io.join(root, "manifest.json")
    if io.exists(manifest):
        return io.read_json(manifest)
    rows = cfg.execution.pool_shard_rows
    shards, buf, n = [], [], 0

    def flush(texts: list[str]) -> None:
        uri = io.join(root, f"shard-{len(shards):05d}.parquet")
        start = n - len(texts)
        io.write_parquet(pd.DataFrame({"pool_index": np.arange(start, n, dtype=np.int64), "text": texts}), uri)
        shards.append(uri)

    for rb in scan_clean(clean, ["text"], unlabeled=True):
        for t in rb.column("text").to_pylist():
            buf.append(str(t))
            n += 1
            if len(buf) == rows:
                flush(buf)
                buf = []
    if buf:
        flush(buf)
    plan = {"pool": n, "shard_rows": rows, "shards": shards, "clean": clean}
    io.write_json(manifest, plan)  # last: a plan that exists lists shards that exist
    return plan


def _model_key(cfg: PipelineConfig, model: str, labels: list[str], embeddings: bool) -> str:
    return io.digest(model, io.content_id(model), labels, cfg.classifier.name, cfg.model.max_length, embeddings)


def shard_jobs(cfg: PipelineConfig, clean: str, members: list[str], labels: list[str]) -> list[dict]:
    """One job per (member, shard); the first member (the teacher) also returns embeddings when
    the labeler needs them."""
    lcls, _ = plugin_options("selftrain.labelers", cfg.pseudo_label.labeler, cfg.pseudo_label.options, "pseudo_label")
    plan = plan_shards(cfg, clean)
    jobs = []
    for m, model in enumerate(members):
        emb = bool(m == 0 and lcls.needs_embeddings)
        root = io.join(cfg.run_dir, "scores", _model_key(cfg, model, labels, emb))
        for s, shard in enumerate(plan["shards"]):
            jobs.append({"model": model, "shard": shard, "labels": list(labels), "embeddings": emb,
                         "out": io.join(root, f"shard-{s:05d}.safetensors"), "member": m, "index": s})
    return jobs


def load_model(cfg: PipelineConfig, model: str, labels: list[str], cache: bool = True):
    """``cache``: the embedding cache (the pool's embeddings are reused across rounds; rows to predict are not)."""
    from selftrain.core.train.classifiers import load_trained

    key = (model, repr(io.content_id(model)), tuple(labels), cfg.classifier.name, cfg.model.max_length, cache)
    if key not in _LOADED:
        _LOADED.clear()  # one teacher at a time per process: bounded memory
        _LOADED[key] = load_trained(cfg, model, labels, cache)
    return _LOADED[key]


def score_job(cfg: PipelineConfig, job: dict, threads: int | None = None) -> dict:
    """Score one shard with one model -> ``job['out']`` (skipped when it exists already).

    ``threads``: torch intra-op threads for this process (a Dask worker gets its share of the cores)."""
    from safetensors.numpy import save

    if io.exists(job["out"]):
        return {"out": job["out"], "skipped": True, "rows": None, "seconds": 0.0, "load_s": 0.0, "pid": os.getpid()}
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    df = io.read_parquet(job["shard"])
    model = load_model(cfg, job["model"], job["labels"]).uncalibrated()  # as the pseudo-label stage reads it
    t1 = time.perf_counter()
    probs, emb = model.score(df["text"].astype(str).tolist(), cfg.pseudo_label.batch_size, embeddings=job["embeddings"])
    tensors = {"probs": np.ascontiguousarray(probs, np.float32), "pool_index": df["pool_index"].to_numpy(np.int64)}
    if emb is not None:
        tensors["embeddings"] = np.ascontiguousarray(emb, np.float32)
    io.write_bytes(job["out"], save(tensors, metadata={"model": job["model"], "shard": job["shard"]}))
    t2 = time.perf_counter()
    return {"out": job["out"], "skipped": False, "rows": len(df), "seconds": t2 - t0, "load_s": t1 - t0,
            "score_s": t2 - t1, "pid": os.getpid()}


def score_jobs(cfg: PipelineConfig, jobs: list[dict]) -> list[dict]:
    """Every job, one after the other, in this process (the engine-free path)."""
    return [score_job(cfg, j) for j in jobs]


def score_pool(cfg: PipelineConfig, clean: str, members: list[str], labels: list[str]) -> dict[str, list[str]]:
    """Plan, score every shard here, return the outputs per member (``Stages.score_pool`` without Prefect)."""
    jobs = shard_jobs(cfg, clean, members, labels)
    score_jobs(cfg, jobs)
    return outputs(jobs)


def outputs(jobs: list[dict]) -> dict[str, list[str]]:
    """member model URI -> its shard outputs in pool order (what ``pseudo_label_stage(scores=...)`` takes)."""
    out: dict[str, list[str]] = {}
    for j in sorted(jobs, key=lambda j: (j["member"], j["index"])):
        out.setdefault(j["model"], []).append(j["out"])
    return out


def merge(outs: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Shard outputs (pool order) -> ((N, C) probabilities, (N, H) embeddings or None)."""
    from safetensors.numpy import load

    parts = [load(io.read_bytes(u)) for u in outs]
    index = np.concatenate([p["pool_index"] for p in parts]) if parts else np.zeros(0, np.int64)
    if not np.array_equal(index, np.arange(len(index))):
        raise ValueError(f"the shard outputs {outs[0]} ... do not cover the pool in order; delete "
                         f"{outs[0].rsplit('/', 1)[0]} to score it again")
    probs = np.concatenate([p["probs"] for p in parts])
    emb = np.concatenate([p["embeddings"] for p in parts]) if parts and "embeddings" in parts[0] else None
    return probs, emb

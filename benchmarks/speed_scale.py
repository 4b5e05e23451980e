"""Speed section f (``scale``) of ``python -m benchmarks.speed``: the pool scored in shards on
Dask worker processes (``execution.pool_workers``), throughput against the number of workers,
and the overhead each shard pays besides scoring.

One pool (tweets, cycled up to ``pool`` texts), one ``probe`` teacher (MiniLM + logistic
regression, the pipeline's default), one run of ``selftrain.flows.pipeline.score_pool`` per
(workers x threads) layout, each into its own run directory (no shard is skipped), against a
temporary Prefect server. Per shard, ``score_job`` reports its wall time and the part spent in
``TrainedClassifier.score``; the rest (reading the shard, loading the model when the worker has
not yet, writing the output) and the orchestration around the tasks (Prefect task runs on Dask,
cluster start not included) are the overhead:

    overhead per shard = (workers x flow wall of the mapped tasks - sum of score seconds) / shards
    overhead % = overhead per shard / (mean score seconds per shard)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import log


def _setup(root: Path, pool: int, shard_rows: int, cpu_bf16: bool = False):
    import pandas as pd

    from benchmarks import speed_label, speed_train
    from selftrain.config import load_config
    from selftrain.core.common import io

    texts = speed_train.take(speed_train.tweet_texts("unlabeled"), pool)
    labels = sorted(speed_train.tweets_frame()["label"].dropna().astype(str).unique())
    clean = io.write_parquet(pd.DataFrame({"id": [str(i) for i in range(pool)], "text": texts, "label": None,
                                           "split": "unlabeled"}), str(root / "clean.parquet"))
    teacher = speed_label.make_probe(speed_train.minilm_dir(), labels, str(root / "teacher"),
                                     speed_train.labeled_tweets(300))

    def cfg(workers: int, threads: int):
        return load_config(None, [f"output_dir={root / f'w{workers}t{threads}'}", "model.max_length=64",
                                  "classifier.name=probe", f"execution.pool_workers={workers}",
                                  f"execution.threads_per_worker={threads}", f"execution.pool_shard_rows={shard_rows}",
                                  f"cpu_bf16={str(cpu_bf16).lower()}"])

    return clean, teacher, labels, cfg


def bench_scale(pool: int, shard_rows: int, layouts: list[tuple[int, int]], cpu_bf16: bool = False) -> dict:
    """Each (workers, threads) layout scores the same pool; rows/s, speedup vs the first layout, overhead.

    ``cpu_bf16``: score with ``cpu_bf16: true`` where the CPU computes bf16 natively (ignored, with a
    log line, where it does not): ~2-3x faster scoring, so a 20k pool on 1/2/4 workers fits the GPU
    host's few minutes; the per-shard overhead is then a larger share of a shard (a stricter test)."""
    from benchmarks.common import native_bf16

    if cpu_bf16 and not native_bf16():
        log("[scale] scale_cpu_bf16 asked for, but this CPU has no native bf16 (avx512_bf16 / amx_bf16): fp32")
        cpu_bf16 = False
    from prefect.testing.utilities import prefect_test_harness

    from selftrain.core.label import shards
    from selftrain.flows.pipeline import dask_runner  # score_pool_flow maps exactly these tasks
    from selftrain import tasks

    import os

    log(f"[scale] pool {pool:,} texts, shards of {shard_rows}, layouts {layouts}, {os.cpu_count()} cores")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, prefect_test_harness(server_startup_timeout=180):
        clean, teacher, labels, make_cfg = _setup(Path(tmp), pool, shard_rows, cpu_bf16)
        for workers, threads in layouts:
            # a fresh embedding cache per layout (inherited by its workers): no layout reads another's vectors
            os.environ["SELFTRAIN_CACHE"] = str(Path(tmp) / f"cache-w{workers}t{threads}")
            cfg = make_cfg(workers, threads)
            jobs = shards.shard_jobs(cfg, clean, [teacher], labels)  # the plan is written here, outside the timing
            results: list[dict] = []

            from prefect import flow, unmapped

            @flow(name="bench-scale", task_runner=dask_runner(cfg))
            def mapped():
                t0 = time.perf_counter()
                futures = tasks.score_shard.map(unmapped(cfg), jobs, threads=unmapped(threads))
                results.extend(f.result() for f in futures)
                return time.perf_counter() - t0

            wall = mapped()
            scored = sum(r["score_s"] for r in results)
            per_shard = (workers * wall - scored) / len(results)
            runs.append({"workers": workers, "threads": threads, "shards": len(results), "wall_s": wall,
                         "rows_per_s": pool / wall, "score_s_per_shard": scored / len(results),
                         "overhead_s_per_shard": per_shard, "overhead_pct": 100 * per_shard / (scored / len(results)),
                         "load_s_max": max(r["load_s"] for r in results), "processes": len({r["pid"] for r in results})})
            log(f"  {workers} worker(s) x {threads} thread(s): {pool / wall:.0f} rows/s, wall {wall:.1f} s, "
                f"overhead {runs[-1]['overhead_pct']:.1f} % of a shard's scoring")
    base = runs[0]["rows_per_s"]
    for r in runs:
        r["speedup_vs_first"] = r["rows_per_s"] / base
    return {"pool": pool, "shard_rows": shard_rows, "cores": os.cpu_count(), "cpu_bf16": cpu_bf16, "runs": runs}

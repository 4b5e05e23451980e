"""The pool scored in shards (``selftrain.core.label.shards``): the same pseudo-labels as scoring it
in one process; on real Dask worker processes (1, 2, 4) under Prefect against moto's S3 server;
re-runs skip finished shards; a worker killed mid-shard loses only that shard."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from selftrain.core.common import io

from selftrain.core.data import clean as clean_io
from selftrain.core.label import shards

from selftrain.core.run import stages


def _teacher(cfg):
    """ingest -> validate -> a probe teacher on the tiny BERT (seconds)."""
    ing = stages.ingest(cfg)
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    t = stages.finetune_stage(cfg, val["clean"], None, "teacher")
    return val["clean"], t["model"], val["labels"]


def _cfg(tiny_config, *more):
    return tiny_config("classifier.name=probe", "pretrain.enabled=false", "pseudo_label.labeler=agree",
                       "pseudo_label.options={guard: false}", "data.val_per_class=0", "pseudo_label.refit_on_gold=false",
                       "execution.pool_shard_rows=50", *more)


def test_shard_scores_give_the_same_pseudo_labels_as_one_process(tiny_config):
    cfg = _cfg(tiny_config)
    clean, teacher, labels = _teacher(cfg)
    inline = stages.pseudo_label_stage(cfg, clean, teacher)
    inline_df = io.read_parquet(inline["pseudo_labels"])

    jobs = shards.shard_jobs(cfg, clean, [teacher], labels)
    assert len(jobs) == 3 and all(j["embeddings"] for j in jobs)  # 120 pool rows / 50; agree needs embeddings
    first = shards.score_jobs(cfg, jobs)
    assert [r["skipped"] for r in first] == [False] * 3 and [r["rows"] for r in first] == [50, 50, 20]
    again = shards.score_jobs(cfg, jobs)  # a re-run skips every finished shard
    assert [r["skipped"] for r in again] == [True] * 3

    sharded = stages.pseudo_label_stage(cfg, clean, teacher, scores=shards.outputs(jobs))
    df = io.read_parquet(sharded["pseudo_labels"])
    assert sharded["report"]["scored_in_shards"] and sharded["report"]["kept"] == inline["report"]["kept"] > 0
    np.testing.assert_array_equal(df["pool_index"], inline_df["pool_index"])
    np.testing.assert_allclose(np.stack(df["probs"]), np.stack(inline_df["probs"]), atol=1e-6)


def test_merge_refuses_outputs_that_do_not_cover_the_pool(tiny_config):
    cfg = _cfg(tiny_config)
    clean, teacher, labels = _teacher(cfg)
    jobs = shards.shard_jobs(cfg, clean, [teacher], labels)
    shards.score_jobs(cfg, jobs)
    outs = shards.outputs(jobs)[teacher]
    with pytest.raises(ValueError, match="do not cover the pool"):
        shards.merge([outs[0], outs[2]])
    with pytest.raises(ValueError, match="re-run the pool scoring"):
        stages.pseudo_label_stage(cfg, clean, teacher, scores={teacher: outs[:2]})


def test_the_pipeline_scores_in_shards_when_pool_workers_is_set(tiny_config):
    from selftrain.core.run.pipeline import run_stages

    cfg = _cfg(tiny_config, "execution.pool_workers=1", "pseudo_label.rounds=2")
    out = run_stages(cfg)  # plain functions: the shards are scored in this process
    reports = io.read_json(out["metrics"])["pseudo_labels"]
    assert reports and all(r["scored_in_shards"] for r in reports)
    assert len(os.listdir(os.path.join(cfg.run_dir, "scores"))) == len(reports)  # one model per round


def _reference(cfg, clean, teacher, labels):
    """Probabilities and embeddings of the pool, scored in this process in one piece, as the pseudo-label
    stage reads the teacher (its head as fitted: ``uncalibrated()``)."""
    from selftrain.core.train.classifiers import load_trained

    pool = pd.concat([rb.to_pandas() for rb in clean_io.scan_clean(clean, ["text"], unlabeled=True)])
    return load_trained(cfg, teacher, labels).uncalibrated().score(pool["text"].astype(str).tolist(), embeddings=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_pool_scored_on_dask_workers_over_s3(tiny_config, prefect_api, s3_bucket, workers):
    from selftrain.flows.pipeline import score_pool

    cfg = _cfg(tiny_config, f"output_dir=s3://{s3_bucket}/run", f"execution.pool_workers={workers}",
               "execution.pool_shard_rows=15")
    clean, teacher, labels = _teacher(cfg)
    outs = score_pool(cfg, clean, [teacher], labels)[teacher]
    assert len(outs) == 8 and all(o.startswith("s3://") and io.exists(o) for o in outs)
    probs, emb = shards.merge(outs)
    ref_p, ref_e = _reference(cfg, clean, teacher, labels)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)
    np.testing.assert_allclose(emb, ref_e, atol=1e-5)
    again = shards.score_jobs(cfg, shards.shard_jobs(cfg, clean, [teacher], labels))
    assert all(r["skipped"] for r in again)


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_only_that_shard(tiny_config, prefect_api, s3_bucket):
    from dask.distributed import Client, LocalCluster

    from selftrain.flows.pipeline import score_pool

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        cfg = _cfg(tiny_config, f"output_dir=s3://{s3_bucket}/run", "execution.pool_workers=2",
                   f"execution.dask_address={cluster.scheduler_address}", "execution.pool_shard_rows=10")
        clean, teacher, labels = _teacher(cfg)
        before = client.run(os.getpid)  # worker address -> pid
        killed: dict = {}

        def kill_a_busy_worker() -> None:
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                busy = [w for w, ts in client.processing().items() if any("score" in str(t) for t in ts)]
                if busy and busy[0] in before:
                    os.kill(before[busy[0]], signal.SIGKILL)
                    killed["worker"] = busy[0]
                time.sleep(0.01)

        monitor = threading.Thread(target=kill_a_busy_worker, daemon=True)
        monitor.start()
        outs = score_pool(cfg, clean, [teacher], labels)[teacher]
        monitor.join(5)
        assert killed, "no worker was busy with a shard to kill"
        client.wait_for_workers(2, timeout=60)
        assert set(client.run(os.getpid).values()) != set(before.values())  # the nanny replaced the killed one
    assert len(outs) == 12 and all(io.exists(o) for o in outs)
    probs, emb = shards.merge(outs)
    ref_p, ref_e = _reference(cfg, clean, teacher, labels)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)
    np.testing.assert_allclose(emb, ref_e, atol=1e-5)

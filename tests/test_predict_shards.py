"""Sharded batch prediction (selftrain.core.predict.shards, the predict flow with workers): the same
rows and probabilities as the single-file prediction, published whole; a re-run scores only the
shards an earlier attempt did not finish; on real Dask worker processes, one of them SIGKILLed
mid-prediction. The model is a probe on the tiny from-scratch BERT (seconds to train)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY = Path(__file__).resolve().parents[1] / "examples" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A run dir with a probe ``teacher`` on the tiny BERT and an input of its texts plus bad rows."""
    from selftrain.config import load_config
    from selftrain.core.run import stages

    base = tmp_path_factory.mktemp("predict-shards")
    cfg = load_config(TINY, [f"output_dir={base / 'run'}", "classifier.name=probe", "pretrain.enabled=false",
                             "data.val_per_class=0", "pseudo_label.refit_on_gold=false"])
    ing = stages.ingest(cfg)
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    stages.finetune_stage(cfg, val["clean"], None, "teacher")
    clean = pd.read_parquet(val["clean"])
    rows = clean[["id", "text"]].astype(object)
    bad = pd.DataFrame({"id": ["empty", None, "short"], "text": ["", clean["text"].iloc[0], "ok"]})
    src = base / "in.parquet"
    pd.concat([rows.iloc[:50], bad, rows.iloc[50:]], ignore_index=True).to_parquet(src, index=False)
    return {"run": cfg.run_dir, "input": str(src), "rows": len(rows) + 3, "base": base}


def _read_dir(path) -> pd.DataFrame:
    parts = sorted(p for p in Path(path).iterdir() if p.name.startswith("part-"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert a["id"].tolist() == b["id"].tolist() and a["label"].tolist() == b["label"].tolist()
    probs = [c for c in a.columns if c.startswith("prob_") or c == "confidence"]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-5)


def test_sharded_equals_single_file_and_a_rerun_scores_only_missing_shards(teacher, tmp_path):
    from selftrain.core.predict import shards as S
    from selftrain.core.predict.batch import predict_file

    kw = dict(run_dir=teacher["run"], model="teacher", chunk_rows=40, reference=False)
    single = predict_file(teacher["input"], str(tmp_path / "one.parquet"), **kw)
    out = tmp_path / "preds"

    # an attempt that stopped after 3 shards (a failed run): no output, the scored parts kept
    plan = S.plan(teacher["input"], str(out), run_dir=teacher["run"], model="teacher", chunk_rows=40, shard_rows=25)
    n = len(plan["jobs"])
    assert n == -(-single["predicted"] // 25) and [j["rows"] for j in plan["jobs"]][-1] == single["predicted"] - 25 * (n - 1)
    for j in plan["jobs"][:3]:
        assert not S.score_shard(plan["config"], j)["skipped"]
    assert not out.exists() and not (tmp_path / "preds.quarantine.parquet").exists()
    with pytest.raises(S.PredictError, match="run the same prediction again"):
        S.finish(plan, reference=False)

    res = S.predict_sharded(teacher["input"], str(out), shard_rows=25, **kw)
    assert (res["shards"], res["shards_skipped"], res["shards_scored"]) == (n, 3, n - 3)
    assert res["rows"] == single["rows"] == teacher["rows"] and res["quarantined"] == single["quarantined"] == 3
    assert res["quarantine_checks"] == single["quarantine_checks"]
    _same(_read_dir(out), pd.read_parquet(tmp_path / "one.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(res["quarantine"]), pd.read_parquet(single["quarantine"]))
    assert pd.read_parquet(out).shape[0] == single["predicted"], "pandas reads the directory as one table"
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["predicted"] == single["predicted"] and len(success["parts"]) == n == len(res["parts"])
    assert res["drift"]["predicted_mix"] == single["drift"]["predicted_mix"]
    assert not (tmp_path / ".preds.shards").exists(), "the shards are removed once the output is published"

    # again: a fresh prediction, the old output replaced as a whole
    again = S.predict_sharded(teacher["input"], str(out), shard_rows=25, **kw)
    assert again["shards_scored"] == n and len(list(out.glob("part-*.parquet"))) == n


def test_sharded_on_s3(teacher, s3_bucket, tmp_path):
    """Input, shards and output on a real S3 API (moto): parts copied server-side, _SUCCESS last, the
    work prefix removed."""
    import s3fs

    from selftrain.core.predict.batch import predict_file
    from selftrain.core.predict.shards import predict_sharded

    fs = s3fs.S3FileSystem()
    fs.put(teacher["input"], f"{s3_bucket}/in/batch.parquet")
    kw = dict(run_dir=teacher["run"], model="teacher", reference=False)
    res = predict_sharded(f"s3://{s3_bucket}/in/batch.parquet", f"s3://{s3_bucket}/out/preds", shard_rows=60, **kw)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/out/preds"))
    assert names == ["_SUCCESS", *[f"part-{i:05d}.parquet" for i in range(res["shards"])]]
    assert fs.exists(f"{s3_bucket}/out/preds.quarantine.parquet") and not fs.exists(f"{s3_bucket}/out/.preds.shards")
    got = pd.concat([pd.read_parquet(fs.open(f"{s3_bucket}/out/preds/{n}", "rb")) for n in names[1:]], ignore_index=True)
    predict_file(teacher["input"], str(tmp_path / "one.parquet"), **kw)
    _same(got, pd.read_parquet(tmp_path / "one.parquet"))


def test_sharded_refuses_bad_arguments_before_any_work(teacher, tmp_path):
    from selftrain.core.predict import shards as S

    kw = dict(run_dir=teacher["run"], model="teacher")
    (tmp_path / "file").write_text("x")
    with pytest.raises(S.PredictError, match="is a file.*Fix: -o a new path"):
        S.plan(teacher["input"], str(tmp_path / "file"), **kw)
    with pytest.raises(S.PredictError, match="shard_rows=0"):
        S.plan(teacher["input"], str(tmp_path / "p"), shard_rows=0, **kw)
    with pytest.raises(S.PredictError, match="--threads-per-worker"):
        S.plan(teacher["input"], str(tmp_path / "p"), threads_per_worker=0, **kw)
    with pytest.raises(S.PredictError, match="columns found"):
        S.plan(teacher["input"], str(tmp_path / "p"), columns=["text=body"], **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing written"


def test_cli_predict_with_workers_without_prefect(teacher, tmp_path, capsys):
    from selftrain.cli import main

    out = tmp_path / "preds"
    rc = main(["predict", "--input", teacher["input"], "--run", teacher["run"], "--model", "teacher", "-o", str(out),
               "--workers", "2", "--shard-rows", "100", "--no-reference", "--no-prefect"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"{teacher['rows']} rows: {teacher['rows'] - 3} predicted -> {out}/ (" in printed
    assert "shards: " in printed and (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_a_worker_killed_mid_prediction_then_the_rerun_scores_only_the_missing_shards(teacher, prefect_api, tmp_path):
    """Real Dask worker processes. The cluster does not reschedule a lost worker's task
    (allowed-failures 0): the run fails, publishes nothing, and its re-run scores only what is missing."""
    import dask
    from dask.distributed import Client, LocalCluster

    from selftrain.core.predict.batch import predict_file
    from selftrain.core.predict.shards import PredictError, work_root
    from selftrain.flows import predict

    out = str(tmp_path / "preds")
    kw = dict(run_dir=teacher["run"], model="teacher", chunk_rows=40, reference=False)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        before = client.run(os.getpid)  # worker address -> pid
        parts = lambda: sorted(Path(work_root(out)).rglob("part-*.parquet"))  # noqa: E731
        killed: dict = {}

        def kill_a_busy_worker() -> None:  # once some shard is scored, so that the re-run has parts to keep
            deadline = time.time() + 180
            while time.time() < deadline and not killed:
                busy = [w for w, ts in client.processing().items() if any("score_shard" in str(t) for t in ts)]
                if busy and busy[0] in before and len(parts()) >= 2:
                    os.kill(before[busy[0]], signal.SIGKILL)
                    killed["worker"] = busy[0]
                time.sleep(0.01)

        monitor = threading.Thread(target=kill_a_busy_worker, daemon=True)
        monitor.start()
        with pytest.raises(PredictError, match=r"shard\(s\) were not scored.*run the same prediction again"):
            predict(teacher["input"], out, shard_rows=10, dask_address=cluster.scheduler_address, **kw)
        monitor.join(5)
        assert killed, "no worker was busy with a shard to kill"
        assert not Path(out).exists() and not Path(out + ".quarantine.parquet").exists(), "a failed run publishes nothing"
        kept = len(parts())
        client.wait_for_workers(2, timeout=60)
        res = predict(teacher["input"], out, shard_rows=10, dask_address=cluster.scheduler_address, **kw)
    assert 2 <= kept < res["shards"]
    assert (res["shards_skipped"], res["shards_scored"]) == (kept, res["shards"] - kept), "only the missing shards"
    single = predict_file(teacher["input"], str(tmp_path / "one.parquet"), **kw)
    _same(_read_dir(out), pd.read_parquet(tmp_path / "one.parquet"))
    assert res["predicted"] == single["predicted"] and len(res["scored_by"]) >= 1

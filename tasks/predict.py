"""Prefect tasks of the ``predict`` flows: thin wrappers over ``selftrain.core.predict.batch``,
``selftrain.core.predict.shards`` and ``selftrain.core.predict.landing``.

Not cached by Prefect: the input at a URI changes between runs (an hourly drop). A retry is safe: the
output is written atomically, so a failed attempt leaves nothing behind. In a sharded prediction the
cache is the shard's part file, keyed on (input content, shard, model fingerprint and version): a
``predict-shard`` whose part exists returns at once, so a re-run scores only the missing shards.
"""

from __future__ import annotations

from prefect import task

from selftrain.core.predict import batch as predict
from selftrain.core.predict import landing
from selftrain.core.predict import shards as predict_shards
from selftrain.tasks import RETRY

predict_file = task(predict.predict_file, name="predict-file", **RETRY)
plan_shards = task(predict_shards.plan, name="predict-plan", **RETRY)
predict_shard = task(predict_shards.score_shard, name="predict-shard", task_run_name="predict-shard-{job[index]}", **RETRY)
finish_shards = task(predict_shards.finish, name="predict-finish", **RETRY)
pending_files = task(landing.pending, name="predict-pending", **RETRY)

ALL = {"predict_file": predict_file, "plan_shards": plan_shards, "predict_shard": predict_shard,
       "finish_shards": finish_shards, "pending_files": pending_files}

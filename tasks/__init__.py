"""Prefect tasks: thin wrappers over the pure stage functions in ``selftrain.core.run.stages``.

Retries back off exponentially; results (small dicts of URIs) are persisted as JSON and
cached on the stage's config sections plus the content of its inputs, so an unchanged
stage is not recomputed. ``ingest`` is never cached: it is what notices new data.
"""

from __future__ import annotations

from prefect import task
from prefect.tasks import exponential_backoff

from selftrain.core.label import shards
from selftrain.core.run import core_cv, stages
from selftrain.tasks.caching import stage_key
from selftrain.tasks.retry import retry_unless_user_error

# user errors (a wrong column, too many bad rows, ...) fail at once: tasks/retry.py
RETRY = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.2,
         "retry_condition_fn": retry_unless_user_error}
PERSIST = {"persist_result": True, "result_serializer": "json"}

ingest = task(stages.ingest, name="ingest", **RETRY)
validate = task(stages.validate, name="validate", cache_key_fn=stage_key("validate_", "data"), **RETRY, **PERSIST)
pretrain = task(stages.pretrain_stage, name="pretrain", cache_key_fn=stage_key("pretrain", "model"), **RETRY, **PERSIST)
finetune = task(stages.finetune_stage, name="finetune", task_run_name="finetune-{name}",
                cache_key_fn=stage_key("finetune", "model", "classifier", "pseudo_label"), **RETRY, **PERSIST)
pseudo_label = task(stages.pseudo_label_stage, name="pseudo-label", task_run_name="pseudo-label-r{round_}",
                    cache_key_fn=stage_key("pseudo_label", "model", "classifier"), **RETRY, **PERSIST)
evaluate = task(stages.evaluate_stage, name="evaluate", cache_key_fn=stage_key("evaluate", "model", "classifier"), **RETRY, **PERSIST)
# classifier.adapt.check: cv -- both cores fitted on folds of the gold rows (it reads the fit settings too)
adapt_check = task(core_cv.adapt_check, name="adapt-check",
                   cache_key_fn=stage_key("adapt_check", "model", "classifier", "finetune"), **RETRY, **PERSIST)
# one shard of the pool scored by one model; never cached by Prefect: an existing output file is the cache
score_shard = task(shards.score_job, name="score-shard", task_run_name="score-shard-{job[member]}-{job[index]}", **RETRY)

ALL = {"ingest": ingest, "validate": validate, "pretrain": pretrain, "finetune": finetune,
       "pseudo_label": pseudo_label, "evaluate": evaluate, "adapt_check": adapt_check}

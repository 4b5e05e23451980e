"""Prefect tasks of the ``retrain`` flow: thin wrappers over ``selftrain.core.registry.retrain``.

Nothing here is cached: ``plan`` is what notices new data, and the others write the registry
(``register`` and ``promote`` are idempotent, so retrying them is safe).
"""

from __future__ import annotations

from prefect import task

from selftrain.core.registry import retrain
from selftrain.tasks import RETRY

plan = task(retrain.plan, name="retrain-plan", **RETRY)
evaluate = task(retrain.evaluate_frozen, name="evaluate-frozen", **RETRY)
register = task(retrain.register_challenger, name="register-version", **RETRY)
promote = task(retrain.promote_if_better, name="promote-if-better", **RETRY)
record = task(retrain.record_run, name="record-run", **RETRY)

ALL = {"plan": plan, "evaluate": evaluate, "register": register, "promote": promote, "record": record}

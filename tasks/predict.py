"""Prefect task of the ``predict`` flow: a thin wrapper over ``selftrain.core.predict``.

Not cached: the input at a URI changes between runs (an hourly drop). A retry is safe: the output is
written atomically, so a failed attempt leaves nothing behind and the next one starts afresh.
"""

from __future__ import annotations

from prefect import task

from selftrain.core import predict
from selftrain.tasks import RETRY

predict_file = task(predict.predict_file, name="predict-file", **RETRY)

ALL = {"predict_file": predict_file}

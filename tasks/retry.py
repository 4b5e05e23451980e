"""Which failures a task's retries are for.

A retry is for what may pass: a storage hiccup, a lost connection, a killed worker. A failure that
says the user's input or config is wrong (a column that is not in the file, too many bad rows, an
unknown registry version, a model with another label set) fails the same way on every attempt;
retrying it only delays the message that names the fix by the backoff (2 + 4 s and a retried
model load). Those errors are :data:`USER_ERRORS`; the task ends failed on the first.
"""

from __future__ import annotations

from selftrain.config import ConfigError
from selftrain.core.data.ingest import DataDownloadError, DataSourceError
from selftrain.core.data.validate_report import DataValidationError
from selftrain.core.predict.source import PredictError
from selftrain.core.registry.retrain import RetrainError
from selftrain.core.registry.store import RegistryError
from selftrain.plugins import PluginUserError

#: Raised for what the user must fix; never retried. (A failed ``hf:`` download is a
#: ``DataSourceError`` too, but a ``DataDownloadError``, which a retry can cure: retried.)
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataSourceError, DataValidationError, PluginUserError,
                                            PredictError, RegistryError, RetrainError)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: go on to the retry policy unless the attempt raised a user error."""
    try:
        exc = state.result(raise_on_failure=False)  # the exception the failed attempt raised
    except Exception:  # noqa: BLE001  (a result that cannot be read: retry, as without this check)
        return True
    return isinstance(exc, DataDownloadError) or not isinstance(exc, USER_ERRORS)

"""Prefect settings selftrain's runs need, set (as defaults: the user's own values win) before Prefect
is imported: by ``selftrain.flows`` for Python callers, by the CLI for its commands. Prefect-free."""

from __future__ import annotations

import os

#: Prefect server services a one-off run on the ephemeral API does not use (see ``prefect_env``).
EPHEMERAL_OFF_SERVICES = ("TRIGGERS", "FOREMAN", "LATE_RUNS", "SCHEDULER", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
                          "CANCELLATION_CLEANUP", "DB_VACUUM")


def prefect_env() -> None:
    """Settings that must be in place before prefect is imported."""
    # the ephemeral API takes 10-20 s to start on small machines; 20 s is too tight
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "selftrain")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not os.environ.get("PREFECT_API_URL"):
        # The ephemeral API runs Prefect's server loop services in this process against one SQLite
        # file; their periodic writes (automation triggers, late-run marking, the scheduler, ...)
        # race the flow's own API writes and log "sqlite3.OperationalError: database is locked"
        # (PrefectHQ/prefect#15170, #18934). A one-off run against its own temporary API needs none
        # of them; the event persister and task-run recorder stay on, so the run's history is kept.
        for service in EPHEMERAL_OFF_SERVICES:
            os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
        # its telemetry ping logs "ERROR ... Failed to send telemetry" on every offline run
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

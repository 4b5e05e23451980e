"""How ``selftrain run`` / ``retrain`` / ``predict`` execute and end: the stages as plain functions
or as the Prefect flow, and what the user sees when they stop early. Ctrl-C: the resume hint and
exit 130 (at once on the temporary API); a mistake in the data or config (``tasks.retry.USER_ERRORS``):
its one line and exit 2; an S3 failure anywhere in the error chain: one line with the fix, exit 2.
Anything else is a bug or an outage and keeps its traceback. ``selftrain.cli`` dispatches here."""

from __future__ import annotations

import os
import sys

RESUME_HINT = ("interrupted. Run the same command again to go on: pretraining resumes from its last checkpoint, "
               "and under Prefect the finished stages are cached.")


def _fast_interrupt_on_ephemeral_api() -> None:
    """Ctrl-C during a run on Prefect's temporary API: say how to resume and exit 130 at once.

    Without this, a terminal's Ctrl-C also stops the temporary server, and Prefect's engine then
    spends ~2.5 min retrying to report the crash to it before a ConnectError traceback (measured:
    163 s). Nothing of value is lost by not reporting it: the API is temporary, finished stages
    are cached in the run directory and pretraining keeps its last checkpoint. Runs against a
    real server (PREFECT_API_URL) keep Prefect's own handling (the run is marked Crashed there)."""
    import signal

    if os.environ.get("PREFECT_API_URL"):
        return

    def on_interrupt(signum, frame):
        print(f"\nselftrain: {RESUME_HINT}", file=sys.stderr, flush=True)
        try:
            from prefect.server.api.server import SubprocessASGIServer

            for server in list(SubprocessASGIServer._instances.values()):
                server.stop()  # os._exit skips the atexit hook that would stop it
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        os._exit(130)

    signal.signal(signal.SIGINT, on_interrupt)


def execute(no_prefect: bool, plain, flow) -> dict | int:
    """``plain()`` (the stages as functions, their log lines to stderr) or ``flow()`` (the Prefect
    flow) -> its result, or the exit code: 130 on Ctrl-C (with the resume hint), 2 on a user error
    (its one line). Anything else is re-raised with its traceback."""
    try:
        if no_prefect:
            stage_log_lines()
            return plain()
        _fast_interrupt_on_ephemeral_api()
        return flow()
    except KeyboardInterrupt:
        print(f"\nselftrain: {RESUME_HINT}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _report_user_error(exc):
            raise
        return 2


def _report_user_error(exc: Exception) -> bool:
    """Whether a failed run failed on the user's data or config (``tasks.retry.USER_ERRORS``: the
    message names the fix); if so, print that one line. Anything else (a bug, an outage) is the
    caller's to re-raise with its traceback."""
    from selftrain.tasks.retry import USER_ERRORS  # only on failure: it imports Prefect

    if not isinstance(exc, USER_ERRORS):
        return False
    print(f"selftrain: {exc}", file=sys.stderr)
    return True


def stage_log_lines() -> None:
    """Without Prefect nothing prints the stages' progress: send selftrain's INFO lines to stderr,
    timestamped as Prefect's are."""
    import logging

    logger = logging.getLogger("selftrain")
    if not any(getattr(h, "_selftrain_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(message)s", "%H:%M:%S"))
        handler._selftrain_cli = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def storage_error(exc: BaseException) -> str | None:
    """The one-line report of an S3 failure anywhere in ``exc``'s chain (no credentials, an endpoint
    that does not answer, a bucket that does not exist), or None: botocore's own tracebacks name
    neither the fix nor, for missing credentials, what was being read."""
    bc = sys.modules.get("botocore.exceptions")  # not imported: nothing touched S3
    seen = set()
    while bc is not None and exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (bc.BotoCoreError, bc.ClientError)):
            return (f"an S3 request failed ({type(exc).__name__}: {exc}). Fix: check the s3:// URIs (bucket names) and "
                    "the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and AWS_ENDPOINT_URL "
                    "for an S3-compatible store")
        exc = exc.__cause__ or exc.__context__
    return None

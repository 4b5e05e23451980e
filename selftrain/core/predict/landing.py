"""A landing prefix: the files dropped under a folder (local or ``s3://``) that have no prediction yet.

The scheduled prediction (deployment ``predict-landing/hourly``) scores what landed since its last
run: every csv / jsonl / parquet file under ``prefix`` whose output ``<output_prefix>/<same relative
path>.parquet`` does not exist. An output appears whole or not at all (``predict_file`` writes it
atomically), so a file whose prediction failed, or was killed, is simply picked up again by the next
run; a file already predicted is never scored twice. Names starting with ``.`` or ``_`` (temporary
uploads, ``_SUCCESS`` markers) are skipped: land a file by writing it elsewhere and moving it in, or
by one S3 upload (an object appears whole).
"""

from __future__ import annotations

from selftrain.core.common import io
from selftrain.core.predict.batch import FORMATS
from selftrain.core.predict.source import PredictError


def pending(prefix: str, output_prefix: str, max_files: int | None = None) -> list[dict]:
    """``[{"input": uri, "output": uri}, ...]`` for the files under ``prefix`` without an output yet,
    in name order (at most ``max_files``: the rest wait for the next run)."""
    fs, root = io.fs_path(prefix)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise PredictError(f"the landing prefix {prefix!r} is not a folder (or does not exist). Fix: point "
                           "prefix at the folder new files land in, e.g. s3://bucket/incoming/")
    base = prefix.rstrip("/")
    jobs = []
    for path in sorted(fs.find(root)):
        rel = path[len(root) + 1:]
        name = rel.rsplit("/", 1)[-1]
        _, dot, ext = name.rpartition(".")
        if name.startswith((".", "_")) or not dot or ext.lower() not in FORMATS:
            continue
        out = io.join(output_prefix, rel[: len(rel) - len(ext) - 1] + ".parquet")
        if not io.exists(out):
            jobs.append({"input": f"{base}/{rel}", "output": out})
        if max_files is not None and len(jobs) >= max_files:
            break
    return jobs

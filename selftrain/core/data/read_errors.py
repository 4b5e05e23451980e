"""Why a user's csv / jsonl / parquet file could not be read, in words that name the fix.

Ingest (``selftrain run``) and batch prediction (``selftrain predict``) read the same kinds of
files and fail on the same mistakes: an empty file, a broken jsonl line, a csv saved as
``.parquet``, bytes that are not in the configured encoding, an encoding Python does not know.
pandas and pyarrow report those as ``EmptyDataError: No columns to parse from file`` or
``Expected object or value at position 56``; :func:`describe_read_error` turns the exception
into "what is wrong, where, and how to fix it" (for jsonl the first bad line's number).
"""

from __future__ import annotations

import json

_JSONL_SCAN_LINES = 1_000_000  # the bad line of a larger file is reported by offset only


def first_bad_jsonl_line(open_text, limit: int = _JSONL_SCAN_LINES) -> tuple[int, str] | None:
    """(1-based line number, why) of the first non-empty line of a jsonl file that is not a JSON
    object, or None when the first ``limit`` lines are fine. ``open_text()`` opens the file as text."""
    with open_text() as f:
        for n, line in enumerate(f, 1):
            if n > limit:
                return None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                return n, f"{exc.msg} at column {exc.colno}"
            if not isinstance(obj, dict):
                return n, f"a JSON {type(obj).__name__}, not an object ({{\"text\": ...}})"
    return None


def describe_read_error(name: str, fmt: str, encoding: str, exc: BaseException, open_text=None,
                        encoding_key: str = "data.encoding", format_key: str = "data.format") -> str:
    """One message for an exception raised while reading ``name`` as ``fmt``: what, where, fix.

    ``open_text`` (optional, for jsonl): opens the file as text, to find the first bad line.
    ``encoding_key`` / ``format_key``: how the caller's user sets those (a config key or a flag)."""
    if isinstance(exc, LookupError):  # codecs.lookup: an unknown encoding name
        return (f"{encoding_key} {encoding!r} is not an encoding Python knows ({exc}). "
                f"Fix: {encoding_key} utf-8, latin-1 or cp1252 (any name in Python's codecs list)")
    if isinstance(exc, UnicodeDecodeError):
        return (f"{name} is not valid {encoding}: byte 0x{exc.object[exc.start]:02x} at position {exc.start} "
                f"cannot be decoded. Fix: set {encoding_key} to the file's encoding (e.g. latin-1 or cp1252)")
    kind = type(exc).__name__
    if kind == "EmptyDataError":
        return (f"{name} is empty: no header line and no rows. Fix: point at a {fmt} file with a header "
                f"(text and label columns), or set {format_key} if it is not {fmt}")
    if fmt == "jsonl" and open_text is not None:
        try:
            bad = first_bad_jsonl_line(open_text)
        except (OSError, UnicodeError):
            bad = None
        if bad is not None:
            return (f"{name} line {bad[0]} is not a JSON object ({bad[1]}). Fix: one JSON object per line, "
                    f"e.g. {{\"text\": \"...\", \"label\": \"...\"}}; or set {format_key} if the file is not jsonl")
    if fmt == "parquet" and ("magic bytes" in str(exc) or kind in ("ArrowInvalid", "ArrowIOError")):
        return (f"{name} is not a parquet file ({exc}). Fix: convert it to parquet, or set {format_key} to its "
                "real format (csv or jsonl)")
    return f"cannot read {name} as {fmt} ({kind}: {exc}). Fix: {format_key} / {encoding_key}, or repair the file"

"""Cheap checks of a run's data before anything heavy is imported or anything is written.

``selftrain run`` calls :func:`check_run` first: a missing ``data.source`` file or a
column name that is not in it then ends the command with one line that names the fix,
instead of a traceback after torch has loaded and the run directory was created.

Only a local file's header (or its first rows) is read. ``builtin:``, ``hf:`` and remote
(``s3://`` ...) sources are left to ingest, which reports their errors itself. This
module imports neither torch nor transformers (nor the plugins, which import torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = {"csv": "csv", "tsv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "pq": "parquet"}
_MAX_LISTED = 25


class PreflightError(ValueError):
    """The run cannot work with this data; the message is one line ending with the fix."""


def raw_config(path: str | Path | None, overrides: list[str] | None) -> dict | None:
    """The config as a plain dict (YAML file + ``--set`` overrides), not validated; None when it
    cannot be read (``load_config`` then reports why, with its own message)."""
    import yaml

    from selftrain.config import _set_dotted, parse_override

    try:
        raw: Any = {} if path is None else (yaml.safe_load(Path(path).read_text()) or {})
        if not isinstance(raw, dict):
            return None
        for item in overrides or []:
            k, v = parse_override(item)
            _set_dotted(raw, k, v)
    except Exception:  # noqa: BLE001 - every config error is load_config's to report
        return None
    return raw


def source_format(source: str, fmt: str = "auto") -> str | None:
    """csv | jsonl | parquet from ``data.format`` or the extension; None if it cannot be told."""
    if fmt != "auto":
        return fmt
    name = source.rsplit("/", 1)[-1]
    return FORMATS.get(name.lower().rsplit(".", 1)[-1]) if "." in name else None


def local_path(source: str) -> Path | None:
    """The local file ``data.source`` names, or None for builtin:, hf: and remote sources."""
    if source.startswith(("builtin:", "hf:")):
        return None
    if "://" in source and not source.startswith("file://"):
        return None
    return Path(source.removeprefix("file://"))


def read_columns(path: Path, fmt: str, encoding: str = "utf-8") -> list[str]:
    """Column names of a local csv/tsv/jsonl/parquet file, from its header or first rows only."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    import pandas as pd

    if fmt == "csv":
        sep = "\t" if path.name.lower().endswith(".tsv") else ","
        return [str(c) for c in pd.read_csv(path, nrows=0, encoding=encoding, sep=sep).columns]
    frame = pd.read_json(path, lines=True, nrows=20, encoding=encoding)  # jsonl: the keys of the first rows
    return [str(c) for c in frame.columns]


def _listing(columns: list[str]) -> str:
    shown = ", ".join(columns[:_MAX_LISTED])
    return shown + (f", ... ({len(columns) - _MAX_LISTED} more)" if len(columns) > _MAX_LISTED else "")


def check_data(data: dict | None) -> None:
    """Raise :class:`PreflightError` when a local ``data.source`` is missing, its format cannot
    be told, or a configured ``data.columns.*`` is not one of its columns.

    ``data`` is the raw ``data`` section of a config (a dict, as in the YAML). A section that
    does not validate is left to ``load_config``; a file whose header cannot be read is left
    to ingest.
    """
    from pydantic import ValidationError

    from selftrain.config import DataConfig

    try:
        cfg = DataConfig.model_validate(data or {})
    except ValidationError:
        return
    src = cfg.source
    path = local_path(src)
    if path is None:
        return
    if not path.exists():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise PreflightError(
            f"data.source: {src!r} not found{where}. Fix: --set data.source=<path of a csv, jsonl or parquet file>, "
            "or a builtin: builtin:tweets, builtin:bbc")
    if path.is_dir():
        raise PreflightError(f"data.source: {src!r} is a folder, not a file. Fix: --set data.source=<a csv, jsonl or "
                             "parquet file in it>")
    fmt = source_format(src, cfg.format)
    if fmt is None:
        raise PreflightError(f"data.format: cannot tell the format of {src!r} from its extension. "
                             "Fix: --set data.format=csv (or jsonl, parquet)")
    try:
        columns = read_columns(path, fmt, cfg.encoding)
    except Exception:  # noqa: BLE001 - unreadable here: ingest reports it with the whole file at hand
        return
    mapping = cfg.columns.model_dump()
    missing = [(k, v) for k, v in mapping.items() if v is not None and v not in columns]
    if not missing:
        return
    keys = ", ".join(f"data.columns.{k}={v!r}" for k, v in missing)
    verb = "is not a column" if len(missing) == 1 else "are not columns"
    fix = " ".join(f"--set data.columns.{k}=<one of them>" for k, _ in missing)
    raise PreflightError(f"{keys} {verb} of {src}; columns: {_listing(columns)}. Fix: {fix}")


def check_run(path: str | Path | None, overrides: list[str] | None) -> str | None:
    """The one-line error of a run whose data cannot work, or None (also when the config itself
    cannot be read: ``load_config`` reports that)."""
    raw = raw_config(path, overrides)
    if raw is None:
        return None
    out = raw.get("output_dir")
    if isinstance(out, str) and local_path(out) is not None and local_path(out).is_file():
        return (f"output_dir: {out!r} is a file, and a run writes a folder there. Fix: -o a new folder name "
                "(e.g. runs/my-run), or move the file")
    if not isinstance(raw.get("data", {}), (dict, type(None))):
        return None
    try:
        check_data(raw.get("data"))
    except PreflightError as exc:
        return str(exc)
    return None

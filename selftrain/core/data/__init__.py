"""Data: reading a source (csv / jsonl / parquet, local, ``s3://``, ``hf:``) into the snapshot
(``ingest``), the row rules and the quarantine (``validate``, ``validate_report``), the clean snapshot's
streaming reader (``clean``) and the CLI's cheap pre-flight checks (``preflight``).

``selftrain.core.data`` was the module now at ``selftrain.core.data.ingest``: its names still
import from here (loaded on first use, so importing a sibling module does not load it).
"""


import importlib
import importlib.util


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a module of this package
        return importlib.import_module(f"{__name__}.{name}")
    try:
        return getattr(importlib.import_module(f"{__name__}.ingest"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

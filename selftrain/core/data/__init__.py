"""Data: reading a source (csv / jsonl / parquet, local, ``s3://``, ``hf:``) into the snapshot
(``ingest``), the row rules and the quarantine (``validate``, ``validate_report``), the clean snapshot's
streaming reader (``clean``) and the CLI's cheap pre-flight checks (``preflight``).

``selftrain.core.data`` was the module now at ``selftrain.core.data.ingest``: its names still
import from here (loaded on first use, so importing a sibling module does not load it).
"""

from selftrain.core import reexport

__getattr__ = reexport(__name__, "ingest")

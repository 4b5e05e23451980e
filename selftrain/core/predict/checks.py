"""The arguments of a prediction, checked before any work: an output named like another format
(it would hold parquet bytes whatever its name says) and thresholds outside their range."""

from __future__ import annotations

from selftrain.core.predict.drift import LOW_CONFIDENCE, MAX_CLASS_SHIFT, MAX_PSI
from selftrain.core.predict.source import PredictError

_NOT_PARQUET = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".xlsx", ".xls")


def check_arguments(output: str | None, chunk_rows: int, threshold: float, max_class_shift: float,
                    max_psi: float) -> None:
    """Refuse, before any work, an output named like another format (it would hold parquet bytes)
    and thresholds outside their range (a confidence threshold of 1.5 flags every row)."""
    if output is not None and output.rstrip("/").lower().endswith(_NOT_PARQUET):
        stem = output.rstrip("/").rsplit(".", 1)[0]
        raise PredictError(f"--output {output}: predictions are written as parquet, whatever the name says. "
                           f"Fix: -o {stem}.parquet (pandas.read_parquet reads it; df.to_csv makes a csv)")
    if chunk_rows < 1:
        raise PredictError(f"chunk_rows={chunk_rows}: must be at least 1")
    if not 0.0 <= threshold <= 1.0:
        raise PredictError(f"--threshold {threshold}: a confidence threshold lies in [0, 1] (default {LOW_CONFIDENCE})")
    if not 0.0 < max_class_shift <= 1.0:
        raise PredictError(f"--max-class-shift {max_class_shift}: a class-mix distance lies in (0, 1] "
                           f"(default {MAX_CLASS_SHIFT})")
    if not max_psi > 0.0:
        raise PredictError(f"--max-psi {max_psi}: must be above 0 (default {MAX_PSI}; 0.25 is the usual 'shifted')")

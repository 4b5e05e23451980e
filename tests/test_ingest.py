"""Ingest: builtin data, user files in csv/jsonl/parquet, column mapping, s3:// through a real S3 API."""

from __future__ import annotations

import pandas as pd
import pytest

from selftrain.config import DataConfig
from selftrain.core.data.ingest import DataSourceError, ingest_frame
from selftrain.core.data.text import normalize_text


def test_builtin_tweets_split_is_balanced_and_leak_free():
    cfg = DataConfig(source="builtin:tweets", labels_per_class=16, val_per_class=32, test_per_class=100,
                     unlabeled_size=1000, seed=3)
    df = ingest_frame(cfg)
    counts = df.groupby("split")["label"].value_counts()
    for lab in ("negative", "neutral", "positive"):
        assert counts[("train", lab)] == 16
        assert counts[("val", lab)] == 32
        assert counts[("test", lab)] == 100
    pool = df[df["split"] == "unlabeled"]
    assert len(pool) == 1000
    assert pool["label"].isna().all(), "pool labels must be hidden"
    assert pool["hidden_label"].notna().all(), "hidden gold kept for diagnostics"
    assert df["id"].is_unique
    key = normalize_text(df["text"])
    test_keys = set(key[df["split"] == "test"])
    assert not test_keys & set(key[df["split"] != "test"]), "a near-duplicate straddles test and another split"


def test_split_is_seeded():
    a = ingest_frame(DataConfig(test_per_class=50, unlabeled_size=200, seed=1))
    b = ingest_frame(DataConfig(test_per_class=50, unlabeled_size=200, seed=1))
    c = ingest_frame(DataConfig(test_per_class=50, unlabeled_size=200, seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert set(a.loc[a.split == "train", "id"]) != set(c.loc[c.split == "train", "id"])


def _user_frame(n=60):
    labels = ["spam", "ham", "eggs"]
    return pd.DataFrame({
        "uid": [f"u{i}" for i in range(n)],
        "body": [f"message number {i} about {labels[i % 3]} and more words {i * 7}" for i in range(n)],
        "tag": [labels[i % 3] if i % 4 else None for i in range(n)],
        "part": ["test" if i < 15 else ("validation" if i < 27 else "train") for i in range(n)],
    })


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_user_files_with_column_mapping(tmp_path, fmt):
    df = _user_frame()
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    cfg = DataConfig(source=str(path), columns={"id": "uid", "text": "body", "label": "tag", "split": "part"})
    out = ingest_frame(cfg)
    assert list(out.columns[:4]) == ["id", "text", "label", "split"]
    assert set(out["split"]) == {"train", "val", "test", "unlabeled"}  # 'validation' mapped, unlabeled train -> pool
    assert (out.loc[out.split == "unlabeled", "label"].isna()).all()
    assert len(out) == len(df)


def test_missing_column_says_which_and_what_exists(tmp_path):
    path = tmp_path / "d.csv"
    _user_frame().to_csv(path, index=False)
    with pytest.raises(DataSourceError) as exc:
        ingest_frame(DataConfig(source=str(path), columns={"text": "content"}))
    msg = str(exc.value)
    assert "text='content'" in msg and "body" in msg and "data.columns" in msg


def test_wrong_encoding_is_explained(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncaf\xe9 ok,a\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match="data.encoding"):
        ingest_frame(DataConfig(source=str(path)))


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataSourceError, match="data.format"):
        ingest_frame(DataConfig(source=str(path)))


def test_s3_source_through_real_s3_api(s3_bucket):
    import s3fs

    df = _user_frame()
    fs = s3fs.S3FileSystem()
    with fs.open(f"{s3_bucket}/in/data.csv", "w") as f:
        df.to_csv(f, index=False)
    cfg = DataConfig(source=f"s3://{s3_bucket}/in/data.csv", columns={"id": "uid", "text": "body", "label": "tag", "split": "part"})
    out = ingest_frame(cfg)
    assert len(out) == len(df) and set(out["id"]) == set(df["uid"])


def test_a_small_labeled_set_splits_with_default_sizes(tmp_path, caplog):
    """README "Your own data": 10 labels per class and default split sizes (test_per_class 100)."""
    rows = [{"ticket_id": f"{lab}{i}", "body": f"{lab} ticket number {i} about {lab} things {i * 13}",
             "category": lab if i < 10 else None} for lab in ("billing", "bug", "feature") for i in range(20)]
    path = tmp_path / "small.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = DataConfig(source=str(path), columns={"id": "ticket_id", "text": "body", "label": "category", "split": None},
                     labels_per_class=None)
    with caplog.at_level("WARNING", logger="selftrain"):
        df = ingest_frame(cfg)
    counts = df[df["label"].notna()].groupby(["split", "label"]).size()
    for lab in ("billing", "bug", "feature"):
        assert counts[("test", lab)] == 5 and counts[("train", lab)] == 5, counts
    assert "data.test_per_class takes 5 of them, not 100" in caplog.text


@pytest.mark.parametrize("name, content, encoding, expect", [
    ("empty.csv", b"", "utf-8", r"empty.csv is empty: no header line and no rows"),
    ("broken.jsonl", b'{"text": "fine", "label": "a"}\n{"text": "broken\n', "utf-8",
     r"broken.jsonl line 2 is not a JSON object \(.*\)\. Fix: one JSON object per line"),
    ("list.jsonl", b'{"text": "fine", "label": "a"}\n\n[1, 2]\n', "utf-8", r"list.jsonl line 3 is not a JSON object"),
    ("fake.parquet", b"text,label\nhello,a\n", "utf-8", r"fake.parquet is not a parquet file .*set data.format"),
    ("latin.csv", "text,label\ncaf\xe9 ok,a\n".encode("latin-1"), "utf-8",
     r"latin.csv is not valid utf-8: byte 0xe9 at position \d+ .*set data.encoding"),
])
def test_an_unreadable_file_says_what_where_and_the_fix(tmp_path, name, content, encoding, expect):
    """Each of these reached the user as a pandas / pyarrow traceback (EmptyDataError, 'Expected object or
    value at position 56', 'Parquet magic bytes not found'); now one DataSourceError names the file, the
    line or byte, and the fix."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match=expect):
        ingest_frame(DataConfig(source=str(path), encoding=encoding))


def test_an_unknown_encoding_is_refused_by_the_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'bogus' is not an encoding Python knows"):
        DataConfig(encoding="bogus")
    assert DataConfig(encoding="latin-1").encoding == "latin-1"


def test_fewer_gold_rows_than_labels_per_class_asks_for_is_said(tmp_path, caplog):
    rows = [{"text": f"{lab} row number {i} about {lab}", "label": lab} for lab in ("a", "b") for i in range(3)]
    path = tmp_path / "few.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with caplog.at_level("WARNING", logger="selftrain"):
        df = ingest_frame(DataConfig(source=str(path), labels_per_class=10, val_per_class=0, test_per_class=1))
    assert (df["split"] == "train").sum() == 4  # 3 per class, 1 to test
    assert "class 'a': data.labels_per_class asks for 10 labeled rows, but only 2 are left" in caplog.text


def test_a_lost_connection_is_not_turned_into_a_user_error(tmp_path, monkeypatch):
    """A ConnectionError (an OSError) while reading stays what it is, so the stage's retries still cure a
    storage hiccup; only what a retry cannot change becomes a DataSourceError (never retried)."""
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello there,a\n")

    def hiccup(*a, **k):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(pd, "read_csv", hiccup)
    with pytest.raises(ConnectionError):
        ingest_frame(DataConfig(source=str(path)))


def test_labels_ids_and_texts_are_read_as_written(tmp_path):
    """pandas' type guessing read integer labels with a blank as '0.0' / '1.0' (a declared label '0' then
    quarantined 70 % of the rows), ids 00042 as 42 (predict kept '00042': the same row, two ids), and a
    text 'NA' / 'null' / 'None' as missing."""
    import json

    import pandas as pd

    from selftrain.config import load_config
    from selftrain.core.data.ingest import ingest_frame

    rows = [("00042", "NA", "0"), ("00043", "null", "1"), ("00044", "None", ""), ("00045", "a text", "2")]
    csv = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["Ticket ID", "Body", "Cat"]).to_csv(csv, index=False)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"Ticket ID": i, "Body": t, "Cat": int(c) if c else None}) for i, t, c in rows))
    for src in (csv, jsonl):
        cfg = load_config(None, [f"data.source={src}", "data.columns.id=Ticket ID", "data.columns.text=Body",
                                 "data.columns.label=Cat"])
        df = ingest_frame(cfg.data).set_index("id").sort_index()
        assert list(df.index) == ["00042", "00043", "00044", "00045"], src
        assert df["label"].tolist()[:2] == ["0", "1"] and pd.isna(df["label"].iloc[2]) and df["label"].iloc[3] == "2", src
        assert df["text"].tolist()[:3] == ["NA", "null", "None"], src

"""Batch prediction with a trained model (pure, Prefect-free): a file in, one parquet out.

``predict_file`` reads csv / jsonl / parquet from a local path or any fsspec URI (s3:// too), scores
it with a run's model (``<run>/models/<name>``, default the run's ``final``) or a registry version (the
champion by default), and writes one parquet: ``id, label, confidence, prob_<class>..., model_version,
model_fingerprint``. ``predict_frame`` does the same on a DataFrame in memory and writes nothing.

Why it looks like this:

- **Same inference as training.** The model is loaded through the classifier plugin that saved it
  (``selftrain.core.label.shards.load_model`` -> ``classifiers.load_trained``) and scored with the plugin's
  ``score``, exactly as pseudo-labelling scores the pool: no second copy of tokenisation or embedding.
- **Same row rules as training.** Each chunk goes through validate's pandera row schema
  (``SnapshotSchema``, bounds from the model run's ``validate`` section); rows failing ``ROW_CHECKS``
  go to a quarantine parquet beside the output with the same ``reason`` / ``check`` texts as the
  training quarantine. ``duplicate_id`` is not enforced: a stream cannot see every id at once and a
  repeated id is harmless in a prediction.
- **Bounded memory.** The input is read ``chunk_rows`` rows at a time (parquet record batches, csv /
  jsonl chunked readers) and each chunk is written as one row group; only class counts and a
  confidence histogram are kept for the drift report (``selftrain.core.predict.drift``).
- **Atomic output.** Both files are written to temp files beside their targets and renamed at the end
  (``io._atomic_local``); on object storage they are uploaded only after the last chunk is scored. A
  failure midway leaves no output, and an older output at the same place intact.
- **Errors before work.** Input columns are checked against the mapping before the model is loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.core.train.classifiers import saved_info
from selftrain.core.predict.drift import LOW_CONFIDENCE, MAX_CLASS_SHIFT, MAX_PSI, confidence_histogram, drift_report
from selftrain.core.predict.checks import check_arguments
from selftrain.core.predict.source import ModelSource, PredictError, reference_texts, resolve_model
from selftrain.core.data.ingest import as_text
from selftrain.core.data.read_errors import describe_read_error
from selftrain.core.data.validate import _row_failures, snapshot_model

log = logging.getLogger("selftrain")

CHUNK_ROWS = 8192
"""Input rows read, validated and scored at once: the memory bound of a prediction."""

ROW_CHECKS = ("id_missing", "text_missing", "text_too_short", "text_too_long")
"""The training row rules a row to predict must pass (see the module docstring for duplicate_id)."""

MAPPABLE = ("id", "text")
FORMATS = {"csv": "csv", "tsv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "pq": "parquet"}

__all__ = ["PredictError", "ModelSource", "resolve_model", "predict_file", "predict_frame", "parse_columns",
           "model_fingerprint", "CHUNK_ROWS", "ROW_CHECKS"]


# ---------------------------------------------------------------- input
def parse_columns(columns: dict[str, str] | list[str] | None) -> dict[str, str]:
    """``["text=body", "id=ticket_id"]`` (the CLI's ``--column``) or a dict -> {"text": "body", ...}."""
    if not columns:
        return {}
    if not isinstance(columns, dict):
        pairs = {}
        for item in columns:
            key, sep, value = str(item).partition("=")
            if not sep or not value.strip():
                raise PredictError(f"--column {item!r}: expected NAME=COLUMN, e.g. --column text=body")
            pairs[key.strip()] = value.strip()
        columns = pairs
    bad = sorted(set(columns) - set(MAPPABLE))
    if bad:
        raise PredictError(f"--column {', '.join(bad)}: only {' and '.join(MAPPABLE)} can be mapped "
                           "(e.g. --column text=body --column id=ticket_id)")
    return dict(columns)


def input_format(uri: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    found = FORMATS.get(name.rsplit(".", 1)[-1]) if "." in name else None
    if found is None:
        raise PredictError(f"cannot tell the format of {uri!r} from its extension; pass --format csv, jsonl or parquet")
    return found


def _read(uri: str, fmt: str, encoding: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Chunks of at most ``chunk_rows`` rows, read lazily (the file stays open while they are consumed)."""
    fs, path = io.fs_path(uri)
    if not fs.exists(path):
        raise PredictError(f"the input {uri} does not exist. Fix: --input a csv / jsonl / parquet file")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            yield pf.schema_arrow.empty_table().to_pandas()  # the columns, even of a file without rows
            for rb in pf.iter_batches(batch_size=chunk_rows):
                yield rb.to_pandas()
        return
    with fs.open(path, "rt", encoding=encoding, newline="" if fmt == "csv" else None) as f:
        if fmt == "csv":
            reader = pd.read_csv(f, chunksize=chunk_rows, dtype=str, sep="\t" if uri.lower().endswith(".tsv") else ",",
                                 keep_default_na=False, na_values=[""])  # a text "NA" is a text, as in training
        else:
            reader = pd.read_json(f, lines=True, chunksize=chunk_rows, dtype=False)
        with reader:
            yield from reader


def _chunks(uri: str, fmt: str, encoding: str, chunk_rows: int) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """(the input's columns, an iterator over its chunks). The first chunk is read here, so a missing
    file or a wrong column is reported before the model is loaded."""
    it = _read(uri, fmt, encoding, chunk_rows)
    try:
        first = next(it, None)
    except (PredictError, ConnectionError, TimeoutError):  # a lost connection is no broken file: the retries' to cure
        raise
    except (ValueError, TypeError, LookupError, OSError) as exc:  # broken, another format, wrong or unknown encoding
        def open_text():
            fs, path = io.fs_path(uri)
            return fs.open(path, "rt", encoding=encoding)

        raise PredictError(describe_read_error(uri, fmt, encoding, exc, open_text, encoding_key="--encoding",
                                               format_key="--format")) from None
    if first is None:  # a csv / jsonl without a header or rows
        return [], iter(())
    return [str(c) for c in first.columns], itertools.chain([first], it)


def resolve_mapping(found: list[str], explicit: dict[str, str], trained: dict | None, uri: str) -> dict[str, str | None]:
    """Which input column is ``text`` and which is ``id``: ``--column`` first, then the column names the
    model's own training data used (``data.columns`` of its config), then ``text`` / ``id``. No id
    column: ids are generated (``row<N>``, the input position, as ingest does)."""
    out: dict[str, str | None] = {}
    for key in MAPPABLE:
        if key in explicit:
            out[key] = explicit[key]
            continue
        cands = [c for c in ((trained or {}).get(key), key) if c]
        out[key] = next((c for c in cands if c in found), cands[-1] if key == "text" else None)
    missing = {k: v for k, v in out.items() if v is not None and v not in found}
    if missing:
        have = ", ".join(found) if found else "none (an empty file?)"
        fix = " ".join(f"--column {k}=<name>" for k in missing)
        param = ", ".join(f'"{k}": "<name>"' for k in missing)
        raise PredictError(f"{uri}: column(s) {', '.join(f'{k}={v!r}' for k, v in missing.items())} not found; "
                           f"columns found: {have}. Fix: {fix} (a deployment's parameter columns={{{param}}}) "
                           "with <name> one of the columns found")
    return out


# ---------------------------------------------------------------- model
def model_fingerprint(local_dir: str) -> str:
    """Content hash of a saved model directory (every file's relative path and bytes), so an output
    row says exactly which weights produced it, wherever the directory was copied."""
    h = hashlib.sha256()
    root = Path(local_dir)
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".complete":
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


@dataclass
class _Loaded:
    source: ModelSource
    cfg: PipelineConfig
    labels: list[str]
    fingerprint: str
    model: object


def _load_model(source: ModelSource) -> _Loaded:
    from selftrain.core.label.shards import load_model  # the pseudo-label path's loader (cached per process)

    local = io.local_dir(source.model_uri)
    try:
        _, labels = saved_info(local)
        # no embedding cache: a prediction's rows are seen once, and a cache would keep every one of them (disk and memory)
        return _Loaded(source, source.config, labels, model_fingerprint(local),
                       load_model(source.config, source.model_uri, labels, cache=False))
    except (PredictError, ConnectionError, TimeoutError):  # a lost connection: the retries' to cure
        raise
    except (OSError, ValueError, KeyError) as exc:  # a file missing or damaged in the model folder
        raise PredictError(f"the model at {source.model_uri} cannot be loaded ({type(exc).__name__}: {exc}): its folder "
                           "is incomplete or damaged. Fix: restore it or train it again, or score with another model "
                           "(--model NAME, --version N)") from None


# ---------------------------------------------------------------- scoring
def _prepare(chunk: pd.DataFrame, mapping: dict, offset: int) -> pd.DataFrame:
    """The chunk as ``id, text`` (string dtype) with a RangeIndex; generated ids are global positions."""
    n = len(chunk)
    ids = (as_text(chunk[mapping["id"]]) if mapping["id"] else
           pd.Series([f"row{offset + i}" for i in range(n)], dtype="string", index=chunk.index))
    return pd.DataFrame({"id": ids.to_numpy(), "text": chunk[mapping["text"]].astype("string").to_numpy()},
                        index=pd.RangeIndex(n)).astype("string")


def row_check(frame: pd.DataFrame, loaded: _Loaded, offset: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(bool mask of rows to score, quarantined rows: row, id, text, reason, check) via validate's schema."""
    work = frame.assign(label=pd.Series(pd.NA, index=frame.index, dtype="string"),
                        split=pd.Series("unlabeled", index=frame.index, dtype="string"))
    fails = _row_failures(work, snapshot_model(loaded.cfg.validate_, []), ())
    fails = fails[fails["check"].isin(ROW_CHECKS)]
    bad = np.zeros(len(frame), dtype=bool)
    bad[fails["pos"].to_numpy(dtype=np.int64)] = True
    per_row = fails.groupby("pos", sort=True)[["reason", "check"]].agg("; ".join)
    pos = per_row.index.to_numpy(dtype=np.int64)
    q = pd.DataFrame({"row": (pos + offset).astype(np.int64), "id": frame["id"].iloc[pos].to_numpy(),
                      "text": frame["text"].iloc[pos].to_numpy(), "reason": per_row["reason"].astype(str).to_numpy(),
                      "check": per_row["check"].astype(str).to_numpy()})
    return ~bad, q


def _schemas(labels: list[str]):
    import pyarrow as pa

    out = pa.schema([("id", pa.string()), ("label", pa.string()), ("confidence", pa.float32()),
                     *[(f"prob_{c}", pa.float32()) for c in labels],
                     ("model_version", pa.string()), ("model_fingerprint", pa.string())])
    quarantine = pa.schema([("row", pa.int64()), ("id", pa.string()), ("text", pa.string()),
                            ("reason", pa.string()), ("check", pa.string())])
    return out, quarantine


class _Tally:
    """What the drift report needs of the stream: counts only."""

    def __init__(self, labels: list[str], threshold: float):
        self.labels, self.threshold = labels, threshold
        self.rows = self.quarantined = self.low = 0
        self.per_class = np.zeros(len(labels), np.int64)
        self.hist = confidence_histogram(np.zeros(0))
        self.checks: dict[str, int] = {}

    def add(self, n_in: int, pred: np.ndarray, conf: np.ndarray, q: pd.DataFrame) -> None:
        self.rows += n_in
        self.quarantined += len(q)
        self.per_class += np.bincount(pred, minlength=len(self.labels))
        self.hist += confidence_histogram(conf)
        self.low += int((conf < self.threshold).sum())
        for checks in q["check"]:
            for c in checks.split("; "):
                self.checks[c] = self.checks.get(c, 0) + 1


def _checked(chunks, mapping: dict, loaded: _Loaded):
    """Per chunk: (its first row's input position, the chunk as ``id, text``, mask of rows passing the
    training row rules, the quarantined rows). A read error midway becomes a PredictError."""
    offset = 0
    while True:
        try:
            chunk = next(chunks, None)
        except Exception as exc:  # a corrupt row group, a malformed csv line, a lost connection
            raise PredictError(f"{loaded.source.input}: cannot read the rows after row {offset} "
                               f"({type(exc).__name__}: {str(exc).strip()}); nothing was written. Fix: repair the input and re-run"
                               ) from exc
        if chunk is None:
            return
        frame = _prepare(chunk, mapping, offset)
        ok, q = row_check(frame, loaded, offset)
        yield offset, frame, ok, q
        offset += len(frame)


def output_frame(ids, probs: np.ndarray, labels: list[str], version: str, fingerprint: str) -> pd.DataFrame:
    """The output's columns for scored rows: id, label, confidence, prob_<class>..., model_version, model_fingerprint."""
    pred, conf = probs.argmax(1), probs.max(1) if len(probs) else np.zeros(0, np.float32)
    return pd.DataFrame({"id": pd.Series(np.asarray(ids, dtype=object), dtype=object).astype(str).to_numpy(),
                         "label": np.asarray(labels, dtype=object)[pred] if len(pred) else np.zeros(0, object),
                         "confidence": conf.astype(np.float32),
                         **{f"prob_{c}": probs[:, i].astype(np.float32) for i, c in enumerate(labels)},
                         "model_version": version, "model_fingerprint": fingerprint})


def _score(chunks, mapping: dict, loaded: _Loaded, tally: _Tally):
    """Per chunk: (prediction frame, quarantine frame). The caller writes or collects them."""
    bs = loaded.cfg.pseudo_label.batch_size
    for _, frame, ok, q in _checked(chunks, mapping, loaded):
        texts = frame.loc[ok, "text"].astype(str).tolist()
        probs = loaded.model.score(texts, bs)[0] if texts else np.zeros((0, len(loaded.labels)), np.float32)
        out = output_frame(frame.loc[ok, "id"].to_numpy(), probs, loaded.labels, loaded.source.version,
                           loaded.fingerprint)
        tally.add(len(frame), probs.argmax(1), out["confidence"].to_numpy(), q)
        yield out, q


def _drift(loaded: _Loaded, tally: _Tally, reference: bool, threshold: float, max_class_shift: float,
           max_psi: float) -> tuple[dict, str]:
    src, notes, ref_hist = loaded.source, list(loaded.source.notes), None
    if reference and tally.rows - tally.quarantined > 0:
        texts, where = reference_texts(src)
        if texts:
            ref_hist = confidence_histogram(loaded.model.score(texts, loaded.cfg.pseudo_label.batch_size)[0].max(1))
            src.reference_source = f"{where}, scored with the same model"
        else:
            notes.append(where)
    elif not reference:
        notes.append("reference scoring turned off (reference=False): PSI skipped")
    return drift_report({c: int(v) for c, v in zip(loaded.labels, tally.per_class)}, src.prior, tally.hist, tally.low,
                        reference_counts=ref_hist, threshold=threshold, max_class_shift=max_class_shift,
                        max_psi=max_psi, prior_source=src.prior_source, reference_source=src.reference_source,
                        notes=notes)


def _result(loaded: _Loaded, tally: _Tally, drift: tuple[dict, str], t0: float, **extra) -> dict:
    report, md = drift
    return {**extra, "rows": tally.rows, "predicted": tally.rows - tally.quarantined, "quarantined": tally.quarantined,
            "quarantine_checks": dict(sorted(tally.checks.items())), "labels": loaded.labels,
            "model_uri": loaded.source.model_uri, "model_version": loaded.source.version,
            "model_fingerprint": loaded.fingerprint, "model_name": loaded.source.name, "drift": report,
            "markdown": md, "seconds": round(time.perf_counter() - t0, 3)}


# ---------------------------------------------------------------- writing
def quarantine_uri(output: str) -> str:
    """``preds.parquet`` (or the directory ``preds/`` of a sharded run) -> ``preds.quarantine.parquet``, beside it."""
    return output.rstrip("/").removesuffix(".parquet") + ".quarantine.parquet"


def _write_pair(output: str, quarantine: str, write) -> None:
    """``write(local_out, local_q)`` then publish both atomically (quarantine first, output last)."""
    if not io.is_remote(output) and not io.is_remote(quarantine):
        out, q = output.removeprefix("file://"), quarantine.removeprefix("file://")
        io._atomic_local(out, lambda tmp_out: io._atomic_local(q, lambda tmp_q: write(tmp_out, tmp_q)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local_out, local_q = os.path.join(tmp, "out.parquet"), os.path.join(tmp, "q.parquet")
        write(local_out, local_q)
        for local, uri in ((local_q, quarantine), (local_out, output)):
            fs, path = io.fs_path(uri)
            fs.put(local, path)  # an S3 object appears only once its upload is complete


# ---------------------------------------------------------------- public API
def _paths(*values):
    """pathlib.Path (or any os.PathLike) arguments as the strings the rest reads; None stays None."""
    return tuple(None if v is None else os.fspath(v) for v in values)


def predict_file(input: str, output: str, *, run_dir: str | None = None, model: str | None = None,
                 root: str | None = None, name: str | None = None, version: str | None = None,
                 columns: dict[str, str] | list[str] | None = None, format: str = "auto", encoding: str = "utf-8",
                 chunk_rows: int = CHUNK_ROWS, threshold: float = LOW_CONFIDENCE,
                 max_class_shift: float = MAX_CLASS_SHIFT, max_psi: float = MAX_PSI, reference: bool = True) -> dict:
    """Score ``input`` with a run's model (``run_dir`` [+ ``model``]) or a registry version (``root`` [+
    ``name``, ``version``; default the champion]) -> ``output`` (+ ``<output>.quarantine.parquet``).

    Returns counts (``rows == predicted + quarantined``), the model's version and fingerprint and the
    drift report (``drift``, with its ``markdown``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    input, output, run_dir, root = _paths(input, output, run_dir, root)
    check_arguments(output, chunk_rows, threshold, max_class_shift, max_psi)
    fs, opath = io.fs_path(output)
    if fs.isdir(opath):  # e.g. a sharded prediction's output: publishing over it would fail after the quarantine
        raise PredictError(f"--output {output} is a folder (a sharded prediction's output?), and this prediction "
                           "writes one parquet file. Fix: -o a new file name (e.g. preds.parquet), or --workers N to "
                           "write a sharded folder")
    explicit = parse_columns(columns)
    source = resolve_model(run_dir=run_dir, model=model, root=root, name=name, version=version)
    source.input = input
    found, chunks = _chunks(input, input_format(input, format), encoding, chunk_rows)
    mapping = resolve_mapping(found, explicit, source.config.data.columns.model_dump(), input)
    loaded = _load_model(source)  # only now: the input fits
    tally = _Tally(loaded.labels, threshold)
    out_schema, q_schema = _schemas(loaded.labels)
    q_out = quarantine_uri(output)

    def write(local_out: str, local_q: str) -> None:
        with pq.ParquetWriter(local_out, out_schema) as w, pq.ParquetWriter(local_q, q_schema) as wq:
            for out, q in _score(chunks, mapping, loaded, tally):
                if len(out):
                    w.write_table(pa.Table.from_pandas(out, schema=out_schema, preserve_index=False))
                if len(q):
                    wq.write_table(pa.Table.from_pandas(q, schema=q_schema, preserve_index=False))

    _write_pair(output, q_out, write)
    log.info("predicted %d rows of %s (%d quarantined) -> %s", tally.rows - tally.quarantined, input,
             tally.quarantined, output)
    drift = _drift(loaded, tally, reference, threshold, max_class_shift, max_psi)
    return _result(loaded, tally, drift, t0, input=input, output=output, quarantine=q_out, columns=mapping)


def predict_frame(frame: pd.DataFrame, *, run_dir: str | None = None, model: str | None = None,
                  root: str | None = None, name: str | None = None, version: str | None = None,
                  columns: dict[str, str] | list[str] | None = None, chunk_rows: int = CHUNK_ROWS,
                  threshold: float = LOW_CONFIDENCE, max_class_shift: float = MAX_CLASS_SHIFT,
                  max_psi: float = MAX_PSI, reference: bool = True) -> dict:
    """``predict_file`` on a DataFrame already in memory; nothing is written. The result also holds
    ``predictions`` and ``quarantine`` (DataFrames with the columns of the two files)."""
    t0 = time.perf_counter()
    run_dir, root = _paths(run_dir, root)
    if not isinstance(frame, pd.DataFrame):
        raise PredictError(f"predict_frame takes a pandas DataFrame, got {type(frame).__name__}. Fix: e.g. "
                           "pd.DataFrame({'text': texts}) (a Series: series.to_frame('text'))")
    dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if dup:
        raise PredictError(f"the frame has duplicate column names {dup}: which one is meant cannot be told. Fix: rename "
                           "them (df.columns = [...])")
    frame = frame.rename(columns=str)  # columns={"text": "0"} names an integer column 0
    check_arguments(None, chunk_rows, threshold, max_class_shift, max_psi)
    source = resolve_model(run_dir=run_dir, model=model, root=root, name=name, version=version)
    source.input = "the frame"
    explicit = {k: str(v) for k, v in parse_columns(columns).items()}  # {"text": 0} as the renamed column "0"
    mapping = resolve_mapping(list(frame.columns), explicit, source.config.data.columns.model_dump(), "the frame")
    loaded = _load_model(source)
    tally = _Tally(loaded.labels, threshold)
    chunks = (frame.iloc[i:i + chunk_rows] for i in range(0, len(frame), chunk_rows))
    parts = list(_score(chunks, mapping, loaded, tally))
    out_schema, q_schema = _schemas(loaded.labels)
    preds = pd.concat([p for p, _ in parts], ignore_index=True) if parts else out_schema.empty_table().to_pandas()
    quar = pd.concat([q for _, q in parts], ignore_index=True) if parts else q_schema.empty_table().to_pandas()
    drift = _drift(loaded, tally, reference, threshold, max_class_shift, max_psi)
    return _result(loaded, tally, drift, t0, predictions=preds, quarantine=quar, columns=mapping)


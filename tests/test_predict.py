"""Batch prediction (selftrain.core.predict.batch, the CLI, the flow) with a real trained model.

One small real run is trained once for the module: the demo's recipe (frozen MiniLM + probe) on
4 gold BBC articles per class, 10 test articles per class, no pool, no pseudo-labels (~15 s on 2
cores, seconds once the embedding cache is warm). Its ``final`` model is the baseline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

RUN_OVERRIDES = ["data.labels_per_class=4", "data.val_per_class=0", "data.test_per_class=10", "data.unlabeled_size=0",
                 "pseudo_label.enabled=false", "model.max_length=128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from selftrain.config import load_config
    from selftrain.core.run.pipeline import run_stages

    out = tmp_path_factory.mktemp("predict") / "run"
    cfg = load_config(None, [f"output_dir={out}", *RUN_OVERRIDES])
    result = run_stages(cfg)
    clean = pd.read_parquet(out / "data" / "clean.parquet")
    test = clean[clean["split"] == "test"][["id", "text", "label"]].reset_index(drop=True)
    return {"cfg": cfg, "dir": str(out), "final": result["final"], "test": test}


def _test_predictions(run) -> tuple[list[str], np.ndarray]:
    """The run's test-split predictions, as evaluate computes them (metrics.json keeps only the metrics)."""
    from selftrain.core.train.classifiers import load_trained, saved_info

    uri = str(Path(run["dir"]) / "models" / run["final"])
    labels = saved_info(uri)[1]
    probs = load_trained(run["cfg"], uri, labels).predict_proba(run["test"]["text"].tolist(), 128)
    return labels, probs


def test_predictions_equal_the_runs_own_test_predictions(run, tmp_path):
    from selftrain.core.predict.batch import predict_file

    src = tmp_path / "test.parquet"
    run["test"][["id", "text"]].to_parquet(src, index=False)
    res = predict_file(str(src), str(tmp_path / "preds.parquet"), run_dir=run["dir"], chunk_rows=7)
    out = pd.read_parquet(tmp_path / "preds.parquet")
    labels, probs = _test_predictions(run)
    assert res["rows"] == res["predicted"] == len(out) == len(run["test"]) and res["quarantined"] == 0
    assert list(out.columns) == ["id", "label", "confidence", *[f"prob_{c}" for c in labels], "model_version",
                                 "model_fingerprint"]
    assert out["id"].tolist() == run["test"]["id"].tolist(), "one row per input row, in input order"
    assert out["label"].tolist() == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out[[f"prob_{c}" for c in labels]].to_numpy(), probs, atol=1e-4)
    np.testing.assert_allclose(out["confidence"].to_numpy(), probs.max(1), atol=1e-4)
    assert set(out["model_version"]) == {f"run/{run['final']}"} and res["model_version"] == f"run/{run['final']}"
    assert set(out["model_fingerprint"]) == {res["model_fingerprint"]} and len(res["model_fingerprint"]) == 16
    d = res["drift"]
    assert d["prior_source"].startswith("metrics.json") and d["psi"] is not None and d["psi"] < 0.05, \
        "the run's own test rows against the run's own test rows: no confidence shift"
    assert d["reference_rows"] == len(run["test"]) and "| class shift" in res["markdown"]


def test_bad_rows_are_quarantined_with_reasons_and_counts_add_up(run, tmp_path):
    from selftrain.core.predict.batch import predict_file

    good = run["test"].head(6)
    rows = [{"id": i, "text": t} for i, t in zip(good["id"], good["text"])]
    rows += [{"id": "empty", "text": ""}, {"id": "blank", "text": "   "}, {"id": None, "text": good["text"].iloc[0]},
             {"id": "long", "text": "x" * (run["cfg"].validate_.max_chars + 1)}, {"id": "short", "text": "ok"},
             {"id": "none", "text": None}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = predict_file(str(src), str(tmp_path / "preds.parquet"), run_dir=run["dir"], chunk_rows=4)
    q = pd.read_parquet(res["quarantine"])
    assert res["quarantine"] == str(tmp_path / "preds.quarantine.parquet")
    assert res["predicted"] + res["quarantined"] == res["rows"] == len(rows)
    assert res["predicted"] == 6 == len(pd.read_parquet(tmp_path / "preds.parquet"))
    assert res["quarantined"] == len(q) == 6
    by_row = dict(zip(q["row"], q["reason"]))
    assert by_row[6] == by_row[7] == "text shorter than 3 chars (got 0)" and by_row[8] == "id is missing"
    assert by_row[9] == f"text longer than {run['cfg'].validate_.max_chars} chars (got {run['cfg'].validate_.max_chars + 1})"
    assert by_row[10] == "text shorter than 3 chars (got 2)" and by_row[11] == "text is missing"
    assert res["quarantine_checks"] == {"id_missing": 1, "text_missing": 1, "text_too_long": 1, "text_too_short": 3}
    assert {"row", "id", "text", "reason", "check"} == set(q.columns)


def test_a_column_mismatch_is_refused_before_any_model_loads(run, tmp_path):
    from selftrain.core.label import shards
    from selftrain.core.predict.batch import PredictError, predict_file

    src = tmp_path / "tickets.csv"
    pd.DataFrame({"ticket_id": ["t1", "t2"], "body": run["test"]["text"].head(2)}).to_csv(src, index=False)
    shards._LOADED.clear()
    with pytest.raises(PredictError) as err:
        predict_file(str(src), str(tmp_path / "p.parquet"), run_dir=run["dir"])
    msg = str(err.value)
    assert "text='text' not found" in msg and "columns found: ticket_id, body" in msg and "--column text=<name>" in msg
    assert 'a deployment\'s parameter columns={"text": "<name>"}' in msg  # the run form's words too
    assert not shards._LOADED, "no model was loaded"
    assert not (tmp_path / "p.parquet").exists()
    with pytest.raises(PredictError, match="id='id' not found"):
        predict_file(str(src), str(tmp_path / "p.parquet"), run_dir=run["dir"], columns=["text=body", "id=id"])
    assert not shards._LOADED
    res = predict_file(str(src), str(tmp_path / "p.parquet"), run_dir=run["dir"], columns=["text=body", "id=ticket_id"])
    assert pd.read_parquet(tmp_path / "p.parquet")["id"].tolist() == ["t1", "t2"] and res["predicted"] == 2


def test_drift_report_flags_a_shifted_class_mix_and_a_confidence_shift():
    from selftrain.core.predict.drift import confidence_histogram, drift_report

    prior = {c: 4 for c in "abcde"}
    hist = confidence_histogram(np.linspace(0.3, 0.9, 50))
    rep, md = drift_report({"a": 10, "b": 10, "c": 10, "d": 10, "e": 10}, prior, hist, 5, reference_counts=hist)
    assert rep["class_shift"] == pytest.approx(0.0) and rep["psi"] == pytest.approx(0.0) and not rep["drift"]
    assert rep["low_confidence_share"] == pytest.approx(0.1) and "no drift" in md
    rep, md = drift_report({"a": 50}, prior, confidence_histogram(np.full(50, 0.95)), 0, reference_counts=hist)
    assert rep["class_shift"] == pytest.approx(0.8) and rep["psi"] > 0.25 and rep["drift"] and len(rep["flags"]) == 2
    assert "**drift**" in md and "| a | 0.200 | 1.000 | 50 |" in md
    rep, _ = drift_report({"a": 3}, None, confidence_histogram(np.full(3, 0.9)), 0)
    assert rep["class_shift"] is None and rep["psi"] is None and not rep["drift"] and len(rep["notes"]) == 2


def test_one_class_input_makes_the_prediction_report_drift(run):
    from selftrain.core.predict.batch import predict_frame

    test = run["test"]
    balanced = predict_frame(test[["id", "text"]], run_dir=run["dir"], reference=False)
    one = test[test["label"] == test["label"].iloc[0]][["id", "text"]]
    shifted = predict_frame(one, run_dir=run["dir"], reference=False)
    assert balanced["drift"]["class_shift"] < balanced["drift"]["max_class_shift"] and not balanced["drift"]["drift"]
    assert shifted["drift"]["class_shift"] > shifted["drift"]["max_class_shift"] and shifted["drift"]["drift"]
    assert shifted["drift"]["class_shift"] > balanced["drift"]["class_shift"] + 0.3
    assert len(shifted["predictions"]) == len(one) and "PSI skipped" in " ".join(shifted["drift"]["notes"])


def test_the_output_appears_whole_or_not_at_all(run, tmp_path):
    from selftrain.core.predict.batch import PredictError, predict_file

    texts = [t.replace("\n", " ").replace('"', "'") for t in run["test"]["text"].head(12)]
    lines = ["id,text"] + [f'r{i},"{t}"' for i, t in enumerate(texts)]
    lines[10] = 'r9,"a line",with,too,many,fields'  # row 9: in the third chunk of 4 rows
    src = tmp_path / "broken.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.parquet"
    out.write_bytes(b"the previous predictions")
    with pytest.raises(PredictError, match="cannot read the rows after row 8.*nothing was written"):
        predict_file(str(src), str(out), run_dir=run["dir"], chunk_rows=4, reference=False)
    assert out.read_bytes() == b"the previous predictions", "the older output is intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.csv", "preds.parquet"], "no temp or partial file"
    out.unlink()
    with pytest.raises(PredictError):
        predict_file(str(src), str(out), run_dir=run["dir"], chunk_rows=4, reference=False)
    assert not out.exists()


def test_cli_predict_without_prefect(run, tmp_path, capsys):
    from selftrain.cli import main

    src = tmp_path / "tickets.csv"
    # a text "null" is a text (pandas read it as missing), an empty cell is missing
    pd.DataFrame({"ticket_id": [f"t{i}" for i in range(6)], "body": [*run["test"]["text"].head(4), "null", ""]}).to_csv(
        src, index=False)
    out = tmp_path / "preds.parquet"
    rc = main(["predict", "--input", str(src), "--run", run["dir"], "-o", str(out), "--column", "text=body",
               "--column", "id=ticket_id", "--no-prefect"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "6 rows: 5 predicted" in printed and "1 quarantined (text_missing 1)" in printed
    assert "# Prediction drift" in printed and "class shift" in printed
    assert pd.read_parquet(out)["id"].tolist() == ["t0", "t1", "t2", "t3", "t4"]
    rc = main(["predict", "--input", str(src), "--run", run["dir"], "-o", str(out), "--no-prefect"])
    assert rc == 2 and "--column text=<name>" in capsys.readouterr().err


def test_predict_with_the_registry_champion(run, tmp_path):
    """--root: the champion of a registry (version, prior and PSI reference from the registry's files)."""
    import yaml

    from selftrain.core.predict.batch import predict_file
    from selftrain.core.registry.store import Registry

    reg = Registry(str(tmp_path / "artifacts" / "news"), "news")
    reg.create({"labels": sorted(run["test"]["label"].unique())}, run["test"])
    meta = {"data": {"gold_per_class": {"train": {c: 4 for c in sorted(run["test"]["label"].unique())}}}}
    v = reg.register(str(Path(run["dir"]) / "models" / run["final"]), meta,
                     {"config.yaml": yaml.safe_dump(run["cfg"].dump(), sort_keys=False)})
    reg.promote(v)
    src = tmp_path / "in.parquet"
    run["test"][["id", "text"]].head(10).to_parquet(src, index=False)
    res = predict_file(str(src), str(tmp_path / "p.parquet"), root=str(tmp_path / "artifacts"), name="news")
    out = pd.read_parquet(tmp_path / "p.parquet")
    assert res["model_version"] == v == "v0001" and set(out["model_version"]) == {"v0001"}
    assert res["drift"]["prior_source"].startswith("v0001/version.json") and "frozen.parquet" in res["drift"]["reference_source"]
    assert res["model_name"] == "news" and res["predicted"] == 10


def test_predict_flow_publishes_the_drift_artifact_and_event(prefect_api, run, tmp_path):
    import uuid

    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from prefect.events.schemas.events import Resource

    from selftrain.flows import drift_event, predict

    one = run["test"][run["test"]["label"] == run["test"]["label"].iloc[0]][["id", "text"]]
    one.to_parquet(tmp_path / "in.parquet", index=False)
    res = predict(str(tmp_path / "in.parquet"), str(tmp_path / "p.parquet"), run_dir=run["dir"], reference=False)
    assert res["drift"]["drift"] and (tmp_path / "p.parquet").exists()
    import asyncio

    from prefect.client.orchestration import get_client

    async def artifacts():
        async with get_client() as client:
            return [a for a in await client.read_artifacts() if a.key == "demo-predict-drift"]

    (art,) = asyncio.run(artifacts())[-1:]
    assert "# Prediction drift" in art.data and "**drift**" in art.data

    # the automation example fires on this event, and not on one without drift
    text = (Path(__file__).resolve().parents[1] / "deployments" / "drift-retrain-automation.yaml").read_text()
    auto = AutomationCore.model_validate(yaml.safe_load(text.replace("RETRAIN_DEPLOYMENT_ID", str(uuid.uuid4()))))
    ev = drift_event(res)
    assert auto.trigger.expect == {ev["event"]} == {"selftrain.predict.drift"}
    assert auto.trigger.match.matches(Resource(ev["resource"]))
    assert ev["payload"]["class_shift"] == res["drift"]["class_shift"] and ev["payload"]["drift"] is True
    calm = {**res, "drift": {**res["drift"], "drift": False, "flags": []}}
    assert not auto.trigger.match.matches(Resource(drift_event(calm)["resource"]))
    # relative paths (a deployment's working directory) are made absolute: the triggered retrain runs elsewhere
    rel = drift_event({**res, "input": "landing/in.csv", "output": "out/p.parquet", "model_uri": "runs/demo/models/x"})
    assert [rel["payload"][k] for k in ("input", "output", "model_uri")] == [
        os.path.abspath(p) for p in ("landing/in.csv", "out/p.parquet", "runs/demo/models/x")]
    assert drift_event({**res, "input": "s3://b/in.csv"})["payload"]["input"] == "s3://b/in.csv"


def test_input_and_output_on_s3(run, s3_bucket):
    """Any fsspec URI: read from and write to a real S3 API (moto); the objects appear complete."""
    import s3fs

    from selftrain.core.predict.batch import predict_file

    fs = s3fs.S3FileSystem()
    with fs.open(f"{s3_bucket}/in/batch.csv", "wb") as f:
        f.write(run["test"][["id", "text"]].head(5).to_csv(index=False).encode())
    res = predict_file(f"s3://{s3_bucket}/in/batch.csv", f"s3://{s3_bucket}/out/preds.parquet", run_dir=run["dir"],
                       chunk_rows=2, reference=False)
    fs.invalidate_cache()
    with fs.open(f"{s3_bucket}/out/preds.parquet", "rb") as f:
        out = pd.read_parquet(f)
    assert out["id"].tolist() == run["test"]["id"].head(5).tolist() and res["predicted"] == 5
    assert fs.exists(f"{s3_bucket}/out/preds.quarantine.parquet")


def _landing(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_landing_prefix_lists_only_new_prediction_inputs(tmp_path):
    from selftrain.core.predict.landing import pending
    from selftrain.core.predict.source import PredictError

    inc, out = tmp_path / "incoming", tmp_path / "predictions"
    _landing(inc, {"a.csv": "id,text\n1,x\n", "day2/b.jsonl": "{}\n", "c.parquet": "", "notes.txt": "",
                   ".upload.csv": "", "_SUCCESS": "", "day2/_tmp.csv": ""})
    _landing(out, {"c.parquet": ""})  # c was predicted by an earlier run
    jobs = pending(str(inc) + "/", str(out))
    assert [(j["input"], j["output"]) for j in jobs] == [
        (f"{inc}/a.csv", str(out / "a.parquet")), (f"{inc}/day2/b.jsonl", str(out / "day2" / "b.parquet"))]
    assert len(pending(str(inc), str(out), max_files=1)) == 1
    with pytest.raises(PredictError, match="not a folder.*Fix"):
        pending(str(tmp_path / "nowhere"), str(out))


def test_landing_prefix_on_s3(s3_bucket):
    import s3fs

    from selftrain.core.predict.landing import pending

    fs = s3fs.S3FileSystem()
    for key in ("in/a.csv", "in/b.parquet", "out/b.parquet"):
        fs.pipe(f"{s3_bucket}/{key}", b"x")
    fs.invalidate_cache()
    jobs = pending(f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out")
    assert jobs == [{"input": f"s3://{s3_bucket}/in/a.csv", "output": f"s3://{s3_bucket}/out/a.parquet"}]


def test_predict_landing_flow_scores_each_new_file_once_and_retries_a_failed_one(prefect_api, run, tmp_path):
    from selftrain.flows import predict_landing

    inc, out = tmp_path / "incoming", tmp_path / "predictions"
    inc.mkdir()
    rows = run["test"][["id", "text"]]
    rows.head(6).to_csv(inc / "a.csv", index=False)
    rows.tail(4).rename(columns={"text": "body"}).to_csv(inc / "b.csv", index=False)  # no text column: refused
    with pytest.raises(Exception, match="1 of 2 landed file.*b.csv"):
        predict_landing(str(inc), str(out), run_dir=run["dir"], reference=False)
    assert pd.read_parquet(out / "a.parquet")["id"].astype(str).tolist() == rows.head(6)["id"].astype(str).tolist()
    assert not (out / "b.parquet").exists()

    rows.tail(4).to_csv(inc / "b.csv", index=False)  # fixed upstream: the next run takes b, and only b
    done = predict_landing(str(inc), str(out), run_dir=run["dir"], reference=False)
    assert [d["input"] for d in done] == [f"{inc}/b.csv"] and done[0]["predicted"] == 4
    assert predict_landing(str(inc), str(out), run_dir=run["dir"], reference=False) == []


@pytest.mark.parametrize("kw, match", [
    ({"output": "preds.csv"}, r"--output preds.csv: predictions are written as parquet.*Fix: -o preds.parquet"),
    ({"threshold": 1.5}, r"--threshold 1.5: a confidence threshold lies in \[0, 1\]"),
    ({"max_class_shift": 0.0}, r"--max-class-shift 0.0: a class-mix distance lies in \(0, 1\]"),
    ({"max_psi": -1.0}, r"--max-psi -1.0: must be above 0"),
    ({"chunk_rows": 0}, r"chunk_rows=0: must be at least 1"),
])
def test_bad_prediction_arguments_are_refused_before_any_work(kw, match):
    """`-o p.csv` used to write parquet bytes into p.csv (exit 0); `--threshold 1.5` flagged every row."""
    from selftrain.core.predict.batch import PredictError, check_arguments

    args = {"output": "preds.parquet", "chunk_rows": 8, "threshold": 0.5, "max_class_shift": 0.25, "max_psi": 0.25, **kw}
    with pytest.raises(PredictError, match=match):
        check_arguments(**args)
    check_arguments("preds.parquet", 8, 0.5, 0.25, 0.25)  # the defaults pass
    check_arguments("preds/", 8, 0.0, 1.0, 0.1)  # a sharded run's folder, the range ends


def test_a_run_directory_that_does_not_exist_is_named_as_such(tmp_path):
    from selftrain.core.predict.source import PredictError, resolve_model

    with pytest.raises(PredictError, match=r"the run directory .*nope does not exist\. Fix: --run"):
        resolve_model(run_dir=str(tmp_path / "nope"))


def test_an_unreadable_input_names_the_line_or_the_encoding(tmp_path):
    from selftrain.core.predict.batch import PredictError, _chunks

    bad = tmp_path / "new.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(PredictError, match=r"new.jsonl line 2 is not a JSON object .*or set --format"):
        _chunks(str(bad), "jsonl", "utf-8", 8)
    latin = tmp_path / "new.csv"
    latin.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PredictError, match=r"not valid utf-8: byte 0xe9 .*Fix: set --encoding"):
        _chunks(str(latin), "csv", "utf-8", 8)
    with pytest.raises(PredictError, match=r"--encoding 'bogus' is not an encoding Python knows"):
        _chunks(str(latin), "csv", "bogus", 8)


@pytest.mark.parametrize("damage, match", [
    ("weights", r"(?s)the model at .* cannot be loaded \(.*\): its folder is incomplete or damaged\. Fix: restore it"),
    ("selftrain_classifier.json", r"(?s)the model at .* cannot be loaded .*Fix: restore it or train it again"),
    ("metrics.json", r"(?s)metrics\.json is damaged: not valid JSON .*Fix: restore it, or name the model yourself"),
    ("config.yaml", r"(?s)config\.yaml is damaged: not valid YAML .*Fix: restore it"),
])
def test_a_damaged_run_directory_names_the_file_not_a_traceback(run, tmp_path, damage, match):
    """Each of these reached the user as a FileNotFoundError / JSONDecodeError / yaml ParserError traceback."""
    import shutil

    from selftrain.core.predict.batch import PredictError, predict_file

    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    model = copy / "models" / run["final"]
    if damage == "weights":
        for f in [*model.glob("*.safetensors"), *model.glob("*.bin")]:
            f.unlink()
    else:
        (model if damage == "selftrain_classifier.json" else copy).joinpath(damage).write_text("{oops: [")
    src = tmp_path / "in.csv"
    run["test"][["id", "text"]].head(3).to_csv(src, index=False)
    with pytest.raises(PredictError, match=match):
        predict_file(str(src), str(tmp_path / "preds.parquet"), run_dir=str(copy), reference=False)
    assert not (tmp_path / "preds.parquet").exists()


def test_a_lost_connection_while_reading_the_input_stays_retryable(tmp_path, monkeypatch):
    from selftrain.core.predict import batch

    def hiccup(*a, **k):
        raise ConnectionError("connection reset by peer")
        yield  # a generator, as _read is

    monkeypatch.setattr(batch, "_read", hiccup)
    with pytest.raises(ConnectionError):  # not a PredictError: tasks.RETRY retries it
        batch._chunks(str(tmp_path / "in.csv"), "csv", "utf-8", 8)


def test_a_backbone_or_a_temp_folder_is_not_offered_as_a_model(run, tmp_path):
    """The --model listing offered models/init / models/pretrain (backbones: predicting with one crashed in
    softmax) and a killed stage's .teacher.tmp-* folder; now only classifiers are listed, and a backbone says so."""
    import shutil

    from selftrain.core.predict.source import PredictError, classifier_models, resolve_model

    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    (copy / "models" / "init").mkdir()
    (copy / "models" / "init" / "config.json").write_text('{"architectures": ["BertModel"], "id2label": {"0": "LABEL_0"}}')
    shutil.copytree(copy / "models" / run["final"], copy / "models" / ".teacher.tmp-1e690248")
    have = classifier_models(str(copy))
    assert run["final"] in have and "init" not in have and not any(n.startswith(".") for n in have)
    with pytest.raises(PredictError, match=rf"models/init is a backbone, not a classifier .*; the classifiers there: "
                                           rf".*{run['final']}.*Fix: --model one of those"):
        resolve_model(run_dir=str(copy), model="init")
    with pytest.raises(PredictError, match=r"models/nosuch is not a saved model"):
        resolve_model(run_dir=str(copy), model="nosuch")


def test_a_single_file_prediction_over_a_folder_is_refused_before_anything_is_written(run, tmp_path):
    """-o naming a sharded prediction's folder failed at the very end (IsADirectoryError), after its
    quarantine file had been replaced by this input's."""
    from selftrain.core.predict.batch import PredictError, predict_file

    (tmp_path / "preds").mkdir()
    q = tmp_path / "preds.quarantine.parquet"
    q.write_bytes(b"the earlier prediction's quarantine")
    src = tmp_path / "in.csv"
    run["test"][["id", "text"]].head(3).to_csv(src, index=False)
    with pytest.raises(PredictError, match=r"--output .*preds is a folder .*Fix: -o a new file name"):
        predict_file(str(src), str(tmp_path / "preds"), run_dir=run["dir"], reference=False)
    assert q.read_bytes() == b"the earlier prediction's quarantine"


def test_python_callers_get_paths_and_frames_taken_or_refused_in_words(run, tmp_path):
    """predict_file(Path(...)) raised AttributeError 'PosixPath' has no 'rstrip'; predict_frame took a list or
    a Series into an AttributeError, duplicate columns into 'Buffer has wrong number of dimensions', and an
    integer column name into 'text=0 not found; columns found: 0'."""
    from selftrain.core.predict.batch import PredictError, predict_file, predict_frame

    texts = run["test"]["text"].head(3).tolist()
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    res = predict_file(src, tmp_path / "p.parquet", run_dir=Path(run["dir"]), reference=False)
    assert res["predicted"] == 3 and (tmp_path / "p.parquet").exists()
    assert predict_frame(pd.DataFrame({0: texts}), run_dir=Path(run["dir"]), columns={"text": 0},
                         reference=False)["predicted"] == 3
    for bad, match in ((texts, "takes a pandas DataFrame, got list"), (pd.Series(texts), "got Series"),
                       (pd.DataFrame([[t, t] for t in texts], columns=["text", "text"]), r"duplicate column names \['text'\]")):
        with pytest.raises(PredictError, match=match):
            predict_frame(bad, run_dir=run["dir"], reference=False)

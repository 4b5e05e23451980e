"""The ``retrain`` flow on a real (ephemeral) Prefect API: first run -> champion v1; unchanged data
-> nothing to do, fast; new data -> a challenger, promoted only when it beats the champion on the
frozen evaluation set; the event, the artifacts, the registry's contents; the deployment and
automation files. Real tiny models (from-scratch tiny BERT) on a small slice of BBC news."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny.yaml"
# a slightly wider tiny BERT than tiny.yaml's, no baseline: learns BBC topics in seconds
OVERRIDES = ["data.columns.id=id", "data.labels_per_class=null", "data.val_per_class=5", "data.test_per_class=5",
             "data.unlabeled_size=null", "evaluate.baseline=false", "finetune.epochs=20", "finetune.patience=20",
             "finetune.lr=0.003", "model.options.hidden_size=64", "model.options.heads=4", "retrain.eval_per_class=6"]
BAD_LR = "finetune.lr=0.000001"  # a challenger that learns nothing (predicts one class)


def _bbc() -> pd.DataFrame:
    from selftrain.core.data.ingest import _builtin

    return _builtin("bbc")[0]


def _slice(bbc: pd.DataFrame, start: int, labeled: int, unlabeled: int) -> pd.DataFrame:
    """Per class, rows [start, start+labeled) labeled and the next ``unlabeled`` rows without a label."""
    parts = []
    for _, g in bbc.groupby("label", sort=True):
        g = g.iloc[start : start + labeled + unlabeled].copy()
        g.iloc[labeled:, g.columns.get_loc("label")] = None
        parts.append(g)
    return pd.concat(parts)[["id", "text", "label"]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _client_call(fn):
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def _finetune_task_runs() -> int:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    flt = TaskRunFilter(name=TaskRunFilterName(like_="finetune"))
    return len(_client_call(lambda c: c.read_task_runs(task_run_filter=flt, limit=200)))


def _events(name: str, n: int, timeout: float = 60) -> list:
    """The selftrain.model.promoted events of model ``name`` once ``n`` have reached the API (oldest first)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter

    flt = EventFilter(event=EventNameFilter(name=["selftrain.model.promoted"]),
                      resource=EventResourceFilter(id=[f"selftrain.model.{name}"]), order=EventOrder.ASC)
    deadline = time.time() + timeout
    while True:
        events = _client_call(lambda c: c.read_events(filter=flt, limit=50)).events
        if len(events) >= n or time.time() > deadline:
            return events
        time.sleep(0.5)


def _artifact(key: str):
    arts = _client_call(lambda c: c.read_artifacts())
    found = [a for a in arts if a.key == key]
    return max(found, key=lambda a: a.created) if found else None


def _norm(texts) -> set:
    from selftrain.core.data.text import normalize_text

    return set(normalize_text(pd.Series(list(texts), dtype="string")).dropna())


@pytest.mark.slow
def test_retrain_champion_challenger_cycle(prefect_api, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selftrain import __version__
    from selftrain.config import load_config
    from selftrain.core.common import io
    from selftrain.core.registry.store import Registry
    from selftrain.core.registry.retrain import read_rows
    from selftrain.flows import retrain
    from selftrain.config import used_versions

    bbc = _bbc()
    source = tmp_path / "news.csv"
    _slice(bbc, 0, 30, 20).to_csv(source, index=False)
    name = f"news-{uuid.uuid4().hex[:6]}"

    def config(*extra: str):
        return load_config(TINY, [f"data.source={source}", f"retrain.artifacts_root={tmp_path / 'artifacts'}",
                                  f"retrain.model_name={name}", *OVERRIDES, *extra])

    reg = Registry(str(tmp_path / "artifacts" / name), name)

    # 1. empty registry: the challenger becomes champion v1 (a deliberately poor model)
    t0 = time.time()
    first = retrain(config(BAD_LR))
    t_first = time.time() - t0
    assert (first["status"], first["version"], first["champion"]) == ("promoted", "v0001", "v0001")
    assert reg.versions() == ["v0001"] and reg.champion() == "v0001"
    frozen = pd.read_parquet(reg.uri("eval", "frozen.parquet"))
    assert frozen["label"].value_counts().to_dict() == {lab: 6 for lab in sorted(bbc["label"].unique())}
    src_labels = pd.read_csv(source).set_index("id")["label"]
    assert (frozen.set_index("id")["label"] == src_labels.loc[frozen["id"]]).all()  # gold labels from the source
    frozen_bytes = Path(reg.uri("eval", "frozen.parquet")).read_bytes()

    def assert_never_trained_on_frozen(run_dir: str):
        for part in ("data/snapshot.parquet", "data/clean.parquet", "pseudo_labels.parquet"):
            df = io.read_parquet(io.join(run_dir, part))
            assert not (_norm(df["text"]) & _norm(frozen["text"])), part
            assert not (set(df["id"]) & set(frozen["id"])), part

    assert_never_trained_on_frozen(first["run_dir"])
    vdir = Path(reg.uri("versions", "v0001"))
    model = AutoModelForSequenceClassification.from_pretrained(vdir / "model")
    assert sorted(model.config.id2label.values()) == sorted(frozen["label"].unique())
    AutoTokenizer.from_pretrained(vdir / "model")
    info = json.loads((vdir / "version.json").read_text())
    rows, _ = read_rows(config())
    assert info["data"]["sources"] == {str(source): io.frame_fingerprint(rows)}
    assert info["plugins"] == used_versions(config()) and info["code"]["selftrain"] == __version__
    assert info["data"]["frozen_eval_rows_excluded"] == len(frozen)
    metrics = json.loads((vdir / "metrics.json").read_text())
    assert metrics["frozen_eval"]["n"] == len(frozen) and info["frozen_eval"]["metrics"]["macro_f1"] == metrics["frozen_eval"]["macro_f1"]
    assert yaml.safe_load((vdir / "config.yaml").read_text())["finetune"]["lr"] == 1e-6
    card = (vdir / "README.md").read_text()
    kept = info["data"]["pseudo_labels"][0]["kept"]
    assert "from_pretrained" in card and "frozen evaluation set" in card and f"| {frozen['label'].iloc[0]} |" in card
    assert kept == sum(info["data"]["pseudo_labels"][0]["per_class"].values()) and kept > 0
    (ev1,) = _events(name, 1)
    assert ev1.payload["version"] == "v0001" and ev1.payload["previous"] is None
    assert ev1.payload["metrics"]["macro_f1"] == metrics["frozen_eval"]["macro_f1"]
    assert "v0001" in _artifact(f"{name}-retrain").data and "v0001" in str(_artifact(f"{name}-registry").data)

    # 2. unchanged data and config: nothing to do, quickly, and it says so
    finetunes = _finetune_task_runs()
    champion_before = Path(reg.uri("champion.json")).read_bytes()
    t0 = time.time()
    again = retrain(config(BAD_LR))
    t_again = time.time() - t0
    assert again["status"] == "unchanged" and again["version"] is None and "Nothing new" in again["reason"]
    assert reg.versions() == ["v0001"] and Path(reg.uri("champion.json")).read_bytes() == champion_before
    assert _finetune_task_runs() == finetunes, "the unchanged run trained something"
    assert t_again < min(30.0, t_first / 2), (t_again, t_first)
    assert "nothing to do" in _artifact(f"{name}-retrain").data

    # 3. new rows (labeled and unlabeled) and a sane learning rate: a better challenger, promoted
    source_df = pd.read_csv(source)
    pd.concat([source_df, _slice(bbc, 50, 15, 10)]).to_csv(source, index=False)
    source_sha = _sha(source)
    better = retrain(config())
    assert better["status"] == "promoted" and better["version"] == "v0002" and better["previous"] == "v0001"
    d = better["decision"]
    assert d["challenger"] >= d["champion"] + d["min_gain"] and reg.champion() == "v0002"
    info2 = reg.version_info("v0002")
    gold1 = sum(info["data"]["gold_per_class"]["train"].values())
    assert sum(info2["data"]["gold_per_class"]["train"].values()) > gold1  # the newly labeled rows were used
    assert info2["frozen_eval"]["champion_at_registration"]["version"] == "v0001"
    assert_never_trained_on_frozen(better["run_dir"])
    ev2 = _events(name, 2)[-1]
    assert (ev2.payload["version"], ev2.payload["previous"]) == ("v0002", "v0001")
    assert ev2.resource.id == f"selftrain.model.{name}"

    # 4. more new rows but a challenger that learns nothing: registered, not promoted, pointer untouched
    pd.concat([pd.read_csv(source), _slice(bbc, 75, 5, 5)]).to_csv(source, index=False)
    source_sha = _sha(source)
    champion_before = Path(reg.uri("champion.json")).read_bytes()
    worse = retrain(config(BAD_LR))
    assert worse["status"] == "rejected" and worse["version"] == "v0003" and worse["champion"] == "v0002"
    assert worse["decision"]["challenger"] < worse["decision"]["champion"] + worse["decision"]["min_gain"]
    assert "not promoted" in worse["reason"] and "retrain.min_gain" in worse["reason"]
    assert Path(reg.uri("champion.json")).read_bytes() == champion_before
    assert reg.versions() == ["v0001", "v0002", "v0003"] and not reg.version_info("v0003")["decision"]["promote"]
    assert len(_events(name, 3, timeout=5)) == 2  # no event without a promotion
    assert "not promoted" in _artifact(f"{name}-retrain").data

    # pseudo-labels never become gold: the source and the frozen set are untouched; no label data in versions
    assert _sha(source) == source_sha and Path(reg.uri("eval", "frozen.parquet")).read_bytes() == frozen_bytes
    assert not list(Path(reg.root, "versions").rglob("*.parquet"))

    # the champion predicts (selftrain predict --root), and --version picks an older version
    from selftrain.cli import main

    batch = tmp_path / "batch.csv"
    frozen[["id", "text"]].head(8).to_csv(batch, index=False)
    picked = {}
    for extra, out in (([], "champion.parquet"), (["--version", "v0001"], "v1.parquet")):
        rc = main(["predict", "--input", str(batch), "--root", str(tmp_path / "artifacts"), "--name", name,
                   "-o", str(tmp_path / out), "--no-reference", "--no-prefect", *extra])
        assert rc == 0
        preds = pd.read_parquet(tmp_path / out)
        assert preds["id"].tolist() == frozen["id"].head(8).tolist()
        picked[out] = set(preds["model_version"])
    assert picked == {"champion.parquet": {"v0002"}, "v1.parquet": {"v0001"}}

    # rollback restores the previous champion
    assert reg.rollback(reason="test")["version"] == "v0001" and reg.champion() == "v0001"


@pytest.mark.slow
def test_cli_promotion_emits_the_event(prefect_api, tmp_path):
    """``selftrain models promote`` / ``rollback`` change the champion and tell Prefect (same event)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from selftrain.cli import main
    from selftrain.core.registry.store import Registry

    name = f"cli-{uuid.uuid4().hex[:6]}"
    reg = Registry(str(tmp_path / name), name)
    reg.create({"labels": ["a", "b"], "eval": {"rows": 0, "fingerprint": "x"}}, pd.DataFrame({"id": ["1"], "text": ["t"], "label": ["a"]}))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                             intermediate_size=8)).save_pretrained(tmp_path / "m")
    for i in range(2):
        reg.register(str(tmp_path / "m"), {"frozen_eval": {"metrics": {"macro_f1": 0.1 * i}}}, {})
    assert main(["models", "promote", "1", "--root", str(tmp_path), "--name", name]) == 0
    assert main(["models", "promote", "2", "--root", str(tmp_path), "--name", name]) == 0
    assert main(["models", "rollback", "--root", str(tmp_path), "--name", name]) == 0
    events = _events(name, 3)
    assert [(e.payload["version"], e.payload["previous"], e.payload["action"]) for e in events] == [
        ("v0001", None, "promote"), ("v0002", "v0001", "promote"), ("v0001", "v0002", "rollback")]
    assert events[1].payload["metrics"] == {"macro_f1": 0.1} and events[1].payload["model_uri"] == reg.model_uri("v0002")


def test_deployment_and_automation_files():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.events.schemas.automations import AutomationCore
    from prefect.utilities.importtools import import_object

    from selftrain.config import validate_config
    from selftrain.flows import retrain

    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text()))
    (dep,) = [d for d in model.deployments if d.entrypoint == "selftrain.flows.retrain.retrain"]
    assert import_object(dep.entrypoint) is retrain and dep.name == "nightly" and dep.work_pool.name == "cpu"
    (sched,) = dep.schedules
    assert sched.active and sched.timezone == "UTC" and sched.cron.split()[2:] == ["*", "*", "*"]  # daily
    cfg = validate_config(dep.parameters["config"], "deployments/prefect.yaml")
    assert cfg.retrain.metric == "macro_f1" and dep.parameters["force"] is False
    assert dep.concurrency_limit.limit == 1  # one writer of the registry at a time

    text = (ROOT / "deployments" / "model-promoted-automation.yaml").read_text()
    dep_id = str(uuid.uuid4())
    a = AutomationCore.model_validate(yaml.safe_load(text.replace("DOWNSTREAM_DEPLOYMENT_ID", dep_id)))
    assert a.trigger.expect == {"selftrain.model.promoted"} and a.trigger.posture == "Reactive"
    assert str(a.actions[0].deployment_id) == dep_id and "event.payload.version" in str(a.actions[0].parameters)
    assert "selftrain.model.promoted" in (ROOT / "docs" / "retraining.md").read_text()


def test_cli_retrain_twice_second_run_does_nothing(tmp_path, capsys):
    """`selftrain retrain` (plain functions): the first run registers and promotes v0001,
    the second on unchanged data and config trains nothing and says so."""
    from selftrain.cli import main
    from selftrain.core.registry.store import Registry

    source = tmp_path / "news.csv"
    _slice(_bbc(), 0, 30, 10).to_csv(source, index=False)
    args = ["retrain", "-c", str(TINY), "--no-prefect", "--set", f"data.source={source}",
            "--set", f"retrain.artifacts_root={tmp_path / 'artifacts'}", "--set", "retrain.model_name=cli",
            *[x for o in OVERRIDES for x in ("--set", o)], "--set", "finetune.epochs=3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("promoted:") and "champion: v0001" in first, first
    reg = Registry(str(tmp_path / "artifacts" / "cli"), "cli")
    assert reg.versions() == ["v0001"]
    card = Path(reg.version_uri("v0001"), "README.md").read_text()  # the card says what this run did
    assert "classifier: `finetune`, up to 3 epochs" in card and "chosen on validation macro-F1" in card, card
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.startswith("unchanged:") and "champion: v0001" in second, second
    assert reg.versions() == ["v0001"], "nothing new: no new version"
    # forced: a new challenger, trained in its own run dir and registered as v0002 (it used to find v0001
    # by its run key and report the champion against itself: "challenger v0001 | champion v0001")
    assert main([*args, "--force"]) == 0
    third = capsys.readouterr().out
    assert not third.startswith("unchanged:") and reg.versions() == ["v0001", "v0002"], third
    assert reg.version_info("v0002")["run_dir"] != reg.version_info("v0001")["run_dir"]
    assert main([*args[:1], "-c", "/nope.yaml"]) == 2


def test_the_promoted_events_paths_are_absolute(monkeypatch):
    """model_uri 'artifacts/selftrain/versions/v0001/model' reached a downstream reload deployment that
    runs in another directory: 'exists=False'. Local paths are absolute now; s3:// ones unchanged."""
    import importlib

    retrain_flow = importlib.import_module("selftrain.flows.retrain")  # the module, not the flow it exports
    sent = []
    monkeypatch.setattr(retrain_flow, "emit_event", lambda **kw: sent.append(kw))
    retrain_flow.emit_promoted({"name": "m", "registry": "artifacts/m", "version": "v0001",
                                "model_uri": "artifacts/m/versions/v0001/model"})
    retrain_flow.emit_promoted({"name": "m", "registry": "s3://b/m", "version": "v0002", "model_uri": "s3://b/m/v/model"})
    assert sent[0]["payload"]["model_uri"] == os.path.abspath("artifacts/m/versions/v0001/model")
    assert sent[0]["payload"]["registry"] == sent[0]["resource"]["selftrain.registry"] == os.path.abspath("artifacts/m")
    assert sent[1]["payload"]["model_uri"] == "s3://b/m/v/model"


def test_a_new_label_in_the_data_is_refused_before_the_challenger_trains(tmp_path):
    """A class added to the source trained the whole challenger, then failed comparing it on the frozen
    set. The plan now refuses it first, naming the new label."""
    from selftrain.config import load_config
    from selftrain.core.registry.retrain import RetrainError, plan

    source = tmp_path / "news.csv"
    df = _slice(_bbc(), 0, 30, 10)
    df.to_csv(source, index=False)
    over = [f"data.source={source}", f"retrain.artifacts_root={tmp_path / 'artifacts'}", "retrain.model_name=lab",
            *OVERRIDES]
    first = plan(load_config(TINY, over))
    assert first["changed"]
    extra = df.head(12).assign(label="weather", text=lambda d: "weather report " + d["text"], id=lambda d: "w" + d["id"].astype(str))
    pd.concat([df, extra]).to_csv(source, index=False)
    with pytest.raises(RetrainError, match=r"new: weather.*Fix: keep data.labels"):
        plan(load_config(TINY, over))

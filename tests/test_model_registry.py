"""The model registry (selftrain/core/registry/store.py) on a local directory and on S3 (moto's
server): versions, the champion pointer, promotion and rollback, crash safety (a process
SIGKILLed in the middle of a commit or a promotion), the frozen-eval helpers and the
``selftrain models`` CLI. Models are real (tiny) Hugging Face classifiers with tokenizers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two small saved classifiers (save_pretrained + tokenizer), different weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    base = tmp_path_factory.mktemp("models")
    (base / "vocab").mkdir()
    (base / "vocab" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]) + "\n")
    tok = BertTokenizerFast.from_pretrained(str(base / "vocab"))  # reads vocab.txt on transformers 4 and 5
    out = []
    for i in range(2):
        torch.manual_seed(i)
        cfg = BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: j for j, n in enumerate(LABELS)})
        d = base / f"m{i}"
        BertForSequenceClassification(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        out.append(str(d))
    return out


def _meta(i: int, macro_f1: float = 0.5) -> dict:
    return {"run_key": f"key-{i}", "created": "2026-01-01T00:00:00+00:00", "stage": "teacher",
            "frozen_eval": {"metrics": {"accuracy": macro_f1, "macro_f1": macro_f1, "ece": 0.1, "n": 10}},
            "data": {"gold_per_class": {"train": {"neg": 3, "pos": 4}}, "pseudo_labels": [{"kept": 5}]},
            "decision": {"promote": True}}


def _make(root: str, models: list[str], n: int = 2):
    from selftrain.core.registry.store import Registry

    reg = Registry(root, "news")
    reg.create({"labels": LABELS, "eval": {"rows": 0, "fingerprint": "x"}}, pd.DataFrame({"id": ["a"], "text": ["good"], "label": ["pos"]}))
    versions = [reg.register(models[i % len(models)], _meta(i, 0.5 + i / 10), {"README.md": f"# card {i}\n"}) for i in range(n)]
    return reg, versions


# ---------------------------------------------------------------- local registry
def test_register_list_load_and_resolve(tmp_path, tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selftrain.core.registry.store import MARKER, RegistryError

    reg, versions = _make(str(tmp_path / "news"), tiny_models, 2)
    assert versions == ["v0001", "v0002"] == reg.versions()
    for v, src in zip(versions, tiny_models):
        vdir = tmp_path / "news" / "versions" / v
        assert (vdir / MARKER).exists() and (vdir / "README.md").read_text().startswith("# card")
        info = reg.version_info(v)
        assert info["version"] == v and info["name"] == "news" and info["run_key"] == f"key-{versions.index(v)}"
        model = AutoModelForSequenceClassification.from_pretrained(reg.local_model(v))
        assert model.config.id2label == {0: "neg", 1: "pos"}
        assert AutoTokenizer.from_pretrained(reg.local_model(v)).tokenize("good film") == ["good", "film"]
        assert (vdir / "model" / "model.safetensors").read_bytes() == (Path(src) / "model.safetensors").read_bytes()
    assert [reg.resolve(x) for x in ("v2", "2", "v0002", "V0001")] == ["v0002", "v0002", "v0002", "v0001"]
    assert reg.find("run_key", "key-1") == "v0002" and reg.find("run_key", "nope") is None
    with pytest.raises(RegistryError, match=r"Unknown version 'v9'; registry at .*news has v0001, v0002\. Fix"):
        reg.resolve("v9")
    with pytest.raises(RegistryError, match="no champion yet"):
        reg.resolve("champion")
    with pytest.raises(RegistryError, match="not a saved model"):
        reg.register(str(tmp_path), _meta(9), {})
    assert reg.versions() == versions  # the failed registration left nothing listed


def test_promote_rollback_and_history(tmp_path, tiny_models):
    from selftrain.core.registry.store import RegistryError

    reg, (v1, v2) = _make(str(tmp_path / "news"), tiny_models, 2)
    assert reg.champion() is None
    with pytest.raises(RegistryError, match="no champion yet"):
        reg.rollback()
    assert reg.promote(v1, reason="first", by="test")["changed"]
    with pytest.raises(RegistryError, match=r"only one champion \(v0001\).*selftrain models promote"):
        reg.rollback()
    change = reg.promote("2", reason="better")
    assert (change["version"], change["previous"], change["changed"]) == (v2, v1, True)
    assert reg.champion() == v2 and reg.resolve("champion") == v2
    assert not reg.promote(v2)["changed"]  # already the champion: nothing written
    back = reg.rollback(reason="bad in production")
    assert (back["version"], back["previous"]) == (v1, v2) and reg.champion() == v1
    st = reg.champion_state()
    assert [h["action"] for h in st["history"]] == ["promote", "promote", "rollback"]
    assert st["history"][-1]["reason"] == "bad in production" and st["stack"] == [v1]
    with pytest.raises(RegistryError, match="Unknown version 'v7'"):
        reg.promote("v7")
    assert reg.champion() == v1


def test_half_written_versions_are_never_listed(tmp_path, tiny_models):
    reg, _ = _make(str(tmp_path / "news"), tiny_models, 1)
    vdir = tmp_path / "news" / "versions"
    # what a dead writer leaves: a temp folder (local) and a folder without its commit marker (object storage)
    (vdir / ".tmp-v0002-deadbeef" / "model").mkdir(parents=True)
    (vdir / "v0002" / "model").mkdir(parents=True)
    (vdir / "v0002" / "version.json").write_text("{}")
    assert reg.versions() == ["v0001"]
    from selftrain.core.registry.store import RegistryError

    with pytest.raises(RegistryError, match="has v0001"):
        reg.promote("v2")
    assert reg.register(tiny_models[1], _meta(5), {}) == "v0003"  # never reuses a half-written number
    assert reg.versions() == ["v0001", "v0003"]


KILL_SCRIPT = r"""
import pathlib, sys, time
from selftrain.core.registry import store as registry
point, flag, root, arg = sys.argv[1:5]

def pause(at):
    if at == point:
        pathlib.Path(flag).write_text(at)
        time.sleep(600)

registry._checkpoint = pause
reg = registry.Registry(root, "news")
if point == "version-commit":
    reg.register(arg, {"run_key": "killed"}, {"README.md": "half\n"})
else:
    reg.promote(arg, reason="never finished", by="test")
print("finished: the kill came too late", flush=True)
"""


def _run_and_kill(tmp_path, point: str, root: str, arg: str) -> None:
    """Run a registry write in a child process and SIGKILL it at ``point`` (after the writes, before the commit)."""
    flag = tmp_path / f"paused-{point}"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, point, str(flag), root, arg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, f"child ended before reaching {point}: {proc.communicate()}"
        assert time.time() < deadline, f"child never reached {point}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_during_version_commit_leaves_no_listed_version(where, tmp_path, tiny_models, request):
    root = str(tmp_path / "news") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/registry/news"
    reg, versions = _make(root, tiny_models, 1)
    reg.promote(versions[0])
    _run_and_kill(tmp_path, "version-commit", root, tiny_models[1])
    assert reg.versions() == ["v0001"] and reg.champion() == "v0001"
    if where == "local":  # the kill left its temp folder, fully written, under a name nobody lists
        assert any(p.name.startswith(".tmp-v0002") for p in (tmp_path / "news" / "versions").iterdir())
    else:  # the files are uploaded under versions/v0002/, but the commit marker is not
        from selftrain.core.common import io

        assert io.exists(f"{root}/versions/v0002/version.json") and not io.exists(f"{root}/versions/v0002/COMMITTED")
    assert reg.register(tiny_models[1], _meta(7), {}) in ("v0002", "v0003")
    assert len(reg.versions()) == 2


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_during_promotion_keeps_the_old_champion(where, tmp_path, tiny_models, request):
    root = str(tmp_path / "news") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/registry/news"
    reg, (v1, v2) = _make(root, tiny_models, 2)
    reg.promote(v1)
    from selftrain.core.common import io

    before = io.read_bytes(f"{root}/champion.json")
    _run_and_kill(tmp_path, "champion-write", root, v2)
    if where == "local":  # killed after writing the new pointer's temp file, before the rename
        tmps = list((tmp_path / "news").glob(".champion.json.tmp-*"))
        assert len(tmps) == 1 and json.loads(tmps[0].read_text())["version"] == v2
    assert io.read_bytes(f"{root}/champion.json") == before
    assert reg.champion() == v1 and reg.resolve("champion") == v1 and reg.versions() == [v1, v2]
    assert reg.promote(v2)["changed"] and reg.champion() == v2  # and the registry still works


def test_registry_on_s3(s3_bucket, tiny_models):
    from transformers import AutoModelForSequenceClassification

    from selftrain.core.common import io

    root = f"s3://{s3_bucket}/artifacts/news"
    reg, (v1, v2) = _make(root, tiny_models, 2)
    assert reg.versions() == [v1, v2] and reg.info()["labels"] == LABELS
    for name in ("model/config.json", "model/tokenizer_config.json", "model/model.safetensors", "version.json", "README.md"):
        assert io.exists(f"{root}/versions/{v2}/{name}"), name
    reg.promote(v1)
    reg.promote(v2)
    assert reg.rollback()["version"] == v1 and reg.champion() == v1
    model = AutoModelForSequenceClassification.from_pretrained(reg.local_model("champion"))
    local_v1 = AutoModelForSequenceClassification.from_pretrained(tiny_models[0])
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), local_v1.state_dict().values()))


# ---------------------------------------------------------------- frozen evaluation set helpers
def test_frozen_eval_is_drawn_per_class_and_excluded_by_text_and_id(tiny_config):
    from selftrain.core.registry.retrain import RetrainError, build_frozen_eval, exclude_frozen

    rows = [(f"id{i}", f"{lab} news item number {i} about things", lab) for i, lab in enumerate(["a", "b"] * 10)]
    df = pd.DataFrame(rows + [("u1", "unlabeled text", None)], columns=["id", "text", "label"]).astype("string")
    df["split"] = pd.Series(pd.NA, index=df.index, dtype="string")
    cfg = tiny_config("retrain.eval_per_class=3")
    ev, origin = build_frozen_eval(cfg, df)
    assert origin == "labeled rows" and ev["label"].value_counts().to_dict() == {"a": 3, "b": 3}
    assert set(ev["id"]) <= set(df["id"])
    assert (ev.set_index("id")["label"] == df.set_index("id").loc[ev["id"], "label"]).all()  # gold labels, as in the source
    assert ev.equals(build_frozen_eval(cfg, df)[0])  # seeded
    # a near-duplicate (case, punctuation) of an eval text and a row reusing an eval id are excluded too
    first = ev.iloc[0]
    extra = pd.DataFrame([("new1", first["text"].upper() + "!!", pd.NA, pd.NA), (ev.iloc[1]["id"], "edited text", "a", pd.NA),
                          ("new2", "a brand new text", "b", pd.NA)], columns=df.columns).astype("string")
    grown = pd.concat([df, extra], ignore_index=True)
    kept = exclude_frozen(grown, ev, by_id=True)
    assert len(kept) == len(grown) - len(ev) - 2 and "new2" in set(kept["id"]) and "new1" not in set(kept["id"])
    assert len(exclude_frozen(grown, ev, by_id=False)) == len(grown) - len(ev) - 1  # generated ids: text only
    # at most half of a class is frozen; a class with a single label cannot be split
    assert build_frozen_eval(tiny_config("retrain.eval_per_class=50"), df)[0]["label"].value_counts().to_dict() == {"a": 5, "b": 5}
    lone = pd.concat([df, pd.DataFrame([("c1", "the only c", "c", pd.NA)], columns=df.columns).astype("string")])
    with pytest.raises(RetrainError, match=r"class\(es\) 'c' \(1 labeled\).*Fix"):
        build_frozen_eval(cfg, lone)


def test_promotion_rule(tiny_config):
    from selftrain.core.registry.retrain import decide

    def ev(chall, champ):
        return {"rows": 10, "challenger": {"metrics": {"macro_f1": chall, "accuracy": 0.0}},
                "champion": None if champ is None else {"version": "v0001", "metrics": {"macro_f1": champ, "accuracy": 0.9}}}

    cfg = tiny_config("retrain.min_gain=0.05")
    assert decide(cfg, ev(0.1, None))["promote"]  # empty registry: the first challenger becomes v1
    assert decide(cfg, ev(0.70, 0.60))["promote"]
    d = decide(cfg, ev(0.62, 0.60))
    assert not d["promote"] and "< retrain.min_gain 0.05" in d["reason"] and abs(d["gain"] - 0.02) < 1e-9
    assert not decide(tiny_config("retrain.min_gain=0"), ev(0.6, 0.6))["promote"]  # a tie does not beat the champion
    assert not decide(tiny_config("retrain.metric=accuracy"), ev(0.7, 0.6))["promote"]  # accuracy 0.0 vs 0.9


# ---------------------------------------------------------------- CLI
def _cli(*argv: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("selftrain")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def test_models_cli(tmp_path, tiny_models, capsys):
    from selftrain.cli import main

    reg, (v1, v2) = _make(str(tmp_path / "news"), tiny_models, 2)
    reg.promote(v1)
    root = ["--root", str(tmp_path), "--name", "news"]

    res = _cli("models", "list", *root)  # the installed console script
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("| v0")]
    assert [ln.split("|")[1].strip() for ln in lines] == [v1, v2]
    assert lines[0].split("|")[2].strip() == "yes" and lines[1].split("|")[2].strip() == ""
    assert f"champion: {v1}" in res.stdout

    assert main(["models", "list", "--root", str(tmp_path / "news"), "--json"]) == 0  # --root = the registry folder
    listed = json.loads(capsys.readouterr().out)
    assert listed["champion"] == v1 and [r["version"] for r in listed["versions"]] == [v1, v2]
    assert listed["versions"][1]["macro_f1"] == reg.version_info(v2)["frozen_eval"]["metrics"]["macro_f1"]

    assert main(["models", "show", "2", *root]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{v2}: not the champion (champion: {v1})") and "# card 1" in out
    assert main(["models", "show", *root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v1

    assert main(["models", "promote", v2, *root, "--reason", "manual"]) == 0
    assert capsys.readouterr().out.strip() == f"champion: {v1} -> {v2}" and reg.champion() == v2
    assert reg.champion_state()["history"][-1]["reason"] == "manual"
    assert main(["models", "rollback", *root]) == 0
    assert capsys.readouterr().out.strip() == f"champion: {v2} -> {v1} (rolled back)" and reg.champion() == v1

    res = _cli("models", "promote", "v9", *root)
    assert res.returncode == 2 and reg.champion() == v1
    assert f"Unknown version 'v9'; registry at {tmp_path / 'news'} has v0001, v0002" in res.stderr
    assert main(["models", "rollback", *root]) == 2
    assert "Nothing to roll back to" in capsys.readouterr().err
    assert main(["models", "list", "--root", str(tmp_path / "elsewhere")]) == 2
    assert "No model registry at" in capsys.readouterr().err

    cfg = tmp_path / "c.yaml"  # the config's retrain section names the registry
    cfg.write_text(f"retrain: {{artifacts_root: {tmp_path}, model_name: news}}\n")
    assert main(["models", "show", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.startswith(f"{v1}: the champion")


def test_every_config_section_either_retrains_or_not_and_the_classifier_retrains(tiny_config):
    """The retrain flow's training digest covers what a challenger would learn: each top-level config
    field is in TRAINING_SECTIONS or RUN_SECTIONS (a new section must be placed), and changing the
    classifier alone (finetune -> probe, or the probe's options) changes the digest; where it runs does not."""
    from selftrain.core.registry.retrain import RUN_SECTIONS, TRAINING_SECTIONS, training_digest

    cfg = tiny_config()
    assert set(TRAINING_SECTIONS) | set(RUN_SECTIONS) == set(cfg.dump())
    assert not set(TRAINING_SECTIONS) & set(RUN_SECTIONS)
    base = training_digest(cfg)
    assert cfg.classifier.name == "finetune"  # the tiny config's
    for changed in ("seed=7", "pseudo_label.rounds=3"):
        assert training_digest(tiny_config(changed)) != base, changed
    probe = ("classifier.name=probe", "pseudo_label.refit_on_gold=false")  # a frozen body is not refit
    assert training_digest(tiny_config(*probe)) != training_digest(tiny_config("pseudo_label.refit_on_gold=false"))
    assert training_digest(tiny_config(*probe, "classifier.options={calibrate: false}")) != training_digest(tiny_config(*probe))
    for same in ("run_name=elsewhere", "inference_compile=off", "cpu_bf16=true"):
        assert training_digest(tiny_config(same)) == base, same


def test_a_damaged_champion_pointer_is_refused_not_read_as_no_champion(tmp_path, tiny_models):
    """champion.json without its 'version' (or naming a version that is not there, or not JSON) used to
    read as "no champion", so the next retrain promoted any challenger over the real champion (exit 0).
    Now every read raises, naming the file and the fix; `promote` is the fix and rewrites it."""
    import json as _json

    from selftrain.core.registry.store import RegistryError

    reg, versions = _make(str(tmp_path / "news"), tiny_models, 2)
    reg.promote("v1")
    pointer = tmp_path / "news" / "champion.json"
    for damaged, match in (({"name": "news", "history": []}, "has no 'version' key"),
                           ({"name": "news", "version": "v0009"}, r"names 'v0009' as the champion, which is not a "
                                                                  r"committed version \(v0001, v0002\)"),
                           ('{"version": "v0001",', r"not valid JSON")):
        pointer.write_text(damaged if isinstance(damaged, str) else _json.dumps(damaged))
        for read in (reg.champion, reg.check, lambda: reg.resolve("champion"), reg.rollback):
            with pytest.raises(RegistryError, match=rf"(?s)champion.json .*{match}.*Fix: .*selftrain models promote"):
                read()
    change = reg.promote("v2", reason="repair")
    assert change["changed"] and reg.champion() == "v0002"
    assert reg.champion_state()["history"][0]["action"] == "repair"


def test_a_version_without_its_model_cannot_be_promoted_and_a_damaged_record_is_named(tmp_path, tiny_models):
    import shutil

    from selftrain.core.registry.store import RegistryError

    reg, _ = _make(str(tmp_path / "news"), tiny_models, 2)
    reg.promote("v1")
    shutil.rmtree(tmp_path / "news" / "versions" / "v0002" / "model")
    with pytest.raises(RegistryError, match=r"v0002 has no model at .*cannot serve as champion\. Fix: promote another"):
        reg.promote("v2")
    assert reg.champion() == "v0001"
    from selftrain.core.registry.model_card import registry_rows

    (tmp_path / "news" / "versions" / "v0002" / "version.json").write_text("{}")
    assert [r["decision"] for r in registry_rows(reg)] == ["promote", "—"]  # unknown, not a made-up "reject"
    (tmp_path / "news" / "versions" / "v0001" / "version.json").write_text("{oops")
    with pytest.raises(RegistryError, match=r"v0001.version\.json is damaged: not valid JSON .*Fix: restore it"):
        reg.check()


def test_a_registry_root_that_is_a_file_is_named(tmp_path):
    from selftrain.core.registry.store import Registry, RegistryError

    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(RegistryError, match=r"cannot create the model registry at .*afile.*must name a folder"):
        Registry(str(tmp_path / "afile"), "news").create({"labels": LABELS}, pd.DataFrame({"id": ["a"], "text": ["x"], "label": ["pos"]}))


def test_the_pseudo_label_count_is_what_the_versions_model_trained_on_not_a_sum_of_rounds():
    """`models list` summed `kept` over the rounds: 3,926 pseudo-labels for a student-5 trained on 1,255
    rows of a 1,374-row pool (each round's selection already holds what the earlier rounds kept)."""
    from selftrain.core.registry.model_card import pseudo_labels_trained_on

    rounds = [{"round": r, "kept": k} for r, k in zip(range(1, 6), (230, 541, 822, 1078, 1255))]
    assert pseudo_labels_trained_on("student-5", rounds) == 1255
    assert pseudo_labels_trained_on("student-2-distilled", rounds) == 541
    assert pseudo_labels_trained_on("teacher", rounds) == pseudo_labels_trained_on("baseline", rounds) == 0
    assert pseudo_labels_trained_on("student-9", rounds) == 0  # no record of that round: nothing claimed


def test_a_folder_that_is_no_registry_says_so_and_a_deleted_model_is_named(tmp_path, tiny_models):
    """Registry('artifacts') (the root, not artifacts/<name>) said 'no champion yet. Fix: promote', and
    local_model returned a path whose model/ folder had been deleted."""
    import shutil

    from selftrain.core.registry.store import Registry, RegistryError

    with pytest.raises(RegistryError, match=r"No model registry at .*artifacts \(no registry.json\)"):
        Registry(tmp_path / "artifacts").local_model()  # a pathlib.Path is taken too
    reg, versions = _make(str(tmp_path / "news"), tiny_models, 2)
    shutil.rmtree(Path(reg.uri("versions", "v0002", "model")))
    with pytest.raises(RegistryError, match=r"v0002/model holds no saved model"):
        reg.local_model("v2")
    assert Path(reg.local_model("v1"), "config.json").exists()


def test_promote_from_python_is_recorded_as_python_and_the_cli_as_cli(tmp_path, tiny_models):
    """Registry.promote() called from Python wrote by='cli' into the champion history."""
    import json

    from selftrain.cli import main

    reg, _ = _make(str(tmp_path / "news"), tiny_models, 2)
    reg.promote("v1")
    assert main(["models", "promote", "2", "--root", str(tmp_path), "--name", "news"]) == 0
    history = json.loads(Path(reg.uri("champion.json")).read_text())["history"]
    assert [h["by"] for h in history[-2:]] == ["python", "cli"], history

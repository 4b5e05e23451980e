"""The command line, as a user runs it (subprocesses, real Prefect ephemeral API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "selftrain.cli"]


def _run(args, tmp_path, timeout=600, **env):
    e = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **env}
    e.pop("PREFECT_API_URL", None)
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def test_plugins_list_shows_builtins(tmp_path):
    out = _run(["plugins", "list"], tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ["mlm", "clm", "simcse", "tsdae", "hf", "tiny-bert", "threshold", "topk", "soft"]:
        assert f"  {name} " in out.stdout
    js = json.loads(_run(["plugins", "list", "--json"], tmp_path).stdout)
    assert {(r["group"], r["name"]) for r in js} >= {("selftrain.objectives", "mlm"), ("selftrain.labelers", "soft")}
    assert all(r["status"] == "ok" and r["dist"] == "selftrain" for r in js)


def test_bad_config_fails_before_work_with_the_fix(tmp_path):
    out = _run(["run", "--set", "pretrain.enabled=true", "--set", "pretrain.objective=mlmm", "-o", str(tmp_path / "r")], tmp_path)
    assert out.returncode == 2
    assert "Unknown objective 'mlmm'; installed:" in out.stderr and "Fix pretrain.objective" in out.stderr
    assert not (tmp_path / "r").exists(), "no work may start on a bad config"


def test_config_show_and_schema(tmp_path):
    out = _run(["config", "--set", "pretrain.epochs=3"], tmp_path)
    assert out.returncode == 0 and "epochs: 3" in out.stdout
    schema = json.loads(_run(["config", "--schema"], tmp_path).stdout)
    assert "validate" in schema["properties"] and "pretrain" in schema["properties"]


@pytest.mark.slow
def test_selftrain_run_with_prefect(tmp_path):
    out = _run(["run", "-c", "examples/configs/tiny.yaml", "--set", "pseudo_label.rounds=1", "-o", str(tmp_path / "run")],
               tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| model | accuracy | macro-F1" in out.stdout and "final:" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"] in metrics["models"]

"""CLI items of a first hour: `plugins show`, `config --show`, a readable `--help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selftrain.cli import build_parser, main
from selftrain.plugins import PLUGIN_API_VERSION, registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny.yaml"


def _cli(args, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "selftrain.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


# ---------------------------------------------------------------- plugins show
def test_plugins_show_prints_group_dist_api_summary_and_every_option(capsys):
    from selftrain import __version__
    from selftrain.plugins.objectives.mlm import MaskedLM

    assert main(["plugins", "show", "mlm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlm  (selftrain.objectives; pretrain.objective: mlm)")
    assert f"distribution: selftrain {__version__}" in out
    assert f"plugin API:   {MaskedLM.api_version}  (this selftrain provides {PLUGIN_API_VERSION})" in out
    assert f"summary:      {MaskedLM.summary}" in out
    assert "options (pretrain.options):" in out
    assert "    mask_rate: float, default 0.15, 0 < x < 1\n        Fraction of non-special tokens" in out
    for name in MaskedLM.Config.model_fields:
        assert f"    {name}: " in out, name


def test_plugins_show_bounds_optional_types_and_json(capsys):
    assert main(["plugins", "show", "threshold", "--json"]) == 0
    [page] = json.loads(capsys.readouterr().out)
    assert page["group"] == "selftrain.labelers" and page["dist"] == "selftrain" and page["api_version"] == ">=1,<2"
    opts = {o["name"]: o for o in page["options"]}
    assert opts["threshold"] == {"name": "threshold", "type": "float", "required": False, "default": 0.9,
                                 "bounds": {"ge": 0, "le": 1}, "description": opts["threshold"]["description"]}
    assert opts["threshold"]["description"]
    assert opts["target_precision"]["type"] == "float | None" and opts["target_precision"]["default"] is None
    assert main(["plugins", "show", "tiny-bert", "--group", "models"]) == 0
    assert "    vocab_size: int, default 2000, x >= 200\n" in capsys.readouterr().out


def test_plugins_show_a_name_in_several_groups_shows_each(monkeypatch, capsys):
    real = registry.discover
    from selftrain.plugins.labelers.threshold import ConfidenceThreshold

    twin = registry.PluginRecord(group="selftrain.labelers", name="mlm", value="acme:MlmLabeler", dist="acme",
                                 version="0.2", status="ok", cls=ConfidenceThreshold)

    def fake(group):
        return real(group) + ((twin,) if group == "selftrain.labelers" else ())

    monkeypatch.setattr(registry, "discover", fake)
    assert main(["plugins", "show", "mlm"]) == 0
    out = capsys.readouterr().out
    assert "mlm  (selftrain.objectives;" in out and "mlm  (selftrain.labelers;" in out
    assert "distribution: acme 0.2" in out
    assert main(["plugins", "show", "mlm", "--group", "selftrain.labelers", "--json"]) == 0
    assert [p["group"] for p in json.loads(capsys.readouterr().out)] == ["selftrain.labelers"]


def test_plugins_show_a_broken_plugin_shows_its_error(monkeypatch, capsys):
    real = registry.discover
    broken = registry.PluginRecord(group="selftrain.objectives", name="future", value="acme:Future", dist="acme",
                                   version="0.3", status="error", error="written for plugin API >=2, but ...")
    monkeypatch.setattr(registry, "discover", lambda g: real(g) + ((broken,) if g == "selftrain.objectives" else ()))
    assert main(["plugins", "show", "future"]) == 1  # only a broken record: a script must see it
    out = capsys.readouterr().out
    assert "status:       error: written for plugin API >=2" in out and "options" not in out


def test_plugins_show_unknown_name_is_one_line_rc2(tmp_path):
    out = _cli(["plugins", "show", "mlmm"], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    head, _, rest = lines[0].partition("; installed: ")
    assert head == "selftrain: Unknown plugin 'mlmm'", lines[0]
    listed, _, fix = rest.partition(". Fix: ")
    # every installed plugin, sorted, and nothing else (the list grows with each new plugin)
    assert listed.split(", ") == sorted({rec.name for rec in registry.all_plugins()}), listed
    assert {"mlm", "simcse", "tsdae", "agree", "probe"} <= set(listed.split(", "))
    assert fix.startswith("one of these names"), lines[0]


# ---------------------------------------------------------------- config --show
def test_config_show_prints_the_resolved_yaml(capsys):
    assert main(["config", "--show", "-c", str(TINY), "--set", "pretrain.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run_name"] == "tiny" and shown["pretrain"]["epochs"] == 3 and shown["data"]["source"] == "builtin:bbc"
    assert main(["config", "-c", str(TINY)]) == 0, "without --show it still prints the config"
    assert yaml.safe_load(capsys.readouterr().out)["run_name"] == "tiny"


def test_config_show_and_schema_together_is_an_error(capsys):
    assert main(["config", "--show", "--schema"]) == 2
    assert "--show and --schema" in capsys.readouterr().err


# ---------------------------------------------------------------- --help
def test_top_level_help_is_plain_text_and_lists_every_command():
    text = build_parser().format_help()
    assert "``" not in text
    for cmd in ["run", "retrain", "config", "plugins", "models"]:
        assert cmd in text
    assert "retrain" in text.split("positional arguments")[0], "the description names retrain too"
    assert "plugins list|show" in text


@pytest.mark.parametrize("argv", [["plugins", "show", "--help"], ["config", "--help"]])
def test_subcommand_help_mentions_the_new_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert ("--group" in out and "--json" in out) if "show" in argv else "--show" in out


@pytest.mark.parametrize("api_url", [None, "http://127.0.0.1:4200/api"])
def test_ephemeral_runs_switch_off_the_server_services_that_lock_sqlite(api_url, tmp_path):
    code = ("import os\nfrom selftrain.cli import _prefect_env, EPHEMERAL_OFF_SERVICES\n_prefect_env()\n"
            "from prefect.settings import Settings\nsv = Settings().server.services\n"
            "print(sorted(s for s in EPHEMERAL_OFF_SERVICES if not getattr(sv, s.lower()).enabled), "
            "sv.event_persister.enabled, sv.task_run_recorder.enabled)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    off, persister, recorder = out.stdout.strip().rsplit(" ", 2)
    from selftrain.cli import EPHEMERAL_OFF_SERVICES

    assert off == (str(sorted(EPHEMERAL_OFF_SERVICES)) if api_url is None else "[]")
    assert persister == recorder == "True"


def test_an_s3_failure_is_one_line_with_the_fix(tmp_path):
    """botocore's NoCredentialsError reached the user as a traceback that named neither the URI nor the fix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing answers there
    out = subprocess.run([sys.executable, "-m", "selftrain.cli", "models", "list", "--root", "s3://no-such-bucket/reg"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("selftrain: an S3 request failed (NoCredentialsError") and "AWS_ACCESS_KEY_ID" in out.stderr
    assert "(s3:// in this command: s3://no-such-bucket/reg)" in out.stderr
    assert "Traceback" not in out.stderr


def test_storage_error_finds_botocore_in_the_chain_and_nothing_else():
    import botocore.exceptions as bc

    from selftrain.cli import storage_error

    try:
        try:
            raise bc.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")
        except bc.BotoCoreError as inner:
            raise OSError("s3fs gave up") from inner
    except OSError as exc:
        assert "EndpointConnectionError" in storage_error(exc) and "AWS_ENDPOINT_URL" in storage_error(exc)
    assert storage_error(ValueError("a bug")) is None


def test_a_plugins_user_error_ends_the_command_with_its_line_and_exit_2(capsys):
    """A plugin that raised for a backbone it cannot use ended in a 33-line traceback, exit 1 (plugins
    could not import the core's ConfigError). PluginUserError (API 1.7) is one line, exit 2."""
    from selftrain.cli_run import execute
    from selftrain.plugins import PluginUserError

    def plain():
        raise PluginUserError("electra needs a tokenizer with a [MASK] token; pick another objective or tokenizer")

    assert execute(True, plain, None) == 2
    assert capsys.readouterr().err.strip().endswith("selftrain: electra needs a tokenizer with a [MASK] token; "
                                                    "pick another objective or tokenizer")

    def bug():
        raise ValueError("a bug keeps its traceback")

    with pytest.raises(ValueError, match="a bug keeps its traceback"):
        execute(True, bug, None)


@pytest.mark.slow  # ~30 s: a Prefect run on the temporary API, interrupted in pretraining
def test_ctrl_c_on_the_temporary_api_exits_at_once_with_the_resume_hint(tmp_path):
    """Ctrl-C used to leave Prefect retrying the crash report against the stopped temporary server for
    ~2.5 min, then a ConnectError traceback. Now: the resume hint, exit 130, the server stopped."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path / "ph")}
    cmd = [sys.executable, "-m", "selftrain.cli", "run", "-c", str(TINY), "-o", str(tmp_path / "run"),
           "--set", "pretrain.max_steps=100000", "--set", "pretrain.epochs=1000", "--set", "pretrain.checkpoint_every=20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    ckpt = tmp_path / "run" / "checkpoints" / "pretrain"
    deadline = time.monotonic() + 180
    while not (ckpt.exists() and any(ckpt.glob("step-*"))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # the old path retried the dead API for ~150 s before exiting
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted. Run the same command again to go on" in err and "Stopping temporary server" in err
    assert "Traceback" not in err.split("interrupted.")[-1]
    # what the hint promises the re-run resumes from (the resume itself: tests/test_stages.py)
    assert any(p.is_dir() for p in ckpt.glob("step-*")), "the interrupt must leave the last pretraining checkpoint"


def test_a_closed_pipe_is_no_traceback():
    """`selftrain models list | head` printed a BrokenPipeError traceback once head had its lines."""
    proc = subprocess.Popen([sys.executable, "-m", "selftrain.cli", "plugins", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]


def test_python_callers_of_the_flows_get_the_clis_prefect_settings(tmp_path):
    """The 120 s startup timeout and the ephemeral API's services switched off were set only by the CLI:
    pipeline() / retrain() / predict() from Python ran on Prefect's defaults (20 s, every service)."""
    code = ("import selftrain.flows\nfrom prefect.settings import get_current_settings\ns = get_current_settings()\n"
            "print(s.server.ephemeral.startup_timeout_seconds, s.server.services.scheduler.enabled, "
            "s.server.analytics_enabled)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["120", "False", "False"], out.stdout

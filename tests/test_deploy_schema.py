"""The typed parameter schema of the deployments (selftrain.core.run.deploy_schema), no server.

Built from the flows' own Prefect schema (what `prefect deploy` stores) and checked with
Prefect's own validator (what the server runs on POST /deployments/{id}/create_flow_run).
The same on a real server, through `selftrain deploy-schema`: tests/test_deploy_schema_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flow_schemas():
    from prefect.utilities.callables import parameter_schema

    from selftrain.flows import pipeline, pretrain_flow, retrain

    return {name: parameter_schema(fl.fn).model_dump() for name, fl in
            {"pipeline": pipeline, "pretrain": pretrain_flow, "retrain": retrain}.items()}


@pytest.fixture(scope="module")
def typed(flow_schemas):
    from selftrain.core.run.deploy_schema import typed_parameter_schema

    return typed_parameter_schema(flow_schemas["pipeline"], {"pseudo_label": "threshold"})


def _errors(params: dict, schema: dict) -> list[str]:
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    try:
        validate(params, schema, raise_on_error=True)
    except ValidationError as exc:
        return [str(exc)]
    return []


def _section(schema: dict, section: str) -> dict:
    return schema["definitions"]["PipelineConfig"]["properties"][section]


def _variants(schema: dict, section: str) -> dict[str, dict]:
    """{plugin: its variant's fields}, in form order, following the two $ref hops."""
    from selftrain.core.run.deploy_schema import variant

    defs = schema["definitions"]
    titles = [defs[r["$ref"].removeprefix("#/definitions/")]["title"] for r in _section(schema, section)["anyOf"]]
    return {t: variant(schema, section, t) for t in titles}


def test_every_installed_plugin_gets_a_typed_variant(typed):
    from selftrain.config import PipelineConfig
    from selftrain.core.run.deploy_schema import SECTIONS
    from selftrain.plugins.registry import discover

    assert typed is not None and not typed.skipped and not typed.untyped
    defs = typed.schema["definitions"]
    for section, key, group in SECTIONS:
        working = {r.name: r.cls for r in discover(group) if r.status == "ok"}
        prop = _section(typed.schema, section)
        assert "$ref" not in prop and prop["discriminator"] == {"propertyName": key}
        # the UI matches a value's keys against each variant's own properties: none at the first hop
        for ref in prop["anyOf"]:
            hop = defs[ref["$ref"].removeprefix("#/definitions/")]
            assert "properties" not in hop and hop["$ref"].startswith("#/definitions/")
        variants = _variants(typed.schema, section)
        assert set(variants) == set(working) and list(variants) == typed.typed[section], section
        for name, cls in working.items():
            v = variants[name]
            assert v["title"] == name and v["properties"][key]["const"] == name
            opts = v["properties"]["options"]
            assert set(opts["properties"]) == set(cls.Config.model_fields), (section, name)
            assert opts["additionalProperties"] is False
            # the section's other fields stay in every variant
            section_def = PipelineConfig.model_fields[section].annotation.__name__
            assert set(v["properties"]) == set(defs[section_def]["properties"])
    # the form opens on the deployment's plugin; a partial section means PipelineConfig's default plugin
    labelers = _variants(typed.schema, "pseudo_label")
    assert list(labelers)[0] == "threshold"
    assert labelers["agree"].get("required", []) == [] and labelers["threshold"]["required"] == ["labeler"]


def test_a_labeler_option_carries_its_bounds_default_and_help(typed):
    v = _variants(typed.schema, "pseudo_label")["threshold"]
    thr = v["properties"]["options"]["properties"]["threshold"]
    assert (thr["type"], thr["minimum"], thr["maximum"], thr["default"]) == ("number", 0, 1, 0.9)
    assert "confident" in thr["description"]
    mlm = _variants(typed.schema, "pretrain")["mlm"]
    rate = mlm["properties"]["options"]["properties"]["mask_rate"]
    assert rate["exclusiveMinimum"] == 0 and rate["exclusiveMaximum"] == 1 and rate["description"]


GOOD = [
    {},
    {"run_name": "x", "pseudo_label": {"labeler": "threshold", "options": {"threshold": 0.8}}},
    {"pseudo_label": {"options": {"knn": 3}}},  # no labeler: the default (agree)
    {"model": {"name": "tiny-bert", "options": {"layers": 1, "hidden_size": 32}}, "pretrain": {"enabled": True, "objective": "mlm",
                                                                                        "options": {"mask_rate": 0.2}}},
    {"classifier": {"name": "probe", "options": {"C": 0.5}}},
]
BAD = [
    ({"pseudo_label": {"labeler": "threshold", "options": {"threshold": "abc"}}}, "config.pseudo_label.options.threshold"),
    ({"pseudo_label": {"labeler": "threshold", "options": {"threshold": 1.5}}}, "config.pseudo_label.options.threshold"),
    ({"pseudo_label": {"labeler": "threshold", "options": {"knn": 3}}}, "config.pseudo_label"),  # agree's option
    ({"pseudo_label": {"options": {"threshold": 0.5}}}, "config.pseudo_label"),  # agree (the default) has none
    ({"pseudo_label": {"labeler": "nope"}}, "config.pseudo_label"),
    ({"model": {"name": "tiny-bert", "options": {"layers": 0}}}, "config.model"),
    ({"pretrain": {"enabled": True, "objective": "mlm", "options": {"mask_rate": 1.0}}}, "config.pretrain"),
    ({"classifier": {"name": "probe", "options": {"C": -1}}}, "config.classifier"),
]


@pytest.mark.parametrize("config", GOOD)
def test_good_values_pass_the_schema_and_the_flow(typed, config):
    from selftrain.config import PipelineConfig

    assert _errors({"config": config}, typed.schema) == []
    PipelineConfig.model_validate(config)  # what the flow run does with it


@pytest.mark.parametrize("config,where", BAD)
def test_bad_values_are_refused_by_the_schema(typed, flow_schemas, config, where):
    from selftrain.config import ConfigError, PipelineConfig

    assert _errors({"config": config}, flow_schemas["pipeline"]) == [], "the untyped schema let it through"
    (err,) = _errors({"config": config}, typed.schema)
    assert f"field {where!r}" in err or f"field '{where}." in err, err
    with pytest.raises((ConfigError, ValueError)):  # and the flow would refuse it too, only later
        PipelineConfig.model_validate(config)


def test_every_shipped_config_and_the_deployments_own_parameters_validate(flow_schemas):
    """What the pipeline sends to the stage deployments (a full dump) and every example config."""
    import yaml

    from selftrain.config import load_config
    from selftrain.core.run.deploy_schema import chosen_plugins, typed_parameter_schema

    configs = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
    assert configs
    stage = typed_parameter_schema(flow_schemas["pretrain"])
    whole = typed_parameter_schema(flow_schemas["pipeline"])
    for path in configs:
        # the variant turns pseudo-labelling off, so a config's adapted core (picked by its guard) goes too
        for overrides in ([], ["execution.heavy_stages=deployments", "pseudo_label.enabled=false",
                               "classifier.adapt.name=null", "classifier.adapt.check=none"]):
            cfg = load_config(path, overrides).dump()
            assert _errors({"config": cfg, "clean": "c.parquet", "fingerprint": "f"}, stage.schema) == [], path
            assert _errors({"config": cfg}, whole.schema) == [], path
    prefect_yaml = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for d in prefect_yaml["deployments"]:
        if "config" in (d.get("parameters") or {}):
            flow = "retrain" if d["entrypoint"].endswith(".retrain") else "pipeline"
            t = typed_parameter_schema(flow_schemas[flow], chosen_plugins(d["parameters"]))
            assert _errors(d["parameters"], t.schema) == [], d["name"]


def test_retyping_is_idempotent_and_a_flow_without_config_is_left_alone(flow_schemas, typed):
    from selftrain.core.run.deploy_schema import typed_parameter_schema

    again = typed_parameter_schema(typed.schema, {"pseudo_label": "threshold"})
    assert again.schema == typed.schema
    assert typed_parameter_schema({"type": "object", "properties": {"x": {"type": "integer"}}, "definitions": {}}) is None
    assert typed_parameter_schema(flow_schemas["retrain"]).typed["model"][0] == "hf"


def test_a_broken_plugin_is_skipped_and_named_and_an_absent_chosen_one_stays_untyped(monkeypatch, flow_schemas):
    from selftrain.core.run import deploy_schema
    from selftrain.plugins.registry import PluginRecord, discover

    broken = PluginRecord(group="selftrain.labelers", name="broken", value="x:Y", dist="acme-labelers", version="0.1",
                          status="error", error="import failed: ModuleNotFoundError: No module named 'x'")
    monkeypatch.setattr(deploy_schema, "discover",
                        lambda g: discover(g) + ((broken,) if g == "selftrain.labelers" else ()))
    t = deploy_schema.typed_parameter_schema(flow_schemas["pipeline"], {"model": "elsewhere"})
    assert len(t.skipped) == 1 and "broken" in t.skipped[0] and "acme-labelers" in t.skipped[0]
    assert "broken" not in t.typed["pseudo_label"] and "agree" in t.typed["pseudo_label"]
    assert t.untyped == ["model.name=elsewhere"] and t.typed["model"][0] == "elsewhere"
    # the deployment's own choice stays valid, with free-form options; a name nobody knows does not
    ok = {"config": {"model": {"name": "elsewhere", "options": {"anything": 1}}}}
    assert _errors(ok, t.schema) == []
    assert _errors({"config": {"model": {"name": "typo"}}}, t.schema)


def test_a_plugin_config_with_its_own_definitions_keeps_them(monkeypatch, flow_schemas):
    """A Config with an Enum (or a nested model) has $defs: they move into the shared definitions."""
    from enum import Enum

    from selftrain.core.run import deploy_schema
    from selftrain.plugins import PluginConfig
    from selftrain.plugins.registry import PluginRecord, discover

    class Mode(str, Enum):
        fast = "fast"
        careful = "careful"

    class ModeConfig(PluginConfig):
        mode: Mode = Mode.fast

    class ModeLabeler:  # the schema needs only Config and summary
        Config = ModeConfig
        summary = "a labeler with a mode"

    rec = PluginRecord(group="selftrain.labelers", name="moded", value="x:Y", dist="acme", version="1", status="ok",
                       cls=ModeLabeler)
    monkeypatch.setattr(deploy_schema, "discover", lambda g: discover(g) + ((rec,) if g == "selftrain.labelers" else ()))
    t = deploy_schema.typed_parameter_schema(flow_schemas["pipeline"])
    assert "selftrain.labelers.moded.Mode" in t.schema["definitions"]
    ok = {"config": {"pseudo_label": {"labeler": "moded", "options": {"mode": "careful"}}}}
    assert _errors(ok, t.schema) == []
    assert _errors({"config": {"pseudo_label": {"labeler": "moded", "options": {"mode": "sloppy"}}}}, t.schema)
    # retyping without that plugin drops its definitions
    monkeypatch.setattr(deploy_schema, "discover", discover)
    assert not any("moded" in d for d in deploy_schema.typed_parameter_schema(t.schema).schema["definitions"])


def test_the_command_without_a_server_says_how_to_point_it_at_one(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "selftrain.cli", "deploy-schema"], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "export PREFECT_API_URL" in out.stderr, out.stderr


def test_an_unreachable_server_is_exit_2_with_the_fix(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9
    out = subprocess.run([sys.executable, "-m", "selftrain.cli", "deploy-schema"], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "ConnectError" in out.stderr and "Fix: start the server or point PREFECT_API_URL at it" in out.stderr
    assert "Traceback" not in out.stderr

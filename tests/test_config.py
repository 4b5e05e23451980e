"""The typed config: defaults, YAML + --set overrides, clear errors, shipped files valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftrain.config import ConfigError, PipelineConfig, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "examples" / "configs").glob("*.yaml"))


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.data.source == "builtin:bbc" and cfg.data.labels_per_class == 4 and cfg.data.val_per_class == 0
    assert cfg.model.name == "hf" and cfg.classifier.name == "probe" and cfg.pseudo_label.labeler == "agree"
    assert not cfg.pretrain.enabled and cfg.pretrain.objective == "simcse"  # available, off: not measured to pay
    assert cfg.run_dir.endswith("demo")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 2


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["pretrain.epochs=2.5", "data.labels=[a, b]", "pseudo_label.labeler=soft",
                             "pseudo_label.options={k_per_class: 7}", "model.max_length=32"])
    assert cfg.pretrain.epochs == 2.5
    assert cfg.data.labels == ["a", "b"]
    assert cfg.pseudo_label.options == {"k_per_class": 7}
    assert cfg.model.max_length == 32


def test_unknown_key_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("pretrain:\n  epocs: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    msg = str(exc.value)
    assert "pretrain.epocs" in msg and str(f) in msg and "unknown key" in msg


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"finetune\.lr"):
        load_config(None, ["finetune.lr=-1"])


def test_an_unknown_plugin_of_a_stage_that_is_off_is_a_warning_not_an_error():
    """pretrain.objective: mlmm was accepted in silence while pretraining was off, and failed only the day
    pretraining was turned on. A stage that is off need not have its plugin installed, so it stays a
    load, but the typo is named now."""
    with pytest.warns(UserWarning, match=r"pretrain.objective='mlmm' is not an installed plugin.*mlm.*pretrain.enabled is false"):
        cfg = load_config(None, ["pretrain.enabled=false", "pretrain.objective=mlmm"])
    assert cfg.pretrain.objective == "mlmm"
    with pytest.warns(UserWarning, match=r"pseudo_label.labeler='agre' .*agree"):
        load_config(None, ["pseudo_label.enabled=false", "pseudo_label.labeler=agre"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an installed name of a stage that is off: no warning
        load_config(None, ["pretrain.enabled=false", "pretrain.objective=mlm"])


def test_unknown_objective_lists_installed():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["pretrain.enabled=true", "pretrain.objective=mlmm"])
    msg = str(exc.value)
    assert "Unknown objective 'mlmm'" in msg and "mlm" in msg and "Fix pretrain.objective" in msg


def test_plugin_options_are_validated_by_the_plugin():
    with pytest.raises(ConfigError, match=r"pretrain\.options\.mask_rate"):
        load_config(None, ["pretrain.enabled=true", "pretrain.objective=mlm", "pretrain.options={mask_rate: 3}"])
    with pytest.raises(ConfigError, match=r"pseudo_label\.options\.nope"):
        load_config(None, ["pseudo_label.options={nope: 1}"])


def test_objective_must_fit_backbone():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["pretrain.enabled=true", "model.name=tiny-gpt2", "pretrain.objective=mlm"])
    assert "needs a backbone of kind encoder" in str(exc.value) and "clm" in str(exc.value)
    load_config(None, ["pretrain.enabled=true", "model.name=tiny-gpt2", "pretrain.objective=clm"])  # the fix works


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("pretrain.epochs")


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_sentence_objectives_refuse_packing():
    with pytest.raises(ConfigError, match="batching: bucket"):
        load_config(None, ["pretrain.enabled=true", "pretrain.objective=simcse", "pretrain.batching=pack"])
    load_config(None, ["pretrain.enabled=true", "pretrain.objective=mlm", "pretrain.batching=pack"])


def test_a_plugins_cross_field_error_names_the_plugin_and_its_fields(monkeypatch):
    from pydantic import model_validator

    from selftrain.config import plugin_options
    from selftrain.plugins import PluginConfig
    from selftrain.plugins import registry

    class RangeConfig(PluginConfig):
        low: float = 0.1
        high: float = 0.9

        @model_validator(mode="after")
        def ordered(self):
            if self.low >= self.high:
                raise ValueError("low must be below high")
            return self

    class Ranged:
        Config = RangeConfig

    monkeypatch.setattr(registry, "get", lambda group, name, key=None: Ranged)
    with pytest.raises(ConfigError) as exc:
        plugin_options("selftrain.labelers", "ranged", {"low": 0.8, "high": 0.2}, "pseudo_label")
    msg = str(exc.value)
    assert "pseudo_label.options of 'ranged' (high, low): low must be below high" in msg, msg
    assert "options.:" not in msg and "Value error" not in msg


def test_inference_compile_takes_yaml_on_and_off(tmp_path):
    """YAML 1.1 reads a bare on / off as a boolean; both the file and --set forms still mean the mode."""
    assert load_config(None, ["inference_compile=on"]).inference_compile == "on"
    assert load_config(None, ["inference_compile=off"]).inference_compile == "off"
    path = tmp_path / "c.yaml"
    path.write_text("inference_compile: on\n")
    assert load_config(path).inference_compile == "on"
    assert load_config(None).inference_compile == "auto"
    with pytest.raises(ConfigError, match="inference_compile"):
        load_config(None, ["inference_compile=sometimes"])


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: builtin:bbc\n  labels_per_class: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=rf'(?s)is not valid YAML.*in "{bad}", line 3, column 21.*Fix: repair the YAML'):
        load_config(bad)


def test_an_empty_value_is_called_empty():
    with pytest.raises(ConfigError, match=r"data.columns.text: Input should be a valid string \(from --set\) \(it is empty: give it"):
        load_config(None, ["data.columns.text="])


def test_a_bad_value_from_set_is_marked_as_such_not_blamed_on_the_file():
    tiny = Path(__file__).resolve().parents[1] / "examples" / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(tiny, ["retrain.metric=f1"])
    msg = str(ei.value)
    assert msg.startswith(f"invalid configuration ({tiny} + --set)") and "retrain.metric: Input should be" in msg
    assert "'accuracy' (from --set)" in msg


def test_overrides_of_the_wrong_shape_are_a_type_error_showing_the_right_one():
    """load_config(p, "seed=1") iterated the characters: "--set 's': expected section.key=value"."""
    for bad in ("seed=1", {"seed": 1}):
        with pytest.raises(TypeError, match=r"list of 'section.key=value' strings, not a (str|dict).*\['seed=1'"):
            load_config(None, bad)
    assert load_config(None, ["seed=1"]).seed == 1

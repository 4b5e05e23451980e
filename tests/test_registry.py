"""Plugin discovery without installing anything: fake entry points from fake distributions.

``selftrain.plugins.registry.entry_points`` is replaced by a function that returns the real
entry points (selftrain's built-ins) plus ``importlib.metadata.EntryPoint`` objects we
build here, each attached to a fake distribution (``metadata["Name"]``, ``version``).
``discover`` is ``lru_cache``d: every test starts and ends with ``registry.clear_cache()``.
"""

from __future__ import annotations

import sys
import textwrap
import types
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as real_entry_points

import pytest
import torch

from selftrain.plugins import PLUGIN_API_VERSION, Labeler, Objective, PluginConfig, Selection
from selftrain.plugins import registry
from selftrain.plugins.registry import PluginError

OBJ = "selftrain.objectives"
LAB = "selftrain.labelers"
MOD = "_fake_selftrain_plugins"


# ------------------------------------------------------------------ fake plugins


class GoodConfig(PluginConfig):
    rate: float = 0.5


class GoodObjective(Objective):
    summary = "a working third-party objective"
    Config = GoodConfig

    def make_batch(self, input_ids, generator):
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.ones(1, 1, dtype=torch.long)}

    def loss(self, batch):
        return torch.zeros(())


class FutureObjective(GoodObjective):
    api_version = ">=2"


class GarbledVersionObjective(GoodObjective):
    api_version = "one point oh"


class GoodLabeler(Labeler):
    def select(self, inputs):
        return Selection(inputs.probs[:0].argmax(1), inputs.probs[:0], inputs.probs[:0, 0])


class NotAPlugin:
    pass


def not_a_class():
    return GoodObjective


@pytest.fixture
def fake_module(monkeypatch):
    mod = types.ModuleType(MOD)
    for obj in [GoodObjective, FutureObjective, GarbledVersionObjective, GoodLabeler, NotAPlugin, not_a_class]:
        setattr(mod, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, MOD, mod)
    return mod


class FakeDist:
    """What the registry reads of a distribution: ``metadata["Name"]`` and ``version``."""

    def __init__(self, name: str, version: str):
        self.metadata = {"Name": name}
        self.version = version


def ep(name: str, value: str, group: str = OBJ, dist: str | None = "acme-plugins", version: str = "1.2.3") -> EntryPoint:
    e = EntryPoint(name=name, value=value, group=group)
    if dist is not None:
        vars(e).update(dist=FakeDist(dist, version))  # what importlib.metadata itself does (EntryPoint._for)
    return e


@pytest.fixture
def install(monkeypatch, fake_module):
    """install(*entry_points, builtins=True): make discovery see these (plus selftrain's own)."""
    monkeypatch.delenv("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("SELFTRAIN_PLUGIN_ALLOWLIST", raising=False)

    def _install(*eps: EntryPoint, builtins: bool = True) -> None:
        def fake_entry_points(*, group: str):
            real = list(real_entry_points(group=group)) if builtins else []
            return real + [e for e in eps if e.group == group]

        monkeypatch.setattr(registry, "entry_points", fake_entry_points)
        registry.clear_cache()

    registry.clear_cache()
    yield _install
    registry.clear_cache()


def records(group: str = OBJ) -> dict[str, registry.PluginRecord]:
    """name -> the record get() would use (a working one first)."""
    out: dict[str, registry.PluginRecord] = {}
    for r in registry.discover(group):
        out.setdefault(r.name, r)
    return out


# ------------------------------------------------------------------ loading


def test_a_working_plugin_loads_with_its_distribution(install):
    install(ep("good", f"{MOD}:GoodObjective"))
    rec = records()["good"]
    assert (rec.status, rec.error, rec.dist, rec.version) == ("ok", "", "acme-plugins", "1.2.3")
    assert rec.cls is GoodObjective and rec.value == f"{MOD}:GoodObjective"
    assert registry.get(OBJ, "good") is GoodObjective
    assert rec.as_dict() == {"group": OBJ, "name": "good", "value": f"{MOD}:GoodObjective", "dist": "acme-plugins",
                             "version": "1.2.3", "status": "ok", "error": "", "summary": "a working third-party objective"}
    # the built-ins are found through the same entry points
    assert records()["mlm"].status == "ok" and records()["mlm"].dist == "selftrain"
    assert {r.group for r in registry.all_plugins()} == set(registry.GROUPS)


def test_a_plugin_failing_to_import_is_reported_and_the_others_still_load(install, tmp_path, monkeypatch):
    (tmp_path / "_fake_broken_plugin.py").write_text(textwrap.dedent("""
        raise RuntimeError("boom: this plugin needs a GPU library that is not installed")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    install(
        ep("broken", "_fake_broken_plugin:Thing", dist="broken-plugin", version="0.0.1"),
        ep("missing", "_no_such_module_anywhere:Thing", dist="missing-plugin", version="9.9"),
        ep("good", f"{MOD}:GoodObjective"),
    )
    recs = records()
    broken = recs["broken"]
    assert (broken.status, broken.dist, broken.version, broken.cls) == ("error", "broken-plugin", "0.0.1", None)
    assert broken.error.startswith("import failed: RuntimeError: boom")
    assert recs["missing"].status == "error" and "ModuleNotFoundError" in recs["missing"].error
    assert recs["missing"].dist == "missing-plugin" and recs["missing"].version == "9.9"
    assert recs["good"].status == "ok" and recs["mlm"].status == "ok"
    assert registry.get(OBJ, "good") is GoodObjective
    # `selftrain plugins list --json` shows the failure with everything needed to act on it
    d = broken.as_dict()
    assert d["name"] == "broken" and d["dist"] == "broken-plugin" and "boom" in d["error"] and d["summary"] == ""


@pytest.mark.parametrize("value", [f"{MOD}:NotAPlugin", f"{MOD}:not_a_class", f"{MOD}:GoodLabeler"])
def test_a_non_subclass_is_refused(install, value):
    install(ep("odd", value))
    rec = records()["odd"]
    assert rec.status == "error" and rec.cls is None
    assert rec.error == f"{value} is not a subclass of selftrain.plugins.Objective"


def test_a_labeler_in_the_labelers_group_is_fine(install):
    install(ep("mine", f"{MOD}:GoodLabeler", group=LAB))
    assert registry.get(LAB, "mine") is GoodLabeler
    assert "mine" not in records(OBJ)


def test_an_api_version_mismatch_is_refused_with_a_clear_message(install):
    install(ep("future", f"{MOD}:FutureObjective"))
    rec = records()["future"]
    assert rec.status == "error" and rec.cls is None
    assert rec.error == (f"written for plugin API >=2, but this selftrain provides {PLUGIN_API_VERSION}; "
                         "upgrade the plugin or install a matching selftrain")
    assert registry.check_api_version(FutureObjective, "2.1") is None
    assert registry.check_api_version(GoodObjective) is None  # the default ">=1,<2"
    assert "provides 2.0" in registry.check_api_version(GoodObjective, "2.0")


def test_an_invalid_api_version_specifier_is_refused(install):
    install(ep("garbled", f"{MOD}:GarbledVersionObjective"))
    rec = records()["garbled"]
    assert rec.status == "error" and rec.error == "api_version 'one point oh' is not a valid version specifier"


def test_same_name_twice_the_working_one_wins_and_every_record_is_listed(install):
    install(ep("dup", "_no_such_module_anywhere:X", dist="first-broken"),
            ep("dup", f"{MOD}:GoodObjective", dist="second-good"),
            ep("dup", f"{MOD}:FutureObjective", dist="third-incompatible"))
    rec = records()["dup"]
    assert rec.status == "ok" and rec.dist == "second-good"
    assert registry.get(OBJ, "dup") is rec.cls
    dups = [r for r in registry.discover(OBJ) if r.name == "dup"]
    assert len(dups) == 3 and sorted(r.status for r in dups) == ["error", "error", "ok"]


def test_a_third_party_cannot_shadow_a_builtin(install):
    from selftrain.plugins.objectives.mlm import MaskedLM

    install(ep("mlm", f"{MOD}:GoodObjective", dist="evil"))
    assert registry.get(OBJ, "mlm") is MaskedLM
    clash = [r for r in registry.discover(OBJ) if r.name == "mlm" and r.dist == "evil"]
    assert clash and clash[0].status == "error" and "already provided by selftrain" in clash[0].error


def test_two_third_parties_with_one_name_are_both_refused_naming_each_other(install):
    """Which of two third-party plugins of one name ran was install order (entry_points() order), in
    silence: a run used the other package's class. Now neither is used and each names the other."""
    install(ep("twin", f"{MOD}:GoodObjective", dist="acme-a"), ep("twin", f"{MOD}:GoodObjective", dist="acme-b"))
    twins = [r for r in registry.discover(OBJ) if r.name == "twin"]
    assert [r.status for r in twins] == ["error", "error"]
    assert {r.dist for r in twins} == {"acme-a", "acme-b"} and all("depend on install order" in r.error for r in twins)
    with pytest.raises(PluginError, match=r"'twin'.*acme-a.*acme-b|'twin'.*acme-b.*acme-a"):
        registry.get(OBJ, "twin")


def test_a_plugin_that_calls_sys_exit_at_import_is_recorded_and_the_rest_work(install, monkeypatch, tmp_path):
    """sys.exit() at import (e.g. 'no CUDA found') is a SystemExit, not an Exception: it ended every
    selftrain command, plugins list and configs that never name the plugin included."""
    (tmp_path / "_fake_exits_at_import.py").write_text("import sys\nsys.exit('acme: no CUDA found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    install(ep("cuda-only", "_fake_exits_at_import:X", dist="acme-cuda"), ep("good", f"{MOD}:GoodObjective"))
    recs = records()
    assert recs["cuda-only"].status == "error" and "SystemExit: acme: no CUDA found" in recs["cuda-only"].error
    assert recs["good"].status == "ok"


def test_an_unknown_name_suggests_the_closest_and_an_allowlisted_one_says_to_allow_it(install, monkeypatch):
    install(ep("acme-rtd", f"{MOD}:GoodObjective"))
    with pytest.raises(PluginError, match=r"Did you mean 'acme-rtd'\?"):
        registry.get(OBJ, "acme-rdt")
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "other")
    registry.clear_cache()
    with pytest.raises(PluginError, match=r"add acme-plugins to SELFTRAIN_PLUGIN_ALLOWLIST"):
        registry.get(OBJ, "acme-rtd")


def test_allowlist_names_are_canonicalised(install, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "Third_Party.Pkg")
    install(ep("good", f"{MOD}:GoodObjective", dist="third-party-pkg"))
    assert records()["good"].status == "ok"


def test_unknown_group():
    with pytest.raises(KeyError, match="unknown plugin group"):
        registry.discover("selftrain.nope")


# ------------------------------------------------------------------ get(): errors say the fix


def test_get_of_an_unknown_name_lists_the_installed_ones(install):
    install(ep("good", f"{MOD}:GoodObjective"), ep("future", f"{MOD}:FutureObjective"))
    with pytest.raises(PluginError) as exc:
        registry.get(OBJ, "electra")
    msg = str(exc.value)
    assert msg.startswith("Unknown objective 'electra'; installed: ")
    installed = msg.split("installed: ")[1].split(".")[0].split(", ")
    assert {"good", "mlm", "clm"} <= set(installed) and "future" not in installed  # only working ones
    assert "Fix pretrain.objective or pip install the plugin." in msg

    with pytest.raises(PluginError, match=r"Unknown labeler 'nope'.*Fix pseudo_label\.labeler"):
        registry.get(LAB, "nope")
    with pytest.raises(PluginError, match=r"Unknown model 'nope'.*Fix model\.name"):
        registry.get("selftrain.models", "nope")


def test_get_of_a_broken_plugin_explains(install):
    install(ep("future", f"{MOD}:FutureObjective", dist="acme-plugins", version="3.0"))
    with pytest.raises(PluginError) as exc:
        registry.get(OBJ, "future")
    msg = str(exc.value)
    assert "Plugin 'future' (selftrain.objectives, from acme-plugins 3.0) cannot be used: written for plugin API >=2" in msg
    assert "Working ones: " in msg and "mlm" in msg and "Fix pretrain.objective or repair the plugin." in msg


def test_config_validation_uses_the_plugin_and_its_options(install):
    from selftrain.config import ConfigError, validate_config

    install(ep("good", f"{MOD}:GoodObjective"))
    raw = {"model": {"name": "tiny-bert"}, "pretrain": {"enabled": True, "objective": "good", "options": {"rate": 0.1}}}
    assert validate_config(raw).pretrain.objective == "good"
    raw["pretrain"]["options"] = {"rat": 0.1}
    with pytest.raises(ConfigError, match=r"pretrain\.options\.rat: Extra inputs are not permitted.*Fields of 'good': rate"):
        validate_config(raw)
    raw["pretrain"] = {"enabled": True, "objective": "gone"}
    with pytest.raises(ConfigError, match="Unknown objective 'gone'"):
        validate_config(raw)


# ------------------------------------------------------------------ safety switches


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_disable_autoload_keeps_only_selftrains_own(install, monkeypatch, value):
    monkeypatch.setenv("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", value)
    install(ep("good", f"{MOD}:GoodObjective"), ep("nodist", f"{MOD}:GoodObjective", dist=None))
    recs = records()
    for name in ["good", "nodist"]:
        assert recs[name].status == "disabled" and recs[name].cls is None
        assert "SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD" in recs[name].error
    assert recs["nodist"].dist == "?"  # an entry point without a distribution counts as third-party
    assert all(r.status == "ok" for r in recs.values() if r.dist == "selftrain") and "mlm" in recs
    with pytest.raises(PluginError, match="cannot be used: third-party autoload is off"):
        registry.get(OBJ, "good")


def test_disable_autoload_other_values_do_not_disable(install, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", "0")
    install(ep("good", f"{MOD}:GoodObjective"))
    assert records()["good"].status == "ok"


def test_allowlist_admits_only_the_named_distributions(install, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", " acme-plugins , other ")
    install(ep("good", f"{MOD}:GoodObjective", dist="acme-plugins"),
            ep("sneaky", f"{MOD}:GoodObjective", dist="sneaky-plugins"))
    recs = records()
    assert recs["good"].status == "ok"
    assert recs["sneaky"].status == "disabled"
    assert recs["sneaky"].error == "distribution 'sneaky-plugins' is not in SELFTRAIN_PLUGIN_ALLOWLIST"
    assert recs["mlm"].status == "ok", "selftrain's own built-ins are always allowed"


def test_an_empty_allowlist_admits_only_builtins(install, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "")
    install(ep("good", f"{MOD}:GoodObjective"))
    recs = records()
    assert recs["good"].status == "disabled"
    assert all(r.status == "ok" for r in recs.values() if r.dist == "selftrain")


def test_disabled_plugins_are_never_imported(install, monkeypatch, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "_fake_side_effect_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\nThing = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "acme-plugins")
    install(ep("side", "_fake_side_effect_plugin:Thing", dist="untrusted"))
    assert records()["side"].status == "disabled"
    assert not marker.exists(), "a plugin outside the allowlist must not run any code"


def test_discovery_is_cached_until_clear_cache(install, monkeypatch):
    install(ep("good", f"{MOD}:GoodObjective"))
    assert records()["good"].status == "ok"
    monkeypatch.setenv("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert records()["good"].status == "ok", "cached per process"
    registry.clear_cache()
    assert records()["good"].status == "disabled"


def test_an_allowlist_entry_that_allows_nothing_is_reported(install, monkeypatch):
    """A typo in SELFTRAIN_PLUGIN_ALLOWLIST (or '*', which is no wildcard) silently disabled the plugin it
    meant; allowlist_problems (printed by `selftrain plugins list`, exit 1 with --strict) names each entry."""
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "acme-plugins, acme-plugns, *")
    install(ep("good", f"{MOD}:GoodObjective", dist="acme-plugins"))
    problems = registry.allowlist_problems()
    assert [p.split("'")[1] for p in problems] == ["acme-plugns", "*"], problems
    assert "no patterns; installed plugin distributions: acme-plugins" in problems[0]
    monkeypatch.setenv("SELFTRAIN_PLUGIN_ALLOWLIST", "acme-plugins")
    assert registry.allowlist_problems() == []
    monkeypatch.delenv("SELFTRAIN_PLUGIN_ALLOWLIST")
    assert registry.allowlist_problems() == []


def test_only_the_plugins_a_run_uses_key_its_caches_and_checkpoints(install):
    """Every installed plugin's version keyed the stage caches and pretraining checkpoints: installing or
    switching off an unrelated plugin re-ran every stage and threw the checkpoints away."""
    from selftrain.config import load_config, used_versions

    registry.clear_cache()
    cfg = load_config(None, ["pretrain.enabled=true", "pretrain.objective=mlm"])
    before = used_versions(cfg)
    assert set(before) == {"selftrain"}
    install(ep("good", f"{MOD}:GoodObjective", dist="unrelated-plugin", version="9.9"))
    assert "unrelated-plugin" in registry.plugin_versions() and used_versions(cfg) == before
    cfg_good = load_config(None, ["pretrain.enabled=true", "pretrain.objective=good"])
    assert used_versions(cfg_good) == {**before, "unrelated-plugin": "9.9"}
    # pretraining off: its objective's package is not the run's
    assert used_versions(load_config(None, ["pretrain.enabled=false", "pretrain.objective=good"])) == before

"""The contract kit applies discovery's API-version gate, with the message `plugins list` shows."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from selftrain.plugins import registry
from selftrain.plugins.testing import check_api, check_labeler, check_objective

MODULE = '''
from selftrain.plugins.labelers.threshold import ConfidenceThreshold
from selftrain.plugins.models.presets import TinyBert
from selftrain.plugins.objectives.mlm import MaskedLM


class FutureObjective(MaskedLM):
    api_version = ">=2,<3"


class FutureLabeler(ConfidenceThreshold):
    api_version = ">=2,<3"


class FutureModel(TinyBert):
    api_version = ">=2,<3"


class BadSpec(ConfidenceThreshold):
    api_version = "one point oh"
'''


@pytest.fixture
def future(tmp_path, monkeypatch):
    (tmp_path / "future_plugins_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("SELFTRAIN_PLUGIN_ALLOWLIST", raising=False)
    import future_plugins_mod

    yield future_plugins_mod
    sys.modules.pop("future_plugins_mod", None)


def _listed_error(group: str, attr: str) -> str:
    """What `selftrain plugins list` shows for this class as an entry point."""
    rec = registry.load_entry_point(group, EntryPoint(name="future", value=f"future_plugins_mod:{attr}", group=group))
    assert rec.status == "error"
    return rec.error


def test_check_objective_refuses_an_incompatible_api_version(future, tmp_path):
    listed = _listed_error("selftrain.objectives", "FutureObjective")
    assert listed.startswith("written for plugin API >=2,<3, but this selftrain provides")
    with pytest.raises(AssertionError) as exc:
        check_objective(future.FutureObjective, future.TinyBert, tmp_path)
    assert str(exc.value) == f"FutureObjective: {listed}"
    assert not (tmp_path / "backbone").exists(), "the gate comes before any work"


def test_check_labeler_refuses_an_incompatible_api_version(future):
    listed = _listed_error("selftrain.labelers", "FutureLabeler")
    with pytest.raises(AssertionError) as exc:
        check_labeler(future.FutureLabeler)
    assert str(exc.value) == f"FutureLabeler: {listed}"
    with pytest.raises(AssertionError, match="api_version 'one point oh' is not a valid version specifier"):
        check_labeler(future.BadSpec)


def test_the_model_provider_is_gated_too(future, tmp_path):
    from selftrain.plugins.objectives.mlm import MaskedLM

    listed = _listed_error("selftrain.models", "FutureModel")
    for provider in (future.FutureModel, future.FutureModel(future.FutureModel.Config())):
        with pytest.raises(AssertionError) as exc:
            check_objective(MaskedLM, provider, tmp_path)
        assert str(exc.value) == f"FutureModel: {listed}"


def test_compatible_plugins_pass_the_gate():
    from selftrain.plugins.labelers.threshold import ConfidenceThreshold
    from selftrain.plugins.objectives.mlm import MaskedLM

    check_api(MaskedLM)
    check_labeler(ConfidenceThreshold)

"""docs/plugins.md agrees with the code it documents."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

from selftrain.plugins.objectives import common

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text()


def test_example_tests_import_the_installed_package_as_section_1_1_says():
    pyproject = tomllib.loads((ROOT / "examples" / "third_party_plugin" / "pyproject.toml").read_text())
    assert "pythonpath" not in pyproject["tool"]["pytest"]["ini_options"], \
        "docs/plugins.md 1.1: the src layout makes the tests import the installed package"
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert "import the *installed* package" in DOC and "pip install -e '.[test]'" in DOC


def test_every_public_tensor_helper_is_documented_with_its_signature():
    for name in ["pad_batch", "special_token_mask", "mean_pool"]:
        fn = getattr(common, name)
        params = ", ".join(inspect.signature(fn).parameters)
        assert f"`{name}({params})`" in DOC, name
        assert "(B, T" in (fn.__doc__ or ""), f"{name}'s docstring gives its shapes"


def test_checkpoint_retention_is_documented_as_implemented():
    assert "the final\n   step's included" in DOC and "weights_only=True" in DOC


def test_every_runtime_context_field_and_the_api_version_are_documented():
    import dataclasses

    from selftrain.plugins import PLUGIN_API_VERSION, RuntimeContext

    section = DOC.split("### 2.4 `RuntimeContext`")[1].split("### 2.5")[0]
    for f in dataclasses.fields(RuntimeContext):
        assert f"| `{f.name}` |" in section, f"RuntimeContext.{f.name} is missing from docs/plugins.md 2.4"
    assert DOC.count(f'currently `"{PLUGIN_API_VERSION}"`') == 2


def test_the_sample_outputs_quote_this_api_version_and_every_plugin_group():
    """The sample outputs ("this selftrain provides X") quote PLUGIN_API_VERSION, and the table of
    entry-point groups names every group selftrain's own pyproject registers built-ins in."""
    import re

    from selftrain.plugins import PLUGIN_API_VERSION

    quoted = re.findall(r"selftrain provides (\d+\.\d+)", DOC)
    assert quoted and set(quoted) == {PLUGIN_API_VERSION}, quoted
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    table = DOC.split("| entry-point group |")[1].split("\n\n")[0]
    for group, names in groups.items():
        if group.startswith("selftrain."):
            assert f"| `{group}` |" in table, group
            assert all(f"`{n}`" in table.split(f"| `{group}` |")[1].split("\n")[0] for n in names), group

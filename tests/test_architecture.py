"""Imports flow one way: deployments -> flows -> tasks -> core; plugins API <- core.

The core (selftrain/*.py, selftrain/core) never imports Prefect, tasks or flows; tasks
never import flows; plugins never import the core, tasks or flows. Inside the core, a stream's
sub-package imports only the streams before it (``selftrain.core.LAYERS``) and no two core
modules import each other, directly or round a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES = {
    "selftrain": {"prefect", "selftrain.tasks", "selftrain.flows"},
    "tasks": {"selftrain.flows"},
    "plugins": {"prefect", "selftrain.core", "selftrain.config", "selftrain.tasks", "selftrain.flows", "selftrain.cli"},
    "flows": set(),
}


def _imports(path: Path, names: bool = False) -> set[str]:
    """The modules ``path`` imports, at the top or inside a function; ``names``: also ``pkg.name`` for
    every ``from pkg import name`` (``from selftrain.core.run import stages`` imports that module)."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
            if names:
                mods.update(f"{node.module}.{a.name}" for a in node.names)
    return mods


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", list(RULES))
def test_import_direction(folder):
    forbidden = RULES[folder]
    bad = []
    for f in _files(folder):
        if folder == "selftrain" and f.name in ("cli.py", "cli_admin.py", "cli_run.py"):
            continue  # the CLI (admin commands in cli_admin.py, how runs execute in cli_run.py) is the entry point: it may start flows
        for mod in _imports(f):
            if any(mod == x or mod.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_tasks_are_thin_wrappers():
    """Each task wraps a pure function of the core (no logic of its own): the pipeline's over
    selftrain.core.run.stages (the adapted core's check over selftrain.core.run.core_cv), the retrain
    flow's over selftrain.core.registry.retrain."""
    from selftrain import tasks
    from selftrain.core.registry import retrain
    from selftrain.core.run import core_cv, stages
    from selftrain.tasks import retrain as retrain_tasks

    for name, t in tasks.ALL.items():
        assert t.fn.__module__ == (core_cv.__name__ if name == "adapt_check" else stages.__name__), name
    for name, t in retrain_tasks.ALL.items():
        assert t.fn.__module__ == retrain.__name__, name
    # and a task module defines no functions of its own
    for f in _files("tasks"):
        own = [n.name for n in ast.parse(f.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        # caching.py / retry.py: Prefect's cache keys and retry condition, glue with no logic of the core
        assert f.name in ("caching.py", "retry.py") or not own, f"{f.name} defines {own}: move the logic into selftrain/core"


def test_modules_stay_readable():
    long = [f"{f.relative_to(ROOT)} ({n} lines)" for d in ("selftrain", "plugins", "tasks", "flows")
            for f in _files(d) if (n := len(f.read_text().splitlines())) > 600]
    assert not long, long


def _core_modules() -> dict[str, Path]:
    core = ROOT / "selftrain" / "core"
    return {"selftrain.core." + ".".join(f.relative_to(core).with_suffix("").parts): f
            for f in core.rglob("*.py") if f.name != "__init__.py"}


def _core_imports(path: Path) -> set[str]:
    return {m for m in _imports(path, names=True) if m.startswith("selftrain.core.")}


def test_core_streams_import_in_layer_order():
    from selftrain.core import LAYERS

    modules, bad = _core_modules(), []
    for name, f in modules.items():
        layer = name.split(".")[2]
        assert layer in LAYERS, f"{f.relative_to(ROOT)} sits in no stream of selftrain.core.LAYERS"
        for mod in _core_imports(f):
            other = mod.split(".")[2]
            if other not in LAYERS:
                bad.append(f"{f.relative_to(ROOT)} imports {mod}: an old flat path, import its new home")
            elif LAYERS.index(other) > LAYERS.index(layer):
                bad.append(f"{f.relative_to(ROOT)} ({layer}) imports {mod} ({other}), a later stream")
    assert not bad, "\n".join(bad)


def test_core_modules_import_no_circle():
    modules = _core_modules()
    graph = {name: sorted(m for m in _core_imports(f) if m in modules and m != name) for name, f in modules.items()}
    done, on_path = set(), []

    def visit(node):
        if node in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(node):] + [node]))
        if node in done:
            return
        on_path.append(node)
        for nxt in graph[node]:
            visit(nxt)
        on_path.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_the_old_flat_module_paths_still_import():
    """Plugins, notebooks and the docs of earlier releases import ``selftrain.core.<module>``."""
    import importlib

    from selftrain.core import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(f"selftrain.core.{old}") is importlib.import_module(f"selftrain.core.{new}"), old
    from selftrain.core.data import read_source  # the modules that became packages keep their names
    from selftrain.core.predict import PredictError, predict_file
    from selftrain.core.registry import Registry

    assert predict_file.__module__ == "selftrain.core.predict.batch" and PredictError and Registry and read_source
    with pytest.raises(ImportError):
        from selftrain.core.predict import no_such_name  # noqa: F401

"""Imports flow one way: deployments -> flows -> tasks -> core; plugins API <- core.

The core (selftrain/*.py, selftrain/core) never imports Prefect, tasks or flows; tasks
never import flows; plugins never import the core, tasks or flows.
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


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", list(RULES))
def test_import_direction(folder):
    forbidden = RULES[folder]
    bad = []
    for f in _files(folder):
        if folder == "selftrain" and f.name == "cli.py":
            continue  # the CLI is the entry point: it may start flows
        for mod in _imports(f):
            if any(mod == x or mod.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_tasks_are_thin_wrappers():
    """Each task wraps a pure function of the core (no logic of its own): the pipeline's over
    selftrain.core.stages, the retrain flow's over selftrain.core.retrain."""
    from selftrain import tasks
    from selftrain.core import retrain, stages
    from selftrain.tasks import retrain as retrain_tasks

    for name, t in tasks.ALL.items():
        assert t.fn.__module__ == stages.__name__, name
    for name, t in retrain_tasks.ALL.items():
        assert t.fn.__module__ == retrain.__name__, name
    # and a task module defines no functions of its own
    for f in _files("tasks"):
        own = [n.name for n in ast.parse(f.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert f.name == "caching.py" or not own, f"{f.name} defines {own}: move the logic into selftrain/core"


def test_modules_stay_readable():
    long = [f"{f.relative_to(ROOT)} ({n} lines)" for d in ("selftrain", "plugins", "tasks", "flows")
            for f in _files(d) if (n := len(f.read_text().splitlines())) > 600]
    assert not long, long

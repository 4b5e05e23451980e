"""A Prefect deployment's working directory is the checkout it was deployed from, and Prefect puts it
first on ``sys.path``: ``selftrain`` is then the checkout's folder, not the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import json, sys
# no install at all: only the checkout, first on the path, as Prefect's load_module puts a deployment's directory
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
from prefect.utilities.importtools import load_module
flows = load_module("selftrain.flows.pipeline")
import selftrain, selftrain.tasks.caching, selftrain.plugins.objectives.mlm, selftrain.config
print(json.dumps({m: sys.modules[m].__file__ for m in ("selftrain", "selftrain.flows.pipeline", "selftrain.tasks.caching",
                                                        "selftrain.plugins.objectives.mlm", "selftrain.config")}))
"""


def test_the_checkout_imports_whole_from_its_own_tree_without_an_install():
    """The checkout's selftrain/ has no flows/, tasks/ or plugins/ (pyproject maps them in from the top
    level on install): a worker with a wheel install could not import selftrain.flows from a deployment's
    directory ('No module named selftrain.flows'), one with another checkout installed mixed both trees
    ('cannot import name ... from selftrain.config')."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    files = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(Path(f).resolve().is_relative_to(ROOT) for f in files.values()), files
    assert Path(files["selftrain.flows.pipeline"]).resolve() == ROOT / "flows" / "pipeline.py"

"""A third-party plugin, the way a user installs it: a separate distribution with entry points.

``examples/third_party_plugin`` (``selftrain-electra-plugin``) is pip-installed into a
throw-away virtual environment, never into the one running the tests. That environment
sees this interpreter's packages (torch, transformers, selftrain itself, installed
editable) through a ``.pth`` file that calls ``site.addsitedir`` on each of our
site-packages folders: a plain path line would not do, because the editable install of
selftrain is itself a ``.pth`` hook, and only ``addsitedir`` runs the ``.pth`` files of
the folder it adds. (``venv --system-site-packages`` would expose the *base*
interpreter's packages, not this venv's, and could shadow them with other versions.)
Installing is offline: ``--no-index --no-deps --no-build-isolation``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "third_party_plugin"
DIST = "selftrain-electra-plugin"
ENV_KEYS_TO_DROP = ("PYTHONPATH", "PYTHONHOME", "PREFECT_API_URL", "SELFTRAIN_PLUGIN_ALLOWLIST",
                    "SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD")


@dataclass
class PluginEnv:
    root: Path
    python: Path
    site_packages: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if k not in ENV_KEYS_TO_DROP}
        e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                 PYTHONNOUSERSITE="1", VIRTUAL_ENV=str(self.root), PREFECT_HOME=str(self.home / "prefect"),
                 TOKENIZERS_PARALLELISM="false")
        e.update(extra)
        return e

    def run(self, *args: str, timeout: int = 180, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env(**extra), cwd=ROOT)

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        out = self.run("-m", "pip", *args, timeout=300)
        assert out.returncode == 0, f"pip {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return out

    def plugins(self, **extra: str) -> dict[tuple[str, str], dict]:
        out = self.run("-m", "selftrain.cli", "plugins", "list", "--json", **extra)
        assert out.returncode == 0, out.stderr[-3000:]
        return {(r["group"], r["name"]): r for r in json.loads(out.stdout)}

    def install_example(self) -> None:
        # build from a copy: an in-tree build would leave build/ and *.egg-info in examples/
        src = self.home / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
        self.pip("install", "--no-index", "--no-deps", "--no-build-isolation", "--quiet", str(src))


def make_env(where: Path) -> PluginEnv:
    """A fresh venv at ``where`` that sees this interpreter's packages but has its own site-packages."""
    import importlib.util

    # the new env borrows our pip (it is created --without-pip) and, for the offline
    # --no-build-isolation build, our setuptools
    for needed in ["pip", "setuptools"]:
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed in the test interpreter's environment")
    root = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    (Path(own) / "_selftrain_parent_env.pth").write_text(lines)
    env = PluginEnv(root=root, python=python, site_packages=Path(own), home=where)
    probe = env.run("-c", "import selftrain, selftrain.plugins.registry; print(selftrain.__file__)")
    assert probe.returncode == 0, f"selftrain is not importable in the test venv:\n{probe.stderr[-2000:]}"
    import selftrain

    assert Path(probe.stdout.strip()) == Path(selftrain.__file__), "the test venv sees another selftrain"
    return env


def _not_in_this_env() -> bool:
    try:
        distribution(DIST)
    except PackageNotFoundError:
        return True
    return False


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    env = make_env(tmp_path_factory.mktemp("plugin-env"))
    assert env.run("-c", "import selftrain_electra").returncode != 0, "the example must not be importable yet"
    env.install_example()
    assert list(env.site_packages.glob("selftrain_electra_plugin-*.dist-info")), "installed outside the test venv"
    yield env
    shutil.rmtree(env.root, ignore_errors=True)


def test_installed_plugins_are_listed_with_their_distribution(plugin_env):
    recs = plugin_env.plugins()
    for key in [("selftrain.objectives", "electra"), ("selftrain.labelers", "margin")]:
        assert key in recs, f"{key} missing from `selftrain plugins list`: {sorted(recs)}"
        rec = recs[key]
        assert rec["status"] == "ok", rec
        assert rec["dist"] == DIST and rec["version"] == "0.1.0", rec
        assert rec["summary"], "the plugin's summary is shown"
    assert recs[("selftrain.objectives", "electra")]["value"] == "selftrain_electra.objective:Electra"
    # the built-ins are unaffected
    assert recs[("selftrain.objectives", "mlm")]["status"] == "ok" and recs[("selftrain.objectives", "mlm")]["dist"] == "selftrain"
    # the human-readable listing too
    out = plugin_env.run("-m", "selftrain.cli", "plugins", "list")
    assert out.returncode == 0 and f"electra      {DIST} 0.1.0  [ok]" in out.stdout, out.stdout
    assert _not_in_this_env(), "the test must not install into the environment running the tests"


def test_tiny_pipeline_with_the_plugins(plugin_env, tmp_path):
    run_dir = tmp_path / "run"
    out = plugin_env.run(
        "-m", "selftrain.cli", "run", "-c", "examples/configs/tiny.yaml", "--no-prefect",
        "--set", "pretrain.objective=electra", "--set", "pseudo_label.labeler=margin",
        "--set", "pseudo_label.options={min_margin: 0.0, k_per_class: 20}", "-o", str(run_dir),
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"] in metrics["models"]
    assert (run_dir / "models" / metrics["final"] / "model.safetensors").exists()
    assert metrics["pretrain"]["steps"] == 6 and metrics["pretrain"]["final_loss"] > 0
    pl = metrics["pseudo_labels"][0]
    assert pl["labeler"] == "margin" and 0 < pl["kept"] <= 20 * len(metrics["labels"])
    assert pl["notes"]["min_margin"] == 0.0
    # ELECTRA's heads are in the resumable checkpoint, not in the pretrained backbone
    from safetensors.torch import load_file

    heads = sorted((run_dir / "checkpoints" / "pretrain").glob("step-*/heads.safetensors"))
    assert heads, "no checkpoint with heads"
    assert {"discriminator.weight", "generator.dense.weight"} <= set(load_file(heads[-1]))
    backbone = load_file(run_dir / "models" / "pretrain" / "model.safetensors")
    assert not any(k.startswith(("discriminator", "generator")) for k in backbone)


def test_allowlist_and_autoload_switch(plugin_env):
    recs = plugin_env.plugins(SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD="1")
    for key in [("selftrain.objectives", "electra"), ("selftrain.labelers", "margin")]:
        assert recs[key]["status"] == "disabled" and "SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD" in recs[key]["error"]
        assert recs[key]["dist"] == DIST
    assert all(r["status"] == "ok" for r in recs.values() if r["dist"] == "selftrain"), "built-ins always load"

    recs = plugin_env.plugins(SELFTRAIN_PLUGIN_ALLOWLIST="some-other-plugin")
    rec = recs[("selftrain.objectives", "electra")]
    assert rec["status"] == "disabled" and "SELFTRAIN_PLUGIN_ALLOWLIST" in rec["error"] and DIST in rec["error"]
    assert recs[("selftrain.objectives", "mlm")]["status"] == "ok"

    recs = plugin_env.plugins(SELFTRAIN_PLUGIN_ALLOWLIST=f"some-other-plugin, {DIST}")
    assert recs[("selftrain.objectives", "electra")]["status"] == "ok"

    # a config naming a disabled plugin fails at validation time, saying why
    out = plugin_env.run("-m", "selftrain.cli", "config", "--set", "pretrain.enabled=true",
                         "--set", "pretrain.objective=electra", SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD="1")
    assert out.returncode == 2
    assert "'electra'" in out.stderr and "cannot be used" in out.stderr and "SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD" in out.stderr


def test_uninstall_removes_the_plugins(tmp_path):
    env = make_env(tmp_path)  # its own env: this test must not break the shared one
    env.install_example()
    assert ("selftrain.objectives", "electra") in env.plugins()
    env.pip("uninstall", "-y", DIST)
    assert not list(env.site_packages.glob("selftrain_electra*"))
    recs = env.plugins()
    assert ("selftrain.objectives", "electra") not in recs and ("selftrain.labelers", "margin") not in recs
    assert ("selftrain.objectives", "mlm") in recs
    out = env.run("-m", "selftrain.cli", "config", "--set", "pretrain.enabled=true", "--set", "pretrain.objective=electra")
    assert out.returncode == 2 and "Unknown objective 'electra'" in out.stderr and "Fix pretrain.objective" in out.stderr

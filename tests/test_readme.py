"""The README's cheap CLI lines run as written (issue: its own commands failed once).

Every ``selftrain config ...`` / ``selftrain plugins ...`` / ``selftrain models list|show ...``
line of the README's code blocks is run; ``my.yaml`` becomes a shipped config; ``[--json]``
means both with and without; ``NAME`` becomes a built-in plugin. Runs of the pipeline are
covered by the other tests."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ("selftrain config", "selftrain plugins", "selftrain --help")


def _readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        for line in block.splitlines():
            line = line.removeprefix("$ ").split("  #", 1)[0].strip()
            if line.startswith(CHEAP):
                out.append(line)
    return out


def _variants(line: str) -> list[str]:
    line = line.replace("my.yaml", "examples/configs/bbc.yaml").replace(" NAME", " agree")
    if "[--json]" in line:
        return [line.replace(" [--json]", ""), line.replace("[--json]", "--json")]
    return [line]


LINES = sorted({v for line in _readme_lines() for v in _variants(line)})


def test_the_readme_has_cheap_cli_lines():
    assert any(x.startswith("selftrain config --show") for x in LINES) and any("plugins show" in x for x in LINES)


@pytest.mark.parametrize("line", LINES)
def test_readme_cli_line_runs(line, tmp_path):
    argv = shlex.split(line)[1:]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    out = subprocess.run([sys.executable, "-m", "selftrain.cli", *argv], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, f"{line!r} -> rc {out.returncode}\n{out.stderr[-2000:]}"
    assert out.stdout.strip(), f"{line!r} printed nothing"

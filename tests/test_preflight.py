"""`selftrain run` checks the data before importing torch or writing anything: a missing
file or a wrong column name is one line naming the fix, exit code 2, no run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from selftrain.core.data.preflight import PreflightError, check_data, check_run

ROOT = Path(__file__).resolve().parents[1]

# main() in a fresh interpreter; the last stdout line says whether torch got imported
_PROBE = ("import sys\nfrom selftrain.cli import main\nrc = main(sys.argv[1:])\n"
          "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')\nsys.exit(rc)\n")


def _cli(args, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)


@pytest.fixture
def csv(tmp_path) -> Path:
    path = tmp_path / "news.csv"
    pd.DataFrame({"headline": ["a b c", "d e f"], "category": ["x", "y"]}).to_csv(path, index=False)
    return path


def test_missing_source_file_is_one_line_rc2_before_torch_and_writes(tmp_path):
    run = tmp_path / "run"
    out = _cli(["run", "--set", "data.source=nope/missing.csv", "-o", str(run)], tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("selftrain: data.source: 'nope/missing.csv' not found") and "Fix: --set data.source=" in lines[0]
    assert "TORCH_NOT_IMPORTED" in out.stdout, out.stdout
    assert not run.exists(), "nothing may be written"
    assert not (tmp_path / "runs").exists()


def test_wrong_label_column_names_the_columns_and_the_fix(tmp_path, csv):
    run = tmp_path / "run"
    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"data:\n  source: {csv}\n  columns: {{text: headline}}\n")
    out = _cli(["run", "-c", str(cfg), "--set", "data.columns.label=categ", "--no-prefect", "-o", str(run)], tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [f"selftrain: data.columns.label='categ' is not a column of {csv}; columns: headline, category. "
                     "Fix: --set data.columns.label=<one of them>"], out.stderr
    assert "TORCH_NOT_IMPORTED" in out.stdout, out.stdout
    assert not run.exists()


def test_preflight_module_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom selftrain.core.data import preflight\n"
            "preflight.check_run(None, ['data.source=missing.csv'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_columns_of_parquet_and_jsonl_and_several_missing(tmp_path):
    df = pd.DataFrame({"body": ["t1", "t2"], "tag": ["a", "b"], "part": ["train", "test"]})
    df.to_parquet(tmp_path / "d.parquet")
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    for name in ["d.parquet", "d.jsonl"]:
        src = str(tmp_path / name)
        check_data({"source": src, "columns": {"text": "body", "label": "tag", "split": "part"}})  # all present
        with pytest.raises(PreflightError, match=r"data.columns.split='split' is not a column .*columns: body, tag, part"):
            check_data({"source": src, "columns": {"text": "body", "label": "tag", "split": "split"}})
    with pytest.raises(PreflightError, match=r"data.columns.text='text', data.columns.label='label' are not columns.*"
                                             r"Fix: --set data.columns.text=<one of them> --set data.columns.label="):
        check_data({"source": str(tmp_path / "d.parquet")})


def test_unknown_extension_and_skipped_sources(tmp_path):
    (tmp_path / "data.txt").write_text("text,label\n")
    with pytest.raises(PreflightError, match=r"data.format: .*Fix: --set data.format=csv"):
        check_data({"source": str(tmp_path / "data.txt")})
    check_data({"source": str(tmp_path / "data.txt"), "format": "csv"})
    # builtin:, hf: and remote sources are ingest's to check; a config that does not validate is load_config's
    for src in ["builtin:tweets", "hf:ag_news", "s3://bucket/none.csv"]:
        check_data({"source": src})
    assert check_run(None, ["data.max_rows=-1", "data.source=missing.csv"]) is None
    assert check_run(tmp_path / "no-such.yaml", []) is None
    assert "not found" in check_run(None, [f"data.source=file://{tmp_path}/missing.csv"])


def test_a_data_error_found_after_the_preflight_is_one_line_rc2(tmp_path):
    """An empty csv passes the preflight (no header to check) and fails in ingest: `run` ends with the
    DataSourceError's one line and exit 2, not a pandas traceback (and no Prefect retry when it runs
    under Prefect: DataSourceError is a user error, tasks/retry.py)."""
    (tmp_path / "empty.csv").write_text("")
    out = _cli(["run", "--no-prefect", "--set", "data.source=empty.csv", "-o", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("selftrain: empty.csv is empty: no header line and no rows. Fix:"), out.stderr
    assert "Traceback" not in out.stderr


def test_no_pool_left_with_pseudo_labelling_on_fails_at_validation(tmp_path):
    """Every row labeled and drawn into train / val / test: the run used to train the baseline and then
    fail with "the unlabeled pool is empty" (a traceback); validation now says it first."""
    rows = [{"text": f"{lab} row number {i} about {lab} things", "label": lab} for lab in ("a", "b") for i in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "few.csv", index=False)
    out = _cli(["run", "--no-prefect", "--set", "data.source=few.csv", "--set", "data.labels_per_class=10",
                "--set", "data.test_per_class=1", "--set", "data.val_per_class=0", "-o", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "no unlabeled rows left for the pool" in last and "pseudo_label.enabled: false" in last, out.stderr
    assert not (tmp_path / "run" / "models").exists(), "nothing was trained"


def test_an_output_dir_that_is_a_file_is_one_line_rc2(tmp_path):
    (tmp_path / "existing.parquet").write_bytes(b"PAR1")
    out = _cli(["run", "-o", str(tmp_path / "existing.parquet")], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("selftrain: output_dir: ") and "is a file" in out.stderr
    assert (tmp_path / "existing.parquet").read_bytes() == b"PAR1"

"""Storage helpers on a local disk and on a real S3 API (moto's server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from selftrain.core.common import io


def test_output_dir_is_atomic_locally(tmp_path):
    target = tmp_path / "models" / "m"
    with io.output_dir(str(target)) as tmp:
        Path(tmp, "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with io.output_dir(str(target)) as tmp:
            Path(tmp, "a.txt").write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1", "a failed write must leave the previous version intact"
    assert [p.name for p in target.parent.iterdir()] == ["m"], "no temporary leftovers"


def test_what_a_killed_writer_left_is_removed_by_the_next_successful_write(tmp_path):
    """SIGKILL mid-stage leaves .m.tmp-* (and, mid-swap, .m.old-*): the next write of the same target
    removes them; another target's temp folder is not touched."""
    target = tmp_path / "models" / "m"
    target.parent.mkdir(parents=True)
    for name in (".m.tmp-dead0001", ".m.old-dead0002", ".other.tmp-live0003"):
        (target.parent / name).mkdir()
    with io.output_dir(str(target)) as tmp:
        Path(tmp, "a.txt").write_text("v1")
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.tmp-live0003", "m"]


def _writer_killed_midway(path: Path) -> None:
    """A real process that starts writing ``path`` through io.write_file and is SIGKILLed midway."""
    code = ("import sys, time; from selftrain.core.common import io\n"
            "def w(tmp):\n    open(tmp, 'w').write('half'); print('writing', flush=True); time.sleep(60)\n"
            "io.write_file(sys.argv[1], w)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()


def test_a_killed_file_writer_leaves_a_temp_file_the_next_write_removes(tmp_path):
    """predict -o out.parquet killed midway left out.parquet.tmp-* forever (only folders were cleaned);
    now the next write of the same file removes the temp files of dead writers, and never a live one's."""
    out = tmp_path / "out.parquet"
    _writer_killed_midway(out)
    left = list(tmp_path.glob(".out.parquet.tmp-*"))
    assert len(left) == 1 and not out.exists(), "the killed writer must leave only its temp file, no output"
    live = tmp_path / f".out.parquet.tmp-{os.getpid()}-feedbeef"  # a live writer's (this process)
    live.write_text("in progress")
    io.write_bytes(str(out), b"whole")
    assert out.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.parquet"]


def test_unchanged_parquet_is_not_rewritten(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    uri = str(tmp_path / "d.parquet")
    io.write_parquet(df, uri)
    before = Path(uri).stat().st_mtime_ns
    io.write_parquet(df.copy(), uri)
    assert Path(uri).stat().st_mtime_ns == before
    io.write_parquet(df.assign(a=[3, 4]), uri)
    assert pd.read_parquet(uri)["a"].tolist() == [3, 4]


def test_s3_model_dir_round_trip_and_fresh_mirror(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_CACHE", str(tmp_path / "fresh-cache"))  # a new host: empty cache
    uri = f"s3://{s3_bucket}/run/models/teacher"
    with io.output_dir(uri) as tmp:
        Path(tmp, "config.json").write_text('{"v": 1}')
    local = io.local_dir(uri)
    assert Path(local, "config.json").read_text() == '{"v": 1}'
    # rewritten at the same URI (a re-run): the mirror must not serve the old copy
    with io.output_dir(uri) as tmp:
        Path(tmp, "config.json").write_text('{"v": 2, "longer": true}')
    assert Path(io.local_dir(uri), "config.json").read_text() == '{"v": 2, "longer": true}'
    io.write_parquet(pd.DataFrame({"x": [1]}), f"s3://{s3_bucket}/run/t.parquet")
    assert io.read_parquet(f"s3://{s3_bucket}/run/t.parquet")["x"].tolist() == [1]

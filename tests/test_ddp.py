"""Several processes on one worker (pretrain.nproc_per_node): DDP under torchrun, gloo on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selftrain.config import ConfigError
from selftrain.core.run import stages
from selftrain.core.train.pretrain import rank_slice


def _prepare(cfg):
    ing = stages.ingest(cfg)
    return stages.validate(cfg, ing["snapshot"], ing["fingerprint"])


def _layout(step_dir: Path) -> dict:
    """What a checkpoint holds: file names, tensor names and shapes, state fields (not values)."""
    return {"files": sorted(p.name for p in step_dir.iterdir()),
            "model": {k: tuple(v.shape) for k, v in load_file(step_dir / "model.safetensors").items()},
            "heads": sorted(load_file(step_dir / "heads.safetensors")) if (step_dir / "heads.safetensors").exists() else None,
            "optim": sorted(torch.load(step_dir / "optim.pt", weights_only=True)),
            "state": sorted(json.loads((step_dir / "state.json").read_text()))}


@pytest.mark.slow  # ~60 s: three torchrun launches of 2 processes (imports dominate)
def test_two_process_resume_matches_uninterrupted_two_process_run(tiny_config):
    over = ("device=cpu", "pretrain.max_steps=6", "pretrain.checkpoint_every=3")
    one = tiny_config(*over)
    val = _prepare(one)
    run = Path(one.run_dir)
    ckpt = run / "checkpoints" / "pretrain"
    with pytest.raises(InterruptedError):
        stages.pretrain_stage(one, val["clean"], val["fingerprint"], stop_after=3)
    one_layout = _layout(ckpt / "step-3")
    shutil.rmtree(ckpt)

    cfg = tiny_config(*over, "pretrain.nproc_per_node=2", "pretrain.ddp_backend=gloo")
    with pytest.raises(InterruptedError, match="stopped after step 3"):
        stages.pretrain_stage(cfg, val["clean"], val["fingerprint"], stop_after=3)
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-3"]
    assert _layout(ckpt / "step-3") == one_layout, "2 processes write the checkpoint of 1 process"
    resumed = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 6 and np.isfinite(resumed["final_loss"])
    resumed_w = load_file(run / "models" / "pretrain" / "model.safetensors")

    shutil.rmtree(ckpt)
    straight = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert straight["resumed_from"] == 0 and straight["tokens_per_s"] > 0
    straight_w = load_file(run / "models" / "pretrain" / "model.safetensors")
    assert resumed_w.keys() == straight_w.keys()
    for k in resumed_w:
        torch.testing.assert_close(resumed_w[k], straight_w[k], atol=1e-6, rtol=0, msg=k)

    model_dir, _ = stages.backbone(cfg, val["clean"])
    initial = load_file(Path(model_dir) / "model.safetensors")
    assert any(not torch.equal(initial[k], straight_w[k]) for k in straight_w), "the 2-process run trained"


def test_rank_slice_splits_every_global_batch():
    b = np.arange(7)
    parts = [rank_slice(b, r, 2) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == b.tolist()
    assert [rank_slice(np.array([5]), r, 2).tolist() for r in range(2)] == [[5], [5]]  # nobody gets an empty batch
    assert rank_slice(b, 0, 1) is b


def test_nccl_on_cpu_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="ddp_backend=nccl needs CUDA"):
        tiny_config("device=cpu", "pretrain.nproc_per_node=2", "pretrain.ddp_backend=nccl")


def test_a_failed_launch_reports_the_ranks_error_lines_not_only_torchruns_summary():
    from selftrain.core.train.ddp import _failure_text

    ranks = ["[rank1]: Traceback (most recent call last):", "[rank1]:   File x.py, line 3",
             "[rank1]: RuntimeError: Connection closed by peer [127.0.0.1]:29500",
             "terminate called after throwing an instance of 'gloo::EnforceNotMet'", "  what():  [enforce fail]"]
    summary = [f"torchrun summary line {i}" for i in range(30)]
    text = _failure_text("\n".join(["noise"] * 50 + ranks + summary))
    assert "RuntimeError: Connection closed by peer" in text and "what():  [enforce fail]" in text
    assert "noise" not in text and text.endswith("torchrun summary line 29")
    assert _failure_text("\n".join(summary)) == "\n".join(summary[-25:])  # nothing to pick: the tail alone


def _job(tmp_path: Path, result: dict | None, done: list[int]) -> Path:
    if result is not None:
        (tmp_path / "result.json").write_text(json.dumps(result))
    for r in done:
        (tmp_path / f"done-{r}").write_text("ok")
    (tmp_path / "stderr.log").write_text("terminate called without an active exception\n" + "summary\n" * 30)
    return tmp_path


def test_a_teardown_crash_after_every_rank_finished_keeps_the_run_and_logs_it(tmp_path):
    """CI once saw rank 1 abort in gloo's teardown after step 6/6: the run was whole, torchrun exited 1."""
    from selftrain.core.train.ddp import _read_outcome

    res = {"steps": 6, "final_loss": 1.5}
    logged: list[dict] = []
    assert _read_outcome(_job(tmp_path, res, [0, 1]), 2, 1, logged.append) == res
    assert [r["event"] for r in logged] == ["ddp_teardown_crash"] and logged[0]["exit"] == 1
    assert "terminate called" in logged[0]["detail"]
    logged.clear()
    assert _read_outcome(tmp_path, 2, 0, logged.append) == res and logged == []  # a clean exit logs nothing


def test_a_crash_before_every_rank_finished_fails_the_run(tmp_path):
    from selftrain.core.train.ddp import _read_outcome

    with pytest.raises(RuntimeError, match=r"(?s)2 processes failed \(exit 1\).*terminate called"):
        _read_outcome(_job(tmp_path, {"steps": 6}, [0]), 2, 1, lambda rec: None)  # rank 1 never got past the barrier
    with pytest.raises(RuntimeError, match="failed"):
        _read_outcome(_job(_fresh(tmp_path), None, [0, 1]), 2, 0, lambda rec: None)  # no result at all
    with pytest.raises(InterruptedError, match="stopped after step 3"):
        _read_outcome(_job(_fresh(tmp_path), {"error": "InterruptedError", "message": "stopped after step 3"}, []),
                      2, 1, lambda rec: None)


def _fresh(tmp_path: Path) -> Path:
    d = tmp_path / f"job{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    return d

"""Pretraining checkpoints: loaded weights-only (a pickled object is refused, never run),
and the last two checkpoints, the final step's included, are kept."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from selftrain.core.train.pretrain import CheckpointError, load_optim_state


class _Evil:
    """Unpickling this runs ``os.system`` (a stand-in for any code in a foreign checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _real_state() -> dict:
    from transformers import get_linear_schedule_with_warmup

    from selftrain.core.train.runtime import fused_adamw

    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW([{"params": [m.weight], "weight_decay": 0.01}, {"params": [m.bias], "weight_decay": 0.0}],
                            lr=1e-3, **fused_adamw(torch.device("cpu")))
    sched = get_linear_schedule_with_warmup(opt, 2, 10)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}


def test_optimizer_and_scheduler_state_load_weights_only(tmp_path):
    state = _real_state()
    torch.save(state, tmp_path / "optim.pt")
    st = load_optim_state(tmp_path / "optim.pt", torch.device("cpu"))
    assert st["scheduler"] == state["scheduler"]
    assert st["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    torch.testing.assert_close(st["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_a_pickled_object_in_a_checkpoint_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "step-3"
    ckpt.mkdir()
    torch.save({"optimizer": _Evil(marker), "scheduler": {}}, ckpt / "optim.pt")
    with pytest.raises(CheckpointError, match=r"refusing to resume from .*optim\.pt.*Fix: delete") as exc:
        load_optim_state(ckpt / "optim.pt", torch.device("cpu"))
    assert str(ckpt) in str(exc.value)
    assert not marker.exists(), "the pickled payload ran"


def test_a_plain_pickle_of_a_custom_class_is_refused(tmp_path):
    with open(tmp_path / "optim.pt", "wb") as f:
        pickle.dump({"optimizer": _Evil(tmp_path / "x"), "scheduler": {}}, f)
    with pytest.raises(CheckpointError):
        load_optim_state(tmp_path / "optim.pt", torch.device("cpu"))
    assert not (tmp_path / "x").exists()


def _prepare(cfg):
    from selftrain.core.run import stages

    ing = stages.ingest(cfg)
    return stages.validate(cfg, ing["snapshot"], ing["fingerprint"])


def _ckpts(cfg) -> list[str]:
    return sorted((p.name for p in (Path(cfg.run_dir) / "checkpoints" / "pretrain").glob("step-*")),
                  key=lambda n: int(n[5:]))


def test_last_two_checkpoints_are_kept_including_the_final_step(tiny_config):
    from selftrain.core.run import stages

    cfg = tiny_config("pretrain.max_steps=6", "pretrain.checkpoint_every=3")
    val = _prepare(cfg)
    res = stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert res["steps"] == 6
    assert _ckpts(cfg) == ["step-3", "step-6"]

    cfg = tiny_config("pretrain.max_steps=7", "pretrain.checkpoint_every=2")
    stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert _ckpts(cfg) == ["step-6", "step-7"], "this job's last two; the earlier job's are pruned"


def test_resume_refuses_a_tampered_checkpoint(tiny_config):
    from selftrain.core.run import stages

    cfg = tiny_config("pretrain.max_steps=4", "pretrain.checkpoint_every=2")
    val = _prepare(cfg)
    with pytest.raises(InterruptedError):
        stages.pretrain_stage(cfg, val["clean"], val["fingerprint"], stop_after=2)
    marker = Path(cfg.run_dir) / "pwned"
    optim = Path(cfg.run_dir) / "checkpoints" / "pretrain" / "step-2" / "optim.pt"
    torch.save({"optimizer": _Evil(marker), "scheduler": {}}, optim)
    with pytest.raises(CheckpointError, match="refusing to resume"):
        stages.pretrain_stage(cfg, val["clean"], val["fingerprint"])
    assert not marker.exists()

"""Several GPUs on one worker: the pretrain stage under torchrun with DistributedDataParallel.

``pretrain.nproc_per_node: N`` (N > 1) makes the pretrain stage write its job to a temp
folder and launch ``python -m torch.distributed.run --standalone --nproc-per-node N -m
selftrain.core.train.ddp JOB``; each rank runs :func:`selftrain.core.train.pretrain.pretrain` on its
slice of every step's global batch (so the batch plan, ``step-N`` checkpoints and resume are
those of one process), DDP all-reduces the gradients of backbone and objective heads, rank 0
writes checkpoints, the final model and the result, which the stage reads back.
``pretrain.ddp_backend``: auto = nccl on CUDA (one GPU per rank, ``LOCAL_RANK``), gloo on
the CPU (used by the tests, 2 processes).

Why torchrun rather than accelerate: it ships with torch (no new dependency, no second
config layer), it is the standard launcher the rest of the ecosystem builds on, and all
we need from it is N processes with a rendezvous; the training loop stays ours.

Results are not bit-identical to a 1-process run (per-rank noise, in-batch negatives and
token means per rank); a run resumed with the same N is identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from selftrain.config import PretrainConfig
from selftrain.core.train.pretrain import CheckpointError, PretrainResult, pretrain
from selftrain.plugins import Objective, PluginConfig, RuntimeContext

LOG_PREFIX = "@@selftrain-log "
_ERRORS = {"InterruptedError": InterruptedError, "FloatingPointError": FloatingPointError,
           "CheckpointError": CheckpointError}


def backend_for(ctx: RuntimeContext, cfg: PretrainConfig) -> str:
    if cfg.ddp_backend == "auto":
        return "nccl" if ctx.device.type == "cuda" else "gloo"
    if cfg.ddp_backend == "nccl" and ctx.device.type != "cuda":
        raise RuntimeError(f"pretrain.ddp_backend=nccl needs CUDA, but the stage runs on {ctx.device.type}. "
                           "Fix: set pretrain.ddp_backend: auto (gloo on the CPU).")
    return cfg.ddp_backend


def pretrain_ddp(texts: list[str], model_dir: str, kind: str, objective_cls: type[Objective],
                 objective_cfg: PluginConfig, cfg: PretrainConfig, max_length: int, ctx: RuntimeContext,
                 out_dir: str, ckpt_dir: str, key: str, log: Callable[[dict], None] = lambda rec: None,
                 stop_after: int | None = None) -> PretrainResult:
    """:func:`pretrain` in ``cfg.nproc_per_node`` processes (same arguments, same result)."""
    n = cfg.nproc_per_node
    backend = backend_for(ctx, cfg)
    if ctx.device.type == "cuda" and torch.cuda.device_count() < n:
        raise RuntimeError(f"pretrain.nproc_per_node={n} needs {n} GPUs, torch sees {torch.cuda.device_count()}. "
                           f"Fix: set pretrain.nproc_per_node: {max(torch.cuda.device_count(), 1)}.")
    with tempfile.TemporaryDirectory(prefix="selftrain-ddp-") as tmp:
        job = Path(tmp)
        (job / "texts.json").write_text(json.dumps(texts))
        (job / "job.json").write_text(json.dumps({
            "model_dir": model_dir, "kind": kind, "max_length": max_length, "out_dir": out_dir,
            "ckpt_dir": ckpt_dir, "key": key, "stop_after": stop_after, "backend": backend,
            "objective": f"{objective_cls.__module__}:{objective_cls.__qualname__}",
            "objective_cfg": objective_cfg.model_dump(mode="json"), "cfg": cfg.model_dump(mode="json"),
            "device": ctx.device.type, "seed": ctx.seed, "cache_dir": ctx.cache_dir,
            "autocast": str(ctx.autocast_dtype).removeprefix("torch.") if ctx.autocast_dtype else None}))
        env = dict(os.environ)
        if ctx.device.type == "cpu":
            env.setdefault("OMP_NUM_THREADS", "1")  # N ranks share the cores
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "selftrain.core.train.ddp", str(job)]
        with open(job / "stderr.log", "w") as err, subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # rank 0's log records, streamed to the stage's callback
                if line.startswith(LOG_PREFIX):
                    log(json.loads(line[len(LOG_PREFIX):]))
                else:
                    sys.stdout.write(line)
        res = _read_outcome(job, n, proc.returncode, log)
        return PretrainResult(**res)


def _read_outcome(job: Path, n: int, returncode: int, log: Callable[[dict], None]) -> dict:
    """Rank 0's result from ``job``, or the error the ranks met, raised as the stage would.

    torchrun's exit code alone is not the verdict: a rank can abort in gloo's teardown after
    every rank passed the final barrier and wrote ``done-<rank>`` (the model and result are
    then whole). That crash is logged, not raised; without the markers a non-zero exit fails."""
    out = job / "result.json"
    res = json.loads(out.read_text()) if out.exists() else None
    if res is not None and "error" in res:
        cls = _ERRORS.get(res["error"])
        raise cls(res["message"]) if cls else RuntimeError(f"{res['error']} in a rank: {res['message']}")
    finished = all((job / f"done-{r}").exists() for r in range(n))
    if res is None or (returncode != 0 and not finished):
        raise RuntimeError(f"torchrun with {n} processes failed (exit {returncode}):\n"
                           + _failure_text((job / "stderr.log").read_text()))
    if returncode != 0:
        log({"event": "ddp_teardown_crash", "exit": returncode,
             "detail": _failure_text((job / "stderr.log").read_text(), tail=3)})
    return res


def _failure_text(stderr: str, tail: int = 25) -> str:
    """What the ranks said before torchrun's summary: their error lines first, then the tail.

    torchrun's own report (the last ~25 lines) names only the signal; the cause (a Python
    traceback, a C++ ``what():``) is further up, interleaved from all ranks."""
    lines = stderr.splitlines()
    keys = ("Error", "error:", "what()", "terminate", "Traceback", "Exception")
    causes = [ln for ln in lines[:-tail] if any(k in ln for k in keys)][:15]
    head = ["rank output (error lines):", *causes, "..."] if causes else []
    return "\n".join(head + lines[-tail:])


def _finish(job_path: Path, rank: int) -> None:
    """Wait for every rank, mark this one done, leave the group and exit without the
    interpreter's finalisation.

    A rank that tore down gloo while rank 0 was still writing the model could abort (SIGABRT
    in a gloo thread); even after the barrier, gloo's threads can abort a rank while the
    process group is destroyed or the interpreter finalises ("terminate called without an
    active exception", seen once in CI after a finished run). The ``done-<rank>`` markers,
    written after the barrier, let the parent tell such a teardown crash from a failed run."""
    if torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    (job_path / f"done-{rank}").write_text("ok")
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing left to run; skip finalisation, where leftover gloo threads abort


def _rank_main(job_dir: str) -> None:
    from importlib import import_module

    job_path = Path(job_dir)
    job = json.loads((job_path / "job.json").read_text())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(job["device"])
    if device.type == "cuda":
        device = torch.device("cuda", local)  # one GPU per rank
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(job["backend"])
    rank = torch.distributed.get_rank()
    mod, _, qual = job["objective"].partition(":")
    ocls = import_module(mod)
    for part in qual.split("."):
        ocls = getattr(ocls, part)
    ctx = RuntimeContext(device=device, seed=job["seed"], cache_dir=job["cache_dir"],
                         autocast_dtype=getattr(torch, job["autocast"]) if job["autocast"] else None)

    def log(rec: dict) -> None:
        if rank == 0:
            print(LOG_PREFIX + json.dumps(rec), flush=True)

    texts = json.loads((job_path / "texts.json").read_text())
    try:
        res = pretrain(texts, job["model_dir"], job["kind"], ocls, ocls.Config(**job["objective_cfg"]),
                       PretrainConfig(**job["cfg"]), job["max_length"], ctx, job["out_dir"], job["ckpt_dir"],
                       job["key"], log=log, stop_after=job["stop_after"])
        out: dict = dataclasses.asdict(res)
    except Exception as exc:  # every rank raises the same at the same step; rank 0 reports it by type
        out = {"error": type(exc).__name__, "message": str(exc)}
        if rank == 0:
            (job_path / "result.json").write_text(json.dumps(out))
        if out["error"] not in _ERRORS:
            raise
        _finish(job_path, rank)  # exits
    if rank == 0:
        (job_path / "result.json").write_text(json.dumps(out))
    _finish(job_path, rank)


if __name__ == "__main__":
    _rank_main(sys.argv[1])

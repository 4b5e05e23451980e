"""Self-supervised pretraining of a backbone with an objective plugin, resumable.

The batch plan (which texts go in which step) is a pure function of the seed, so a
resumed run continues at the same data position; the noise of step s is drawn from a
generator seeded with (seed, s), so it is the same too. Checkpoints hold the backbone
(safetensors, save_pretrained), the objective's heads (safetensors), optimizer and
scheduler state and the step.

Under ``torch.distributed`` (several processes, see :mod:`selftrain.core.train.ddp`) every rank
takes its slice of each step's global batch, so the plan and the checkpoints are those of
one process; gradients of the backbone and the heads are all-reduced by
DistributedDataParallel, rank 0 alone writes checkpoints and the final model.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

from selftrain.config import PretrainConfig
from selftrain.plugins import Backbone, Objective, PluginConfig, RuntimeContext
from selftrain.core.train.runtime import autocast, fused_adamw, length_buckets, pack, seed_everything, token_buckets, tokenize


@dataclass
class PretrainResult:
    steps: int
    resumed_from: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def plan_batches(ids: list[list[int]], cfg: PretrainConfig, seed: int, max_length: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """(sequences, batches): the full deterministic schedule of index arrays over all epochs."""
    seqs = pack(ids, max_length) if cfg.batching == "pack" else ids
    lengths = np.array([len(s) for s in seqs])

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, epoch])
        if cfg.batch_tokens is not None:  # a token budget per step instead of a row count
            return token_buckets(lengths, cfg.batch_tokens, rng)
        return length_buckets(lengths, cfg.batch_size, rng)

    first = epoch_batches(0)
    total = max(1, math.ceil(cfg.epochs * len(first)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    batches, epoch = list(first), 1
    while len(batches) < total:
        batches.extend(epoch_batches(epoch))
        epoch += 1
    return seqs, batches[:total]


def peak_lr(cfg: PretrainConfig) -> float:
    """``cfg.lr`` as given, or with a token budget, scaled by the square-root rule for Adam
    (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms"):
    lr * sqrt(batch_tokens / lr_ref_tokens), where ``lr`` is the rate for a step of lr_ref_tokens."""
    if cfg.batch_tokens is None:
        return cfg.lr
    return cfg.lr * math.sqrt(cfg.batch_tokens / cfg.lr_ref_tokens)


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_ranks(t: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        torch.distributed.all_reduce(t)  # SUM: the one reduction every backend has
    return t


def rank_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s part of a step's global batch (every rank gets at least one sequence)."""
    if world == 1:
        return batch
    return batch[rank::world] if len(batch) >= world else batch[[rank % len(batch)]]


class _Trainable(torch.nn.Module):
    """Backbone + heads as one module whose forward is the objective's loss (for DDP)."""

    def __init__(self, objective: Objective, model: torch.nn.Module, heads: torch.nn.Module | None):
        super().__init__()
        self.objective, self.model, self.heads = objective, model, heads

    def forward(self, batch: dict) -> torch.Tensor:
        return self.objective.loss(batch)


def _read_losses(pending: list[torch.Tensor], losses: list[float], done: int) -> None:
    """Move the pending step losses (of the steps up to ``done``) to ``losses``, one host sync.
    Under several processes: the mean over ranks (every rank gets the same values)."""
    if not pending:
        return
    stacked = torch.stack(pending).float()
    world = _world()[1]
    values = (_sum_ranks(stacked) / world).cpu().tolist()
    pending.clear()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise FloatingPointError(f"pretrain loss is {v} at step {done - len(values) + i + 1}; lower pretrain.lr")
    losses.extend(values)


def _checkpoint_key(p: Path) -> str | None:
    try:
        return json.loads((p / "state.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _latest_checkpoint(ckpt_dir: Path, key: str) -> Path | None:
    best = None
    for p in ckpt_dir.glob("step-*"):
        if p.is_dir() and _checkpoint_key(p) == key:
            if best is None or int(p.name[5:]) > int(best.name[5:]):
                best = p
    return best


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed safely (not tensors and numbers only, or unreadable)."""


def load_optim_state(path: Path, device) -> dict:
    """The optimizer and scheduler state of a checkpoint, loaded with ``weights_only=True``.

    Optimizer and scheduler states are tensors, numbers, strings, lists, tuples and dicts,
    all of which the weights-only unpickler accepts; anything else in the file (a pickled
    class, a function, an ``os.system`` call) is refused instead of being executed.
    """
    import pickle

    try:
        st = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # torch's message is a page long (and suggests weights_only=False); keep the line naming the global
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln.rstrip(".") for ln in lines if "GLOBAL" in ln or "global" in ln),
                   lines[-1][:200] if lines else type(exc).__name__)
        raise CheckpointError(
            f"refusing to resume from {path}: it holds more than tensors and numbers ({why}). "
            f"Fix: delete {path.parent} (or the whole checkpoints folder) to start this stage over, "
            "and only resume from checkpoints you wrote yourself") from None
    if not isinstance(st, dict) or not {"optimizer", "scheduler"} <= set(st):
        raise CheckpointError(f"refusing to resume from {path}: expected a dict with 'optimizer' and 'scheduler'. "
                              f"Fix: delete {path.parent} to start this stage over")
    return st


def _save_checkpoint(ckpt_dir: Path, step: int, key: str, backbone, objective, opt, sched, keep: int = 2) -> None:
    final = ckpt_dir / f"step-{step}"
    tmp = ckpt_dir / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    backbone.model.save_pretrained(tmp)  # model.safetensors
    heads = objective.heads()
    if heads is not None:
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, tmp / "heads.safetensors")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "key": key}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a checkpoint exists whole or not at all
    # keep this job's last ``keep``; another job's checkpoints (an earlier config in the same
    # run directory) would otherwise count among the kept ones and push this job's out
    mine, others = [], []
    for p in ckpt_dir.glob("step-*"):
        if p.is_dir():
            (mine if _checkpoint_key(p) == key else others).append((int(p.name[5:]), p))
    for _, p in others + sorted(mine)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def pretrain(
    texts: list[str],
    model_dir: str,
    kind: str,
    objective_cls: type[Objective],
    objective_cfg: PluginConfig,
    cfg: PretrainConfig,
    max_length: int,
    ctx: RuntimeContext,
    out_dir: str,
    ckpt_dir: str,
    key: str,
    log: Callable[[dict], None] = lambda rec: None,
    stop_after: int | None = None,
) -> PretrainResult:
    """Train ``model_dir``'s backbone on ``texts`` with the objective; save it to ``out_dir``.

    ``key`` identifies this exact job (data + config); checkpoints of another key are
    ignored. ``stop_after`` ends the process early after that step's checkpoint (tests).
    """
    rank, world = _world()
    seed_everything(ctx.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(model_dir).to(ctx.device)  # transformers picks SDPA attention where the model has it
    if cfg.compile:  # in place: parameters, state_dict keys and save_pretrained are unchanged
        model.compile(dynamic=True)
    backbone = Backbone(model=model, tokenizer=tok, kind=kind)  # type: ignore[arg-type]
    objective = objective_cls(backbone, objective_cfg, ctx)
    heads = objective.heads()
    params = list(model.parameters()) + (list(heads.parameters()) if heads is not None else [])
    # de-duplicate tied parameters (e.g. decoder weights tied to embeddings)
    params = list({id(p): p for p in params}.values())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=peak_lr(cfg), **fused_adamw(ctx.device))
    seqs, batches = plan_batches(tokenize(tok, texts, max_length), cfg, ctx.seed, max_length)
    total = len(batches)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)

    ckpt = Path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    start = 0
    last = _latest_checkpoint(ckpt, key)
    if last is not None:
        model.load_state_dict(load_file(last / "model.safetensors", device=str(ctx.device)), strict=False)
        if heads is not None and (last / "heads.safetensors").exists():
            heads.load_state_dict(load_file(last / "heads.safetensors", device=str(ctx.device)))
        st = load_optim_state(last / "optim.pt", ctx.device)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start = json.loads((last / "state.json").read_text())["step"]
        log({"event": "resumed", "step": start, "checkpoint": str(last)})
    step_fn: Callable[[dict], torch.Tensor] = objective.loss
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # every parameter of backbone and heads in one module, so all their gradients are all-reduced;
        # find_unused_parameters: an objective may skip some (e.g. BERT's pooler)
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        step_fn = DistributedDataParallel(_Trainable(objective, model, heads), device_ids=ids,
                                          find_unused_parameters=True)
        torch.distributed.barrier()  # every rank has read the checkpoint before rank 0 may write one

    model.train()
    if heads is not None:
        heads.train()
    result = PretrainResult(steps=total, resumed_from=start, tokens=0, seconds=0.0)
    t0 = time.perf_counter()
    window_tokens, window_t = 0, t0
    pending: list[torch.Tensor] = []  # losses still on the device: read back once per log window, not per step
    for step in range(start, total):
        step_seed = ctx.seed * 1_000_003 + step
        if world > 1:
            step_seed = step_seed * 1024 + rank  # each rank its own noise, the same on resume
        torch.manual_seed(step_seed)  # dropout of step s is the same whether or not the run was resumed
        gen = torch.Generator().manual_seed(step_seed)
        batch = objective.make_batch([seqs[i] for i in rank_slice(batches[step], rank, world)], gen)
        n_tok = objective.real_tokens(batch)
        if ctx.device.type == "cuda":  # page-locked host memory: the copy overlaps the previous step's kernels
            batch = {k: v.pin_memory() for k, v in batch.items()}
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        with autocast(ctx):
            loss = step_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        result.tokens += n_tok
        window_tokens += n_tok
        pending.append(loss.detach())
        done = step + 1
        if done % 10 == 0 or done == total or done % cfg.checkpoint_every == 0:
            _read_losses(pending, result.losses, done)  # raises on a non-finite loss before anything is saved
        if done % 10 == 0 or done == total:
            if world > 1:
                window_tokens = int(_sum_ranks(torch.tensor(window_tokens)).item())
            now = time.perf_counter()
            log({"event": "step", "step": done, "total": total, "loss": float(np.mean(result.losses[-10:])),
                 "tokens_per_s": window_tokens / max(now - window_t, 1e-9), "lr": sched.get_last_lr()[0]})
            window_tokens, window_t = 0, now
        if done % cfg.checkpoint_every == 0 or done == total:
            # the final step is checkpointed too, so the last two kept include it
            if rank == 0:
                _save_checkpoint(ckpt, done, key, backbone, objective, opt, sched)
            if world > 1:
                torch.distributed.barrier()  # no rank runs ahead of (or stops before) a whole checkpoint
            if stop_after is not None and done >= stop_after and done < total:
                result.seconds = time.perf_counter() - t0
                raise InterruptedError(f"stopped after step {done} (stop_after)")
    result.seconds = time.perf_counter() - t0
    if world > 1:
        result.tokens = int(_sum_ranks(torch.tensor(result.tokens)).item())
    if rank == 0:
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    return result

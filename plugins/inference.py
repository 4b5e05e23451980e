"""An encoder's inference forward, compiled with TorchInductor where it pays.

Why: on the CPU an eager MiniLM forward over length-sorted 2,048-position batches runs at ~110
GFLOP/s on our 2 cores, while a bare fp32 GEMM of the same shapes runs at 148-163: the rest goes
to LayerNorm, GELU, the residual adds and attention's reshapes, each a separate pass over memory.
Inductor with ``freezing`` (weights become constants: prepacked for the GEMM library, bias + GELU
and the adds fused into the GEMMs, the elementwise rest fused into a few C++ loops) reaches ~140
GFLOP/s: +25-34 % examples/s, outputs equal to eager within 6e-7 (``python -m benchmarks.speed
--only pseudo_label``, README "Speed").

It costs a compilation of ~25-30 s on 2 cores per process (frozen graphs are not served from
Inductor's on-disk cache), so ``auto`` compiles only on the CPU, only where a C++ compiler is
found, and only once a loaded model's inference work in this process reaches
:data:`AUTO_MIN_POSITIONS` token positions, counted over its calls (the pool is scored in
chunks): ~3x the break-even point measured here. CUDA compiles only with ``on`` (its gain is not
measured yet: ``benchmarks/gpu_check.sh``).

Shapes: one graph with a dynamic batch and length (``dynamic=True``), so length buckets do not
recompile. Dynamo specialises sizes 0 and 1, so a batch with one row or one position runs eagerly
instead of compiling a second graph. If compilation fails (no C++ compiler on the worker, an
operator Inductor cannot lower), the forward warns once, names the cause, and stays eager: the
results are the same, only slower.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from typing import Any, Callable

import torch
import torch._inductor.config as inductor_config

from selftrain.plugins import RuntimeContext

AUTO_MIN_POSITIONS = 2_000_000
"""``auto`` compiles once a model's calls have announced this many token positions (rows x length,
unpadded): compiling costs ~28 s and saves ~4e-5 s per position on 2 cores (break-even ~0.7M)."""

MODES = ("auto", "on", "off")


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use on the CPU ($CXX, else g++ / c++ / clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def wants_compile(ctx: RuntimeContext, positions: int) -> bool:
    """Whether a call that encodes ``positions`` token positions should run compiled under ``ctx``."""
    mode = getattr(ctx, "compile_inference", "off")
    if mode not in MODES:
        raise ValueError(f"RuntimeContext.compile_inference={mode!r}; expected one of {', '.join(MODES)}")
    if mode == "on":
        return True
    return mode == "auto" and ctx.device.type == "cpu" and positions >= AUTO_MIN_POSITIONS and cpp_compiler() is not None


class InferenceForward:
    """``fwd(**inputs)`` = ``model(**inputs)``, compiled (dynamic shapes, frozen weights) when chosen.

    Keep one per loaded model and announce each call's work with :meth:`expect` before its
    batches: ``compiled=None`` (the default) decides by ``ctx.compile_inference`` over the model's
    whole workload in this process, not per call, because the pseudo-label stage scores a large
    pool in chunks of 8,192 rows (a chunk of tweets is ~0.25M positions, never 2M on its own);
    ``True`` / ``False`` fix the choice. Call it under ``torch.inference_mode()``; the weights
    are frozen into the graph at the first compiled call, so do not change them afterwards."""

    def __init__(self, model: torch.nn.Module, ctx: RuntimeContext | None = None, compiled: bool | None = None):
        self.model, self.ctx = model, ctx or RuntimeContext()
        self.positions = 0  # token positions announced so far (expect)
        self.error: str | None = None  # why compilation failed, if it did
        self.compile_seconds = 0.0
        self._decide = compiled is None
        self._fn: Callable[..., Any] | None = self._build() if compiled else None

    def _build(self) -> Callable[..., Any]:
        model = self.model

        def forward(**inputs):
            return model(**inputs)

        # freezing is read from Inductor's global config while it compiles (torch.compile's
        # options={"freezing": True} did not take effect in torch 2.13): __call__ sets it around each call
        return torch.compile(forward, dynamic=True)

    def expect(self, positions: int) -> "InferenceForward":
        """Count a call's token positions; under ``compiled=None``, compile from the call at which
        the model's workload so far (this call included) makes :func:`wants_compile` say yes."""
        self.positions += positions
        if self._decide and self._fn is None and self.error is None and wants_compile(self.ctx, self.positions):
            self._fn = self._build()
        return self

    @property
    def compiled(self) -> bool:
        return self._fn is not None

    def __call__(self, **inputs: Any) -> Any:
        x = next(v for v in inputs.values() if isinstance(v, torch.Tensor))  # (B, T)
        if self._fn is None or min(x.shape) < 2:  # sizes 0/1 would compile a second, specialised graph
            return self.model(**inputs)
        first = self.compile_seconds == 0.0
        t0 = time.perf_counter()
        try:
            with inductor_config.patch(freezing=True):
                out = self._fn(**inputs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: warn, then the same result eagerly
            self._fn, self.error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"torch.compile of the inference forward failed ({self.error}); running eagerly, same "
                          f"results, slower. Fix: install a C++ compiler (g++) on this worker, or set "
                          f"inference_compile: off to skip the attempt.", RuntimeWarning, stacklevel=2)
            return self.model(**inputs)
        if first:
            self.compile_seconds = time.perf_counter() - t0
        return out

"""Shared helpers of the benchmarks: timing, peak memory, machine description, JSON,
markdown tables and bar charts. No dependency beyond the standard library, numpy and
matplotlib (psutil is not needed: peak RSS comes from ``resource`` and ``/proc``)."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bench_env() -> None:
    """Environment every benchmark (and its child processes) runs with: offline, quiet."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def log(msg: str) -> None:
    """A progress line, flushed at once (the benchmarks run for minutes)."""
    print(msg, flush=True)


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, wall clock (perf_counter)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: Sequence[float]) -> dict:
    """median, min, max and the raw values of a list of measurements."""
    xs = [float(x) for x in xs]
    return {"median": median(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None, "values": xs}


def alternate(pairs: dict[str, Callable[[], Any]], repeats: int, log: Callable[[str], None] = print) -> dict[str, list]:
    """Call every function once per repeat, in turn (A B A B ...), so that drift of the
    machine (other load, thermal, caches) hits both sides alike. Returns name -> results."""
    out: dict[str, list] = {k: [] for k in pairs}
    for r in range(repeats):
        for name, fn in pairs.items():
            res = fn()
            out[name].append(res)
            log(f"  repeat {r + 1}/{repeats} {name}: {short(res)}")
    return out


def short(x: Any) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in x.items() if isinstance(v, (int, float)))
    return fmt(x)


# ----------------------------------------------------------------------------- memory
def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size in MiB of this process (or of its waited-for children).

    ``ru_maxrss`` is KiB on Linux and bytes on macOS.
    """
    ru = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024


def proc_status_mb(field: str = "VmHWM") -> float | None:
    """A memory field of /proc/self/status in MiB (VmHWM = peak RSS, VmRSS = current); None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs).

    Lets a child measure the peak of one phase after setting up its inputs. False when
    the kernel does not allow it (then VmHWM stays the whole-process peak).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def machine() -> dict:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["cores_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_available"] = os.cpu_count()
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for mod in ("transformers", "prefect", "sklearn", "pandas", "pandera"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - description only
            info[mod] = f"unavailable ({type(exc).__name__})"
    try:
        from selftrain import __version__

        info["selftrain"] = __version__
    except ImportError:
        pass
    return info


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cpu')} ({m.get('cores_available')} cores available of {m.get('cores_logical')}), "
            f"torch {m.get('torch')} with {m.get('torch_threads')} threads{gpu}, load avg {m.get('load_avg_1m')}")


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the speed table. ``higher_is_better`` decides the ratio's direction:
    ratio > 1 always means ours is better."""

    metric: str
    unit: str
    baseline: float | None
    ours: float | None
    target: str = ""
    met: bool | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.ours is None or self.baseline == 0 or self.ours == 0:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def speed_table(rows: Sequence[Row]) -> str:
    body = []
    for r in rows:
        unit = f" ({r.unit})" if r.unit else ""
        base = fmt(r.baseline) + (f" ({r.baseline_name})" if r.baseline_name and r.baseline is not None else "")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "—"
        met = "—" if r.met is None else ("✅ yes" if r.met else "❌ no")
        body.append([r.metric + unit, base, fmt(r.ours), ratio, r.target or "—", met])
    return markdown_table(["metric", "baseline", "ours", "ratio (ours better > 1)", "target", "met?"], body)


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def bar_chart(path: str | Path, rows: Sequence[Row], title: str = "") -> Path | None:
    """One small panel per metric with a baseline and an ours bar (PNG); skips rows
    without both numbers. Returns the path, or None if nothing to draw."""
    rows = [r for r in rows if r.baseline is not None and r.ours is not None]
    if not rows:
        return None
    plt = _plt()
    n = len(rows)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        names = [r.baseline_name or "baseline", "selftrain"]
        vals = [r.baseline, r.ours]
        bars = ax.bar(names, vals, color=["#999999", "#2b7bba"])
        for b, v in zip(bars, vals):
            ax.annotate(fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
        ratio = f" — {r.ratio:.2f}x" if r.ratio is not None else ""
        ax.set_title(f"{r.metric}{ratio}", fontsize=9)
        ax.set_ylabel(r.unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def line_chart(path: str | Path, series: dict[str, tuple[list[float], list[float], list[float]]],
               xlabel: str, ylabel: str, title: str = "", logx: bool = True, dashed: Sequence[str] = ()) -> Path | None:
    """series: name -> (x, mean, std); one line per series with error bars (PNG); the
    series named in ``dashed`` are drawn dashed (e.g. peers vs our own methods)."""
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (x, y, e) in series.items():
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=name, linestyle="--" if name in dashed else "-")
    if logx:
        ax.set_xscale("log", base=2)
        xs = sorted({v for s in series.values() for v in s[0]})
        ax.set_xticks(xs)
        ax.set_xticklabels([str(int(v)) for v in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)

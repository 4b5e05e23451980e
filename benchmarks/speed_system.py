"""Speed sections c (orchestration), d (validate) and e (memory) of ``python -m benchmarks.speed``;
each measurement runs in a fresh child process (``python -m benchmarks.speed --child ...``).

c. orchestration — wall time of the pipeline on ``examples/configs/tiny.yaml`` run by the Prefect
                   flow (ephemeral API start included) vs ``run_stages`` with the plain functions,
                   each in a fresh subprocess with a fresh run directory. Overhead = difference of
                   the medians; reported in seconds, as % of the pure tiny run and as % of the
                   demo's wall time (``--demo-wall-s`` or ``--measure-demo``).
d. validate      — ``validate_frame`` on N synthetic rows (default 1M), rows/s and peak RSS
                   (fresh subprocess; the peak is reset after the data is built).
e. memory        — peak RSS of ingest + validate + pseudo-label (the stage functions) on 1x and
                   10x an unlabeled pool, each in a fresh subprocess (VmHWM at its end). The 1x
                   pool runs with the MiniLM teacher and with a from-scratch tiny-BERT teacher;
                   the 10x pool with the tiny-BERT teacher only, to stay fast. Each teacher is a
                   probe (the pipeline's default), so the default labeler (agree) runs its whole
                   first round: the pool's scores and embeddings, the guard's cross-validated
                   loops over the pool, the first growth (before 2026-12-07 the teachers were
                   sequence classifiers, which the labeler's path for adapted bodies skips).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ROOT,
    alternate,
    log,
    median,
    peak_rss_mb,
    proc_status_mb,
    reset_peak_rss,
    spread,
)
from benchmarks.speed_label import make_probe
from benchmarks.speed_train import (
    labeled_tweets,
    make_tiny_bert,
    minilm_dir,
    TWEETS,
    tweet_texts,
    tweets_frame,
)

TINY_CONFIG = ROOT / "examples" / "configs" / "tiny.yaml"
CHILD_MARK = "BENCH_RESULT "


# ============================================================================ child processes
def run_child(kind: str, args: dict, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``python -m benchmarks.speed --child kind`` in a fresh process (``env``: its whole
    environment, default ours); its result dict plus the parent-side wall time of the process."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--child", kind, "--child-args", json.dumps(args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ) if env is None else env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"benchmark child {kind} {args} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(lines[-1][len(CHILD_MARK):])
    out["process_wall_s"] = wall
    return out


def emit(result: dict) -> None:
    """The child's answer to ``run_child``: one marked JSON line on stdout."""
    print(CHILD_MARK + json.dumps(result), flush=True)


# ============================================================================ c. orchestration
def child_orchestration(a: dict) -> dict:
    """One pipeline run; imports common to both modes happen before the clock starts."""
    from selftrain.cli import _prefect_env

    _prefect_env()  # what `selftrain run` sets before importing prefect
    # what both modes need, imported before the clock (transformers loads model code lazily:
    # seconds that would otherwise land in whichever run touches it first)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertModel,
    )

    from selftrain.config import load_config
    from selftrain.core.run import stages  # noqa: F401
    from selftrain.core.run.pipeline import run_stages

    t0 = time.perf_counter()
    if a["mode"] == "prefect-init":  # create and migrate the Prefect database: a trivial flow
        from prefect import flow

        flow(lambda: 1, name="bench-warmup")()
        return {"mode": a["mode"], "seconds": time.perf_counter() - t0}
    cfg = load_config(a["config"], [f"output_dir={a['run_dir']}", *a.get("overrides", [])])
    if a["mode"] == "prefect":
        from selftrain.flows import pipeline  # importing prefect is part of its cost

        result = pipeline(cfg)
    else:
        result = run_stages(cfg)
    seconds = time.perf_counter() - t0
    return {"mode": a["mode"], "seconds": seconds, "final": result["final"]}


def bench_orchestration(repeats: int, config: str | Path = TINY_CONFIG, overrides: list[str] | None = None,
                        demo_wall_s: float | None = None, measure_demo: bool = False, warmup: bool = True,
                        work_dir: str | None = None, modes: tuple[str, ...] = ("prefect", "pure")) -> dict:
    """Pipeline wall time: Prefect flow vs plain run_stages, fresh process and run dir each time.

    Prefect runs against its ephemeral API (PREFECT_API_URL unset) with a PREFECT_HOME private
    to the benchmark, so that nobody's database is touched. First, untimed, a trivial flow
    creates that database (a user pays this once); ``warmup`` adds one untimed pipeline run of
    each mode (file caches). Every timed Prefect run still starts the ephemeral API itself.
    """
    log(f"[orchestration] {Path(config).name}: {repeats} repeats per mode" + (" + warmup" if warmup else ""))
    tmp = Path(work_dir or tempfile.mkdtemp(prefix="bench-orch-"))
    child_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # ephemeral API
    child_env["PREFECT_HOME"] = str(tmp / "prefect-home")
    counter = {"n": 0}

    def once(mode: str, cfg_path=config, extra=overrides) -> dict:
        counter["n"] += 1
        run_dir = tmp / f"run-{counter['n']}-{mode}"
        try:
            return run_child("orchestration", {"mode": mode, "config": str(cfg_path), "run_dir": str(run_dir),
                                               "overrides": list(extra or [])}, child_env)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    try:
        if "prefect" in modes:
            log("  untimed: create the benchmark's Prefect database")
            r = run_child("orchestration", {"mode": "prefect-init"}, child_env)
            log(f"    {r['seconds']:.1f} s")
        if warmup:
            log(f"  warmup (untimed): {', '.join(modes)}")
            for mode in modes:
                once(mode)
        runs = alternate({mode: (lambda m=mode: once(m)) for mode in modes}, repeats, log)
        demo = {"source": "argument", "seconds": demo_wall_s} if demo_wall_s else None
        if measure_demo:
            log("[orchestration] measuring the demo's wall time (default config, pure functions, one run)")
            r = run_child("orchestration", {"mode": "pure", "config": None, "run_dir": str(tmp / "demo"),
                                            "overrides": []}, child_env)
            demo = {"source": "measured (run_stages, default config)", "seconds": r["seconds"]}
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    res: dict = {"config": str(config), "overrides": overrides or [], "repeats": repeats, "runs": runs,
                 "demo_wall": demo, "overhead_s": None, "overhead_pct_of_pure_run": None, "overhead_pct_of_demo": None}
    for mode in modes:
        res[f"{mode}_s"] = spread([r["seconds"] for r in runs[mode]])
        res[f"{mode}_process_s"] = spread([r["process_wall_s"] for r in runs[mode]])
    if "prefect" in modes and "pure" in modes:
        pure = res["pure_s"]["median"]
        overhead = res["prefect_s"]["median"] - pure
        res["overhead_s"] = overhead
        res["overhead_pct_of_pure_run"] = 100 * overhead / pure if pure else None
        if demo and demo["seconds"]:
            res["overhead_pct_of_demo"] = 100 * overhead / demo["seconds"]
    return res


# ============================================================================ d. validation
def synthetic_snapshot(rows: int, seed: int = 0):
    """A snapshot frame of ``rows`` rows like ingest's (id, text, label, split, hidden_label),
    built vectorised from the tweets: ~2 % train, 1 % val, 2 % test, the rest unlabeled;
    with 0.5 % exact duplicates, 0.5 % near-duplicates (case/punctuation), 0.2 % too-short
    texts, 0.1 % unknown labels and 0.05 % repeated ids, so every check has work to do."""
    import numpy as np
    import pandas as pd

    from selftrain.config import DataConfig
    from selftrain.core.data.ingest import read_source

    rng = np.random.default_rng(seed)
    raw, mapping = read_source(DataConfig(**TWEETS))
    base = raw[mapping["text"]].astype(str).to_numpy()
    base_labels = raw[mapping["label"]].astype(str).to_numpy()
    pick = rng.integers(0, len(base), rows)
    words = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"])
    suffix = pd.Series(words[rng.integers(0, len(words), rows)]) + " " + pd.Series(np.arange(rows)).map(np.base_repr)
    text = pd.Series(base[pick]) + " " + suffix  # unique rows, tweet-like lengths
    label = pd.Series(base_labels[pick], dtype="string")
    u = rng.random(rows)
    split = np.where(u < 0.02, "train", np.where(u < 0.03, "val", np.where(u < 0.05, "test", "unlabeled")))
    df = pd.DataFrame({"id": pd.Series(np.arange(rows)).map(lambda i: f"r{i}").astype("string"),
                       "text": text.astype("string"), "label": label, "split": pd.Series(split, dtype="string")})
    unl = df["split"] == "unlabeled"
    df["hidden_label"] = df["label"].where(unl)
    df.loc[unl, "label"] = pd.NA

    def some(frac: float) -> np.ndarray:
        return rng.choice(rows, size=max(1, int(frac * rows)), replace=False)

    src = some(0.005)
    dst = some(0.005)
    df.loc[dst, "text"] = df["text"].to_numpy()[src]
    src, dst = some(0.005), some(0.005)
    df.loc[dst, "text"] = pd.Series(df["text"].to_numpy()[src]).str.upper().to_numpy() + "!!"
    df.loc[some(0.002), "text"] = "ok"
    lab = some(0.001)
    df.loc[lab[df["split"].to_numpy()[lab] != "unlabeled"], "label"] = "sarcastic"
    dup_id = some(0.0005)
    df.loc[dup_id, "id"] = df["id"].to_numpy()[rng.integers(0, rows, len(dup_id))]
    return df, sorted(set(base_labels))


def child_validate(a: dict) -> dict:
    from selftrain.config import ValidateConfig
    from selftrain.core.data.validate import validate_frame

    t0 = time.perf_counter()
    df, labels = synthetic_snapshot(a["rows"], a.get("seed", 0))
    build_s = time.perf_counter() - t0
    rss_before = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    cfg = ValidateConfig()
    times, res = [], None
    for _ in range(a["repeats"]):
        res = None
        t0 = time.perf_counter()
        res = validate_frame(df, cfg, labels)
        times.append(time.perf_counter() - t0)
    return {"rows": len(df), "build_s": build_s, "seconds": times, "rss_before_mb": rss_before,
            "peak_rss_mb": proc_status_mb("VmHWM") or peak_rss_mb(), "peak_reset": reset,
            "n_clean": res.report["n_clean"], "n_quarantined": res.report["n_quarantined"],
            "checks": {k: v for k, v in res.report["checks"].items() if v}}


def bench_validate(rows: int, repeats: int) -> dict:
    log(f"[validate] validate_frame on {rows:,} synthetic rows, {repeats} repeats (fresh process)")
    r = run_child("validate", {"rows": rows, "repeats": repeats})
    secs = median(r["seconds"])
    r.update({"median_s": secs, "rows_per_s": r["rows"] / secs, "seconds_per_1m_rows": secs * 1e6 / r["rows"],
              "peak_increase_mb": (r["peak_rss_mb"] - r["rss_before_mb"]) if r["peak_reset"] else None})
    log(f"  {secs:.2f} s ({r['rows_per_s']:,.0f} rows/s), peak RSS {r['peak_rss_mb']:.0f} MiB "
        f"(data built: {r['rss_before_mb']:.0f} MiB)")
    return r


# ============================================================================ e. memory
def child_memory(a: dict) -> dict:
    """ingest -> validate -> pseudo-label (stage functions) on a pool of ``a['pool']`` rows."""
    from selftrain.config import DataConfig, PipelineConfig
    from selftrain.core.run import stages

    rss_start = proc_status_mb("VmRSS")
    data = {**TWEETS, "labels_per_class": 16, "val_per_class": 32, "unlabeled_size": a["pool"]}
    if a.get("source"):
        data.update(source=a["source"], columns={"text": "text", "label": "label"})
    cfg = PipelineConfig(output_dir=a["run_dir"], data=DataConfig(**data), pretrain={"enabled": False},
                         pseudo_label={"batch_size": a.get("batch_size", 128)})
    times = {}
    t0 = time.perf_counter()
    ing = stages.ingest(cfg)
    times["ingest_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])
    times["validate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pl = stages.pseudo_label_stage(cfg, val["clean"], a["teacher"])
    times["pseudo_label_s"] = time.perf_counter() - t0
    guard = (pl["report"].get("notes") or {}).get("guard") or {}
    return {"pool": pl["report"]["pool"], "rows": ing["rows"], "kept": pl["report"]["kept"], **times,
            "labeler": pl["report"]["labeler"], "guard_use_pool": guard.get("use_pool"), "guard_folds": guard.get("folds"),
            "rss_start_mb": rss_start, "peak_rss_mb": proc_status_mb("VmHWM") or peak_rss_mb(),
            "examples_per_s": pl["report"]["examples_per_s"]}


def replicated_tweets(path: Path, pool: int) -> str:
    """A parquet source of the tweets repeated enough times for an unlabeled pool of ``pool``
    (each copy's texts get a distinct suffix so they are not duplicates)."""
    import pandas as pd

    from selftrain.config import DataConfig
    from selftrain.core.data.ingest import read_source

    raw, mapping = read_source(DataConfig(**TWEETS))
    base = pd.DataFrame({"text": raw[mapping["text"]].astype(str), "label": raw[mapping["label"]].astype(str)})
    copies = max(1, math.ceil((pool + 3000) / len(base)))
    parts = [base if c == 0 else base.assign(text=base["text"] + f" (copy {c})") for c in range(copies)]
    pd.concat(parts, ignore_index=True).to_parquet(path)
    return str(path)


def bench_memory(pool: int, scales: tuple[int, ...] = (1, 10), minilm: bool = True, tiny_options: dict | None = None,
                 work_dir: str | None = None, replicate_above: int = 30_000) -> dict:
    """Peak RSS of ingest + validate + pseudo-label in fresh processes, per pool size and teacher.

    Pools above ``replicate_above`` come from a parquet file of the tweets repeated (the
    tweets hold ~35k rows outside test/val/train); smaller ones from ``builtin:tweets``."""
    tmp = Path(work_dir or tempfile.mkdtemp(prefix="bench-mem-"))
    labels = sorted(tweets_frame()["label"].dropna().astype(str).unique())
    try:
        teachers = {}
        tiny_options = tiny_options or {"vocab_size": 2000, "hidden_size": 64, "layers": 2, "heads": 2}
        tiny_bb = make_tiny_bert(tweet_texts(exclude_test=True), str(tmp / "tiny-bb"), **tiny_options)
        # the pipeline's default teacher (a probe), so the default labeler (agree) runs its whole first
        # round: scoring + embeddings of the pool, the guard's cross-validated loops, the first growth
        fit_on = labeled_tweets()
        teachers["tiny-bert"] = make_probe(tiny_bb, labels, str(tmp / "tiny-clf"), fit_on)
        if minilm:
            teachers["minilm"] = make_probe(minilm_dir(), labels, str(tmp / "minilm-clf"), fit_on)
        cases = []
        for scale in scales:
            for name in ("minilm", "tiny-bert"):
                if name not in teachers or (name == "minilm" and scale != 1):
                    continue  # the big pools run with the tiny teacher only, to stay fast
                cases.append((scale, name))
        runs = []
        for scale, name in cases:
            n = pool * scale
            source = None
            if n > replicate_above:
                source = replicated_tweets(tmp / f"tweets-{n}.parquet", n)
            log(f"[memory] pool {n:,} ({scale}x), teacher {name} (fresh process)")
            r = run_child("memory", {"pool": n, "teacher": teachers[name], "run_dir": str(tmp / f"run-{scale}-{name}"),
                                     "source": source})
            r.update({"scale": scale, "teacher": name, "source": source or "builtin:tweets"})
            log(f"  peak RSS {r['peak_rss_mb']:.0f} MiB (after imports {r['rss_start_mb']:.0f} MiB), "
                f"ingest {r['ingest_s']:.1f} s, validate {r['validate_s']:.1f} s, pseudo-label {r['pseudo_label_s']:.1f} s")
            runs.append(r)
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    res = {"pool": pool, "scales": list(scales), "runs": runs,
           "tiny_bert": tiny_options,
           "note": f"memory: the 1x pool ({pool:,}) runs with the MiniLM{' and' if minilm else ' (skipped) and'} a "
                   f"tiny-BERT teacher; larger pools only with the tiny-BERT teacher (from scratch, "
                   f"{tiny_options.get('layers')} layers x {tiny_options.get('hidden_size')}) so they stay fast."}
    small = [r for r in runs if r["teacher"] == "tiny-bert"]
    if len(small) >= 2:
        lo, hi = small[0], small[-1]
        res["tiny_bert_growth"] = {"pool_ratio": hi["pool"] / lo["pool"],
                                   "peak_ratio": hi["peak_rss_mb"] / lo["peak_rss_mb"],
                                   "extra_mb": hi["peak_rss_mb"] - lo["peak_rss_mb"]}
    return res


CHILDREN = {"validate": child_validate, "memory": child_memory, "orchestration": child_orchestration}

"""Quality: what the unlabeled pool buys over the labels alone, across datasets, against peers.

    python -m benchmarks.quality [--quick] [--datasets bbc tweets] [--k 4 16] [--seeds 0 1 2 3 4]
                                 [--out benchmarks/results] [--merge]

For each dataset (``bbc``: BBC news, 5 topics, ``examples/configs/bbc.yaml``; ``tweets``:
negative / neutral / positive, ``examples/configs/tweets.yaml``), each k (gold labels per class:
every gold label any method sees; selftrain's recipe holds none out for validation) and each seed
(the seed of the split and of training: each seed draws other gold rows, pool and test):

selftrain, every number from ``run_stages`` (plain functions) with config overrides:
  - ``supervised``   the run's ``baseline``: the classifier plugin on the gold rows only (the
                     frozen MiniLM probe by default: our best few-shot core without the pool)
  - ``full``         the run's ``final``: self-training with the agree labeler and its guards
  - ``no-guard``     the same run with the labeler's cross-validation guard off: the pool step
                     alone, to show what the guard saves where the pool does not pay
peers, on exactly the same rows (``benchmarks/peers.py``): ``probe`` (scikit-learn logistic
regression on the frozen mean-pooled MiniLM embeddings, scikit-learn's defaults, computed here
outside the plugin: a check that ``supervised`` is the probe it claims to be), TF-IDF + LogisticRegression, scikit-learn's SelfTrainingClassifier and LabelSpreading,
and SetFit (same MiniLM, same k rows) when installed.

Writes ``quality.json`` (one record per (dataset, k, seed, method) with ``macro_f1``,
``accuracy`` and ``ece`` (test expected calibration error, 15 bins), so every table can be
recomputed from it; ``--merge`` replaces only the cells this invocation ran, so the grid can be run in parts), ``quality.png`` (macro-F1 vs k per dataset) and
prints a markdown table with mean ± std over seeds and, per cell, on how many seeds ``full``
beats ``supervised`` (paired: the same rows).

``--quick``: BBC, k=4, seeds 0 and 1, the reduced ``setfit-5it`` (5 pair iterations; a separately
named method, not SetFit at its defaults): < 15 min on 2 CPU cores
(most of it SetFit and the first embedding of the texts; embeddings are cached on disk after).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RESULTS,
    bench_env,
    line_chart,
    machine,
    machine_line,
    markdown_table,
    write_json,
)
from benchmarks.peers import PEER_METHODS, peer_methods

bench_env()

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"bbc": ROOT / "examples" / "configs" / "bbc.yaml", "tweets": ROOT / "examples" / "configs" / "tweets.yaml"}
SELFTRAIN_METHODS = ("supervised", "full", "no-guard")
METHODS = SELFTRAIN_METHODS + PEER_METHODS


def log(msg: str) -> None:
    print(msg, flush=True)


# ============================================================================ selftrain runs
def run_config(config: str | None, overrides: list[str], run_dir: Path, stages=None):
    from selftrain.config import load_config
    from selftrain.core.run.pipeline import run_stages

    cfg = load_config(config, [*overrides, f"output_dir={run_dir}"])
    t0 = time.perf_counter()
    result = run_stages(cfg, stages)
    seconds = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return cfg, result, metrics, seconds


def _score(metrics: dict, model: str) -> dict:
    m = metrics["models"][model]
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"]), "ece": float(m["ece"]),
            "model": model, "val_macro_f1": m.get("val_macro_f1")}


def selftrain_runs(k: int | None, seed: int, work_dir: Path, config: str | None = None,
                   overrides: list[str] | None = None, no_guard: bool = True) -> tuple[dict, Path, dict]:
    """The pipeline runs of one (k, seed). Returns (method -> scores, the full run's
    clean.parquet, info about the runs). ``k`` None keeps the config's labels_per_class."""
    base = [f"seed={seed}", f"data.seed={seed}", "evaluate.baseline=true", *(overrides or [])]
    if k is not None:
        base.append(f"data.labels_per_class={k}")
    out: dict[str, dict] = {}
    info: dict = {}
    full_dir = work_dir / f"k{k}-s{seed}-full"
    cfg, _, metrics, secs = run_config(config, base, full_dir)
    info["max_length"] = cfg.model.max_length
    out["supervised"] = _score(metrics, "baseline")
    out["full"] = _score(metrics, metrics["final"])
    info["full"] = {"seconds": secs, "final": metrics["final"], "notes": metrics.get("notes", []),
                    "pseudo_labels": [{k_: p.get(k_) for k_ in ("round", "kept", "pool", "accuracy_vs_hidden_gold")}
                                      for p in metrics.get("pseudo_labels", [])],
                    "guard": next((p.get("notes", {}).get("guard") for p in metrics.get("pseudo_labels", [])), None),
                    "test_size": metrics.get("test_size")}
    log(f"  [selftrain] {secs:.0f} s; final={metrics['final']} " + _brief(out, ("supervised", "full")))
    if no_guard and cfg.pseudo_label.labeler == "agree":
        ng_dir = work_dir / f"k{k}-s{seed}-noguard"
        _, _, m2, secs2 = run_config(config, [*base, "pseudo_label.options={guard: false}"], ng_dir)
        out["no-guard"] = _score(m2, m2["final"])
        info["no-guard"] = {"seconds": secs2, "final": m2["final"]}
        if not _same_rows(full_dir / "data" / "clean.parquet", ng_dir / "data" / "clean.parquet"):
            raise RuntimeError(f"k={k} seed={seed}: the no-guard run saw other rows than the full run")
        log(f"  [selftrain] no-guard {secs2:.0f} s; " + _brief(out, ("no-guard",)))
    return out, full_dir / "data" / "clean.parquet", info


def _same_rows(a: Path, b: Path) -> bool:
    import pandas as pd

    x, y = pd.read_parquet(a, columns=["id", "split"]), pd.read_parquet(b, columns=["id", "split"])
    return x.sort_values("id").reset_index(drop=True).equals(y.sort_values("id").reset_index(drop=True))


def _brief(scores: dict, names) -> str:
    return " ".join(f"{n}: F1 {scores[n]['macro_f1']:.3f}" for n in names if n in scores)


# ============================================================================ aggregation
def _cells(records: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r.get("dataset", "tweets"), r["k"]) for r in records}, key=lambda c: (c[0], c[1] is None, c[1]))


def summarize(records: list[dict]) -> dict:
    """records (dataset, k, seed, method, macro_f1 | status) -> dataset -> method -> k -> mean/std/n,
    plus ``wins``: on how many seeds full > supervised (paired, same rows)."""
    summary: dict = {}
    for ds, k in _cells(records):
        cell = [r for r in records if r.get("dataset", "tweets") == ds and r["k"] == k]
        for m in METHODS:
            rs = [r for r in cell if r["method"] == m and "macro_f1" in r]
            if not rs:
                status = next((r.get("status") for r in cell if r["method"] == m), None)
                if status:
                    summary.setdefault(ds, {}).setdefault(m, {})[str(k)] = {"status": status, "n": 0}
                continue
            acc = np.array([r["accuracy"] for r in rs])
            f1 = np.array([r["macro_f1"] for r in rs])
            summary.setdefault(ds, {}).setdefault(m, {})[str(k)] = {
                "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std(ddof=1)) if len(rs) > 1 else 0.0,
                "n": len(rs), "seeds": [r["seed"] for r in rs],
            }
            eces = [r["ece"] for r in rs if "ece" in r]  # records from before ECE was recorded have none
            if eces:
                summary[ds][m][str(k)].update(ece_mean=float(np.mean(eces)), ece_n=len(eces))
        by_seed = {(r["seed"], r["method"]): r.get("macro_f1") for r in cell}
        seeds = sorted({r["seed"] for r in cell if (r["seed"], "full") in by_seed and (r["seed"], "supervised") in by_seed})
        gains = [by_seed[(s_, "full")] - by_seed[(s_, "supervised")] for s_ in seeds]
        if gains:
            summary[ds].setdefault("_paired", {})[str(k)] = {
                "full_beats_supervised": int(sum(g > 0 for g in gains)), "ties": int(sum(g == 0 for g in gains)),
                "seeds": len(gains), "gain_mean": float(np.mean(gains)),
                "gain_std": float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0}
    return summary


def _summary_table(summary: dict, cell, last: tuple[str, object] | None = None) -> str:
    """One row per (dataset, k), one column per method present: ``cell(entry or None)`` for each
    method's summary entry; ``last`` = (header, fn(paired entry or None)) adds a final column."""
    present = [m for m in METHODS if any(m in per for per in summary.values())]
    rows = []
    for ds, per in sorted(summary.items()):
        ks = sorted({k for m, e in per.items() if m != "_paired" for k in e}, key=lambda x: (x == "None", int(x) if x != "None" else 0))
        for k in ks:
            row = [ds, k, *[cell(per.get(m, {}).get(k)) for m in present]]
            if last:
                row.append(last[1](per.get("_paired", {}).get(k)))
            rows.append(row)
    return markdown_table(["dataset", "k", *present, *([last[0]] if last else [])], rows)


def quality_table(summary: dict) -> str:
    """One row per (dataset, k), one column per method: macro-F1 mean ± std, and the paired wins."""
    return _summary_table(
        summary, lambda e: "—" if e is None else e["status"] if "status" in e else f"{e['macro_f1_mean']:.3f} ± {e['macro_f1_std']:.3f}",
        ("full > supervised (seeds)", lambda p: f"{p['full_beats_supervised']}/{p['seeds']} (ties {p['ties']}), "
                                                f"gain {p['gain_mean']:+.3f} ± {p['gain_std']:.3f}" if p else "—"))


def ece_table(summary: dict) -> str:
    """One row per (dataset, k), one column per method: mean test ECE (15 bins) over the seeds that
    recorded one, "(n)" when fewer than the cell's macro-F1 seeds did; "—" when none did."""
    return _summary_table(summary, lambda e: "—" if not e or "ece_mean" not in e else
                          f"{e['ece_mean']:.3f}" + (f" ({e['ece_n']})" if e["ece_n"] < e["n"] else ""))


def paired_table(records: list[dict], peers: tuple[str, ...] = ("setfit", "probe")) -> str:
    """``full`` minus each peer, paired per seed on the same rows: mean ± sd (seeds ahead / behind).
    Only seeds where both scored count; a cell where the peer never ran says so (a reduced peer,
    e.g. ``setfit-5it``, is never stood in for ``setfit``)."""
    header = ["dataset", "k", *[f"full − {p}" for p in peers]]
    rows = []
    for ds, k in _cells(records):
        f1 = {(r["seed"], r["method"]): r["macro_f1"] for r in records
              if r.get("dataset", "tweets") == ds and r["k"] == k and "macro_f1" in r}
        row = [ds, k]
        for peer in peers:
            d = np.array([f1[(s_, "full")] - f1[(s_, peer)] for s_, m in f1 if m == peer and (s_, "full") in f1])
            row.append("not run" if not len(d) else
                       f"{d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else 0.0:.3f} ({int((d > 0).sum())} / {int((d < 0).sum())})")
        rows.append(row)
    return markdown_table(header, rows)


def plot(summary: dict, path: Path, title: str = "") -> Path | None:
    series = {}
    for ds, per in summary.items():
        for m, per_k in per.items():
            if m == "_paired":
                continue
            pts = sorted((int(k), e) for k, e in per_k.items() if "macro_f1_mean" in e and k != "None")
            if pts:
                series[f"{ds}: {m}"] = ([p[0] for p in pts], [p[1]["macro_f1_mean"] for p in pts],
                                        [p[1]["macro_f1_std"] for p in pts])
    return line_chart(path, series, "gold labels per class (k)", "test macro-F1 (mean ± std over seeds)", title,
                      dashed=tuple(n for n in series if n.split(": ", 1)[1] in PEER_METHODS))


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Records of ``old`` whose (dataset, k, seed, method) ``new`` does not hold, then ``new``."""
    key = lambda r: (r.get("dataset", "tweets"), r["k"], r["seed"], r["method"])  # noqa: E731
    have = {key(r) for r in old if "macro_f1" in r}
    # a peer skipped now (--no-setfit) keeps its earlier score for the cell
    new = [r for r in new if "macro_f1" in r or key(r) not in have]
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


# ============================================================================ main
def run(ks: list[int | None], seeds: list[int], overrides: list[str], config: str | None = None,
        work_dir: Path | None = None, keep_runs: bool = False, setfit_iterations: int | None = None,
        log_fn=log, datasets: list[str] | None = None, no_guard: bool = True) -> dict:
    """Every (dataset, k, seed): the selftrain runs and the peers. Returns records, summary, run info.
    ``datasets`` None: one dataset, the one ``config`` (or the defaults) names, recorded as ``config``."""
    import pandas as pd

    own = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    runs: list[dict] = []
    t_start = time.perf_counter()
    plan = [(ds, str(DATASETS[ds]) if config is None else config) for ds in datasets] if datasets else [("config", config)]
    try:
        total = len(plan) * len(ks) * len(seeds)
        n = 0
        for ds, ds_config in plan:
            for k in ks:
                for seed in seeds:
                    n += 1
                    elapsed = time.perf_counter() - t_start
                    eta = f", ~{elapsed / (n - 1) * (total - n + 1) / 60:.1f} min left" if n > 1 else ""
                    log_fn(f"[{n}/{total}] {ds} k={k} seed={seed} ({elapsed / 60:.1f} min elapsed{eta})")
                    cell_dir = work / ds
                    scores, clean, info = selftrain_runs(k, seed, cell_dir, ds_config, overrides, no_guard)
                    df = pd.read_parquet(clean)
                    run_metrics = json.loads((clean.parents[1] / "metrics.json").read_text())
                    t0 = time.perf_counter()
                    peers = peer_methods(df, run_metrics["labels"], seed=seed, setfit_iterations=setfit_iterations,
                                         log_fn=log_fn, max_length=info["max_length"])
                    info["peers_seconds"] = time.perf_counter() - t0
                    log_fn("  [peers] " + " ".join(
                        f"{m}: F1 {p['macro_f1']:.3f}" if "macro_f1" in p else f"{m}: {p.get('status')}"
                        for m, p in peers.items()))
                    sizes = {sp: int((df["split"] == sp).sum()) for sp in ("train", "val", "test", "unlabeled")}
                    for m, sc in {**scores, **peers}.items():
                        records.append({"dataset": ds, "k": k, "seed": seed, "method": m, **sc})
                    runs.append({"dataset": ds, "k": k, "seed": seed, "sizes": sizes, **info})
                    if not keep_runs:
                        for d in cell_dir.glob(f"k{k}-s{seed}-*"):
                            shutil.rmtree(d, ignore_errors=True)
    finally:
        if own and not keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(records)
    return {"records": records, "summary": summary, "runs": runs, "seconds": time.perf_counter() - t_start,
            "table": quality_table(summary), "ece_table": ece_table(summary)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="BBC, k=4, seeds 0 1, setfit-5it (< 15 min on 2 cores)")
    ap.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None, help="default: bbc tweets")
    ap.add_argument("--k", type=int, nargs="+", default=None, help="gold labels per class (default 4 16)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2 3 4)")
    ap.add_argument("--config", default=None, help="one config file instead of the datasets' shipped configs "
                    "(with --datasets: used for each of them, recorded under their names)")
    ap.add_argument("--set", action="append", default=[], help="extra config override section.key=value")
    ap.add_argument("--out", default=str(RESULTS), help="folder for quality.json and quality.png")
    ap.add_argument("--merge", action="store_true", help="keep quality.json's other cells; replace only those run now")
    ap.add_argument("--work-dir", default=None, help="where run directories go (default: a temp dir)")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    ap.add_argument("--setfit-iterations", type=int, default=None,
                    help="run the reduced peer 'setfit-5it' with this many pair iterations instead of 'setfit' at its "
                         "defaults (the stronger of 20 iterations and setfit's oversampling; --quick: 5)")
    ap.add_argument("--no-guard-run", dest="no_guard", action="store_false", help="skip the no-guard run")
    ap.add_argument("--no-setfit", action="store_true", help="skip the SetFit peer (recorded as 'skipped')")
    ap.add_argument("--stage-log", action="store_true", help="print the pipeline's stage log lines (timestamps)")
    ap.add_argument("--render", action="store_true", help="run nothing: recompute the tables and the plot from "
                    "--out's quality.json records (after editing or merging them by hand)")
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.out))
    if args.stage_log:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("    %(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("selftrain").addHandler(handler)

    # --config with --datasets: that config for those datasets (records keep the dataset's name, so a
    # variant's cells pair with the shipped config's on the same seeds, e.g. --out elsewhere)
    datasets = args.datasets if args.config and args.datasets else None if args.config else (
        args.datasets or (["bbc"] if args.quick else ["bbc", "tweets"]))
    ks = args.k or ([4] if args.quick else [4, 16])
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    iters = 0 if args.no_setfit else (args.setfit_iterations or (5 if args.quick else None))
    m = machine()
    log(f"machine: {machine_line(m)}")
    log(f"datasets={datasets or args.config} k={ks} seeds={seeds} overrides={args.set}")
    res = run(ks, seeds, list(args.set), args.config, Path(args.work_dir) if args.work_dir else None, args.keep_runs,
              iters, datasets=datasets, no_guard=args.no_guard)
    out = Path(args.out)
    records, runs = res["records"], res["runs"]
    if args.merge and (out / "quality.json").exists():
        old = json.loads((out / "quality.json").read_text())
        if "dataset" in (old.get("records") or [{}])[0]:
            records = merge(old["records"], records)
            cells = {(r["dataset"], r["k"], r["seed"]) for r in res["runs"]}
            runs = [r for r in old.get("runs", []) if (r.get("dataset"), r.get("k"), r.get("seed")) not in cells] + runs
    payload = {"machine": m, "quick": args.quick, "setfit_iterations": iters, "overrides": list(args.set),
               "configs": {d: str(DATASETS[d].relative_to(ROOT)) for d in DATASETS} if not args.config else args.config,
               "records": records, "runs": runs, "seconds_this_invocation": res["seconds"]}
    png = finish(out, payload)
    print("\nsupervised = the run's baseline (the classifier plugin on the gold rows only); full = the run's final; "
          "no-guard = the same run with the labeler's guard off. Peers see exactly the same rows.")
    print(f"\nwrote {out / 'quality.json'}" + (f" and {png}" if png else "") + f" in {res['seconds'] / 60:.1f} min")
    return 0


def finish(out: Path, payload: dict) -> Path | None:
    """Summary, both tables and the plot from ``payload["records"]``; writes quality.json, prints the tables.

    The one closing step of a run (``main``) and of ``--render``, so the two can never drift apart."""
    payload["summary"] = summarize(payload["records"])
    payload["table"], payload["paired_table"] = quality_table(payload["summary"]), paired_table(payload["records"])
    payload["ece_table"] = ece_table(payload["summary"])
    write_json(out / "quality.json", payload)
    png = plot(payload["summary"], out / "quality.png", title="test macro-F1 vs gold labels per class")
    print("\n" + payload["table"] + "\n\n" + payload["paired_table"] + "\n\ntest ECE (15 bins):\n" + payload["ece_table"])
    return png


def render(out: Path) -> int:
    """--render: the summary, both tables and the plot recomputed from the records on file."""
    path = out / "quality.json"
    if not path.exists():
        print(f"quality --render: {path} does not exist. Fix: point --out at a folder holding a quality.json", file=sys.stderr)
        return 2
    finish(out, json.loads(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality: what pretraining and pseudo-labels buy over the labels alone, and against peers.

    python -m benchmarks.quality [--quick] [--k 4 16 64] [--seeds 0 1 2] [--out benchmarks/results]

On the tweets (negative / neutral / positive), for each k (gold labels per class) and seed
(the seed of the split and of training: each seed draws other labeled rows):

selftrain, every number from ``run_stages`` (plain functions) with config overrides:
  - ``supervised``    the run's ``baseline``: the same MiniLM finetuned on the gold labels only
  - ``+pretraining``  the full run's ``teacher``: finetuned from the pretrained backbone (the
                      config's ``pretrain.objective``, SimCSE by default),
                      no pseudo-labels. Identical to a run with ``pseudo_label.enabled=false``
                      (same seed and config sections), so it is read from the full run
  - ``+pseudo-labels`` a second run with ``pretrain.enabled=false evaluate.baseline=false``;
                      its ``final`` (chosen on validation). Its teacher is the same finetune
                      as the full run's baseline, so that model is reused, not trained again
  - ``full``          the full run's ``final`` (chosen on validation, never on test)
peers: TF-IDF + LogisticRegression, scikit-learn's SelfTrainingClassifier and LabelSpreading,
and SetFit when installed, on exactly the same rows (see ``benchmarks/peers.py`` for each one's
setup).

Reports mean ± std over seeds of test accuracy and macro-F1 per method and k; writes
``quality.json``, ``quality.png`` (macro-F1 vs labels per class, error bars = std) and prints
a markdown table.

``--quick``: k=16, seed 0 (one run: no spread; ``--seeds 0 1`` doubles the time), unlabeled
pool 1000, 150 test rows per class, pretraining capped at 20 steps, finetuning at 20 epochs
(early stopping as usual; most runs stop before), one self-training round keeping the 150 most
confident pseudo-labels per class, students distilled for one epoch and refit on gold (the
defaults). Measured on 2 CPU cores: ~4 min for the full run, ~1.3 min for the pseudo-labels-only
run (whose teacher is the full run's baseline: the same finetune, same seed, config sections and
rows) and ~3 min of peers (SetFit, 20 pair iterations, most of it): ~8 min. Progress lines show
the elapsed time and an estimate of what is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
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

SELFTRAIN_METHODS = ("supervised", "+pretraining", "+pseudo-labels", "full")
METHODS = SELFTRAIN_METHODS + PEER_METHODS

# --quick: every knob that scales the run time on 2 CPU cores, kept small (see the module docstring)
QUICK_OVERRIDES = [
    "data.unlabeled_size=1000", "data.test_per_class=150", "pretrain.max_steps=20", "finetune.epochs=20",
    "pseudo_label.rounds=1", "pseudo_label.options={k_per_class: 150}", "finetune.student_epochs=1",
]


def log(msg: str) -> None:
    print(msg, flush=True)


# ============================================================================ selftrain runs
def run_config(config: str | None, overrides: list[str], run_dir: Path, stages=None):
    from selftrain.config import load_config
    from selftrain.core.pipeline import run_stages

    cfg = load_config(config, [*overrides, f"output_dir={run_dir}"])
    t0 = time.perf_counter()
    result = run_stages(cfg, stages)
    seconds = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return cfg, result, metrics, seconds


def _score(metrics: dict, model: str) -> dict:
    m = metrics["models"][model]
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"]), "model": model,
            "val_macro_f1": m.get("val_macro_f1")}


def selftrain_runs(k: int | None, seed: int, work_dir: Path, config: str | None = None,
                   overrides: list[str] | None = None) -> tuple[dict, Path, dict]:
    """The two pipeline runs of one (k, seed). Returns (method -> scores, the full run's
    clean.parquet, info about the runs). ``k`` None keeps the config's labels_per_class."""
    base = [f"seed={seed}", f"data.seed={seed}", *(overrides or [])]
    if k is not None:
        base.append(f"data.labels_per_class={k}")
    out: dict[str, dict] = {}
    info: dict = {}

    full_dir = work_dir / f"k{k}-s{seed}-full"
    log(f"  [selftrain] full pipeline (baseline + pretraining + pseudo-labels) -> {full_dir.name}")
    finetunes: dict[str, dict] = {}
    _, _, metrics, secs = run_config(config, [*base, "evaluate.baseline=true"], full_dir, _recording(finetunes))
    out["supervised"] = _score(metrics, "baseline")
    out["+pretraining"] = _score(metrics, "teacher")
    out["full"] = _score(metrics, metrics["final"])
    info["full"] = {"seconds": secs, "final": metrics["final"], "notes": metrics.get("notes", []),
                    "pseudo_labels": [{k_: p.get(k_) for k_ in ("kept", "pool", "accuracy_vs_hidden_gold")}
                                      for p in metrics.get("pseudo_labels", [])],
                    "test_size": metrics.get("test_size")}
    log(f"    {secs:.0f} s; final={metrics['final']} " + _brief(out, ("supervised", "+pretraining", "full")))

    pl_dir = work_dir / f"k{k}-s{seed}-pseudo"
    log(f"  [selftrain] pseudo-labels only (no pretraining) -> {pl_dir.name}")
    reused: list[str] = []
    _, _, metrics2, secs2 = run_config(
        config, [*base, "pretrain.enabled=false", "evaluate.baseline=false"], pl_dir,
        _reusing_baseline(finetunes, full_dir / "data" / "clean.parquet", reused))
    out["+pseudo-labels"] = _score(metrics2, metrics2["final"])
    info["pseudo"] = {"seconds": secs2, "final": metrics2["final"], "notes": metrics2.get("notes", []),
                      "teacher_is_the_full_runs_baseline": bool(reused)}
    log(f"    {secs2:.0f} s; final={metrics2['final']} " + _brief(out, ("+pseudo-labels",)))
    same = _same_rows(full_dir / "data" / "clean.parquet", pl_dir / "data" / "clean.parquet")
    info["same_split_in_both_runs"] = same
    if not same:
        log("    WARNING: the two runs did not see the same rows")
    return out, full_dir / "data" / "clean.parquet", info


def _recording(finetunes: dict):
    """Stages whose finetune keeps each result by model name in ``finetunes``."""
    from selftrain.core import stages
    from selftrain.core.pipeline import Stages

    def finetune(cfg, clean, base, name, pseudo_labels=None):
        finetunes[name] = stages.finetune_stage(cfg, clean, base, name, pseudo_labels)
        return finetunes[name]

    return Stages(finetune=finetune)


def _reusing_baseline(finetunes: dict, full_clean: Path, reused: list):
    """Stages for the pseudo-labels-only run: its teacher (no pretraining, gold rows only) is
    the same finetune as the full run's baseline (same seed, config sections and rows, checked
    here), so the full run's baseline model and result are used instead of training it again."""
    from selftrain.core import stages
    from selftrain.core.pipeline import Stages

    def finetune(cfg, clean, base, name, pseudo_labels=None):
        if (name == "teacher" and base is None and pseudo_labels is None and "baseline" in finetunes
                and _same_rows(full_clean, Path(clean))):
            reused.append(name)
            return {**finetunes["baseline"], "name": name}
        return stages.finetune_stage(cfg, clean, base, name, pseudo_labels)

    return Stages(finetune=finetune)


def _same_rows(a: Path, b: Path) -> bool:
    import pandas as pd

    x, y = pd.read_parquet(a, columns=["id", "split"]), pd.read_parquet(b, columns=["id", "split"])
    return x.sort_values("id").reset_index(drop=True).equals(y.sort_values("id").reset_index(drop=True))


def _brief(scores: dict, names) -> str:
    return " ".join(f"{n}: F1 {scores[n]['macro_f1']:.3f}" for n in names if n in scores)


# ============================================================================ aggregation
def summarize(records: list[dict]) -> dict:
    """records (k, seed, method, accuracy, macro_f1 | status) -> method -> k -> mean/std/n."""
    summary: dict = {}
    for m in METHODS:
        for k in sorted({r["k"] for r in records}, key=lambda x: (x is None, x)):
            rs = [r for r in records if r["method"] == m and r["k"] == k and "macro_f1" in r]
            if not rs:
                status = next((r.get("status") for r in records if r["method"] == m and r["k"] == k), None)
                if status:
                    summary.setdefault(m, {})[str(k)] = {"status": status, "n": 0}
                continue
            acc = np.array([r["accuracy"] for r in rs])
            f1 = np.array([r["macro_f1"] for r in rs])
            summary.setdefault(m, {})[str(k)] = {
                "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std(ddof=1)) if len(rs) > 1 else 0.0,
                "n": len(rs), "seeds": [r["seed"] for r in rs],
            }
    return summary


def quality_table(summary: dict, ks: list) -> str:
    header = ["method"]
    for k in ks:
        header += [f"macro-F1 (k={k})", f"accuracy (k={k})"]
    rows = []
    for m in METHODS:
        if m not in summary:
            continue
        row = [m]
        for k in ks:
            e = summary[m].get(str(k))
            if e is None:
                row += ["—", "—"]
            elif "status" in e:
                row += [e["status"], "—"]
            else:
                row += [f"{e['macro_f1_mean']:.3f} ± {e['macro_f1_std']:.3f}",
                        f"{e['accuracy_mean']:.3f} ± {e['accuracy_std']:.3f}"]
        rows.append(row)
    return markdown_table(header, rows)


def plot(summary: dict, path: Path, title: str = "") -> Path | None:
    series = {}
    for m, per_k in summary.items():
        pts = sorted((int(k), e) for k, e in per_k.items() if "macro_f1_mean" in e and k != "None")
        if pts:
            series[m] = ([p[0] for p in pts], [p[1]["macro_f1_mean"] for p in pts], [p[1]["macro_f1_std"] for p in pts])
    return line_chart(path, series, "gold labels per class (k)", "test macro-F1 (mean ± std over seeds)", title,
                      dashed=PEER_METHODS)


# ============================================================================ main
def run(ks: list[int | None], seeds: list[int], overrides: list[str], config: str | None = None,
        work_dir: Path | None = None, keep_runs: bool = False, setfit_iterations: int = 20,
        log_fn=log) -> dict:
    """Every (k, seed): the selftrain runs and the peers. Returns records, summary and run info."""
    import pandas as pd

    own = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    runs: list[dict] = []
    t_start = time.perf_counter()
    try:
        total = len(ks) * len(seeds)
        for i, k in enumerate(ks):
            for j, seed in enumerate(seeds):
                n = i * len(seeds) + j + 1
                elapsed = time.perf_counter() - t_start
                eta = f", ~{elapsed / (n - 1) * (total - n + 1) / 60:.1f} min left" if n > 1 else ""
                log_fn(f"[{n}/{total}] k={k} seed={seed} ({elapsed / 60:.1f} min elapsed{eta})")
                scores, clean, info = selftrain_runs(k, seed, work, config, overrides)
                df = pd.read_parquet(clean)
                labels = json.loads((clean.parents[1] / "metrics.json").read_text())["labels"]
                t0 = time.perf_counter()
                peers = peer_methods(df, labels, seed=seed, setfit_iterations=setfit_iterations, log_fn=log_fn)
                info["peers_seconds"] = time.perf_counter() - t0
                log_fn("  [peers] " + " ".join(
                    f"{m}: F1 {p['macro_f1']:.3f}" if "macro_f1" in p else f"{m}: {p.get('status')}"
                    for m, p in peers.items()))
                sizes = {sp: int((df["split"] == sp).sum()) for sp in ("train", "val", "test", "unlabeled")}
                for m, sc in {**scores, **peers}.items():
                    records.append({"k": k, "seed": seed, "method": m, **sc})
                runs.append({"k": k, "seed": seed, "sizes": sizes, **info})
                if not keep_runs:
                    for d in work.glob(f"k{k}-s{seed}-*"):
                        shutil.rmtree(d, ignore_errors=True)
    finally:
        if own and not keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(records)
    return {"records": records, "summary": summary, "runs": runs, "seconds": time.perf_counter() - t_start,
            "table": quality_table(summary, ks)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="k=16, 2 seeds, smaller pool and test (< 10 min on 2 cores)")
    ap.add_argument("--k", type=int, nargs="+", default=None, help="gold labels per class (default 4 16 64)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    ap.add_argument("--config", default=None, help="base config file (default: the demo config)")
    ap.add_argument("--set", action="append", default=[], help="extra config override section.key=value")
    ap.add_argument("--out", default=str(RESULTS), help="folder for quality.json and quality.png")
    ap.add_argument("--work-dir", default=None, help="where run directories go (default: a temp dir)")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    ap.add_argument("--setfit-iterations", type=int, default=20, help="SetFit pair-generation iterations")
    ap.add_argument("--stage-log", action="store_true", help="print the pipeline's stage log lines (timestamps)")
    args = ap.parse_args(argv)
    if args.stage_log:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("    %(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("selftrain").addHandler(handler)

    ks = args.k or ([16] if args.quick else [4, 16, 64])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    overrides = (list(QUICK_OVERRIDES) if args.quick else []) + list(args.set)
    m = machine()
    log(f"machine: {machine_line(m)}")
    log(f"k={ks} seeds={seeds} overrides={overrides}")
    res = run(ks, seeds, overrides, args.config, Path(args.work_dir) if args.work_dir else None, args.keep_runs,
              args.setfit_iterations)
    out = Path(args.out)
    payload = {"machine": m, "quick": args.quick, "k": ks, "seeds": seeds, "config": args.config or "defaults (demo)",
               "overrides": overrides, **res}
    write_json(out / "quality.json", payload)
    png = plot(res["summary"], out / "quality.png",
               title=f"tweets, {len(seeds)} seed(s): test macro-F1 vs gold labels per class")
    print()
    print(res["table"])
    print("\nsupervised = the run's baseline; +pretraining = the full run's teacher; +pseudo-labels and full = the "
          "final model chosen on validation. Peers see exactly the same rows.")
    print(f"\nwrote {out / 'quality.json'}" + (f" and {png}" if png else "") + f" in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

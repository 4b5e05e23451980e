"""Dev-eval of whole runs: a shipped recipe, end to end, on the dev-eval draws.

    python -m benchmarks.dev_eval_run --config examples/configs/tweets-setfit-selftrain.yaml [--name NAME]
                                      [--set pseudo_label.rounds=1 ...] [--datasets tweets] [--k 16]
                                      [--seeds 0 1 2 3 4] [--eval-rows 2000] [--setfit-peer] [--out FILE]
    python -m benchmarks.dev_eval_run --render FILE [FILE ...] [--base METHOD]

Each draw of ``benchmarks.dev_eval`` (k gold rows per class, a pool of 1,500 BBC / 3,000 tweets, the
remaining rows for dev-eval) becomes a source file with the user's own split column: the gold rows
are ``train`` with their label, the pool rows ``train`` with no label (the run's unlabeled pool), a
seeded sample of ``--eval-rows`` dev-eval rows ``test``. The recipe then runs through ``run_stages``
exactly as a user's run does (ingest, validate, [pretrain], baseline, teacher, pseudo-label rounds
with the labeler's guard, students, evaluate), and its ``metrics.json`` is read: every model the run
trained is scored on the dev-eval rows (the run's "test"). The product's test split plays no part,
so a recipe can be chosen here.

Records (per draw, each with its dev-eval macro-F1 and expected calibration error ``ece``): ``<name>`` is
the run's final model, ``<name>-<model>`` each model it trained
(``<name>-baseline``, its supervised core; ``teacher``, ``student-1`` ...), the final one included;
with ``final``, the core chosen and the pseudo-label rounds (rows kept; their accuracy against the
pool's hidden labels, diagnostics only). ``--setfit-peer``: SetFit at its own defaults
(``benchmarks.peers.run_setfit``) on the run's gold rows, scored on the run's own dev-eval rows
(after validation), recorded as ``setfit``. Runs of several recipes on the same draws are paired:
the source file, and so the clean rows, depend on the draw alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_env, log
from benchmarks.dev_eval import eval_draw, load, summary

bench_env()


def source_frame(texts: list[str], y: np.ndarray, labels: list[str], gold, pool, ev):
    """The draw as a user's source with a split column: gold -> train (labelled), pool -> train
    (no label: the run's pool), ev -> test (labelled)."""
    import pandas as pd

    idx = np.concatenate([gold, pool, ev])
    label = [labels[y[i]] for i in gold] + [None] * len(pool) + [labels[y[i]] for i in ev]
    split = ["train"] * (len(gold) + len(pool)) + ["test"] * len(ev)
    return pd.DataFrame({"id": [f"r{i}" for i in idx], "text": [texts[i] for i in idx], "label": label, "split": split})


def pseudo_label_rounds(run_dir: str, metrics: dict, truth: dict[str, str]) -> list[dict]:
    """Per pseudo-label round of a finished run: rows kept and the share whose label is the pool
    row's hidden one (``truth``: text -> label; a text it lacks counts as wrong)."""
    import pandas as pd

    out = []
    for r, rep in enumerate(metrics.get("pseudo_labels", []), start=1):
        name = "pseudo_labels" if r == 1 else f"pseudo_labels-r{r}"
        kept = pd.read_parquet(Path(run_dir, f"{name}.parquet"), columns=["text", "label"])
        known = kept["text"].map(truth)
        out.append({"round": r, "kept": int(rep["kept"]),
                    "accuracy_vs_hidden": float((kept["label"] == known).mean()) if len(kept) else None})
    return out


def run_draw(config: str, overrides: list[str], frame, run_dir: Path, seed: int, truth: dict[str, str]) -> dict:
    """One recipe run on one draw; returns {model: dev-eval macro-F1} and what the run decided.
    ``truth``: text -> the pool row's hidden label, to score the pseudo-labels (diagnostics only)."""
    from selftrain.config import load_config
    from selftrain.core.run.pipeline import run_stages

    src = run_dir / "source.parquet"
    run_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(src, index=False)
    cfg = load_config(config, [*overrides, f"data.source={src}", "data.columns.split=split", "data.columns.id=id",
                               "data.val_per_class=0", f"seed={seed}", f"data.seed={seed}",
                               "evaluate.baseline=true", f"output_dir={run_dir / 'run'}",
                               # the draws were not de-duplicated by near-duplicates: ~1-2 % of the rows are
                               # (leakage into the dev-eval rows, near-duplicates); validate quarantines them
                               "validate.max_invalid_fraction=0.05", "validate.max_duplicate_fraction=0.05"])
    t0 = time.perf_counter()
    run_stages(cfg)
    seconds = time.perf_counter() - t0
    metrics = json.loads(Path(cfg.run_dir, "metrics.json").read_text())
    rounds = pseudo_label_rounds(cfg.run_dir, metrics, truth)
    return {"scores": {m: float(v["macro_f1"]) for m, v in metrics["models"].items()},
            "ece": {m: v.get("ece") for m, v in metrics["models"].items()}, "final": metrics["final"],
            "baseline": metrics.get("baseline", "baseline"), "core": (metrics.get("core") or {}).get("chosen"),
            "rounds": rounds, "notes": metrics.get("notes", []), "seconds": seconds,
            "run_dir": cfg.run_dir, "clean": str(Path(cfg.run_dir) / "data" / "clean.parquet"), "max_length": cfg.model.max_length}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="the recipe (a YAML config), e.g. examples/configs/tweets.yaml")
    ap.add_argument("--name", default=None, help="the method name in the records (default: the config's file stem)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, e.g. pseudo_label.rounds=1")
    ap.add_argument("--datasets", nargs="+", default=["tweets"])
    ap.add_argument("--k", nargs="+", type=int, default=[16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--setfit-peer", action="store_true", help="also SetFit at its defaults on the same rows (method setfit)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", nargs="+", default=None, metavar="FILE",
                    help="run nothing: print the paired table of these record files together (against --base)")
    ap.add_argument("--base", default=None, help="with --render: the method the others are paired against")
    a = ap.parse_args(argv)
    if a.render:
        recs = [r for f in a.render for r in json.loads(Path(f).read_text())["records"]]
        names = list(dict.fromkeys(r["method"] for r in recs))
        print(summary(recs, names, base_name=a.base or names[0]))
        return
    if not a.config:
        ap.error("--config is needed (the recipe to run), unless --render")
    name = a.name or Path(a.config).stem
    records: list[dict] = []
    for ds in a.datasets:
        texts, y, labels = load(ds)
        for k in a.k:
            for seed in a.seeds:
                gold, pool, ev = eval_draw(y, ds, k, seed, a.eval_rows)
                frame = source_frame(texts, y, labels, gold, pool, ev)
                truth = {texts[i]: labels[y[i]] for i in pool}
                base = {"dataset": ds, "k": k, "seed": seed}
                with tempfile.TemporaryDirectory(prefix="dev-run-") as tmp:
                    r = run_draw(a.config, [f"data.labels_per_class={k}", *a.set], frame, Path(tmp), seed, truth)
                    info = {"final": r["final"], "core": r["core"], "rounds": r["rounds"], "seconds": r["seconds"],
                            "overrides": a.set}
                    records.append({**base, "method": name, "macro_f1": r["scores"][r["final"]],
                                    "ece": r["ece"][r["final"]], **info, "notes": r["notes"]})
                    for m, f1 in r["scores"].items():  # every model, the final one too: <name>-baseline always exists
                        records.append({**base, "method": f"{name}-{m}", "macro_f1": f1, "ece": r["ece"][m]})
                    log(f"  {ds} k={k} seed={seed} {name}: final {r['final']} {r['scores'][r['final']]:.3f} "
                        f"({r['seconds']:.0f} s; core {r['core']}); " + ", ".join(f"{m} {v:.3f}" for m, v in r["scores"].items())
                        + "".join(f"; round {p['round']}: {p['kept']} kept, {p['accuracy_vs_hidden']}" for p in r["rounds"]))
                    if a.setfit_peer:
                        import pandas as pd

                        from benchmarks.peers import run_setfit, splits_of

                        s = splits_of(pd.read_parquet(r["clean"]), labels)
                        p = run_setfit(s, len(labels), None, seed, None, max_length=r["max_length"])
                        if "macro_f1" in p:  # else not installed or failed: said below, not recorded
                            records.append({**base, "method": "setfit", **{k_: v for k_, v in p.items() if k_ != "accuracy"}})
                        log(f"  {ds} k={k} seed={seed} setfit (defaults): {p.get('macro_f1', p.get('status'))}")
                if a.out:  # after every draw: a stopped run keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"protocol": __doc__.split("\n\n")[1], "records": records}, indent=1))
    print(summary(records, list(dict.fromkeys(r["method"] for r in records)), base_name=f"{name}-baseline"))


if __name__ == "__main__":
    main()

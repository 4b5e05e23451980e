"""Speed and memory of selftrain against the obvious baselines, side by side.

    python -m benchmarks.speed [--quick] [--out benchmarks/results] [--only pretrain,pseudo_label,...]

Sections (each alternates baseline and ours in ONE process, A B A B ..., median of repeats):

a. pretrain      — MLM pretraining real tokens/s: our loop vs HF ``Trainer`` +
                   ``DataCollatorForLanguageModeling`` (``benchmarks/speed_train.py``)
b. pseudo_label  — teacher inference examples/s: the probe teacher's scoring (eager, compiled, bf16)
                   and ``predict_logits`` vs ``transformers.pipeline("text-classification")``; a
                   separate row for the int8 dynamically quantised teacher (``--no-int8`` skips it)
                   (``benchmarks/speed_label.py``)
c. orchestration — pipeline wall: Prefect flow (ephemeral API start included) vs plain
                   functions, fresh processes (``benchmarks/speed_system.py``)
d. validate      — ``validate_frame`` on 1M synthetic rows: seconds, rows/s, peak RSS
e. memory        — peak RSS of ingest + validate + pseudo-label at 1x and 10x the unlabeled pool
                   (a probe teacher: the agree labeler's first round with its guard)
f. scale         — the pool scored in shards on 1, 2, 4 Dask workers: rows/s vs workers and the
                   overhead per shard (``benchmarks/speed_scale.py``)
g. gpu           — ``--device cuda``: MLM pretraining of MiniLM and a BERT-base-sized backbone vs HF
                   Trainer (best flags), tokens/s and MFU; embeddings vs sentence-transformers
                   ``encode`` in bf16 (``benchmarks/speed_gpu.py``); ``--device cpu``: the same at
                   tiny sizes (the dry run of ``benchmarks/gpu_check.sh``)
h. predict       — batch prediction rows/s: ``predict_file`` with a saved probe (MiniLM) vs
                   ``SentenceTransformer.encode`` + the saved head; peak RSS of predicting a 1M-row
                   parquet in a fresh process, target ≤ 2 GiB (``benchmarks/speed_predict.py``)
i. agree         — the agreement labeler's loop (what its guard runs per fold) on pools of 5,000 to
                   35,000 tweets: seconds and peak memory, the loop as shipped until 2026-12-07 (one
                   pool x labelled similarity matrix a round) vs now (blocks of unkept rows)
                   (``benchmarks/speed_agree.py``)

``--profile`` adds, per contender of a and b, the operators where the time goes
(``torch.profiler``, one short run after the timed ones).

Writes ``<out>/speed.json`` and ``<out>/speed.png`` and prints a markdown table (its rows:
``benchmarks/speed_rows.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    bar_chart,
    bench_env,
    log,
    machine,
    machine_line,
    speed_table,
    write_json,
)

bench_env()

from benchmarks import speed_label, speed_system, speed_train  # after bench_env: offline, quiet
from benchmarks.speed_rows import build_rows

SECTIONS = ("pretrain", "pseudo_label", "orchestration", "validate", "memory", "scale", "predict", "agree", "gpu")

SIZES = {
    # quick: the whole script in ~3-5 min on 2 cores
    True: {"pretrain_steps": 6, "pretrain_repeats": 2, "pl_texts": 1000, "pl_repeats": 2, "orch_repeats": 1,
           "validate_rows": 1_000_000, "validate_repeats": 1, "memory_pool": 1000, "gpu_steps": 20,
           "orch_warmup": False, "scale_pool": 4096, "scale_shard_rows": 1024, "scale_cpu_bf16": False,
           "gpu_texts": 2000, "gpu_batch_tokens": 32768, "gpu_max_length": 128, "gpu_warmup": 10, "gpu_compile": True,
           "predict_rows": 2000, "predict_parquet_rows": 50_000, "predict_repeats": 2, "predict_cycle": 512,
           "predict_distinct_rows": 4096, "agree_pool": 7000, "agree_repeats": 1},
    False: {"pretrain_steps": 30, "pretrain_repeats": 3, "pl_texts": 4000, "pl_repeats": 3, "orch_repeats": 3,
            "validate_rows": 1_000_000, "validate_repeats": 3, "memory_pool": 4000, "gpu_steps": 60,
            "orch_warmup": True, "scale_pool": 20480, "scale_shard_rows": 4096, "scale_cpu_bf16": False,
            "gpu_texts": 4000, "gpu_batch_tokens": 65536, "gpu_max_length": 128, "gpu_warmup": 20, "gpu_compile": True,
            "predict_rows": 20_000, "predict_parquet_rows": 1_000_000, "predict_repeats": 3, "predict_cycle": 512,
            "predict_distinct_rows": 40_000, "agree_pool": 35_000, "agree_repeats": 3},
}


def _previous(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _dropped(existing: dict, only: list[str]) -> list[str]:
    """Sections of an existing speed.json that a run of ``only`` without ``--merge`` would overwrite away."""
    return [s for s in existing.get("sections", []) if s not in only]


def _merged(previous: dict, results: dict, only: list[str]) -> dict:
    """``results`` plus the sections of ``previous`` that were not measured now (``--merge``)."""
    kept = [s for s in SECTIONS if s not in only and s in previous]
    for name in kept:
        results[name] = previous[name]
        if name == "pretrain" and "pretrain_gpu" in previous:
            results["pretrain_gpu"] = previous["pretrain_gpu"]
        if name in previous.get("measured", {}):
            results.setdefault("measured", {})[name] = previous["measured"][name]
    results["sections"] = [s for s in SECTIONS if s in only or s in kept]
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: ~3-5 min on 2 cores")
    ap.add_argument("--out", default=str(RESULTS), help="folder for speed.json and speed.png")
    ap.add_argument("--only", default=",".join(s for s in SECTIONS if s != "gpu"),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (gpu: only when asked for)")
    ap.add_argument("--repeats", type=int, default=None, help="override the repeats of every section")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8-teacher row of the pseudo_label section")
    ap.add_argument("--profile", action="store_true", help="add torch.profiler summaries of pretrain and pseudo_label")
    ap.add_argument("--merge", action="store_true",
                    help="keep the sections of an existing <out>/speed.json that this run does not measure")
    ap.add_argument("--demo-wall-s", type=float, default=None, help="the demo's wall time (s), the denominator of (c)")
    ap.add_argument("--measure-demo", action="store_true", help="measure the demo's wall time (one pure run, ~20 min)")
    ap.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override one size, e.g. --size validate_rows=200000; keys: {', '.join(SIZES[False])}")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"],
                    help="section gpu: cuda (default when torch sees a GPU) or cpu (a dry run at tiny sizes)")
    ap.add_argument("--scale-layouts", default=None, metavar="WxT,...",
                    help="section scale: the (workers x threads) layouts, e.g. 1x2,4x2 (default: 1x2,2x1 on < 8 cores, "
                    "else 1x2,2x2,4x2); the first is the baseline of the others")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        from benchmarks import speed_predict

        children = {**speed_system.CHILDREN, **speed_predict.CHILDREN}
        speed_system.emit(children[args.child](json.loads(args.child_args)))
        return 0

    import torch

    sizes = dict(SIZES[args.quick])
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes or not value:
            ap.error(f"--size {item!r}: expected KEY=VALUE with KEY one of {', '.join(sizes)}")
        sizes[key] = json.loads(value.lower()) if value.lower() in ("true", "false") else int(value)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    rep = args.repeats
    m = machine()
    log(f"machine: {machine_line(m)}")
    results: dict = {"machine": m, "quick": args.quick, "sizes": sizes, "sections": only}
    existing = _previous(Path(args.out) / "speed.json")
    previous = existing if args.merge else {}
    lost = [] if args.merge else _dropped(existing, only)
    if lost:
        log(f"warning: {Path(args.out) / 'speed.json'} holds sections {', '.join(lost)} that this run does not "
            f"measure; it will be rewritten without them. Add --merge to keep them.")
    profiles: dict = dict(previous.get("profiles", {}))
    t_all = time.perf_counter()

    if "pretrain" in only:
        texts = speed_train.tweet_texts(exclude_test=True)
        model_dir = speed_train.minilm_dir()
        results["pretrain"] = speed_train.bench_pretrain(texts, model_dir, sizes["pretrain_steps"],
                                                         rep or sizes["pretrain_repeats"])
        if args.profile:
            profiles["pretrain"] = speed_train.profile_pretrain(texts, model_dir)
        if torch.cuda.is_available():
            log(f"GPU: {torch.cuda.get_device_name(0)}")
            results["pretrain_gpu"] = speed_train.bench_pretrain(texts, model_dir, sizes["gpu_steps"],
                                                                 rep or sizes["pretrain_repeats"], device="cuda")
    if "pseudo_label" in only:
        labels = sorted(speed_train.tweets_frame()["label"].dropna().astype(str).unique())
        with tempfile.TemporaryDirectory(prefix="bench-clf-") as tmp:
            clf = speed_train.make_classifier(speed_train.minilm_dir(), labels, tmp + "/finetune",
                                              fit_on=speed_train.labeled_tweets())
            probe = speed_label.make_probe(speed_train.minilm_dir(), labels, tmp + "/probe",
                                           fit_on=speed_train.labeled_tweets())
            texts = speed_train.take(speed_train.tweet_texts("unlabeled"), sizes["pl_texts"])
            results["pseudo_label"] = speed_label.bench_pseudo_label(texts, clf, labels, 128, rep or sizes["pl_repeats"],
                                                                     int8=not args.no_int8, probe_dir=probe)
            if args.profile:
                profiles["pseudo_label"] = speed_label.profile_pseudo_label(texts[:1000], clf, labels)
    if "orchestration" in only:
        results["orchestration"] = speed_system.bench_orchestration(
            rep or sizes["orch_repeats"], demo_wall_s=args.demo_wall_s, measure_demo=args.measure_demo,
            warmup=sizes["orch_warmup"])
    if "validate" in only:
        results["validate"] = speed_system.bench_validate(sizes["validate_rows"], rep or sizes["validate_repeats"])
    if "memory" in only:
        results["memory"] = speed_system.bench_memory(sizes["memory_pool"])
    if "scale" in only:
        from benchmarks import speed_scale

        cores = os.cpu_count() or 1
        layouts = [(1, 2), (2, 1)] if cores < 8 else [(1, 2), (2, 2), (4, 2)]
        if args.scale_layouts:
            try:
                layouts = [tuple(int(n) for n in item.lower().split("x")) for item in args.scale_layouts.split(",")]
                if any(len(lay) != 2 or min(lay) < 1 for lay in layouts):
                    raise ValueError
            except ValueError:
                ap.error(f"--scale-layouts {args.scale_layouts!r}: expected WORKERSxTHREADS items, e.g. 1x2,4x2")
        results["scale"] = speed_scale.bench_scale(sizes["scale_pool"], sizes["scale_shard_rows"], layouts,
                                                   cpu_bf16=bool(sizes["scale_cpu_bf16"]))
    if "predict" in only:
        from benchmarks import speed_predict

        labels = sorted(speed_train.tweets_frame()["label"].dropna().astype(str).unique())
        texts = speed_train.take(speed_train.tweet_texts("unlabeled"), sizes["predict_rows"])
        results["predict"] = speed_predict.bench_predict(texts, speed_train.minilm_dir(), labels,
                                                         speed_train.labeled_tweets(), sizes["predict_parquet_rows"],
                                                         rep or sizes["predict_repeats"],
                                                         parquet_texts=list(dict.fromkeys(speed_train.tweet_texts())),
                                                         parquet_cycle=sizes["predict_cycle"],
                                                         distinct_rows=sizes["predict_distinct_rows"])
    if "agree" in only:
        from benchmarks import speed_agree

        top = sizes["agree_pool"]
        x, y = speed_agree.tweet_features(0 if top + 1000 > 37_000 else top + 1000)
        results["agree"] = speed_agree.bench_agree(x, y, [top // 7, top * 4 // 7, top], rep or sizes["agree_repeats"])
    if "gpu" in only:
        from benchmarks import speed_gpu

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        results["gpu"] = speed_gpu.bench_gpu(device, sizes, rep or 1)
    for name in SECTIONS:  # every section says on what and how it was measured
        if name in only:
            results.setdefault("measured", {})[name] = {"machine": machine_line(m), "quick": args.quick, "sizes": sizes}
    results = _merged(previous, results, only)
    if profiles:
        results["profiles"] = profiles

    rows = build_rows(results)
    results["rows"] = [r.as_dict() for r in rows]
    results["table"] = speed_table(rows)
    results["total_s"] = time.perf_counter() - t_all
    out = Path(args.out)
    write_json(out / "speed.json", results)
    png = bar_chart(out / "speed.png", rows, title=machine_line(m))
    print()
    print(f"Machine: {machine_line(m)}")
    print()
    print(results["table"])
    notes = []
    if "memory" in results:
        notes.append(results["memory"]["note"])
    if "orchestration" in results and not results["orchestration"].get("demo_wall"):
        notes.append("Prefect overhead vs the demo needs the demo's wall time: --demo-wall-s S or --measure-demo.")
    for n in notes:
        print(f"\n- {n}")
    for section, per in profiles.items():
        print(f"\nprofile, {section}:")
        for name, prof in per.items():
            print("\n".join("  " + ln for ln in speed_train.profile_lines(name, prof)))
    print(f"\nwrote {out / 'speed.json'}" + (f" and {png}" if png else "") + f" in {results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

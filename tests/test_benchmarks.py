"""The benchmark scripts run (at toy sizes) and produce their result keys.

These are not benchmarks: no speed or quality threshold is checked here, only that every
section's function works end to end and returns what ``speed.json`` holds (the quality harness:
``test_quality_bench.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TINY_BERT = {"vocab_size": 300, "hidden_size": 16, "layers": 1, "heads": 2}
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tweets():
    from benchmarks import speed_train

    return speed_train.tweet_texts(exclude_test=True)[:200]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tweets):
    """A tiny BERT backbone and a classifier on it, trained on 200 tweets."""
    from benchmarks import speed_train

    root = tmp_path_factory.mktemp("bench-models")
    backbone = speed_train.make_tiny_bert(tweets, str(root / "backbone"), **TINY_BERT)
    clf = speed_train.make_classifier(backbone, LABELS, str(root / "clf"))
    return backbone, clf


# --------------------------------------------------------------------------- common
def test_common_helpers(tmp_path):
    from benchmarks import common

    r = common.Row("speed", "x/s", 10.0, 25.0, "≥ 2x", True, "base")
    assert r.ratio == pytest.approx(2.5)
    assert common.Row("wall", "s", 10.0, 5.0, higher_is_better=False).ratio == pytest.approx(2.0)
    assert common.Row("only ours", "s", None, 5.0).ratio is None
    table = common.speed_table([r])
    assert table.splitlines()[0].startswith("| metric | baseline | ours |") and "2.50x" in table
    m = common.machine()
    assert {"cpu", "cores_logical", "python", "torch", "torch_threads"} <= set(m)
    assert common.peak_rss_mb() > 0
    calls = common.alternate({"a": lambda: 1.0, "b": lambda: 2.0}, 2, log=lambda s: None)
    assert calls == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    assert common.median([3.0, 1.0, 2.0]) == 2.0 and common.spread([1.0, 3.0])["median"] == 2.0
    out = common.write_json(tmp_path / "x.json", {"row": r.as_dict()})
    assert json.loads(out.read_text())["row"]["ratio"] == pytest.approx(2.5)
    assert common.bar_chart(tmp_path / "bar.png", [r]).stat().st_size > 0
    assert common.line_chart(tmp_path / "line.png", {"m": ([4, 16], [0.5, 0.6], [0.01, 0.02])}, "k", "F1").exists()


# --------------------------------------------------------------------------- speed
def test_speed_pretrain_tiny(tweets, tiny_models):
    from benchmarks import speed_train

    res = speed_train.bench_pretrain(tweets, tiny_models[0], steps=2, repeats=1, batch_size=8, max_length=32)
    assert res["selftrain"]["tokens_per_s"]["median"] > 0
    assert res["runs"]["selftrain"][0]["steps"] == 2
    if res["baseline_missing"] is None:  # HF Trainer needs accelerate
        assert res["hf_trainer"]["tokens_per_s"]["median"] > 0 and res["speedup"] > 0
        assert res["runs"]["hf_trainer"][0]["steps"] == 2
    else:
        assert res["hf_trainer"] is None and "accelerate" in res["baseline_missing"]


def test_speed_pseudo_label_tiny(tweets, tiny_models, tmp_path):
    from benchmarks import speed_label

    labels = [LABELS[i % len(LABELS)] for i in range(20)]
    probe = speed_label.make_probe(tiny_models[0], LABELS, str(tmp_path / "probe"), (tweets[:20], labels), max_length=32)
    res = speed_label.bench_pseudo_label(tweets[:40], tiny_models[1], LABELS, batch_size=16, repeats=1, max_length=32,
                                         int8=True, probe_dir=probe)
    assert {"hf_pipeline", "selftrain", "selftrain_finetune", "speedup", "argmax_agreement"} <= set(res)
    from selftrain.plugins.inference import cpp_compiler

    if cpp_compiler() is not None:  # compiled (its compilation in the warm-up), same answers as eager
        c = res["selftrain_compiled"]
        assert c["compiled"] and c["compile_s"] > 0 and c["max_abs_diff_vs_eager"] < 1e-5
        assert c["examples_per_s"]["median"] > 0 and c["speedup_vs_hf_incl_compile"] < c["speedup_vs_hf"]
    if "selftrain_bf16" in res:  # a CPU with AVX512 / AMX: the bf16 probe answers (almost) like fp32
        assert res["selftrain_bf16"]["max_abs_prob_diff_vs_fp32"] < 0.05
    if speed_label.int8_available():
        assert res["selftrain_int8"]["examples_per_s"]["median"] > 0
        assert 0.0 <= res["selftrain_int8"]["argmax_agreement_vs_fp32"] <= 1.0
    assert res["selftrain"]["examples_per_s"]["median"] > 0 and res["hf_pipeline"]["examples_per_s"]["median"] > 0
    assert res["argmax_agreement"] >= 0.95  # the same model answers the same


def test_speed_validate_tiny():
    from benchmarks import speed_system

    res = speed_system.bench_validate(rows=3000, repeats=1)
    assert res["rows"] == 3000 and res["rows_per_s"] > 0 and res["peak_rss_mb"] > 0
    assert res["n_clean"] + res["n_quarantined"] == 3000
    assert {"duplicate_text", "near_duplicate", "text_too_short"} <= set(res["checks"])


def test_speed_memory_tiny(tmp_path):
    from benchmarks import speed_system

    # pool 120 > replicate_above: the replicated-parquet source path of the 10x case
    res = speed_system.bench_memory(pool=60, scales=(2,), minilm=False, tiny_options=TINY_BERT, replicate_above=100,
                             work_dir=str(tmp_path))
    (run,) = res["runs"]
    assert run["teacher"] == "tiny-bert" and run["scale"] == 2 and run["source"].endswith(".parquet")
    assert run["pool"] > 0 and run["peak_rss_mb"] >= run["rss_start_mb"] > 0
    assert {"ingest_s", "validate_s", "pseudo_label_s"} <= set(run)
    # the pipeline's default path: a probe teacher, so the agree labeler ran its guard's folds
    assert run["labeler"] == "agree" and run["guard_folds"] > 0 and run["guard_use_pool"] in (True, False)


def test_speed_predict_tiny(tweets, tiny_models, tmp_path):
    """Section h at toy sizes: a probe on the tiny BERT, both contenders, the child's peak RSS."""
    from benchmarks import speed, speed_predict

    fit = (tweets[:30], [LABELS[i % len(LABELS)] for i in range(30)])
    res = speed_predict.bench_predict(tweets[30:90], tiny_models[0], LABELS, fit, parquet_rows=700, repeats=1,
                                      max_length=32, chunk_rows=128, work_dir=str(tmp_path), body_name="tiny-bert",
                                      parquet_texts=tweets, parquet_cycle=20, distinct_rows=150)
    assert res["rows"] == 60 and res["fit_rows"] == 30 and res["probe"]["extra_layer"] is None
    assert res["selftrain"]["rows_per_s"]["median"] > 0 and res["plain"]["rows_per_s"]["median"] > 0
    assert res["speedup"] > 0 and res["plain"]["name"] and res["selftrain"]["batch_size"] > 0
    assert res["argmax_agreement"] >= 0.95 and res["max_abs_prob_diff"] < 1e-3  # the same model answers the same
    mem = res["memory"]
    assert mem["rows"] == mem["predicted"] == 700 and mem["parquet"]["rows"] == 700 and mem["chunk_rows"] == 128
    assert mem["peak_rss_mb"] >= mem["rss_start_mb"] > 0 and mem["target_mb"] == 2048 and mem["met"] in (True, False)
    assert mem["parquet"]["distinct_texts"] == 20  # the large parquet cycles through 20 texts
    dist = res["memory_distinct"]  # the second child: every row distinct
    assert dist["rows"] == dist["predicted"] == dist["parquet"]["distinct_texts"] == 150 and dist["peak_rss_mb"] > 0
    rows = {r.metric: r for r in speed.build_rows({"predict": res})}
    assert rows["selftrain predict peak RSS, 700-row parquet"].ours == mem["peak_rss_mb"]
    assert rows["selftrain predict peak RSS, 150-row parquet"].ours == dist["peak_rss_mb"]
    assert rows["batch prediction throughput, CPU, probe (tiny-bert), 60 tweets"].baseline == res["plain"]["rows_per_s"]["median"]


def test_speed_orchestration_logic(monkeypatch):
    """The orchestration section's bookkeeping, with the pipeline child processes faked
    (a real Prefect run starts an ephemeral API: tens of seconds; tests/test_flow.py runs it)."""
    from benchmarks import speed_system

    calls = []

    def fake_child(kind, args, env=None, timeout=3600):
        calls.append((args["mode"], env.get("PREFECT_HOME"), "PREFECT_API_URL" in env))
        seconds = {"prefect-init": 5.0, "prefect": 30.0, "pure": 20.0}[args["mode"]]
        return {"mode": args["mode"], "seconds": seconds, "process_wall_s": seconds + 4}

    monkeypatch.setattr(speed_system, "run_child", fake_child)
    monkeypatch.setenv("PREFECT_API_URL", "http://example.invalid/api")
    res = speed_system.bench_orchestration(2, warmup=True, demo_wall_s=400.0)
    assert [c[0] for c in calls] == ["prefect-init", "prefect", "pure", "prefect", "pure", "prefect", "pure"]
    assert all(home and not api for _, home, api in calls)  # ephemeral API, private PREFECT_HOME
    assert res["overhead_s"] == pytest.approx(10.0)
    assert res["overhead_pct_of_pure_run"] == pytest.approx(50.0)
    assert res["overhead_pct_of_demo"] == pytest.approx(2.5)
    assert res["prefect_process_s"]["median"] == pytest.approx(34.0)


def test_speed_rows_and_outputs(tmp_path):
    from benchmarks import common, speed

    s = {"median": 1.0}
    results = {
        "pretrain": {"hf_trainer": {"tokens_per_s": {"median": 100.0}}, "selftrain": {"tokens_per_s": {"median": 250.0}},
                     "speedup": 2.5},
        "pseudo_label": {"hf_pipeline": {"examples_per_s": {"median": 50.0}},
                         "selftrain": {"examples_per_s": {"median": 80.0}}, "speedup": 1.6,
                         "selftrain_finetune": {"examples_per_s": {"median": 70.0}}},
        "orchestration": {"pure_s": {**s, "median": 100.0}, "prefect_s": {**s, "median": 110.0}, "overhead_s": 10.0,
                          "overhead_pct_of_pure_run": 10.0, "demo_wall": {"seconds": 600.0, "source": "argument"},
                          "overhead_pct_of_demo": 10 / 6},
        "validate": {"rows": 1_000_000, "median_s": 8.0, "rows_per_s": 125_000.0, "seconds_per_1m_rows": 8.0,
                     "peak_rss_mb": 900.0},
        "memory": {"runs": [{"pool": 4000, "scale": 1, "teacher": "minilm", "peak_rss_mb": 800.0}],
                   "tiny_bert_growth": {"pool_ratio": 10.0, "peak_ratio": 1.1, "extra_mb": 60.0}},
    }
    results["pseudo_label"]["selftrain_int8"] = {"examples_per_s": {"median": 120.0}, "argmax_agreement_vs_fp32": 0.97}
    results["pseudo_label"]["selftrain_compiled"] = {
        "examples_per_s": {"median": 130.0}, "speedup_vs_hf": 2.6, "speedup_spread": {"min": 2.4, "max": 2.7},
        "compiled": True, "compile_s": 28.0, "pays_from_examples": 9000.0}
    rows = speed.build_rows(results)
    by_metric = {r.metric: r for r in rows}
    compiled = by_metric["pseudo-labelling throughput, CPU fp32, inference_compile: on (probe teacher)"]
    assert compiled.met is True and "compile 28 s, pays from ~9,000 texts" in compiled.note
    assert by_metric["peak RSS growth, pool x10 (tiny-bert teacher)"].met is True
    assert any("int8" in m and r.ours == 120.0 and r.met is None for m, r in by_metric.items())
    assert by_metric["MLM pretraining throughput, CPU"].met is True
    assert by_metric["pseudo-labelling throughput, CPU fp32 (probe teacher: probs + embeddings)"].met is False
    assert by_metric["Prefect overhead"].met is True
    assert by_metric["validate_frame, 1,000,000 rows"].met is True
    assert common.bar_chart(tmp_path / "speed.png", rows).exists()


def test_speed_cli_writes_results(tmp_path, capsys):
    """``python -m benchmarks.speed`` end to end on one small section (its child process included)."""
    from benchmarks import speed

    earlier = {"pretrain": {"hf_trainer": {"tokens_per_s": {"median": 100.0}}, "selftrain": {"tokens_per_s": {"median": 250.0}},
                            "speedup": 2.5}, "measured": {"pretrain": {"machine": "earlier"}}}
    (tmp_path / "speed.json").write_text(json.dumps(earlier))
    args = ["--only", "validate", "--size", "validate_rows=2000", "--out", str(tmp_path)]
    assert speed.main([*args, "--merge"]) == 0
    out = json.loads((tmp_path / "speed.json").read_text())
    assert out["validate"]["rows"] == 2000 and "| validate_frame" in out["table"] and out["machine"]["cpu"]
    assert out["sections"] == ["pretrain", "validate"] and out["measured"]["pretrain"]["machine"] == "earlier"
    assert "MLM pretraining" in out["table"] and (tmp_path / "speed.png").exists()
    capsys.readouterr()
    assert speed.main(args) == 0  # without --merge: only what was measured now, and a warning first
    assert "pretrain" not in json.loads((tmp_path / "speed.json").read_text())
    said = capsys.readouterr()
    assert "holds sections pretrain that this run does not measure" in said.out + said.err
    assert "Add --merge" in said.out + said.err


def test_speed_cli_scale_layouts_and_bf16_flag(tmp_path, monkeypatch):
    """``--scale-layouts`` and ``--size scale_cpu_bf16`` reach the scale section (its real Dask
    runs are tests/test_shards.py's; here the section itself is replaced by a recorder)."""
    from benchmarks import speed, speed_scale

    seen = {}

    def record(pool, shard_rows, layouts, cpu_bf16=False):
        seen.update(pool=pool, layouts=layouts, cpu_bf16=cpu_bf16)
        return {"pool": pool, "shard_rows": shard_rows, "cores": 16, "cpu_bf16": cpu_bf16,
                "runs": [{"workers": w, "threads": t, "rows_per_s": 100.0 * w, "speedup_vs_first": w,
                          "overhead_pct": 2.0} for w, t in layouts]}

    monkeypatch.setattr(speed_scale, "bench_scale", record)
    args = ["--only", "scale", "--size", "scale_pool=300", "--size", "scale_cpu_bf16=true", "--out", str(tmp_path)]
    assert speed.main([*args, "--scale-layouts", "1x2,4x2"]) == 0
    assert seen == {"pool": 300, "layouts": [(1, 2), (4, 2)], "cpu_bf16": True}
    table = json.loads((tmp_path / "speed.json").read_text())["table"]
    assert "4 worker(s) x 2 thread(s), pool 300, cpu_bf16" in table
    with pytest.raises(SystemExit) as bad:
        speed.main([*args, "--scale-layouts", "4"])
    assert bad.value.code == 2


def test_pseudo_label_stage_streams_the_pool_in_chunks(tiny_config, tiny_models, monkeypatch):
    """The stage scores the pool chunk by chunk (bounded memory); the pseudo-labels are the
    same as when the whole pool is one chunk."""
    import pandas as pd

    from selftrain.core.run import stages

    cfg = tiny_config("data.unlabeled_size=300", "pseudo_label.options={k_per_class: 15}")
    ing = stages.ingest(cfg)
    clean = stages.validate(cfg, ing["snapshot"], ing["fingerprint"])["clean"]
    labels = stages.label_names(cfg, pd.read_parquet(clean))
    teacher = speed_classifier(tiny_models[0], labels, cfg.run_dir)
    whole = stages.pseudo_label_stage(cfg, clean, teacher)
    one = pd.read_parquet(whole["pseudo_labels"])
    monkeypatch.setattr(stages, "POOL_CHUNK_ROWS", 37)
    chunked = stages.pseudo_label_stage(cfg, clean, teacher)
    many = pd.read_parquet(chunked["pseudo_labels"])
    assert whole["report"]["pool"] == chunked["report"]["pool"] > 37 and len(one) == len(many) > 0
    assert list(one["id"]) == list(many["id"]) and list(one["label"]) == list(many["label"])
    np.testing.assert_allclose(np.stack(one["probs"]), np.stack(many["probs"]), atol=1e-5)
    clean_df = pd.read_parquet(clean).set_index("id")
    assert (clean_df.loc[many["id"], "text"].to_numpy() == many["text"].to_numpy()).all()  # rows read back right


def speed_classifier(backbone: str, labels: list[str], where: str) -> str:
    from benchmarks import speed_train

    return speed_train.make_classifier(backbone, labels, f"{where}-teacher")


def test_gpu_section_counts_model_flops_without_embeddings(tmp_path):
    """MFU's numerator: 6 · non-embedding parameters · tokens + the MLM head at the masked positions."""
    from transformers import BertConfig, BertModel

    from benchmarks.speed_gpu import MASK_RATE, _after_warmup, shape_of, train_flops

    cfg = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path)
    shape = shape_of(str(tmp_path))
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 2 * 32  # attention, FFN, 2 LayerNorms
    pooler = 32 * 32 + 32
    assert shape == {"N": 2 * layer + pooler + 2 * 32, "H": 32, "V": 500}  # + the embeddings' LayerNorm
    assert train_flops(shape, 1000) == 6 * shape["N"] * 1000 + 6 * (32 ** 2 + 32 * 500) * MASK_RATE * 1000
    # (end time, tokens of the step): throughput after the warm-up steps only
    assert _after_warmup([(0.0, 10), (10.0, 10), (11.0, 100), (12.0, 100)], 1) == 100.0  # 200 tokens in 2 s, not 210 in 12


def test_guard_eval_scores_the_rows_the_product_guard_scores():
    """The per-row held-out scores benchmarks.guard_eval records (agree.guard_rows) average to exactly what
    agree.cv_guard decides on; the table counts the draws on each side."""
    import numpy as np

    from benchmarks.guard_eval import table
    from selftrain.plugins.labelers import agree as A
    from selftrain.plugins.testing import labeler_inputs

    inp = labeler_inputs(n=200, n_val=0, n_train=15, seed=3)
    gx, gy, px = inp.train_embeddings, np.asarray(inp.train_labels), inp.pool_embeddings
    rows = A.guard_rows(gx, gy, px, 5, A.AgreeConfig(), 3, seed=7)
    g = A.cv_guard(gx, gy, px, 5, A.AgreeConfig(), 3, seed=7)
    for key in ("supervised", "selftrained"):
        assert np.isclose(rows[f"{key}_brier"].mean(), g[f"{key}_brier"]), (key, g)
        assert np.isclose(rows[f"{key}_log_loss"].mean(), g[f"{key}_log_loss"]), (key, g)
        assert int(rows[f"{key}_right"].sum()) == g[f"{key}_right"]
    recs = [{"dataset": "toy", "k": 5, "seed": s, "gain": gain, "d_brier": -0.2, "d_log_loss": ll}
            for s, (gain, ll) in enumerate([(0.05, -0.3), (-0.02, 0.4)])]
    assert "| toy | 5 | 2 | -0.20 … -0.20 | -0.30 … +0.40 | -0.020 … +0.050 | 1 (1) |" in table(recs)


def test_speed_agree_times_both_loops_on_clustered_rows():
    """Section i on small random features: both contenders run the labeler's loop, report seconds
    and a traced peak, and predict the pool alike; the blocked loop's peak is below the one-matrix
    loop's once the pool is larger than a block."""
    import numpy as np

    from benchmarks import speed_agree

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), 1500)
    x = centers[y] + rng.normal(scale=0.8, size=(len(y), 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    res = speed_agree.bench_agree(x, y, [4000], repeats=1, k=4)
    (r,) = res["runs"]
    assert r["pool"] == 4000 and res["gold_rows"] == 12
    assert r["argmax_agreement"] == 1.0
    assert r["unblocked"]["seconds"] > 0 and r["selftrain"]["seconds"] > 0
    assert r["selftrain"]["peak_mb"] < r["unblocked"]["peak_mb"]
    with pytest.raises(ValueError, match="agree_pool"):
        speed_agree.bench_agree(x, y, [5000], k=4)

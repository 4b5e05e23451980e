"""benchmarks.quality runs at toy sizes: its peers, the SetFit peer's defaults, one (k, seed) end to end,
and the merge of a partial grid into quality.json. No quality threshold is checked here (the numbers
live in benchmarks/results/quality.json), only that the harness works and records what the README reads."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

LABELS = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("val", [4, 0])
def test_quality_peers_tiny(val):
    from benchmarks import peers as peer_module
    from selftrain.config import DataConfig
    from selftrain.core.data.ingest import ingest_frame

    df = ingest_frame(DataConfig(source="builtin:tweets", labels_per_class=4, val_per_class=val, test_per_class=10,
                                 unlabeled_size=100))
    peers = peer_module.peer_methods(df, LABELS, svd_dim=20, setfit_iterations=1, max_length=32)
    assert list(peers) == list(peer_module.PEER_METHODS)
    for name in ("probe", "tfidf+logreg", "self-training", "label-spreading"):
        assert 0.0 <= peers[name]["macro_f1"] <= 1.0 and 0.0 <= peers[name]["accuracy"] <= 1.0
        assert 0.0 <= peers[name]["ece"] <= 1.0, name  # every peer's probabilities are scored for calibration
    # an explicit iteration count is the reduced, separately named peer; `setfit` (its defaults) is skipped then
    assert peers["setfit"] == {"status": "skipped"}
    st = peers["setfit-5it"]
    assert "macro_f1" in st or st["status"] == "not installed" or st["status"].startswith("error")
    if "macro_f1" in st:
        assert 0.0 <= st["ece"] <= 1.0
        assert st["training_args"]["num_iterations"] == 1 and st["training_args"]["pairs"] == 2 * 1 * len(df[df["split"] == "train"])


def test_setfit_defaults_pick_the_larger_pair_budget_before_training():
    """SetFit's peer runs at the stronger of the paper's 20 iterations and setfit 1.x's oversampling default,
    decided from the label counts (pairs each would train on), never from a score."""
    from benchmarks.peers import setfit_defaults

    small = setfit_defaults(np.repeat([0, 1, 2], 16))  # tweets k = 16: 48 rows
    assert small["num_iterations"] == 20 and small["pairs"] == 2 * 20 * 48
    big = setfit_defaults(np.repeat(np.arange(5), 32))  # BBC k = 32: 160 rows
    # negatives: C(160, 2) - 5 C(32, 2) = 12,720 - 2,480 = 10,240; oversampling doubles the larger side
    assert big["num_iterations"] is None and big["sampling_strategy"] == "oversampling" and big["pairs"] == 2 * 10240
    assert big["pairs"] > 2 * 20 * 160


def test_quality_run_tiny(tmp_path):
    """One (k, seed) through the full and the no-guard run, the peers, the summary, table and plot."""
    from benchmarks import quality

    overrides = [
        "data.source=builtin:tweets", "model.name=tiny-bert",
        "model.options={vocab_size: 300, hidden_size: 16, layers: 1, heads: 2}", "model.max_length=32",
        "data.test_per_class=10", "data.unlabeled_size=60", "pseudo_label.rounds=2",
    ]
    res = quality.run([3], [0], overrides, work_dir=tmp_path / "work", setfit_iterations=1)
    assert {"records", "summary", "runs", "table", "seconds"} <= set(res)
    recs = res["records"]
    assert {"dataset", "k", "seed", "method", "macro_f1"} <= set(recs[0])
    methods = {r["method"] for r in recs}
    assert set(quality.SELFTRAIN_METHODS) | {"probe", "tfidf+logreg", "self-training", "label-spreading", "setfit-5it"} <= methods
    for m in quality.SELFTRAIN_METHODS:
        e = res["summary"]["config"][m]["3"]
        assert 0.0 <= e["macro_f1_mean"] <= 1.0 and e["n"] == 1
        assert 0.0 <= e["ece_mean"] <= 1.0 and e["ece_n"] == 1
    assert all("ece" in r for r in recs if "macro_f1" in r)
    assert res["ece_table"].startswith("| dataset | k |")
    paired = res["summary"]["config"]["_paired"]["3"]
    assert paired["seeds"] == 1 and paired["full_beats_supervised"] + paired["ties"] <= 1
    assert res["runs"][0]["full"]["pseudo_labels"], "the full run recorded no pseudo-label round"
    assert not list((tmp_path / "work").rglob("k3-s0-*"))  # run dirs removed unless --keep-runs
    assert "| dataset | k |" in res["table"]
    assert quality.plot(res["summary"], tmp_path / "quality.png").exists()


def test_quality_merge_replaces_only_the_cells_run_again():
    from benchmarks.quality import merge

    old = [{"dataset": "bbc", "k": 4, "seed": s, "method": "full", "macro_f1": 0.1} for s in (0, 1)]
    new = [{"dataset": "bbc", "k": 4, "seed": 1, "method": "full", "macro_f1": 0.9}]
    got = merge(old, new)
    assert sorted((r["seed"], r["macro_f1"]) for r in got) == [(0, 0.1), (1, 0.9)]


def test_quality_merge_keeps_a_score_that_a_skipped_peer_did_not_replace():
    from benchmarks.quality import merge

    old = [{"dataset": "bbc", "k": 4, "seed": 0, "method": "setfit", "macro_f1": 0.8}]
    new = [{"dataset": "bbc", "k": 4, "seed": 0, "method": "setfit", "status": "skipped"},
           {"dataset": "bbc", "k": 8, "seed": 0, "method": "setfit", "status": "skipped"}]
    got = merge(old, new)
    assert {(r["k"], r.get("macro_f1"), r.get("status")) for r in got} == {(4, 0.8, None), (8, None, "skipped")}

"""benchmarks.quality's tables: ``full`` against each peer, paired per seed, and --render."""

import json

from benchmarks import quality


def _recs(method, scores, ds="bbc", k=4):
    return [{"dataset": ds, "k": k, "seed": s, "method": method, "accuracy": v, "macro_f1": v}
            for s, v in enumerate(scores) if v is not None]


def test_paired_table_pairs_per_seed_and_never_stands_a_reduced_peer_in():
    """full − setfit over the seeds both ran (mean ± sd, ahead / behind); a cell with only the reduced
    setfit-5it says 'not run' for setfit instead of comparing against the reduced peer."""
    recs = (_recs("full", [0.90, 0.80, 0.70]) + _recs("setfit", [0.85, 0.85, None]) + _recs("probe", [0.5, 0.5, 0.5])
            + _recs("full", [0.6, 0.6], k=8) + _recs("setfit-5it", [0.1, 0.1], k=8) + _recs("probe", [0.6, 0.5], k=8))
    lines = quality.paired_table(recs).splitlines()
    assert lines[0] == "| dataset | k | full − setfit | full − probe |"
    assert lines[2] == "| bbc | 4 | +0.000 ± 0.071 (1 / 1) | +0.300 ± 0.100 (3 / 0) |"
    assert lines[3] == "| bbc | 8 | not run | +0.050 ± 0.071 (1 / 0) |"


def test_render_recomputes_the_tables_from_the_records_on_file(tmp_path, capsys):
    recs = _recs("full", [0.9, 0.8]) + _recs("supervised", [0.7, 0.8]) + _recs("setfit", [0.6, 0.9])
    (tmp_path / "quality.json").write_text(json.dumps({"records": recs, "table": "stale"}))
    assert quality.main(["--render", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "quality.json").read_text())
    assert got["table"] != "stale" and "| bbc | 4 | 0.750 ± 0.071 | 0.850 ± 0.071 |" in got["table"]
    assert "| bbc | 4 | +0.100 ± 0.283 (1 / 1) | not run |" in got["paired_table"]
    assert got["summary"]["bbc"]["_paired"]["4"]["full_beats_supervised"] == 1
    assert (tmp_path / "quality.png").exists()
    assert quality.main(["--render", "--out", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err

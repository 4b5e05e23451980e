"""Speed section h (batch prediction) of ``python -m benchmarks.speed``.

h. predict       — rows/s of ``selftrain predict``'s core (``predict_file``: parquet in, row rules,
                   the classifier plugin's score, parquet out) with a saved ``probe`` (frozen MiniLM +
                   logistic regression, fit on 600 labelled tweets in seconds) vs the plain way a user
                   would write it: ``pd.read_parquet`` -> ``SentenceTransformer(model_dir).encode(texts)``
                   (its defaults) -> the saved head (``head.safetensors``) -> softmax -> ``to_parquet``
                   (without sentence-transformers: a transformers ``AutoModel`` mean-pool loop), both
                   alternating in one process on the same distinct tweets, model loads outside the clock;
                   and the peak RSS (VmHWM) of ``predict_file`` in a fresh child process, target <= 2 GiB,
                   twice: on a large parquet (1M rows at full size, written in row groups, never held
                   whole) whose texts cycle through ``parquet_cycle`` distinct tweets (a chunk's repeated
                   texts are encoded once, so 1M rows cost ~1M / chunk x cycle encodes, minutes, not the
                   ~1.5 h of 1M distinct tweets on 2 cores): what grows with the input (reading, row
                   rules, quarantine, output, drift counts) is all there; and on ``distinct_rows`` rows
                   that are all distinct (~40k tweets: several full chunks of distinct texts): the
                   encoder's share at its largest. Memory bounded by the chunk shows as the two peaks
                   being alike while the inputs differ 25-fold.

The probe is trained with ``extra_layer: null``, so that its features are exactly the checkpoint's
sentence embedding: what ``encode`` returns (the default probe appends the middle layer's view,
which no plain encode call gives). Both contenders then compute the same probabilities: the
section checks their argmax agreement and largest probability difference.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import alternate, log, peak_rss_mb, proc_status_mb, spread
from benchmarks.speed_system import run_child
from benchmarks.speed_train import _cpu_ctx

RSS_TARGET_MB = 2048
MODEL = "probe"


def make_run(backbone_dir: str, labels: list[str], run_dir: str, fit_on: tuple[list[str], list[str]],
             max_length: int = 128) -> str:
    """A minimal run directory ``predict`` accepts (``config.yaml`` + ``models/probe``): a probe with
    ``extra_layer: null`` fit on ``fit_on`` (texts, labels)."""
    import numpy as np
    import yaml

    from selftrain.config import PipelineConfig
    from selftrain.plugins import LabeledRows, one_hot
    from selftrain.plugins.classifiers.probe import Probe

    y = np.array([labels.index(v) for v in fit_on[1]])
    rows = LabeledRows(list(fit_on[0]), one_hot(y, len(labels)), np.ones(len(y), np.float32), len(y),
                       np.zeros(len(y), bool), 0.0)
    model_dir = str(Path(run_dir) / "models" / MODEL)
    Probe(Probe.Config(extra_layer=None), _cpu_ctx(), max_length).fit(backbone_dir, labels, rows, [], [], model_dir)
    cfg = PipelineConfig(output_dir=str(Path(run_dir).parent), run_name=Path(run_dir).name, device="cpu",
                         model={"max_length": max_length}, classifier={"name": "probe", "options": {"extra_layer": None}})
    (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    return run_dir


def write_parquet(path: str, texts: list[str], rows: int, group: int = 65536) -> dict:
    """``rows`` rows (id, text) of ``texts`` repeated, written a row group at a time (never whole in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, group):
            n = min(group, rows - start)
            w.write_table(pa.table({"id": [f"r{i}" for i in range(start, start + n)],
                                    "text": [texts[i % len(texts)] for i in range(start, start + n)]}, schema=schema))
    return {"rows": rows, "distinct_texts": min(rows, len(texts)), "mb": Path(path).stat().st_size / 2**20}


class PlainWay:
    """What a user writes without selftrain: read, encode, apply the saved head, write."""

    def __init__(self, model_dir: str, max_length: int):
        import json

        from safetensors.numpy import load_file

        meta = json.loads((Path(model_dir) / "selftrain_classifier.json").read_text())
        self.labels = meta["labels"]
        head = load_file(str(Path(model_dir) / "head.safetensors"))
        self.W, self.b = head["weight"], head["bias"]
        try:
            from sentence_transformers import SentenceTransformer

            self.st = SentenceTransformer(model_dir, device="cpu")
            self.st.max_seq_length = max_length  # the probe's truncation
            self.name = "sentence-transformers encode + saved head"
            self.batch_size = 32  # encode's default
            self.encode = lambda texts: self.st.encode(texts, convert_to_numpy=True)
        except ImportError:
            import numpy as np
            import torch
            from transformers import AutoModel, AutoTokenizer

            tok, body = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
            self.name, self.batch_size = "transformers AutoModel mean-pool loop + saved head", 32

            def encode(texts):
                out = []
                for i in range(0, len(texts), self.batch_size):
                    enc = tok(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
                    with torch.no_grad():
                        h = body(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).float()
                    out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
                return np.concatenate(out)

            self.encode = encode

    def probs(self, texts: list[str]):
        import numpy as np

        z = self.encode(texts) @ self.W.T + self.b
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def __call__(self, src: str, out: str):
        import numpy as np
        import pandas as pd

        df = pd.read_parquet(src)
        p = self.probs(df["text"].astype(str).tolist())
        res = pd.DataFrame({"id": df["id"], "label": np.asarray(self.labels)[p.argmax(1)], "confidence": p.max(1),
                            **{f"prob_{c}": p[:, i] for i, c in enumerate(self.labels)}})
        res.to_parquet(out, index=False)
        return p


def child_predict_memory(a: dict) -> dict:
    """``predict_file`` on ``a['input']`` in this fresh process: seconds and the peak RSS (VmHWM)."""
    from selftrain.core.predict.batch import predict_file

    rss_start = proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    res = predict_file(a["input"], a["output"], run_dir=a["run_dir"], model=MODEL, reference=False,
                       chunk_rows=a["chunk_rows"])
    s = time.perf_counter() - t0
    return {"rows": res["rows"], "predicted": res["predicted"], "seconds": s, "rows_per_s": res["rows"] / s,
            "rss_start_mb": rss_start, "peak_rss_mb": proc_status_mb("VmHWM") or peak_rss_mb(),
            "chunk_rows": a["chunk_rows"]}


def bench_predict(texts: list[str], backbone_dir: str, labels: list[str], fit_on: tuple[list[str], list[str]],
                  parquet_rows: int, repeats: int, max_length: int = 128, chunk_rows: int | None = None,
                  work_dir: str | None = None, body_name: str = "MiniLM", parquet_texts: list[str] | None = None,
                  parquet_cycle: int | None = None, distinct_rows: int | None = None) -> dict:
    """Alternating rows/s of ``predict_file`` and the plain way on ``texts``; the peak RSS of
    ``predict_file`` in a child process on a ``parquet_rows``-row parquet cycling through the first
    ``parquet_cycle`` (default all) of ``parquet_texts`` (default ``texts``), and, with ``distinct_rows``,
    on that many distinct rows of ``parquet_texts`` (``memory_distinct``)."""
    import numpy as np
    import pandas as pd

    from selftrain.config import PseudoLabelConfig
    from selftrain.core.predict.batch import CHUNK_ROWS, predict_file

    chunk_rows = chunk_rows or CHUNK_ROWS
    batch_size = PseudoLabelConfig().batch_size  # what predict scores with (the model config's pseudo_label.batch_size)
    tmp = Path(work_dir or tempfile.mkdtemp(prefix="bench-predict-"))
    try:
        t0 = time.perf_counter()
        run = make_run(backbone_dir, labels, str(tmp / "run"), fit_on, max_length)
        fit_s = time.perf_counter() - t0
        model_dir = str(Path(run) / "models" / MODEL)
        log(f"[predict] probe (extra_layer null) fit on {len(fit_on[0])} rows in {fit_s:.1f} s; {len(texts)} rows, "
            f"{repeats} repeats; then {parquet_rows:,} rows for the peak RSS (fresh process)")
        src, warm = str(tmp / "rows.parquet"), str(tmp / "warm.parquet")
        pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(src, index=False)
        pd.DataFrame({"id": [f"w{i}" for i in range(min(256, len(texts)))], "text": texts[:256]}).to_parquet(warm, index=False)
        plain = PlainWay(model_dir, max_length)
        kw = dict(run_dir=run, model=MODEL, reference=False, chunk_rows=chunk_rows)
        predict_file(warm, str(tmp / "warm-ours.parquet"), **kw)  # model load + first-call allocations: untimed
        plain(warm, str(tmp / "warm-plain.parquet"))

        def timed(fn) -> dict:
            t = time.perf_counter()
            fn()
            s = time.perf_counter() - t
            return {"seconds": s, "rows_per_s": len(texts) / s}

        runs = alternate({"plain": lambda: timed(lambda: plain(src, str(tmp / "plain.parquet"))),
                          "selftrain": lambda: timed(lambda: predict_file(src, str(tmp / "ours.parquet"), **kw))},
                         repeats, log)
        ours = pd.read_parquet(tmp / "ours.parquet")
        p_plain = plain.probs(texts)
        p_ours = ours[[f"prob_{c}" for c in labels]].to_numpy()
        pool = list(dict.fromkeys(parquet_texts or texts))

        def peak(name: str, rows: int, cycle: list[str]) -> dict:
            path = str(tmp / f"{name}.parquet")
            t0 = time.perf_counter()
            data = write_parquet(path, cycle, rows)
            log(f"  wrote {rows:,} rows ({data['distinct_texts']:,} distinct texts, {data['mb']:.1f} MiB) in "
                f"{time.perf_counter() - t0:.1f} s")
            mem = run_child("predict_memory", {"input": path, "output": str(tmp / f"{name}-preds.parquet"),
                                               "run_dir": run, "chunk_rows": chunk_rows}, timeout=6 * 3600)
            mem.update({"parquet": data, "target_mb": RSS_TARGET_MB, "met": mem["peak_rss_mb"] <= RSS_TARGET_MB})
            log(f"  peak RSS {mem['peak_rss_mb']:.0f} MiB (after imports {mem['rss_start_mb']:.0f} MiB), "
                f"{mem['rows_per_s']:,.0f} rows/s over {mem['rows']:,} rows")
            return mem

        mem = peak("big", parquet_rows, pool[:parquet_cycle] if parquet_cycle else pool)
        mem_distinct = peak("distinct", min(distinct_rows, len(pool)), pool) if distinct_rows else None
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    res = {"rows": len(texts), "distinct_texts": len(set(texts)), "max_length": max_length, "repeats": repeats,
           "chunk_rows": chunk_rows, "fit_rows": len(fit_on[0]), "fit_s": fit_s, "labels": labels,
           "probe": {"extra_layer": None, "backbone": backbone_dir, "body": body_name}, "runs": runs,
           "plain": {"rows_per_s": spread([r["rows_per_s"] for r in runs["plain"]]), "name": plain.name,
                     "batch_size": plain.batch_size},
           "selftrain": {"rows_per_s": spread([r["rows_per_s"] for r in runs["selftrain"]]),
                         "name": "selftrain.core.predict.batch.predict_file", "batch_size": batch_size},
           "argmax_agreement": float((p_ours.argmax(1) == p_plain.argmax(1)).mean()),
           "max_abs_prob_diff": float(np.abs(p_ours - p_plain).max()), "memory": mem}
    if mem_distinct:
        res["memory_distinct"] = mem_distinct
    res["speedup"] = res["selftrain"]["rows_per_s"]["median"] / res["plain"]["rows_per_s"]["median"]
    return res


CHILDREN = {"predict_memory": child_predict_memory}

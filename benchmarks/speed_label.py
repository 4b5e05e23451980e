"""Speed section b (pseudo-labelling) of ``python -m benchmarks.speed``.

b. pseudo_label  — teacher inference, examples/s, every contender alternating in one process on
                   the same distinct tweets: ``transformers.pipeline("text-classification")``
                   (batched, same truncation) vs what the pseudo-label stage runs (the ``probe``
                   teacher's probabilities + embeddings), the same compiled (``inference_compile``)
                   and in bf16 (``cpu_bf16``), the ``finetune`` teacher's ``predict_logits``, and
                   optionally its dynamically quantised int8 copy (a separate row, with its argmax
                   agreement with fp32).
"""

from __future__ import annotations

import time

from benchmarks.common import alternate, log, native_bf16, spread
from benchmarks.speed_train import _cpu_ctx, profile_call


def int8_available() -> bool:
    """Whether torch can run dynamically quantised int8 nn.Linear here (fbgemm/x86/qnnpack)."""
    import torch

    return bool(set(torch.backends.quantized.supported_engines) - {"none"})


def make_probe(backbone_dir: str, labels: list[str], out_dir: str, fit_on: tuple[list[str], list[str]],
               max_length: int = 64) -> str:
    """The pipeline's default teacher: a ``probe`` (frozen MiniLM + logistic regression) fit on ``fit_on``."""
    import numpy as np

    from selftrain.plugins import LabeledRows, one_hot
    from selftrain.plugins.classifiers.probe import Probe

    y = np.array([labels.index(v) for v in fit_on[1]])
    rows = LabeledRows(list(fit_on[0]), one_hot(y, len(labels)), np.ones(len(y), np.float32), len(y),
                       np.zeros(len(y), bool), 0.0)
    Probe(Probe.Config(), _cpu_ctx(), max_length).fit(backbone_dir, labels, rows, [], [], out_dir)
    return out_dir


def bench_pseudo_label(texts: list[str], clf_dir: str, labels: list[str], batch_size: int, repeats: int,
                       max_length: int = 64, int8: bool = False, probe_dir: str | None = None) -> dict:
    """Alternating contenders over the same texts; medians of examples/s.

    - ``hf_pipeline``: ``transformers.pipeline("text-classification")`` on a MiniLM sequence classifier (fp32);
    - ``selftrain``: what the pseudo-label stage runs by default: the ``probe`` teacher's ``score`` (its
      probabilities and the embeddings the ``agree`` labeler needs, one encoding; embedding cache off);
    - ``selftrain_compiled``: the same with ``inference_compile: on`` (Inductor, frozen weights); its
      compilation runs in the warm-up and is reported apart (``compile_s``, and the pool size from
      which it pays at this run's rates);
    - ``selftrain_bf16``: the same with ``cpu_bf16: true`` (where the CPU has AVX512-BF16 / AMX);
    - ``selftrain_finetune``: ``predict_logits`` of the finetuned teacher (the ``finetune`` classifier);
    - ``selftrain_int8`` (``int8``): ``predict_logits(int8=True)``, the dynamically quantised teacher.

    Every contender first runs once on the first 256 texts (untimed): model loading, first-call
    allocations and the compiled contender's compilation stay out of the rates.
    """
    import numpy as np
    import torch
    from transformers import pipeline

    from selftrain.core.train.classify import load_classifier, predict_logits
    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.probe import Probe
    from selftrain.plugins.inference import cpp_compiler

    int8 = int8 and int8_available()
    log(f"[pseudo_label] {len(texts)} texts, batch {batch_size}, max_length {max_length}, {repeats} repeats"
        + (", + int8 teacher" if int8 else ""))
    ctx = _cpu_ctx()
    model, tok = load_classifier(clf_dir, labels)
    pipe = pipeline("text-classification", model=clf_dir, tokenizer=clf_dir, batch_size=batch_size,
                    truncation=True, max_length=max_length, top_k=None, device=-1)
    outputs: dict = {}

    def timed_run(name: str, fn) -> dict:
        t0 = time.perf_counter()
        outputs[name] = fn()
        s = time.perf_counter() - t0
        return {"seconds": s, "examples_per_s": len(texts) / s}

    contenders = {"hf_pipeline": lambda: timed_run("hf", lambda: pipe(texts))}
    bf16 = native_bf16()  # the same check as the scale section's scale_cpu_bf16
    probe = probec = probe16 = None
    if probe_dir is not None:
        probe = Probe(Probe.Config(), ctx, max_length).load(probe_dir, labels)  # ctx: no cache_dir, no embedding cache
        contenders["selftrain"] = lambda: timed_run("ours", lambda: probe.score(texts, batch_size, embeddings=True)[0])
        if cpp_compiler() is not None:
            ctxc = RuntimeContext(device=torch.device("cpu"), autocast_dtype=None, seed=0, compile_inference="on")
            probec = Probe(Probe.Config(), ctxc, max_length).load(probe_dir, labels)
            probec.embedder._model, probec.embedder._tok = probe.embedder._load()  # same weights, loaded once
            contenders["selftrain_compiled"] = lambda: timed_run(
                "compiled", lambda: probec.score(texts, batch_size, embeddings=True)[0])
        if bf16:
            ctx16 = RuntimeContext(device=torch.device("cpu"), autocast_dtype=torch.bfloat16, seed=0)
            probe16 = Probe(Probe.Config(), ctx16, max_length).load(probe_dir, labels)
            probe16.embedder._model, probe16.embedder._tok = probe.embedder._load()  # same weights, loaded once
            contenders["selftrain_bf16"] = lambda: timed_run(
                "bf16", lambda: probe16.score(texts, batch_size, embeddings=True)[0])
    contenders["selftrain_finetune"] = lambda: timed_run(
        "finetune", lambda: predict_logits(model, tok, texts, max_length, batch_size, ctx))
    if int8:
        contenders["selftrain_int8"] = lambda: timed_run(
            "int8", lambda: predict_logits(model, tok, texts, max_length, batch_size, ctx, int8=True))
    warm = texts[:256]
    scorers = {"selftrain": probe, "selftrain_compiled": probec, "selftrain_bf16": probe16}
    warmups = {"hf_pipeline": lambda: pipe(warm),
               "selftrain_finetune": lambda: predict_logits(model, tok, warm, max_length, batch_size, ctx),
               **{n: (lambda pr: lambda: pr.score(warm, batch_size, embeddings=True))(pr)
                  for n, pr in scorers.items() if n in contenders}}
    for name, fn in warmups.items():  # untimed (compiles the compiled contender); int8 quantises per call anyway
        t0 = time.perf_counter()
        fn()
        log(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s")
    runs = alternate(contenders, repeats, log)
    # same model, same answers: argmax agreement of the finetune path with the pipeline is a sanity check
    hf_pred = [max(o, key=lambda d: d["score"])["label"] for o in outputs["hf"]]
    ft = np.asarray(outputs["finetune"])
    agree = float(np.mean([a == labels[b] for a, b in zip(hf_pred, ft.argmax(1))])) if texts else None
    hf_probs = np.array([[{d["label"]: d["score"] for d in o}[n] for n in labels] for o in outputs["hf"]])
    res = {"texts": len(texts), "batch_size": batch_size, "max_length": max_length, "repeats": repeats,
           "runs": runs, "argmax_agreement": agree, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "max_abs_prob_diff_vs_hf": float(np.abs(_softmax(ft) - hf_probs).max()) if texts else None}
    for name, rs in runs.items():
        res[name] = {"examples_per_s": spread([r["examples_per_s"] for r in rs])}
    base = res["hf_pipeline"]["examples_per_s"]["median"]
    main = "selftrain" if "selftrain" in res else "selftrain_finetune"
    res["speedup"] = res[main]["examples_per_s"]["median"] / base
    res["speedup_spread"] = spread([r["examples_per_s"] / h["examples_per_s"] for r, h in zip(runs[main], runs["hf_pipeline"])])
    res["speedup_finetune"] = res["selftrain_finetune"]["examples_per_s"]["median"] / base
    if "selftrain_compiled" in res:
        fwd = probec.embedder._forward
        pc = np.asarray(outputs["compiled"])
        rate, eager = res["selftrain_compiled"]["examples_per_s"]["median"], res[main]["examples_per_s"]["median"]
        saved = 1 / eager - 1 / rate  # s per example
        res["selftrain_compiled"].update({
            "speedup_vs_hf": rate / base,
            "speedup_spread": spread([r["examples_per_s"] / h["examples_per_s"]
                                      for r, h in zip(runs["selftrain_compiled"], runs["hf_pipeline"])]),
            "speedup_vs_eager": rate / eager,
            "compiled": bool(fwd is not None and fwd.compiled), "compile_error": fwd.error if fwd else None,
            "compile_s": fwd.compile_seconds if fwd else None,
            "pays_from_examples": (fwd.compile_seconds / saved) if fwd and saved > 0 else None,
            "speedup_vs_hf_incl_compile": len(texts) / (len(texts) / rate + (fwd.compile_seconds if fwd else 0)) / base,
            "max_abs_diff_vs_eager": float(np.abs(pc - np.asarray(outputs["ours"])).max()) if texts else None})
    if "selftrain_bf16" in res:
        p32, p16 = np.asarray(outputs["ours"]), np.asarray(outputs["bf16"])
        res["selftrain_bf16"].update({
            "speedup_vs_hf": res["selftrain_bf16"]["examples_per_s"]["median"] / base,
            "argmax_agreement_vs_fp32": float((p16.argmax(1) == p32.argmax(1)).mean()) if texts else None,
            "max_abs_prob_diff_vs_fp32": float(np.abs(p16 - p32).max()) if texts else None})
    if int8:
        q = np.asarray(outputs["int8"])
        res["selftrain_int8"].update({
            "speedup_vs_hf": res["selftrain_int8"]["examples_per_s"]["median"] / base,
            "speedup_vs_fp32": res["selftrain_int8"]["examples_per_s"]["median"]
            / res["selftrain_finetune"]["examples_per_s"]["median"],
            "argmax_agreement_vs_fp32": float((q.argmax(1) == ft.argmax(1)).mean()) if texts else None,
            "max_abs_prob_diff_vs_fp32": float(np.abs(_softmax(q) - _softmax(ft)).max()) if texts else None,
        })
    return res


def _softmax(z):
    import numpy as np

    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)



def profile_pseudo_label(texts: list[str], clf_dir: str, labels: list[str], batch_size: int = 128,
                         max_length: int = 64) -> dict:
    from transformers import pipeline

    from selftrain.core.train.classify import load_classifier, predict_logits

    log(f"[profile] pseudo-label, {len(texts)} texts per contender")
    model, tok = load_classifier(clf_dir, labels)
    pipe = pipeline("text-classification", model=clf_dir, tokenizer=clf_dir, batch_size=batch_size,
                    truncation=True, max_length=max_length, top_k=None, device=-1)
    return {"hf_pipeline": profile_call(lambda: pipe(texts)),
            "selftrain": profile_call(lambda: predict_logits(model, tok, texts, max_length, batch_size, _cpu_ctx()))}

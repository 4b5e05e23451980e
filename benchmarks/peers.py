"""Peers of the quality benchmark: the methods selftrain is compared against.

Every peer sees exactly the same rows as the selftrain runs: ``benchmarks/quality.py`` hands
each one the full run's ``data/clean.parquet`` (train / val / test / unlabeled splits), and
every peer is scored on the same test split.

  - ``probe``             LogisticRegression (scikit-learn defaults) on the frozen MiniLM's
                          sentence embeddings (pooled as its checkpoint says), gold labels only
  - ``tfidf+logreg``      TF-IDF (word 1-2 grams) + LogisticRegression on the gold labels
                          (C picked on the validation split when there is one, else C=10)
  - ``self-training``     ``SelfTrainingClassifier(LogisticRegression)`` on the gold labels + the
                          unlabeled pool (same TF-IDF; C and threshold picked on validation when
                          there is one, else C=10, threshold 0.6)
  - ``label-spreading``   ``LabelSpreading(kernel="knn")`` on TF-IDF reduced by TruncatedSVD
                          (100 dims, L2-normalised), gold labels + unlabeled pool
  - ``setfit``            SetFit on the local MiniLM at its own defaults, if the ``setfit`` package
                          is installed (otherwise recorded as not installed): the stronger of the
                          paper's setting (20 pair iterations) and the installed setfit's default
                          ``TrainingArguments`` (1.x: pairs by oversampling, 1 epoch, batch 16,
                          body lr 2e-5), "stronger" = the one that trains on more pairs for these
                          rows, decided before training (never on a score); the arguments used
                          are in the record (``training_args``)
  - ``setfit-5it``        a reduced SetFit (5 pair iterations), a separately named method: only
                          ``--quick`` runs it, and no README comparison is made against it

The TF-IDF vocabulary and idf are fit on every non-test text (no labels involved).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks.common import log

PEER_METHODS = ("probe", "setfit", "setfit-5it", "tfidf+logreg", "self-training", "label-spreading")


def _metrics(y_true, y_pred, n_classes: int, proba: np.ndarray | None = None) -> dict:
    """accuracy and macro-F1 of (N,) predictions; with the (N, C) probabilities behind them, also
    ``ece`` (selftrain's own 15-bin expected calibration error, as metrics.json reports it)."""
    from sklearn.metrics import accuracy_score, f1_score

    from selftrain.core.run.evaluate import expected_calibration_error

    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_classes)), zero_division=0))}
    if proba is not None:
        out["ece"] = expected_calibration_error(np.asarray(proba, np.float64), np.asarray(y_true))
    return out


def splits_of(df, labels: list[str]) -> dict:
    """texts and int labels of train / val / test and the unlabeled texts of a clean frame."""
    idx = {n: i for i, n in enumerate(labels)}
    out = {}
    for sp in ("train", "val", "test", "unlabeled"):
        part = df[df["split"] == sp]
        out[sp] = part["text"].astype(str).tolist()
        if sp != "unlabeled":
            out[sp + "_y"] = part["label"].astype(str).map(idx).to_numpy(dtype=np.int64)
    return out


def peer_methods(df, labels: list[str], seed: int = 0, svd_dim: int = 100, n_neighbors: int = 7,
                 setfit_model: str | None = None, setfit_iterations: int | None = None,
                 log_fn=log, max_length: int | None = None) -> dict[str, dict]:
    """Every peer on one clean frame (train / val / test / unlabeled). Method -> scores
    (or {"status": "not installed" | "skipped" | "error: ..."}). ``setfit_iterations``: None runs
    ``setfit`` at its defaults (``setfit_defaults``), 5 runs ``setfit-5it`` instead, 0 neither."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

    s = splits_of(df, labels)
    C = len(labels)
    out: dict[str, dict] = {}
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    vec.fit(s["train"] + s["val"] + s["unlabeled"])  # every non-test text, labels not used
    Xtr, Xte, Xun = (vec.transform(s[k]) for k in ("train", "test", "unlabeled"))
    Xva = vec.transform(s["val"]) if s["val"] else None

    has_val = len(s["val_y"]) > 0
    out["probe"] = run_probe(s, C, setfit_model, max_length or 128)

    # supervised: LR, C picked on validation macro-F1 (no validation rows: C=10)
    t0 = time.perf_counter()
    best = None
    for c in ((0.1, 1.0, 10.0, 100.0) if has_val else (10.0,)):
        lr = LogisticRegression(C=c, max_iter=2000)
        lr.fit(Xtr, s["train_y"])
        f1 = _metrics(s["val_y"], lr.predict(Xva), C)["macro_f1"] if has_val else 0.0
        if best is None or f1 > best[0]:
            best = (f1, c, lr)
    _, c_best, lr = best
    out["tfidf+logreg"] = {**_metrics(s["test_y"], lr.predict(Xte), C, lr.predict_proba(Xte)), "C": c_best,
                           "seconds": time.perf_counter() - t0}

    # self-training over the pool
    import scipy.sparse as sp

    t0 = time.perf_counter()
    X = sp.vstack([Xtr, Xun]).tocsr()
    y = np.concatenate([s["train_y"], -np.ones(Xun.shape[0], dtype=np.int64)])
    best_st = None
    # sklearn's default threshold (0.75) adds nothing when the few-shot LR is unsure, which
    # would make this peer a copy of tfidf+logreg: pick C and threshold on validation instead
    for c in sorted({c_best, 10.0}) if has_val else (10.0,):
        for th in (0.6, 0.8) if has_val else (0.6,):
            st = SelfTrainingClassifier(LogisticRegression(C=c, max_iter=2000), threshold=th)
            st.fit(X, y)
            f1 = _metrics(s["val_y"], st.predict(Xva), C)["macro_f1"] if has_val else 0.0
            if best_st is None or f1 > best_st[0]:
                best_st = (f1, c, th, st)
    _, c_st, th_st, st = best_st
    added = int((st.labeled_iter_ > 0).sum())
    out["self-training"] = {**_metrics(s["test_y"], st.predict(Xte), C, st.predict_proba(Xte)), "C": c_st, "threshold": th_st,
                            "pseudo_labeled": added, "iterations": int(st.n_iter_),
                            "seconds": time.perf_counter() - t0}

    # label spreading on an SVD embedding (kNN graph)
    t0 = time.perf_counter()
    dim = max(2, min(svd_dim, X.shape[1] - 1, X.shape[0] - 1))
    svd = TruncatedSVD(n_components=dim, random_state=seed)
    Z = normalize(svd.fit_transform(X))
    Zte = normalize(svd.transform(Xte))
    ls = LabelSpreading(kernel="knn", n_neighbors=min(n_neighbors, len(Z) - 1), max_iter=1000)
    ls.fit(Z, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        proba = ls.predict_proba(Zte)
    # a test row whose neighbours got no label mass (a graph component without gold labels)
    # has no prediction: give it the most frequent gold label, and count such rows
    unreached = ~np.isfinite(proba).all(1) | (np.nan_to_num(proba).sum(1) == 0)
    pred = np.nan_to_num(proba).argmax(1)
    pred[unreached] = np.bincount(s["train_y"], minlength=C).argmax()
    proba = np.where(unreached[:, None], 1.0 / C, np.nan_to_num(proba))  # an unreached row: no confidence
    proba = proba / proba.sum(1, keepdims=True)
    out["label-spreading"] = {**_metrics(s["test_y"], pred, C, proba), "svd_dim": dim, "n_neighbors": ls.n_neighbors,
                              "unreached_test_rows": int(unreached.sum()), "seconds": time.perf_counter() - t0}

    skipped = {"status": "skipped"}
    if setfit_iterations is None:
        out["setfit"], out["setfit-5it"] = run_setfit(s, C, setfit_model, seed, None, log_fn, max_length), skipped
    else:
        out["setfit"], out["setfit-5it"] = skipped, run_setfit(s, C, setfit_model, seed, setfit_iterations, log_fn, max_length)
    return {m: out[m] for m in PEER_METHODS}


def _model_dir(model_dir: str | None) -> str:
    if model_dir is None:
        from selftrain.plugins.models.hf import DEFAULT_MODEL, resolve_model_path

        model_dir = resolve_model_path(DEFAULT_MODEL)
    return model_dir


def run_probe(s: dict, n_classes: int, model_dir: str | None, max_length: int) -> dict:
    """LogisticRegression on the frozen encoder's sentence embeddings (disk-cached per text)."""
    from sklearn.linear_model import LogisticRegression

    from selftrain.core.common import io
    from selftrain.plugins import RuntimeContext
    from selftrain.plugins.classifiers.embed import Embedder

    t0 = time.perf_counter()
    emb = Embedder(_model_dir(model_dir), max_length, RuntimeContext(cache_dir=str(io.cache_root() / "embeddings")))
    lr = LogisticRegression(max_iter=2000).fit(emb(s["train"]), s["train_y"])
    x_test = emb(s["test"])
    return {**_metrics(s["test_y"], lr.predict(x_test), n_classes, lr.predict_proba(x_test)),
            "seconds": time.perf_counter() - t0}


def setfit_defaults(labels) -> dict:
    """SetFit's own defaults for these gold rows: the stronger of the paper's 20 pair iterations
    (Tunstall et al. 2022: 20 x 2 pairs per row) and the installed setfit's default
    ``TrainingArguments`` (1.x: ``num_iterations=None``, ``sampling_strategy="oversampling"``: as
    many positive as negative pairs, each the larger of the two unique counts), by the number of
    pairs each trains on. Decided from the label counts alone, before any training."""
    from math import comb

    counts = np.bincount(np.asarray(labels))
    counts = counts[counts > 0]
    n = int(counts.sum())
    # setfit's pairs are combinations with replacement of the rows (a row with itself is positive)
    pos = int(sum(comb(int(c), 2) + int(c) for c in counts))
    neg = int(comb(n, 2) - sum(comb(int(c), 2) for c in counts))
    paper, default = 2 * 20 * n, 2 * max(pos, neg)
    if paper >= default:
        return {"num_iterations": 20, "pairs": paper, "why": f"paper's 20 iterations: {paper} pairs >= {default} by oversampling"}
    return {"num_iterations": None, "sampling_strategy": "oversampling", "pairs": default,
            "why": f"setfit's default oversampling: {default} pairs > {paper} at 20 iterations"}


def run_setfit(s: dict, n_classes: int, model_dir: str | None, seed: int, iterations: int | None, log_fn=log,
               max_length: int | None = None) -> dict:
    """SetFit (contrastive finetuning of the sentence encoder + a logistic head) on the gold labels.
    ``iterations`` None: SetFit at its defaults (``setfit_defaults``); an int: that many pair
    iterations (a reduced peer when below 20)."""
    from importlib.util import find_spec

    if iterations is not None and iterations <= 0:
        return {"status": "skipped"}
    if find_spec("setfit") is None:
        return {"status": "not installed"}
    model_dir = _model_dir(model_dir)
    plan = setfit_defaults(s["train_y"]) if iterations is None else {"num_iterations": iterations, "pairs": 2 * iterations * len(s["train_y"])}
    t0 = time.perf_counter()
    try:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        model = SetFitModel.from_pretrained(model_dir)
        if max_length:  # the same truncation as the selftrain runs
            model.model_body.max_seq_length = max_length
        with tempfile.TemporaryDirectory(prefix="setfit-") as tmp:  # SetFit writes checkpoints/ into the cwd by default
            # everything else at the installed setfit's defaults (batch 16, 1 epoch, body lr 2e-5, cosine loss)
            args = TrainingArguments(num_iterations=plan["num_iterations"], seed=seed, output_dir=tmp,
                                     save_strategy="no", report_to="none",
                                     **({"sampling_strategy": plan["sampling_strategy"]} if "sampling_strategy" in plan else {}))
            trainer = Trainer(model=model, args=args,
                              train_dataset=Dataset.from_dict({"text": s["train"], "label": s["train_y"].tolist()}))
            trainer.train()
        pred = np.asarray([int(p) for p in model.predict(s["test"])])
        proba = np.asarray(model.predict_proba(s["test"], as_numpy=True))  # (N, C), the classes 0..C-1 it saw
    except Exception as exc:  # noqa: BLE001 - a peer failing must not end the benchmark
        log_fn(f"    setfit failed: {type(exc).__name__}: {exc}")
        return {"status": f"error: {type(exc).__name__}: {exc}"}
    import setfit

    training_args = {"setfit": setfit.__version__, "num_iterations": args.num_iterations,
                     "sampling_strategy": args.sampling_strategy, "batch_size": list(args.batch_size),
                     "num_epochs": list(args.num_epochs), "body_learning_rate": list(args.body_learning_rate),
                     "loss": args.loss.__name__, "max_seq_length": model.model_body.max_seq_length,
                     "pairs": plan["pairs"], **({"why": plan["why"]} if "why" in plan else {})}
    # setfit's head has one column per class it saw: every class has gold rows here
    return {**_metrics(s["test_y"], pred, n_classes, proba if proba.shape[1] == n_classes else None),
            "iterations": plan["num_iterations"], "training_args": training_args,
            "seconds": time.perf_counter() - t0}

"""Metrics, calibration, confusion matrices and the run report."""

from __future__ import annotations

import io

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, label_names: list[str], bins: int = 15) -> dict:
    pred = probs.argmax(1)
    idx = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=idx, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, labels, bins),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(label_names)},
        "confusion": confusion_matrix(labels, pred, labels=idx).tolist(),
        "n": int(len(labels)),
    }


def prob_worse(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, samples: int = 2000,
               seed: int = 0) -> float:
    """Paired bootstrap (Efron & Tibshirani 1993; Koehn 2004 for comparing systems): resample
    the (N,) evaluation rows with replacement ``samples`` times and return the fraction of
    resamples where model A's macro-F1 is below model B's (ties count half)."""
    labels, pred_a, pred_b = (np.asarray(x, dtype=np.int64) for x in (labels, pred_a, pred_b))
    n = len(labels)
    if n == 0:
        return 0.5
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))  # (S, N) resampled row ids
    diffs = _macro_f1_rows(labels[idx], pred_a[idx], n_classes) - _macro_f1_rows(labels[idx], pred_b[idx], n_classes)
    return float((diffs < 0).mean() + 0.5 * (diffs == 0).mean())


def _macro_f1_rows(y: np.ndarray, p: np.ndarray, C: int) -> np.ndarray:
    """(S, N) labels and predictions -> (S,) macro-F1 per row (classes absent from both count 0, as sklearn's
    zero_division=0 does)."""
    f1 = np.zeros(y.shape[0])
    for c in range(C):
        tp = ((p == c) & (y == c)).sum(1)
        denom = (p == c).sum(1) + (y == c).sum(1)  # 2TP + FP + FN
        f1 += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1 / C


def confusion_png(confusion: list[list[int]], label_names: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(label_names), 3.5 + 0.4 * len(label_names)))
    ConfusionMatrixDisplay(np.array(confusion), display_labels=label_names).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def markdown_table(models: dict[str, dict], baseline: str | None, final: str | None) -> str:
    lines = ["| model | accuracy | macro-F1 | Δ macro-F1 vs baseline | ECE | val macro-F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    base = models.get(baseline, {}).get("macro_f1") if baseline else None
    for name, m in models.items():
        tag = " (baseline)" if name == baseline else (" **(final)**" if name == final else "")
        delta = f"{m['macro_f1'] - base:+.3f}" if base is not None and name != baseline else ""
        val = f"{m['val_macro_f1']:.3f}" if m.get("val_macro_f1") is not None else ""
        lines.append(f"| {name}{tag} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {delta} | {m['ece']:.3f} | {val} |")
    return "\n".join(lines)

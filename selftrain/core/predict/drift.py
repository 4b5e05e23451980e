"""Drift of a batch of predictions against what the model was trained and tested on (pure).

Three numbers, each cheap to keep while the input streams by (counts, never rows):

- **class shift**: the total-variation distance ``0.5 * sum_c |p_c - q_c|`` between the predicted
  class mix ``p`` and the model's training class prior ``q`` (0: same mix, 1: disjoint). A model
  trained on balanced topics that suddenly sees one topic only scores 1 - 1/C.
- **low-confidence share**: rows whose top probability is below ``threshold``: inputs the model
  does not recognise (new vocabulary, another domain) pile up here before accuracy can be measured.
- **PSI** (population stability index) of the confidence distribution against the confidence
  distribution on data the model was evaluated on (the run's test split, or the registry's frozen
  evaluation set): ``sum_b (a_b - e_b) * ln(a_b / e_b)`` over equal-width confidence bins. The usual
  reading: < 0.1 stable, 0.1 - 0.25 moderate, > 0.25 a real shift (Siddiqi 2006; Yurdakul 2018).

Thresholds are arguments, so a flow parameter (or an automation) can tune them; :func:`drift_report`
says which were exceeded in ``flags`` and sets ``drift`` when any was.
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE_BINS = 10
"""Equal-width bins over [0, 1] for the confidence histograms (the PSI's buckets)."""

MAX_CLASS_SHIFT = 0.25
MAX_PSI = 0.25
LOW_CONFIDENCE = 0.5


def confidence_histogram(confidence: np.ndarray, bins: int = CONFIDENCE_BINS) -> np.ndarray:
    """(N,) top probabilities -> (bins,) counts over equal-width bins of [0, 1]. Counts of chunks add up,
    so a stream is summarised chunk by chunk in constant memory."""
    counts, _ = np.histogram(np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return counts.astype(np.int64)


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two histograms (counts over the same bins). Empty bins are
    floored at ``eps`` of the mass so that a bin present on one side only adds a large, finite term."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"psi: the histograms have different bins ({e.shape} vs {a.shape}); build both with "
                         "confidence_histogram(..., bins=the same number)")
    if e.sum() == 0 or a.sum() == 0:
        raise ValueError("psi: a histogram is empty; there is nothing to compare")
    e, a = np.clip(e / e.sum(), eps, None), np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def shares(counts: dict[str, float]) -> dict[str, float]:
    total = float(sum(counts.values()))
    return {k: (float(v) / total if total else 0.0) for k, v in counts.items()}


def class_shift(predicted: dict[str, float], prior: dict[str, float]) -> float:
    """Total-variation distance between two class mixes (counts or shares; normalised here)."""
    p, q = shares(predicted), shares(prior)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def drift_report(predicted: dict[str, int], prior: dict[str, float] | None, confidence_counts, low_confidence: int,
                 *, reference_counts=None, threshold: float = LOW_CONFIDENCE, max_class_shift: float = MAX_CLASS_SHIFT,
                 max_psi: float = MAX_PSI, prior_source: str = "", reference_source: str = "",
                 notes: list[str] | tuple = ()) -> tuple[dict, str]:
    """Drift summary of one batch -> (JSON-able report, markdown).

    ``predicted``: rows per predicted class; ``prior``: the training class mix (counts or shares; None:
    unknown, no class shift); ``confidence_counts``: :func:`confidence_histogram` of the batch;
    ``low_confidence``: rows with top probability < ``threshold``; ``reference_counts``: the same
    histogram on the model's evaluation data (None: no PSI, with a note)."""
    notes = list(notes)
    n = int(sum(predicted.values()))
    report: dict = {"rows": n, "predicted": {k: int(v) for k, v in predicted.items()}, "predicted_mix": shares(predicted),
                    "prior": shares(prior) if prior else None, "prior_source": prior_source if prior else None,
                    "class_shift": None, "max_class_shift": max_class_shift, "low_confidence_threshold": threshold,
                    "low_confidence_share": (low_confidence / n) if n else None, "psi": None, "max_psi": max_psi,
                    "reference_source": None, "confidence_histogram": [int(c) for c in confidence_counts],
                    "flags": [], "drift": False}
    if n == 0:
        notes.append("no valid row to predict: no drift measured")
    elif prior is None or not sum(prior.values()):
        notes.append("the model records no training class prior: class shift not measured")
    else:
        report["class_shift"] = class_shift(predicted, prior)
        if report["class_shift"] > max_class_shift:
            report["flags"].append(f"class shift {report['class_shift']:.3f} > {max_class_shift}")
    if n and reference_counts is not None and int(np.sum(reference_counts)) > 0:
        report["psi"] = psi(reference_counts, confidence_counts)
        report["reference_source"] = reference_source
        report["reference_rows"] = int(np.sum(reference_counts))
        if report["psi"] > max_psi:
            report["flags"].append(f"confidence PSI {report['psi']:.3f} > {max_psi}")
    elif n:
        notes.append("no evaluation predictions of the model to compare confidences with: PSI skipped")
    report["drift"] = bool(report["flags"])
    report["notes"] = notes
    return report, drift_markdown(report)


def drift_markdown(report: dict) -> str:
    """The report as a markdown page (the Prefect artifact, the CLI's summary)."""
    verdict = "**drift**: " + "; ".join(report["flags"]) if report["drift"] else "no drift above the thresholds"
    lines = ["# Prediction drift", "", f"{report['rows']:,} rows predicted: {verdict}.", "",
             "| measure | value | threshold |", "|---|---:|---:|",
             f"| class shift (total variation vs training prior) | {_f(report['class_shift'])} | {report['max_class_shift']} |",
             f"| share with confidence < {report['low_confidence_threshold']} | {_f(report['low_confidence_share'])} | |",
             f"| confidence PSI vs evaluation predictions | {_f(report['psi'])} | {report['max_psi']} |", ""]
    prior = report.get("prior") or {}
    mix = report["predicted_mix"]
    if mix:
        lines += [f"Class mix (training prior from {report.get('prior_source') or 'nowhere'}):", "",
                  "| class | training prior | predicted | rows |", "|---|---:|---:|---:|"]
        for k in sorted(set(mix) | set(prior)):
            lines.append(f"| {k} | {_f(prior.get(k)) if prior else 'n/a'} | {_f(mix.get(k, 0.0))} | "
                         f"{report['predicted'].get(k, 0):,} |")
        lines.append("")
    if report.get("reference_source"):
        lines += [f"PSI reference: {report['reference_source']} ({report.get('reference_rows', 0):,} rows).", ""]
    if report.get("notes"):
        lines += ["Notes:", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)

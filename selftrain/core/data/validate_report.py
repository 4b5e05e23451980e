"""Validation's catalogue of checks, its markdown report and the thresholds that stop a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from selftrain.config import ValidateConfig

SPLITS: tuple[str, ...] = ("train", "val", "test", "unlabeled")
LABELED_SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_PRIORITY: dict[str, int] = {"test": 0, "val": 1, "train": 2, "unlabeled": 3}
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "text", "label", "split")
OPTIONAL_COLUMNS: tuple[str, ...] = ("hidden_label",)

#: Rule name -> what it means (``{min_chars}`` / ``{max_chars}`` are filled from the config).
CHECKS: dict[str, str] = {
    "id_missing": "id is missing",
    "duplicate_id": "id already used by an earlier row",
    "text_missing": "text is missing",
    "text_too_short": "text shorter than {min_chars} chars (after stripping)",
    "text_too_long": "text longer than {max_chars} chars (after stripping)",
    "label_unknown": "label not in the declared labels",
    "missing_label": "train/val/test row without a label",
    "split_invalid": "split missing or not one of train/val/test/unlabeled",
    "leakage": "text (exact or near-duplicate) shared with a test/val row",
    "duplicate_text": "exact duplicate of a kept row",
    "near_duplicate": "near-duplicate of a kept row",
}
#: Rules whose failures count as duplicates; every other rule counts as invalid.
DUPLICATE_CHECKS: frozenset[str] = frozenset({"duplicate_text", "near_duplicate"})


@dataclass
class ValidationResult:
    """What :func:`selftrain.core.data.validate.validate_frame` returns: the rows kept, the rows
    quarantined (with their reason), the report and its markdown."""

    clean: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict = field(default_factory=dict)
    markdown: str = ""

    @property
    def ok(self) -> bool:
        """No split-sanity errors (thresholds are checked by :func:`check_thresholds`)."""
        return not self.report.get("split_errors")


class DataValidationError(ValueError):
    """Too much of the data is bad. The message says what, where (quarantine file) and how to fix."""

    def __init__(self, message: str, problems: list[str] | None = None, result: "ValidationResult | None" = None):
        super().__init__(message)
        self.problems = problems or []
        self.result = result



def md_escape(s: pd.Series, width: int = 80) -> pd.Series:
    s = s.astype("str").fillna("<NA>").str.replace(r"\s+", " ", regex=True)
    long = s.str.len() > width
    s = s.where(~long, s.str.slice(0, width - 1) + "…")
    return s.str.replace("|", "\\|", regex=False).str.replace("`", "'", regex=False)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown_report(report: dict, examples: dict[str, pd.DataFrame], cfg: ValidateConfig) -> str:
    inv_ok = report["invalid_fraction"] <= cfg.max_invalid_fraction
    dup_ok = report["duplicate_fraction"] <= cfg.max_duplicate_fraction
    lines = [
        "# Data validation",
        "",
        f"**{report['n_rows']:,} rows**: {report['n_clean']:,} clean, {report['n_quarantined']:,} quarantined.",
        "",
        "| measure | value | limit | status |",
        "|---|---:|---:|---|",
        f"| invalid rows | {report['n_invalid']:,} ({_pct(report['invalid_fraction'])}) | "
        f"{_pct(cfg.max_invalid_fraction)} | {'ok' if inv_ok else '**FAIL**'} |",
        f"| duplicate rows | {report['n_duplicate']:,} ({_pct(report['duplicate_fraction'])}) | "
        f"{_pct(cfg.max_duplicate_fraction)} | {'ok' if dup_ok else '**FAIL**'} |",
        f"| split sanity (>= {cfg.min_per_class} per class in train/val/test) | "
        f"{len(report['split_errors'])} errors | 0 | {'ok' if not report['split_errors'] else '**FAIL**'} |",
        "",
        "## Checks",
        "",
        "| check | rule | kind | rows |",
        "|---|---|---|---:|",
    ]
    for name, n in report["checks"].items():
        kind = "duplicate" if name in DUPLICATE_CHECKS else "invalid"
        desc = report["check_descriptions"].get(name, name).replace("|", "\\|")
        lines.append(f"| `{name}` | {desc} | {kind} | {n:,} |")
    failing = [(k, v) for k, v in report["checks"].items() if v and k in examples]
    if failing:
        lines += ["", "## Examples of quarantined rows", ""]
        for name, n in failing:
            ex = examples[name]
            lines += [f"### `{name}` ({n:,} rows)", "", "| id | split | text | reason |", "|---|---|---|---|"]
            for r in ex.itertuples(index=False):
                lines.append(f"| {r.id} | {r.split} | {r.text} | {r.reason} |")
            lines.append("")
    lines += ["", "## Clean rows per split and class", ""]
    labels = report["labels"]
    per_class = report["per_class"]
    lines.append("| class | " + " | ".join(LABELED_SPLITS) + " |")
    lines.append("|---|" + "---:|" * len(LABELED_SPLITS))
    for lab in labels:
        cells = []
        for sp in LABELED_SPLITS:
            n = per_class.get(sp, {}).get(lab, 0)
            cells.append(f"**{n}**" if n < cfg.min_per_class else str(n))
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(str(report["per_split"].get(sp, 0)) for sp in LABELED_SPLITS) + " |")
    lines += ["", f"Unlabeled pool: {report['per_split'].get('unlabeled', 0):,} clean rows."]
    if report["split_errors"]:
        lines += ["", "## Split sanity errors", ""] + [f"- {e}" for e in report["split_errors"]]
    return "\n".join(lines) + "\n"



def _setting(key: str, value) -> str:
    """How to set ``key`` wherever the run came from: the CLI, a YAML config, a deployment's run form."""
    section, field = key.split(".", 1)
    return f"e.g. --set {key}={value}; in a config file or a deployment's config: {section}: {{{field}: {value}}}"


def check_thresholds(result: ValidationResult, cfg: ValidateConfig, quarantine_uri: str | None = None) -> None:
    """Raise :class:`DataValidationError` when the data is too bad to train on; else return None."""
    rep = result.report
    problems: list[str] = []
    fixes: list[str] = []
    if rep["invalid_fraction"] > cfg.max_invalid_fraction:
        problems.append(
            f"invalid_fraction {rep['invalid_fraction']:.4f} ({rep['n_invalid']} of {rep['n_rows']} rows) "
            f"> validate.max_invalid_fraction {cfg.max_invalid_fraction}"
        )
        fixes.append(
            f"fix or remove the invalid source rows, or raise validate.max_invalid_fraction "
            f"({_setting('validate.max_invalid_fraction', min(1.0, round(rep['invalid_fraction'] + 0.005, 3)))})"
        )
    q = result.quarantine
    if problems and rep["checks"].get("label_unknown") and "check" in q and "label" in q:
        # most often the fix is the label list, not the threshold: name the labels it does not hold
        unknown = q.loc[q["check"].astype(str).str.contains("label_unknown"), "label"].astype(str).value_counts()
        named = ", ".join(f"{lab!r} ({n} rows)" for lab, n in unknown.head(5).items())
        fixes.insert(0, f"add the labels data.labels does not hold to it: {named}"
                        + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "") + " (quote numeric labels "
                        "in YAML: labels: ['0', '1'])")
    if rep["duplicate_fraction"] > cfg.max_duplicate_fraction:
        problems.append(
            f"duplicate_fraction {rep['duplicate_fraction']:.4f} ({rep['n_duplicate']} of {rep['n_rows']} rows) "
            f"> validate.max_duplicate_fraction {cfg.max_duplicate_fraction}"
        )
        fixes.append(
            "deduplicate the source, or raise validate.max_duplicate_fraction "
            f"({_setting('validate.max_duplicate_fraction', min(1.0, round(rep['duplicate_fraction'] + 0.05, 2)))})"
            + (" or set validate.near_duplicates=false" if cfg.near_duplicates and rep["checks"].get("near_duplicate") else "")
        )
    if rep["split_errors"]:
        problems.append("split sanity failed: " + "; ".join(rep["split_errors"][:10])
                        + (f" (+{len(rep['split_errors']) - 10} more)" if len(rep["split_errors"]) > 10 else ""))
        fixes.append(
            "provide more labeled rows for those classes (or raise data.labels_per_class / data.val_per_class / "
            "data.test_per_class), fix their quarantined rows, or lower validate.min_per_class"
        )
    if not problems:
        return
    top = sorted(((n, c) for c, n in rep["checks"].items() if n), reverse=True)[:3]
    top_txt = ", ".join(f"{c} ({rep['check_descriptions'].get(c, c)}): {n}" for n, c in top) or "none"
    where = (
        f"The {rep['n_quarantined']} quarantined rows, each with its reason, are in {quarantine_uri}."
        if quarantine_uri
        else f"{rep['n_quarantined']} rows were quarantined (see the validation report)."
    )
    msg = (
        "Data validation failed: " + "; ".join(problems) + ".\n"
        f"Top reasons: {top_txt}.\n{where}\n"
        "How to fix: " + "; or ".join(fixes) + "."
    )
    raise DataValidationError(msg, problems=problems, result=result)

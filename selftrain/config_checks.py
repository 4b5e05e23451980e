"""Checks of a configuration against the installed plugins, before any work: each plugin exists and
its options validate against its own ``Config``, and the combination can run (a classifier that
needs validation rows gets them, a labeler with a guard picks ``classifier.adapt``, ...). Every
refusal is a :class:`ConfigError` that names the key and the fix. Imported by (and re-exported
from) :mod:`selftrain.config`, whose ``PipelineConfig`` runs :func:`check_plugins` as a validator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from selftrain.config import PipelineConfig


class ConfigError(ValueError):
    """Bad configuration: the message names the key and the fix."""


def plugin_options(group: str, name: str, options: dict, where: str, key: str | None = None):
    """Instantiate the plugin's own Config from ``options`` or raise ConfigError naming ``where``
    (and ``key``, the config key that names the plugin, when it is not the section's own)."""
    from selftrain.plugins.registry import PluginError, get

    try:
        cls = get(group, name, key)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return cls, cls.Config(**options)
    except ValidationError as exc:
        def one(e) -> str:
            msg = e["msg"].removeprefix("Value error, ")
            if e["loc"]:
                return f"{where}.options.{'.'.join(map(str, e['loc']))}: {msg}"
            # a model-level (cross-field) validator: no single field to blame
            return f"{where}.options of {name!r} ({', '.join(sorted(options)) or 'defaults'}): {msg}"
        errs = "; ".join(one(e) for e in exc.errors())
        raise ConfigError(f"{errs}. Fields of {name!r}: {', '.join(cls.Config.model_fields) or 'none'}.") from None


def _lacks_validation(cfg: PipelineConfig, cls: type) -> bool:
    """The classifier plugin ``cls`` needs validation rows and the run will have none."""
    return cls.needs_validation and cfg.data.val_per_class == 0 and cfg.data.columns.split is None


def check_adapt(cfg: PipelineConfig, lcls: type | None) -> type:
    """``classifier.adapt``: a classifier plugin whose options validate, picked by the guard of the
    labeler ``lcls`` (None: pseudo-labelling is off). -> the plugin's class."""
    ad, plc = cfg.classifier.adapt, cfg.pseudo_label
    acls, _ = plugin_options("selftrain.classifiers", ad.name, ad.options, "classifier.adapt", "classifier.adapt.name")
    if _lacks_validation(cfg, acls):
        raise ConfigError(f"classifier.adapt.name={ad.name!r} needs validation rows, but data.val_per_class is 0. "
                          "Fix: set data.val_per_class (e.g. 8) or classifier.adapt.name: fixmatch.")
    if lcls is None:
        raise ConfigError(f"classifier.adapt.name={ad.name!r} is trained when the pseudo-labeler's guard refuses the pool, "
                          "but pseudo_label.enabled is false, so no guard ever runs. Fix: set pseudo_label.enabled: true "
                          "(labeler: agree) or classifier.adapt.name: null.")
    if not getattr(lcls, "guards_pool", False):
        raise ConfigError(f"classifier.adapt.name={ad.name!r} is trained when the labeler's guard refuses the pool, but "
                          f"pseudo_label.labeler={plc.labeler!r} has no guard (guards_pool is false), so it never would be. "
                          "Fix: set pseudo_label.labeler: agree or classifier.adapt.name: null.")
    return acls


def plugins_used(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(group, name) of every plugin a run of ``cfg`` calls: the model, the classifiers (the core,
    the adapted one, the baseline's), the objective when pretraining is on, the labeler when
    pseudo-labelling is on."""
    used = [("selftrain.models", cfg.model.name), ("selftrain.classifiers", cfg.classifier.name)]
    used += [("selftrain.classifiers", n) for n in (cfg.classifier.adapt.name, cfg.evaluate.baseline_classifier) if n]
    if cfg.pretrain.enabled:
        used.append(("selftrain.objectives", cfg.pretrain.objective))
    if cfg.pseudo_label.enabled:
        used.append(("selftrain.labelers", cfg.pseudo_label.labeler))
    return used


def used_versions(cfg: PipelineConfig) -> dict[str, str]:
    """{distribution: version} of selftrain and of the plugins ``cfg`` uses (``plugins_used``)."""
    from selftrain.plugins.registry import versions_of

    return versions_of(plugins_used(cfg))


def _warn_unused_unknown(cfg: PipelineConfig) -> None:
    """A stage that is off does not need its plugin installed (a CPU box may lack a GPU-only
    objective), so its name is not an error; but a name that nothing provides is most likely a
    typo that fails the day the stage is turned on: say so now."""
    import warnings

    from selftrain.plugins.registry import discover

    for enabled, group, key, name in ((cfg.pretrain.enabled, "selftrain.objectives", "pretrain.objective", cfg.pretrain.objective),
                                      (cfg.pseudo_label.enabled, "selftrain.labelers", "pseudo_label.labeler", cfg.pseudo_label.labeler)):
        working = sorted({r.name for r in discover(group) if r.status == "ok"})
        if not enabled and name not in working:
            stage = key.split(".")[0]
            warnings.warn(f"{key}={name!r} is not an installed plugin (installed: {', '.join(working) or 'none'}). It is "
                          f"unused while {stage}.enabled is false, but turning {stage} on will fail. Fix {key} or pip "
                          "install the plugin.", UserWarning, stacklevel=2)


def check_plugins(cfg: PipelineConfig) -> None:
    """Plugins exist, their options validate and the objective fits the backbone — before any work."""
    mcls, mopts = plugin_options("selftrain.models", cfg.model.name, cfg.model.options, "model")
    ccls, _ = plugin_options("selftrain.classifiers", cfg.classifier.name, cfg.classifier.options, "classifier")
    name, plc = cfg.classifier.name, cfg.pseudo_label
    if _lacks_validation(cfg, ccls):
        raise ConfigError(f"classifier.name={name!r} needs validation rows (early stopping, calibration), but "
                          "data.val_per_class is 0. Fix: set data.val_per_class (e.g. 8) or classifier.name: probe.")
    if cfg.evaluate.baseline_classifier is not None:
        bcls, _ = plugin_options("selftrain.classifiers", cfg.evaluate.baseline_classifier, {}, "evaluate",
                                 "evaluate.baseline_classifier")
        if _lacks_validation(cfg, bcls):
            raise ConfigError(f"evaluate.baseline_classifier={cfg.evaluate.baseline_classifier!r} needs validation rows, "
                              "but data.val_per_class is 0. Fix: set data.val_per_class (e.g. 8) or "
                              "evaluate.baseline_classifier: probe.")
    lcls = plugin_options("selftrain.labelers", plc.labeler, plc.options, "pseudo_label")[0] if plc.enabled else None
    if cfg.classifier.adapt.name is not None:
        acls = check_adapt(cfg, lcls)
        if cfg.classifier.adapt.check == "cv":
            for what, value, cls in (("classifier.name", name, ccls),
                                     ("classifier.adapt.name", cfg.classifier.adapt.name, acls)):
                if cls.needs_validation:
                    raise ConfigError(f"classifier.adapt.check: cv fits both cores on folds of the gold rows without "
                                      f"validation rows, but {what}={value!r} needs them (early stopping). Fix: use a "
                                      "core that trains without validation (probe, fixmatch, setfit) or set "
                                      "classifier.adapt.check: none.")
    elif cfg.classifier.adapt.check == "cv":
        raise ConfigError("classifier.adapt.check: cv cross-validates the adapted core, but classifier.adapt.name is "
                          "null. Fix: set classifier.adapt.name (e.g. fixmatch) or classifier.adapt.check: none.")
    if plc.enabled:
        if plc.noise > 0 and not ccls.supports_token_noise:
            raise ConfigError(f"pseudo_label.noise={plc.noise} needs a classifier that drops tokens; {name!r} does not. "
                              "Fix: set pseudo_label.noise: 0 or classifier.name: finetune.")
        if plc.refit_on_gold and not ccls.supports_warm_start:
            raise ConfigError(f"pseudo_label.refit_on_gold needs a classifier that can be trained further; {name!r} "
                              "does not declare supports_warm_start. Fix: set pseudo_label.refit_on_gold: false or classifier.name: finetune.")
        if plc.student_init == "teacher" and not ccls.supports_warm_start:
            raise ConfigError(f"pseudo_label.student_init=teacher needs a classifier that can be trained further; "
                              f"{name!r} does not declare supports_warm_start. Fix: set pseudo_label.student_init: backbone.")
    if cfg.pretrain.enabled and cfg.pretrain.nproc_per_node > 1:
        n, backend = cfg.pretrain.nproc_per_node, cfg.pretrain.ddp_backend
        if cfg.device == "mps":
            raise ConfigError(f"pretrain.nproc_per_node={n} runs one process per GPU, which device=mps does not "
                              "support. Fix: set pretrain.nproc_per_node: 1 or device: cuda/cpu.")
        if backend == "nccl" and cfg.device == "cpu":
            raise ConfigError("pretrain.ddp_backend=nccl needs CUDA GPUs, but device is cpu. Fix: set "
                              "pretrain.ddp_backend: auto (gloo on the CPU) or device: cuda.")
    _warn_unused_unknown(cfg)
    if cfg.pretrain.enabled:
        ocls, _ = plugin_options("selftrain.objectives", cfg.pretrain.objective, cfg.pretrain.options, "pretrain")
        try:
            kind = mcls(mopts).info().kind
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.pretrain.batching == "pack" and not getattr(ocls, "packable", True):
            raise ConfigError(
                f"pretrain.objective={cfg.pretrain.objective!r} embeds one text per sequence and cannot use "
                "pretrain.batching=pack. Fix: set pretrain.batching: bucket."
            )
        if kind not in ocls.requires:
            raise ConfigError(
                f"pretrain.objective={cfg.pretrain.objective!r} needs a backbone of kind {' or '.join(sorted(ocls.requires))}, "
                f"but model {cfg.model.name!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}. Fix pretrain.objective (e.g. "
                f"{'clm' if kind == 'decoder' else 'mlm'}) or model.name."
            )

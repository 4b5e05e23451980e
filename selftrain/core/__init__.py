"""The Prefect-free core, one sub-package per stream; a layer imports only the layers before it:

    common    storage: local paths and s3:// read and written whole (io)
    data      ingest, row rules and quarantine (validate, validate_report), the clean snapshot's reader
    train     the runtime, pretraining (+ DDP), the classifier plugins' host (classifiers, classify)
    label     scoring the unlabeled pool in shards
    run       the stages of a run and their order (stages, pipeline), metrics, the UI's run form
    registry  versions, champion/challenger, model cards, scheduled retraining
    predict   batch prediction with a run's model or the champion, sharded, with drift

``tests/test_architecture.py`` keeps that order. The flat module names of earlier releases
(``selftrain.core.classify``, ``selftrain.core.stages``, ...) still import: each is an alias of
its module's new home (the same module object), listed in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

LAYERS: tuple[str, ...] = ("common", "data", "train", "label", "run", "registry", "predict")

#: Old flat module name -> its home now. ``data``, ``registry`` and ``predict`` are packages now;
#: their ``__init__`` re-exports the old module's names.
MOVED: dict[str, str] = {
    "io": "common.io",
    "text": "data.text", "validate": "data.validate", "validate_report": "data.validate_report",
    "preflight": "data.preflight",
    "runtime": "train.runtime", "pretrain": "train.pretrain", "ddp": "train.ddp",
    "classify": "train.classify", "classifiers": "train.classifiers",
    "shards": "label.shards",
    "stages": "run.stages", "pipeline": "run.pipeline", "evaluate": "run.evaluate",
    "deploy_schema": "run.deploy_schema",
    "model_card": "registry.model_card", "retrain": "registry.retrain",
    "predict_shards": "predict.shards", "predict_source": "predict.source", "drift": "predict.drift",
}


def reexport(package: str, module: str):
    """A package's ``__getattr__`` (PEP 562) that serves the names of its module ``module`` (the flat
    module the package replaced), loading it on first use; a module of the package itself comes first."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a module of this package
            return importlib.import_module(f"{package}.{name}")
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import selftrain.core.<old>`` gives the module at its new path (one object: a patch on
    either name is seen through both)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.rpartition(".")
        if head == __name__ and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # the target module ran when it was imported


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())

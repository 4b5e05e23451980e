"""Batch prediction with a run's model or the registry's champion: one file in chunks (``batch``),
or in shards on Dask workers (``shards``); which model (``source``); drift against training (``drift``).

``selftrain.core.predict`` was the module now at ``selftrain.core.predict.batch``: its names still
import from here (loaded on first use, so importing a sibling module does not load it).
"""


import importlib
import importlib.util


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a module of this package
        return importlib.import_module(f"{__name__}.{name}")
    try:
        return getattr(importlib.import_module(f"{__name__}.batch"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

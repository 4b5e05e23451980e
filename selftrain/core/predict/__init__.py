"""Batch prediction with a run's model or the registry's champion: one file in chunks (``batch``),
or in shards on Dask workers (``shards``); which model (``source``); drift against training (``drift``);
the files new under a landing prefix (``landing``).

``selftrain.core.predict`` was the module now at ``selftrain.core.predict.batch``: its names still
import from here (loaded on first use, so importing a sibling module does not load it).
"""

from selftrain.core import reexport

__getattr__ = reexport(__name__, "batch")

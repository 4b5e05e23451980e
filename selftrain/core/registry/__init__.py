"""The model registry: versions, fingerprints, champion / challenger (``store``), model cards
(``model_card``) and scheduled retraining with promotion (``retrain``).

``selftrain.core.registry`` was the module now at ``selftrain.core.registry.store``: its names still
import from here (loaded on first use, so importing a sibling module does not load it).
"""

from selftrain.core import reexport

__getattr__ = reexport(__name__, "store")

"""selftrain: unlabeled text + a few labels -> a classifier that beats the labels alone."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selftrain")
except PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+local"

import logging as _logging

# Stage progress (loss, tokens/s, kept pseudo-labels) is INFO; Prefect attaches its handlers
# to this logger through PREFECT_LOGGING_EXTRA_LOGGERS but leaves the level at the root's.
_logging.getLogger("selftrain").setLevel(_logging.INFO)

"""selftrain: unlabeled text + a few labels -> a classifier that beats the labels alone."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selftrain")
except PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+local"

"""selftrain: unlabeled text + a few labels -> a classifier that beats the labels alone."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("selftrain")
except PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+local"

import logging as _logging


def _map_checkout_folders() -> None:
    """Imported from a source checkout (its root on ``sys.path``: the working directory a Prefect
    deployment sets, ``python -c`` in the repo root), ``selftrain`` is this folder, which lacks
    ``flows`` / ``tasks`` / ``plugins``: pyproject maps them in from the checkout's top-level folders
    only when installed. Map them here too, so the package is whole and from one tree (without
    this, a worker with a wheel install could not import ``selftrain.flows``, and one with another
    checkout installed mixed code from both trees)."""
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    folders = {f"selftrain.{n}": root / n for n in ("flows", "tasks", "plugins")}
    if not (root / "pyproject.toml").is_file() or not all((d / "__init__.py").is_file() for d in folders.values()):
        return  # an installed package: its own flows/, tasks/, plugins/ are beside this file

    class CheckoutFolders(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            d = folders.get(name)
            if d is None:
                return None
            return importlib.util.spec_from_file_location(name, d / "__init__.py", submodule_search_locations=[str(d)])

    if not any(type(f).__name__ == "CheckoutFolders" for f in sys.meta_path):
        sys.meta_path.insert(0, CheckoutFolders())


_map_checkout_folders()

# Stage progress (loss, tokens/s, kept pseudo-labels) is INFO; Prefect attaches its handlers
# to this logger through PREFECT_LOGGING_EXTRA_LOGGERS but leaves the level at the root's.
_logging.getLogger("selftrain").setLevel(_logging.INFO)

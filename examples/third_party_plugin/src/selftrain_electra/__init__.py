"""An example third-party selftrain plugin package.

It registers two plugins through entry points (see ``pyproject.toml``):

* ``electra`` (group ``selftrain.objectives``): ELECTRA replaced-token detection,
  :class:`selftrain_electra.objective.Electra`;
* ``margin`` (group ``selftrain.labelers``): keep pseudo-labels whose top-1 minus top-2
  probability margin is large, :class:`selftrain_electra.labeler.MarginLabeler`.

Importing this package imports nothing heavy; selftrain imports the two modules above
only when it discovers the entry points.
"""

__version__ = "0.1.0"

"""Old import paths kept for one release: a module moved in 0.2 leaves an alias that warns and forwards.

An alias module holds two lines::

    from medlite.utils.deprecation import moved
    moved(__name__, "medlite.workflows.train")

After it, ``import medlite.training`` gives the new module itself (so ``from medlite.training import train``
and attribute access work unchanged) with one :class:`DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import importlib
import sys
import warnings

#: The release that removes the aliases.
REMOVED_IN = "0.3"


def moved(old: str, *new: str) -> None:
    """Make module ``old`` an alias of ``new`` (several: their names merged, first wins) and warn once.

    Call it from the old module's body with ``__name__``; the new module is imported by name, so the old path
    adds no import edge (the layering test skips alias modules).
    """
    warnings.warn(f"{old} moved to {' / '.join(new)}; the old path goes away in medlite {REMOVED_IN}",
                  DeprecationWarning, stacklevel=3)
    targets = [importlib.import_module(name) for name in new]
    if len(targets) == 1:
        sys.modules[old] = targets[0]
        return
    alias = sys.modules[old]
    for module in reversed(targets):
        alias.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})

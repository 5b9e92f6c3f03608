"""optlab: optimizers from the literature as chains of shared optax primitives.

The namespace is flat, as in optax: ``optlab.<recipe>`` and
``optlab.<primitive>``. `optlab.catalog()` lists every recipe with its
metadata. Two helpers keep their own namespace: `optlab.schedules` (learning
rate schedules) and `optlab.federated` (a federated-training simulation).
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

from optlab import primitives as _primitives, recipes as _recipes
from optlab._recipe import recipe_chain
from optlab.catalog import Recipe, catalog, get_recipe, held_out

__version__ = "0.1.0"
__all__ = ["Recipe", "catalog", "held_out", "get_recipe", "recipe_chain"]


def _export(package) -> None:
  for info in sorted(_pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
    if info.name.startswith("_"):
      continue
    module = _importlib.import_module(f"{package.__name__}.{info.name}")
    for name in getattr(module, "__all__", ()):
      if name in globals() and globals()[name] is not getattr(module, name):
        raise ImportError(f"optlab: {name!r} is exported twice ({module.__name__})")
      globals()[name] = getattr(module, name)
      __all__.append(name)


_export(_primitives)
_export(_recipes)

from optlab import federated, schedules  # noqa: E402,F401  (submodules, not flattened)

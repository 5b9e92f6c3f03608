"""The registry of recipes: one source of truth for the docs and the bench CLI.

Each module in `optlab.recipes` lists its recipes in a module-level ``RECIPES``
tuple of `Recipe` (paper metadata and the factory); `catalog()` gathers them in
family order. The tests keep their own configuration of each recipe
(hyperparameters, NumPy references, optax counterparts) in
``tests/recipe_config.py``.
"""

from __future__ import annotations

from optlab._registry import FAMILY_ORDER, Recipe
from optlab.recipes import (adam_family, adam_variants, adaptive_bounds, distributed,
                            gauss_newton, hessian, kronecker, layerwise, lora, matrix,
                            memory_efficient, sign_family, step_size_free, subspace, variational,
                            zeroth_order)

__all__ = ["Recipe", "catalog", "held_out", "get_recipe"]

# every module of optlab.recipes that registers recipes (tests/test_recipe_config.py
# checks that none is missing)
MODULES = (adam_family, adam_variants, adaptive_bounds, distributed, gauss_newton, hessian,
           kronecker, layerwise, lora, matrix, memory_efficient, sign_family, step_size_free,
           subspace, variational, zeroth_order)


def _gather() -> tuple[Recipe, ...]:
  """Every recipe the modules register, grouped by family."""
  found = [r for module in MODULES for r in module.RECIPES]
  names = [r.name for r in found]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise RuntimeError(f"optlab.catalog: recipes registered twice: {dupes}")
  bad = sorted(r.name for r in found if r.family not in FAMILY_ORDER)
  if bad:
    raise RuntimeError(f"optlab.catalog: recipes {bad} have a family outside {FAMILY_ORDER}")
  return tuple(sorted(found, key=lambda r: FAMILY_ORDER.index(r.family)))


_REGISTERED = _gather()


def catalog() -> tuple[Recipe, ...]:
  """Every recipe that passes the whole contract, grouped by family."""
  return tuple(r for r in _REGISTERED if not r.known_failures)


def held_out() -> tuple[Recipe, ...]:
  """Recipes held out of `catalog()`: public and reference-tested, but they fail
  a contract convergence problem by design (`Recipe.known_failures` says why)."""
  return tuple(r for r in _REGISTERED if r.known_failures)


def get_recipe(name: str) -> Recipe:
  """A recipe of `catalog()` or `held_out()` by name."""
  for r in _REGISTERED:
    if r.name == name:
      return r
  raise KeyError(f"optlab: no recipe named {name!r}; see optlab.catalog()")

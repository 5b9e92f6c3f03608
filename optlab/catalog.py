"""The registry of recipes: one source of truth for tests, docs and the bench CLI.

Each module in `optlab.recipes` lists its recipes in a module-level ``RECIPES``
tuple; `catalog()` gathers them in family order.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Optional

__all__ = ["Recipe", "catalog", "held_out", "get_recipe"]

FAMILY_ORDER = ("adam", "sign", "layerwise", "second_order", "memory_efficient",
                "step_size_free", "zeroth_order", "distributed")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Metadata of one recipe.

  Attributes:
    name: public name, ``optlab.<name>``.
    factory: the function building the GradientTransformation.
    family: one of FAMILY_ORDER.
    paper: the paper's title.
    arxiv: its arXiv id.
    needs_extra_args: keyword extra args that `update` requires (e.g. obj_fn).
    reference: ``"module:function"`` of the independent NumPy reference, under
      `tests.reference`.
    optax: builds optax's version of the same method from the same keyword
      arguments, or None where optax has none.
    hparams: keyword arguments used by the tests and the bench (a learning rate
      that trains the small shared problems in a fixed step budget).
    cases: extra keyword-argument sets (options such as nesterov=True) that the
      reference and optax comparisons also cover.
    notes: deliberate differences from the paper or the official code.
    known_failures: contract convergence tasks (``tests/problems.py``) that the
      method fails by design, each mapped to the measured reason. A recipe with
      any is held out of `catalog()` (see `held_out()`); the contract still
      runs every other point on it and expects exactly these failures.
    static: numeric arguments that fix shapes or Python control flow (e.g. a
      sparsity that sets how many coordinates are estimated), so
      `optax.inject_hyperparams` must take them as ``static_args``.
  """
  name: str
  factory: Callable[..., Any]
  family: str
  paper: str
  arxiv: str
  needs_extra_args: tuple[str, ...] = ()
  reference: Optional[str] = None
  optax: Optional[Callable[..., Any]] = None
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  cases: tuple[Mapping[str, Any], ...] = ()
  notes: str = ""
  static: tuple[str, ...] = ()
  known_failures: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def build(self, **overrides: Any):
    return self.factory(**{**self.hparams, **overrides})


def _registered() -> tuple[Recipe, ...]:
  """Every recipe the modules of `optlab.recipes` register, grouped by family."""
  from optlab import recipes
  found: list[Recipe] = []
  for info in sorted(pkgutil.iter_modules(recipes.__path__), key=lambda m: m.name):
    if not info.name.startswith("_"):
      found.extend(importlib.import_module(f"optlab.recipes.{info.name}").RECIPES)
  names = [r.name for r in found]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise RuntimeError(f"optlab.catalog: recipes registered twice: {dupes}")
  return tuple(sorted(found, key=lambda r: FAMILY_ORDER.index(r.family)))


def catalog() -> tuple[Recipe, ...]:
  """Every recipe that passes the whole contract, grouped by family."""
  return tuple(r for r in _registered() if not r.known_failures)


def held_out() -> tuple[Recipe, ...]:
  """Recipes held out of `catalog()`: public and reference-tested, but they fail
  a contract convergence problem by design (`Recipe.known_failures` says why)."""
  return tuple(r for r in _registered() if r.known_failures)


def get_recipe(name: str) -> Recipe:
  """A recipe of `catalog()` or `held_out()` by name."""
  for r in _registered():
    if r.name == name:
      return r
  raise KeyError(f"optlab: no recipe named {name!r}; see optlab.catalog()")

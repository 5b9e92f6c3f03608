"""`Recipe`: the metadata every recipe module registers in its ``RECIPES`` tuple.

It lives apart from `optlab.catalog` so that the recipe modules can import it
without importing the catalogue, which imports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

__all__ = ["FAMILY_ORDER", "Recipe"]

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
    notes: deliberate differences from the paper or the official code.
    static: numeric arguments that fix shapes or Python control flow (e.g. a
      sparsity that sets how many coordinates are estimated), so
      `optax.inject_hyperparams` must take them as ``static_args``.
    known_failures: contract convergence tasks (``tests/problems.py``) that the
      method fails by design, each mapped to the measured reason. A recipe with
      any is held out of `catalog()` (see `held_out()`): it stays public, and
      the reason is part of its documentation.
  """
  name: str
  factory: Callable[..., Any]
  family: str
  paper: str
  arxiv: str
  needs_extra_args: tuple[str, ...] = ()
  notes: str = ""
  static: tuple[str, ...] = ()
  known_failures: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def build(self, **overrides: Any):
    """The recipe at the factory's own defaults plus `overrides` (most recipes
    have no default learning rate, as in optax: pass ``learning_rate=``)."""
    return self.factory(**overrides)

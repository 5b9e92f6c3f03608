"""`recipe_chain`: optax.chain plus the input checks every recipe promises."""

from __future__ import annotations

from typing import Any

import optax

from optlab import _validate as V
from optlab.primitives.basis import INVARIANT, basis_declaration
from optlab.primitives.moments import bound_gradient

__all__ = ["recipe_chain"]


def _first_param_tree(state: Any) -> Any:
  """The first declared (param-shaped) field found in a nested state, or None."""
  decl = basis_declaration(state)
  if decl is not None:
    for name, kind in decl.items():
      value = getattr(state, name)
      if kind != INVARIANT and not (isinstance(value, tuple) and not value):
        return value
  if isinstance(state, (tuple, list)):
    for s in state:
      found = _first_param_tree(s)
      if found is not None:
        return found
  return None


def recipe_chain(where: str, *transforms: optax.GradientTransformation
                 ) -> optax.GradientTransformationExtraArgs:
  """Chains `transforms`; checks dtypes and tree structure with clear errors.

  The checks run while tracing: floating-point params at init; at update,
  floating-point updates whose tree matches params (leaf paths and shapes) and
  the state's param-shaped trees. The chain then sees the updates through
  `bound_gradient`, so that one huge finite entry cannot overflow a square, a
  norm or a second moment that the method divides by.
  """
  tx = optax.chain(*transforms)

  def init(params):
    V.check_float_params(where, params)
    return tx.init(params)

  def update(updates, state, params=None, **extra):
    V.check_float_params(where, updates, "updates")
    if params is not None:
      V.check_same_tree(where, updates, "updates", params, "params")
    tracked = _first_param_tree(state)
    if tracked is not None:
      V.check_same_tree(where, updates, "updates", tracked, "state", shapes=False)
    # Every method below sees entries small enough that squares and norms of one
    # entry stay finite (a no-op for ordinary gradients; see bound_gradient).
    return tx.update(bound_gradient(updates), state, params, **extra)

  return optax.GradientTransformationExtraArgs(init, update)

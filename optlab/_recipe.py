"""`recipe_chain`: optax.chain plus the input checks every recipe promises."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from optlab import _validate as V
from optlab.primitives.basis import LINEAR, SECOND, iter_fields
from optlab._src.layout import TreeLayout
from optlab.primitives.moments import bound_gradient

__all__ = ["recipe_chain"]


def _first_param_tree(state: Any) -> Any:
  """The first non-empty field declared LINEAR or SECOND (a tree shaped like the
  gradients) found in a nested state, or None. The inner states of stacked blocks
  (`StackedInnerState`: ``.inner_state.blocks`` and ``.inner_state.rest``) are
  not shaped like the gradients and are skipped."""
  for field in iter_fields(state):
    if ".inner_state.blocks" in field.path or ".inner_state.rest" in field.path:
      continue
    if field.kind in (LINEAR, SECOND) and not (isinstance(field.value, tuple) and not field.value):
      return field.value
  return None


def _check_state_shapes(where: str, tx: optax.GradientTransformation, state: Any,
                        updates: Any) -> None:
  """Raises ValueError naming the leaf where a param-shaped tree of `state` and
  `updates` differ in shape (grads transposed, or a state from other params).

  The param-shaped trees are found as `optax.tree_map_params` finds them, by
  tracing `init` on a placeholder; this runs while tracing only.
  """
  paths = jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p), updates)

  def check(leaf, update, path):
    if np.shape(leaf) != np.shape(update):
      raise ValueError(
          f"optlab.{where}: updates{path} has shape {np.shape(update)} but the optimizer "
          f"state holds {np.shape(leaf)} for it (a state initialised for other params, "
          "or gradients that do not match them)")
    return leaf

  optax.tree_map_params(tx, check, state, updates, paths)


def _check_state_matches_params(where: str, init: Any, state: Any, params: Any) -> None:
  """Raises ValueError naming the state leaf whose shape differs from what `init`
  builds for `params`: a state initialised for other params. This catches compact
  states too (factored, packed or windowed statistics); it runs while tracing only.
  """
  for field in iter_fields(state):  # stacked states name the leaf from their layout
    if isinstance(field.value, TreeLayout):
      field.value.check(where, params, "params")
  want = jax.eval_shape(init, params)
  got = jax.tree_util.tree_leaves_with_path(state)
  if jax.tree.structure(want) != jax.tree.structure(state):
    raise ValueError(f"optlab.{where}: the optimizer state does not have the structure "
                     "that init(params) builds: it was initialised for other params")
  for (path, leaf), expected in zip(got, jax.tree.leaves(want)):
    if np.shape(leaf) != expected.shape:
      raise ValueError(
          f"optlab.{where}: state{jax.tree_util.keystr(path)} has shape {np.shape(leaf)} "
          f"but init(params) gives {expected.shape}: the state was initialised for other "
          "params (check the leaves' shapes)")


def recipe_chain(where: str, *transforms: optax.GradientTransformation
                 ) -> optax.GradientTransformationExtraArgs:
  """Chains `transforms`; checks dtypes and tree structure with clear errors.

  The checks run while tracing: floating-point params at init; at update,
  floating-point updates whose tree matches params (leaf paths and shapes) and
  the state's param-shaped trees. The chain then sees the updates through
  `bound_gradient`, so that one huge finite entry cannot overflow a square, a
  norm or a second moment that the method divides by.

  Args:
    where: the recipe's name, which every error message starts with.
    *transforms: the links of the chain, in order.

  Returns:
    An ``optax.GradientTransformationExtraArgs``, the checked ``optax.chain``.
  """
  tx = optax.chain(*transforms)

  def init(params):
    V.check_float_params(where, params)
    return tx.init(params)

  def update(updates, state, params=None, **extra):
    V.check_float_params(where, updates, "updates")
    if params is not None:
      V.check_same_tree(where, updates, "updates", params, "params")
      _check_state_matches_params(where, init, state, params)
    tracked = _first_param_tree(state)
    if tracked is not None:
      V.check_same_tree(where, updates, "updates", tracked, "state", shapes=False)
      _check_state_shapes(where, tx, state, updates)
    # Every method below sees entries small enough that squares and norms of one
    # entry stay finite (a no-op for ordinary gradients; see bound_gradient).
    return tx.update(bound_gradient(updates), state, params, **extra)

  return optax.GradientTransformationExtraArgs(init, update)

"""Packing a transformation's param-shaped state trees into flat vectors.

A wrapper that runs its inner transformation on other shapes than the params'
(projected matrices, LoRA pairs' full matrices) must not leave trees with the
params' structure but other shapes in its state: `optax.tree_map_params` would
take them for params. It packs every such tree (found by running ``inner.init``
on an `Empty` tree) into one vector, and unpacks it for each step.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optlab._src import slicing

__all__ = ["Empty", "is_empty", "pack", "unpack", "repack", "pack_state", "unpack_state"]


@jax.tree_util.register_pytree_node_class
class Empty:
  """A pytree with no leaves: `inner.init` of it marks inner's param-structured trees."""

  def tree_flatten(self):
    return (), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux, children
    return cls()


def is_empty(x):
  return isinstance(x, Empty)


def pack(tree: Any, params_leaves: Any = None) -> Optional[jax.Array]:
  """All leaves of `tree`, raveled and concatenated in their common dtype (f32 if none).

  None when they hold no entries (orbax cannot save an empty array); an empty
  vector only when there are no params leaves at all (`params_leaves`, default
  the leaves of `tree`): the placeholder tree of `optax.tree_map_params`, whose
  state must be a tree prefix of every real one (see `storage.flat_zeros`).
  """
  leaves = jax.tree.leaves(tree)
  if not any(int(np.prod(jnp.shape(x))) for x in leaves):
    anchor = leaves if params_leaves is None else params_leaves
    return None if len(anchor) else jnp.zeros([0], jnp.float32)
  dt = jnp.result_type(*leaves)
  return jnp.concatenate([jnp.ravel(x).astype(dt) for x in leaves])


def unpack(vec: Optional[jax.Array], like: Any, where: str = "in_subspace") -> Any:
  """Inverse of `_pack` for a tree of ShapeDtypeStructs `like`."""
  leaves, treedef = jax.tree.flatten(like)
  need = sum(int(np.prod(s.shape)) for s in leaves)
  held = 0 if vec is None else int(vec.shape[0])
  if held != need:
    raise ValueError(f"optlab.{where}: the state holds {held} packed entries but the "
                     f"updates' leaves need {need}: the updates' tree does not match the params "
                     "the state was built for")
  if vec is None:
    return jax.tree.unflatten(treedef, [jnp.zeros(s.shape, s.dtype) for s in leaves])
  pieces = slicing.split(vec, [int(np.prod(s.shape)) for s in leaves])
  return jax.tree.unflatten(treedef, [v.reshape(s.shape).astype(s.dtype)
                                      for v, s in zip(pieces, leaves)])


def repack(arrays: list, old: Optional[jax.Array]) -> Optional[jax.Array]:
  """`_pack` of `arrays` into the dtype of the state field `old` (`old` itself, None or
  empty, when they hold no entries), so the state keeps its tree."""
  if old is None or not any(int(np.prod(jnp.shape(x))) for x in arrays):
    return old
  return pack(arrays).astype(old.dtype)


def pack_state(state: Any, template: Any) -> tuple:
  """Leaves of `state`, with each param-structured tree (an Empty in `template`) packed
  (None for a tree without entries: kept as an entry, so the tuple's length is fixed)."""
  filled = jax.tree.map(lambda t, s: pack(s) if is_empty(t) else s, template, state,
                        is_leaf=is_empty)
  return tuple(jax.tree.structure(template, is_leaf=is_empty).flatten_up_to(filled))


def unpack_state(leaves: tuple, template: Any, shapes: Any) -> Any:
  treedef = jax.tree.structure(template, is_leaf=is_empty)
  filled = jax.tree.unflatten(treedef, list(leaves))
  return jax.tree.map(lambda t, f, s: unpack(f, s) if is_empty(t) else f, template, filled,
                      shapes, is_leaf=is_empty)

"""`TreeLayout`: the leaf paths and shapes a packed or stacked state was built for.

States that do not keep a param-shaped tree (stacked blocks, packed vectors)
record it, so that an update with another tree is refused naming the leaf.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["TreeLayout", "check_layout"]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class TreeLayout:
  """The paths and shapes of the leaves a stacked state was built for.

  Static pytree data (no arrays: nothing to save, shard or transform), so that
  an update with another tree is refused naming the leaf, as a param-shaped
  state would: the stacked arrays alone only tell that some stack differs.
  """
  leaves: tuple[tuple[str, tuple[int, ...]], ...]

  @staticmethod
  def of(tree: Any) -> "TreeLayout":
    return TreeLayout(tuple((jax.tree_util.keystr(p), tuple(jnp.shape(x)))
                            for p, x in jax.tree_util.tree_leaves_with_path(tree)))

  def check(self, where: str, tree: Any, name: str = "updates") -> None:
    """Raises ValueError naming the first leaf of `tree` that differs from the layout."""
    got = TreeLayout.of(tree).leaves
    if got == self.leaves:
      return
    want = dict(self.leaves)
    for path, shape in got:
      if path not in want:
        raise ValueError(f"optlab.{where}: {name}{path} has no counterpart in the state "
                         "(the updates' tree does not match the params)")
      if want[path] != shape:
        raise ValueError(f"optlab.{where}: {name}{path} has shape {shape} but the optimizer "
                         f"state was built for {want[path]} (a state initialised for other "
                         "params, or gradients that do not match them)")
    missing = next(p for p, _ in self.leaves if p not in dict(got))
    raise ValueError(f"optlab.{where}: the state holds params{missing}, which {name} "
                     "lack (the updates' tree does not match the params)")


def check_layout(where: str, layout: Any, updates: Any) -> None:
  """`TreeLayout.check`; a state built for a tree without leaves holds a scalar."""
  if isinstance(layout, TreeLayout):
    layout.check(where, updates)
  elif jax.tree.leaves(updates):
    raise ValueError(f"optlab.{where}: the state was built for a tree without leaves, "
                     "but the updates have leaves")


try:  # flax's msgpack checkpoints: a layout holds nothing to save
  from flax import serialization as _flax_serialization
  _flax_serialization.register_serialization_state(TreeLayout, lambda _: {}, lambda x, _: x)
except ImportError:  # flax is optional at run time
  pass

"""`state_sharding`: where each leaf of an optimizer state lives on a device mesh.

`optax.tree_map_params` gives the state's param-shaped trees their params'
shardings, but it cannot see a state whose structure depends on the params'
shapes, such as the stacked blocks of SOAP, Shampoo and Muon's routing
(`linalg.BlockStacks`): to it those are opaque values, which a user would
replicate on every device. `state_sharding` also places those: a stacked
array's leading axis is the block axis, and splitting it over the devices
gives each device its share of the Kronecker factors, eigenbases and inner
moments (distributed Shampoo's layout), while XLA inserts the collectives
that bring each gradient block to its basis.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["state_sharding"]


def _as_sharding(mesh: Mesh, value: Any) -> NamedSharding:
  if isinstance(value, NamedSharding):
    return value
  if isinstance(value, P):
    return NamedSharding(mesh, value)
  raise TypeError(f"optlab.state_sharding: param_shardings holds {value!r}; expected "
                  "NamedSharding or PartitionSpec leaves")


def state_sharding(tx: optax.GradientTransformation, params: Any, mesh: Mesh, *,
                   axis: Optional[Union[str, Sequence[str]]] = None,
                   param_shardings: Any = None) -> Any:
  """The `NamedSharding` of every leaf of ``tx.init(params)`` on `mesh`.

  * A leaf of a param-shaped tree of the state (a moment, found as
    `optax.tree_map_params` finds it) gets its param's sharding:
    `param_shardings` when given, else the params' own `NamedSharding` (placed
    arrays), else replicated.
  * Any other leaf with a leading axis that `axis` divides evenly (the
    stacked blocks ``(n_blocks, b, b)`` of SOAP and Shampoo, routed buffers)
    is split on that axis; the rest (scalars, step counts) is replicated.
    ``block_multiple`` pads the stacks of `in_eigenbasis`,
    `scale_by_shampoo` and the recipes built on them to divide.

  Use it as ``jax.jit(tx.init, out_shardings=...)``, as the state's in and
  out shardings of a train step, and as the target shardings of a checkpoint
  restore.

  Args:
    tx: the optimizer.
    params: the params (arrays, or `jax.ShapeDtypeStruct` leaves).
    mesh: the device mesh.
    axis: the mesh axis name (or names) the block axis is split over; None:
      all of the mesh's axes, as a recipe built with ``axis_name=mesh``
      splits its stacks inside the step (with another split as the step's
      out_shardings, the step gathers the state's stacks back every time).
    param_shardings: a tree shaped like `params` of `NamedSharding` or
      `PartitionSpec` leaves; None: taken from `params`.

  Returns:
    A tree of `NamedSharding`, shaped like the state.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optlab
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("d",))
    >>> tx = optlab.soap(3e-3)
    >>> params = {"w": jnp.ones((8, 4))}
    >>> shardings = optlab.state_sharding(tx, params, mesh)
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
  """
  names = mesh.axis_names if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
  unknown = [a for a in names if a not in mesh.shape]
  if unknown:
    raise ValueError(f"optlab.state_sharding: axis {unknown[0]!r} is not an axis of the mesh "
                     f"(it has {tuple(mesh.axis_names)})")
  size = math.prod(mesh.shape[a] for a in names)
  replicated = NamedSharding(mesh, P())
  if param_shardings is None:
    param_shardings = jax.tree.map(
        lambda p: p.sharding if isinstance(getattr(p, "sharding", None), NamedSharding)
        else replicated, params)
  else:
    param_shardings = jax.tree.map(lambda s: _as_sharding(mesh, s), param_shardings,
                                   is_leaf=lambda s: isinstance(s, (P, NamedSharding)))
  split = NamedSharding(mesh, P(names if len(names) > 1 else names[0]))

  def other(value):
    return jax.tree.map(lambda x: split if x.ndim and x.shape[0] % size == 0 else replicated,
                        value)

  state = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(tx, lambda _, s: s, state, param_shardings,
                               transform_non_params=other,
                               is_leaf=lambda s: isinstance(s, NamedSharding))

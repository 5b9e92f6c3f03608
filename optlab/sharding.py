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

`mesh_route` tells those methods (their ``axis_name``) how the params are
split, so that each step moves the gradient blocks onto that split without
replicating them first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Union

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["MeshRoute", "mesh_route", "state_sharding"]


def _spec_of(where: str, value: Any) -> P:
  if isinstance(value, NamedSharding):
    return value.spec
  if isinstance(value, P):
    return value
  raise TypeError(f"optlab.{where}: param_shardings holds {value!r}; expected NamedSharding "
                  "or PartitionSpec leaves")


def _as_sharding(mesh: Mesh, value: Any) -> NamedSharding:
  return value if isinstance(value, NamedSharding) else NamedSharding(
      mesh, _spec_of("state_sharding", value))


def state_sharding(tx: optax.GradientTransformation, params: Any,
                   mesh: Union[Mesh, "MeshRoute"], *,
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
    mesh: the device mesh, or a `MeshRoute` (its mesh).
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
  if isinstance(mesh, MeshRoute):
    mesh = mesh.mesh
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


@dataclasses.dataclass(frozen=True)
class MeshRoute:
  """A mesh, and the order in which the stacked blocks of the matrix methods are
  moved onto it (see `mesh_route`).

  Each step, the blocks cut from the gradient are split on their block axis
  over ``groups[0]``, then ``groups[0] + groups[1]``, and so on, and last over
  all of the mesh's axes (the split `state_sharding` gives their state): one
  all-to-all (or local slice) per group. XLA's partitioner moves a split
  across one group of axes at a time; asked to move two at once, it
  replicates the whole stack on every device and cuts it again ("involuntary
  full rematerialization").

  A route read from the params' shardings (`mesh_route`) also keeps each
  param's spec (``leaves``, in the order of ``treedef``), so that every stack
  takes the route of its own leaves (`specs_of`); ``groups`` then serves the
  trees it cannot match.
  """
  mesh: Mesh
  groups: tuple  # of tuples of axis names: every axis of the mesh exactly once
  leaves: Optional[tuple] = dataclasses.field(default=None, repr=False)  # of PartitionSpecs
  treedef: Any = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    names = [a for g in self.groups for a in g]
    if sorted(names) != sorted(self.mesh.axis_names) or len(set(names)) != len(names):
      raise ValueError(f"optlab.MeshRoute: groups {self.groups} must hold every axis of the "
                       f"mesh {tuple(self.mesh.axis_names)} exactly once")

  @property
  def size(self) -> int:
    return self.mesh.size

  def specs_of(self, tree: Any) -> Optional[list]:
    """The spec of each leaf of `tree`, in its leaves' order, where `tree` is the
    params' tree this route was read from or a part of it, `optax.MaskedNode` in
    place of the other leaves (what `optax.masked` and `optlab.route` hand their
    inner transformations); None for any other tree, or a route without specs."""
    if self.treedef is None:
      return None
    is_spec = lambda x: isinstance(x, P)
    try:
      mine = jax.tree.map(lambda spec, x: None if isinstance(x, optax.MaskedNode) else spec,
                          jax.tree.unflatten(self.treedef, self.leaves), tree, is_leaf=is_spec)
    except (ValueError, TypeError):  # another structure
      return None
    specs = jax.tree.leaves(mine, is_leaf=is_spec)
    return specs if len(specs) == len(jax.tree.leaves(tree)) else None


def mesh_route(mesh: Mesh, param_shardings: Any = None) -> MeshRoute:
  """`mesh` with the route its stacked blocks take, read from the params' shardings:
  pass it as ``axis_name`` of SOAP, Shampoo and Muon (and the transformations
  under them) where the params are split over several mesh axes jointly.

  Axes that split one param dimension together, as FSDP over a whole
  ``("data", "fsdp")`` mesh does with ``P(("data", "fsdp"), None)``, are one
  group (with every axis that some param splits jointly with one of them):
  the blocks move across them in one all-to-all. Every other axis is a group
  of its own (a split of rows on one axis and of columns on another is moved
  one axis at a time). Groups and the axes in each are taken in the mesh's
  order, the order of the state's split: a group in another order makes
  the last hop permute the blocks (rows split over ``("data", "fsdp")`` for
  one param and over ``"fsdp"`` for the others, one group ordered
  ``("fsdp", "data")``: 17 rematerialization warnings and 2.7x the bytes
  moved). Without `param_shardings` every axis is its own group: what
  ``axis_name=mesh`` does. On a 2 x 4 mesh with GPT-2-like params split by
  rows over both axes, SOAP's step gathered 5.7x the params per device with
  ``axis_name=mesh`` and moves 0.9x with this route (second_order.py section
  4b).

  The route also keeps each param's spec (`MeshRoute.specs_of`), and each
  stack of blocks takes the groups read from its own leaves alone: one
  leaf split jointly no longer makes every stack hop over both axes at once
  (SOAP on the random layouts of second_order.py section 4c: from up to 19
  rematerialization warnings per compiled step to none). Each leaf and its
  update are also held at their param's sharding, and a stack of leaves
  whole on every device is cut where it lies (params replicated on 8
  devices, section 4b: SOAP moves 1.60x the params per step instead of
  1.99x). That needs the transformation to see the params' tree, or a part
  of it masked with `optax.MaskedNode`; on any other tree the groups above
  serve every stack.

  Args:
    mesh: the device mesh (its axes ``AxisType.Auto``).
    param_shardings: a tree of the params' `NamedSharding` or `PartitionSpec`
      leaves (only their specs are read), or None.

  Returns:
    A `MeshRoute`.

  Example:
    >>> import jax, numpy as np, optlab
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    >>> optlab.mesh_route(mesh, {"w": P(("data", "fsdp"), None), "b": P()}).groups
    (('data', 'fsdp'),)
    >>> tx = optlab.soap(3e-3, axis_name=optlab.mesh_route(mesh))  # one axis at a time
  """
  joint: list[list[str]] = []
  leaves, treedef = jax.tree.flatten(param_shardings,
                                     is_leaf=lambda s: isinstance(s, (P, NamedSharding)))
  specs = tuple(_spec_of("mesh_route", s) for s in leaves)
  for spec in specs:
    for entry in spec:
      # (None and P.UNCONSTRAINED split nothing)
      axes = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, tuple) else []
      unknown = [a for a in axes if a not in mesh.shape]
      if unknown:
        raise ValueError(f"optlab.mesh_route: param_shardings names axis {unknown[0]!r}, "
                         f"not an axis of the mesh {tuple(mesh.axis_names)}")
      touching = [g for g in joint if set(g) & set(axes)]
      merged = [a for g in touching for a in g]
      merged += [a for a in axes if a not in merged]
      joint = [g for g in joint if g not in touching] + ([merged] if merged else [])
  order = list(mesh.axis_names).index
  groups = [sorted(g, key=order) for g in joint]
  groups += [[a] for a in mesh.axis_names if not any(a in g for g in joint)]
  return MeshRoute(mesh, tuple(tuple(g) for g in sorted(groups, key=lambda g: order(g[0]))),
                   *((specs, treedef) if param_shardings is not None else ()))

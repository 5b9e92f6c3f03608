"""Routing: each leaf updated by the transformation its label names, with lean states.

`with_leaf_labels` (masks.py) shares one state layout between all its
transformations, so a branch that keeps one buffer per leaf (Muon's momentum)
must be padded to the layout of one that keeps two (Adam's). `route` keeps
each branch's own state, on its own leaves only, as `optax.partition` does.

What `optax.partition` loses is `optax.tree_map_params` (sharding specs of the
state): it finds the param-shaped trees of a state by calling ``init`` on a
placeholder, then maps each such tree *together with whole param trees*, so a
tree that holds only some leaves (``MaskedNode`` elsewhere) cannot be mapped.
No layout can map every buffer of branches that keep different numbers of
buffers per leaf: every mapped tree holds one buffer per param. So `route`
lays its state out in two parts:

* ``shared``: slot j (j below the smallest number of param-shaped trees of any
  branch) is one tree shaped like the params, each leaf holding slot j of its
  own branch (Muon's momentum next to Adam's first moment). These are mapped
  by `optax.tree_map_params` and keep the params' sharding under jit;
* ``packed``: the slots that only some branches have (Adam's second moment of
  the non-matrix leaves in Muon), each a tuple of its branch's leaves in tree
  order (not one flat vector: cutting a vector into leaves costs a compiled
  kernel per leaf). To `optax.tree_map_params` each is one non-param value,
  so they do not follow the params' sharding by themselves: route large
  tensors to the branch with the fewest buffers (Muon's matrices), or give
  them shardings with `optlab.state_sharding`.

``inner`` keeps the rest of each branch's state (step counts, keys), with None
where its param-shaped trees were.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from optlab import _validate as V
from optlab.primitives.basis import NESTED, OPAQUE, STATISTIC, declare_state, iter_fields

__all__ = ["route", "RouteState"]


@declare_state(shared=NESTED, packed=NESTED, inner=NESTED)
class RouteState(NamedTuple):
  """State of `route`."""
  shared: tuple  # per common slot, a `_slot_type` holding one params-shaped tree
  packed: tuple  # per (label, extra slot), a `_slot_type` holding a tuple of that label's
                 # leaves' buffers
  inner: tuple   # per label, its state with None in place of its params-shaped trees


@functools.lru_cache(maxsize=None)
def _slot_type(kind: str, role: str) -> type:
  """A one-field state type declared (kind, role), so the state walkers (resets,
  storage, basis changes) see what the branches' own fields were."""
  cls = NamedTuple(f"RouteSlot_{kind}_{role}", [("tree", Any)])
  return declare_state(cls, tree=(kind, role))


@functools.lru_cache(maxsize=1)
def _placeholder_type() -> type:
  """The type of the placeholder `optax.tree_map_params` calls ``init`` with,
  found through the public function (the class itself is private)."""
  seen = []
  optax.tree_map_params(lambda p: seen.append(p) or (), lambda x: x, ())
  return type(seen[0])


def _is_placeholder(x: Any) -> bool:
  return isinstance(x, _placeholder_type())


_SLOT = object()  # marks a params-shaped position of a branch state (a pytree leaf)


class _Layout(NamedTuple):
  """Where a branch keeps its params-shaped trees, from ``init`` on the placeholder."""
  treedef: Any   # of the placeholder state, the placeholders as leaves
  is_slot: list  # per leaf of treedef: a params-shaped tree?
  specs: list    # per slot: the (kind, role) of the field holding it


def _layout(tx: optax.GradientTransformation) -> _Layout:
  ph = _placeholder_type()()
  state = tx.init(ph)
  leaves, treedef = jax.tree.flatten(state, is_leaf=_is_placeholder)
  is_slot = [_is_placeholder(x) for x in leaves]
  # (kind, role) of each slot, from the declared field that holds it
  tagged = jax.tree.map(lambda x: _SLOT if _is_placeholder(x) else x, state,
                        is_leaf=_is_placeholder)
  specs = [(field.kind, field.role) for field in iter_fields(tagged, undeclared=True)
           for t in jax.tree.leaves(field.value) if t is _SLOT]
  if len(specs) != sum(is_slot):  # a state the walker cannot read: no declared kinds
    specs = [(None, None)] * sum(is_slot)
  return _Layout(treedef, is_slot, specs)


def _split(layout: _Layout, state: Any) -> tuple[Any, list]:
  """(state with None at its params-shaped trees, those trees in order)."""
  subs = layout.treedef.flatten_up_to(state)
  slots = [s for s, p in zip(subs, layout.is_slot) if p]
  return layout.treedef.unflatten([None if p else s for s, p in zip(subs, layout.is_slot)]), slots


def _join(layout: _Layout, skeleton: Any, slots: list) -> Any:
  subs, it = layout.treedef.flatten_up_to(skeleton), iter(slots)
  return layout.treedef.unflatten([next(it) if p else s for s, p in zip(subs, layout.is_slot)])


def _labels_for(labels: Any, tree: Any, keys: list) -> Any:
  """One label per leaf of `tree` (MaskedNode stays), checked against `keys`."""
  raw = labels(tree) if callable(labels) else labels
  try:
    out = jax.tree.map(lambda lab, sub: jax.tree.map(lambda _: lab, sub), raw, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"optlab.route: the labels tree does not match the params (it must be "
                     f"shaped like them or a prefix of them): {e}") from None
  for path, lab in jax.tree_util.tree_leaves_with_path(out):
    if lab not in keys:
      raise ValueError(f"optlab.route: {V.path_str(path)} has label {lab!r}, which names "
                       f"no transformation (have {keys})")
  return out


def _masked(tree: Any, labels: Any, key: Hashable) -> Any:
  if tree is None:
    return None
  return jax.tree.map(lambda lab, x: x if lab == key else optax.MaskedNode(), labels, tree)


def _merge(labels: Any, by_key: Mapping[Hashable, Any]) -> Any:
  """The tree whose leaf at each position comes from the tree of its label."""
  keys = list(by_key)
  return jax.tree.map(lambda lab, *xs: xs[keys.index(lab)], labels, *by_key.values())


def _kind_of(specs: list) -> tuple:
  """The declaration of a slot that merges fields with these specs: theirs if
  they agree, else opaque (it cannot follow a basis change)."""
  if len(set(specs)) == 1 and specs[0][0] is not None:
    return specs[0]
  roles = {r for _, r in specs}
  return (OPAQUE, roles.pop() if len(roles) == 1 and None not in roles else STATISTIC)


def route(transforms: Mapping[Hashable, optax.GradientTransformation],
          labels: Union[Any, Callable[[Any], Any]]) -> optax.GradientTransformationExtraArgs:
  """Updates each leaf with the transformation its label names; each keeps its own state.

  Like `optax.partition` (each transformation sees only its leaves, the others
  are ``optax.MaskedNode``), but laid out so that `optax.tree_map_params`
  still maps the state (see the module docstring): the params-shaped trees
  that every transformation has are merged into one tree per slot, and those
  only some have are packed flat. So Muon's matrices keep their one momentum
  buffer and Adam's leaves their two (Keller Jordan's Muon, and "Muon is
  Scalable for LLM Training", arXiv:2502.16982, keep no second moment for
  matrices).

  Args:
    transforms: label -> transformation.
    labels: a tree of labels shaped like the params (or a prefix of them), or a
      function params -> such a tree, as `optax.partition`'s ``param_labels``;
      it is called on the updates in ``update``. A label with no
      transformation raises a ValueError naming the leaf.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; extra args go to every
    transformation.
  """
  if not transforms:
    raise ValueError("optlab.route: needs at least one transformation")
  keys = list(transforms)
  txs = {k: optax.with_extra_args_support(t) for k, t in transforms.items()}
  layouts = {}

  def layout(k):
    if k not in layouts:
      layouts[k] = _layout(txs[k])
    return layouts[k]

  def plan():
    counts = {k: sum(layout(k).is_slot) for k in keys}
    common = min(counts.values())
    shared = [_slot_type(*_kind_of([layout(k).specs[j] for k in keys])) for j in range(common)]
    extra = [(k, j) for k in keys for j in range(common, counts[k])]
    packed = [_slot_type(OPAQUE, layout(k).specs[j][1] or STATISTIC) for k, j in extra]
    return common, shared, extra, packed

  def pack(slots, extra, packed_types):
    """The extra slots, as tuples of their branch's leaves (in tree order)."""
    return tuple(typ(tuple(jax.tree.leaves(slots[k][j]))) for (k, j), typ in zip(extra, packed_types))

  def unpack(k, common, extra, packed, like, labs):
    """Branch `k`'s extra slots, back as trees (structure from its init on `like`)."""
    template = _split(layout(k), jax.eval_shape(txs[k].init, _masked(like, labs, k)))[1]
    out = []
    for j in range(common, len(template)):
      leaves, treedef = jax.tree.flatten(template[j])
      held = packed[extra.index((k, j))].tree
      if [tuple(x.shape) for x in held] != [tuple(x.shape) for x in leaves]:
        raise ValueError(f"optlab.route: the state holds {len(held)} leaves for label {k!r} "
                         f"but the updates give it {len(leaves)} of other shapes: the "
                         "updates' tree does not match the params")
      out.append(jax.tree.unflatten(treedef, list(held)))
    return out

  def init(params):
    common, shared_types, extra, packed_types = plan()
    if _is_placeholder(params):  # optax.tree_map_params: the state's skeleton
      skeletons = tuple(_split(layout(k), txs[k].init(params))[0] for k in keys)
      return RouteState(tuple(t(params) for t in shared_types),
                        tuple(t(jnp.zeros([0])) for t in packed_types), skeletons)
    labs = _labels_for(labels, params, keys)
    skeletons, slots = {}, {}
    for k in keys:
      skeletons[k], slots[k] = _split(layout(k), txs[k].init(_masked(params, labs, k)))
    shared = tuple(t(_merge(labs, {k: slots[k][j] for k in keys}))
                   for j, t in enumerate(shared_types))
    packed = pack(slots, extra, packed_types)
    return RouteState(shared, packed, tuple(skeletons[k] for k in keys))

  def update(updates, state, params=None, **extra_args):
    common, _, extra, _ = plan()
    labs = _labels_for(labels, updates, keys)
    if state.shared:
      V.check_same_tree("route", updates, "updates", state.shared[0].tree, "the state",
                        shapes=False)
    used = set(jax.tree.leaves(labs))
    like = params if params is not None else updates
    new_updates, new_skeletons, new_slots = {}, {}, {}
    for i, k in enumerate(keys):
      own = [_masked(s.tree, labs, k) for s in state.shared]
      if len(own) < sum(layout(k).is_slot):
        own += unpack(k, common, extra, state.packed, like, labs)
      inner = _join(layout(k), state.inner[i], own)
      u_k = _masked(updates, labs, k)
      if k in used:
        u_k, inner = txs[k].update(u_k, inner, _masked(params, labs, k), **extra_args)
      new_updates[k] = u_k
      new_skeletons[k], new_slots[k] = _split(layout(k), inner)
    shared = tuple(type(s)(_merge(labs, {k: new_slots[k][j] for k in keys}))
                   for j, s in enumerate(state.shared))
    packed = tuple(type(p)(tuple(x.astype(o.dtype) for x, o in
                                 zip(jax.tree.leaves(new_slots[k][j]), p.tree)))
                   for (k, j), p in zip(extra, state.packed))
    return (_merge(labs, new_updates),
            RouteState(shared, packed, tuple(new_skeletons[k] for k in keys)))

  return optax.GradientTransformationExtraArgs(init, update)

"""Tree helpers: sharding-preserving constants, casts, dot products, flat statistics."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import slicing
from optlab._src.dtypes import statistics_dtype


# ----------------------------------------------------------------- constants
def full_like(p: jax.Array, value: Any, dtype: Any = None) -> jax.Array:
  """A constant array shaped like `p` that keeps `p`'s sharding, also under jit.

  Inside `jit`, ``jnp.full_like(p, v)`` is a bare constant that XLA places
  unsharded (one device holds the whole optimizer state); computing it from
  `p` (0 * finite(p) + v) lets sharding propagation give it `p`'s layout.
  The extra read of `p` happens once, at init. (`optax.tree.zeros_like` builds
  a bare constant, hence these.)
  """
  dtype = p.dtype if dtype is None else dtype
  zero = jnp.where(jnp.isfinite(p), p, 0).astype(dtype) * 0
  return zero + jnp.asarray(value, dtype)


def zeros_like(p: jax.Array, dtype: Any = None) -> jax.Array:
  """Zeros shaped like `p`, keeping its sharding (see `full_like`)."""
  return full_like(p, 0, dtype)


def tree_zeros_like(params: Any, dtype: Any = None) -> Any:
  """Zeros shaped like `params`, built by mapping over it (keeps sharding)."""
  return jax.tree.map(lambda p: zeros_like(p, dtype), params)


def statistics_zeros_like(params: Any) -> Any:
  """Zeros shaped like `params`, each leaf in `dtypes.statistics_dtype` of its param
  (float32 for float16 params: see there), keeping sharding."""
  return jax.tree.map(lambda p: zeros_like(p, statistics_dtype(p.dtype)), params)


def tree_full_like(params: Any, value: Any, dtype: Any = None) -> Any:
  """`full_like` over a tree (keeps sharding)."""
  return jax.tree.map(lambda p: full_like(p, value, dtype), params)


# `tree` cast to the dtypes of the leaves of `like` (the same as optax's).
cast_like = optax.tree.cast_like


def unzip_tree(like: Any, tree: Any, n: int) -> tuple[Any, ...]:
  """A tree of n-tuples, shaped like `like`, as n trees shaped like `like`.

  `jax.tree.transpose` cannot tell the tuples' structure from a tree without
  leaves (an empty params tree); this gives n empty trees then."""
  treedef = jax.tree.structure(like)
  rows = treedef.flatten_up_to(tree)
  return tuple(treedef.unflatten([row[i] for row in rows]) for i in range(n))


def tree_choose(pred: jax.Array, if_true: Any, if_false: Any) -> Any:
  """``if_true()`` where the scalar `pred` holds, else ``if_false()``: two trees alike.

  Why not a select per leaf: where every leaf's select hangs on one predicate
  computed from the whole tree (its norm), XLA:CPU's fusion and copy-insertion
  passes grow with the square of the leaves (adam_cm on 146 leaves compiled in
  49 s, 5 s through this; dadapt_adam 6.7 s, 3.6 s). On CPU a cond is a
  host branch; on GPU it would wait on the device for `pred` every step, so the
  other platforms keep the selects.
  """
  def selected(_):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), if_true(), if_false())

  return jax.lax.platform_dependent(pred, cpu=lambda _: jax.lax.cond(pred, if_true, if_false),
                                    default=selected)


# ------------------------------------------------------------------ sub-states
def find_state(state: Any, state_type: type) -> Any:
  """The first (depth-first) sub-state of type `state_type` in a nested state, or None."""
  if isinstance(state, state_type):
    return state
  if isinstance(state, (tuple, list)):
    for s in state:
      found = find_state(s, state_type)
      if found is not None:
        return found
  if isinstance(state, dict):
    for s in state.values():
      found = find_state(s, state_type)
      if found is not None:
        return found
  return None


def require_state(where: str, state: Any, state_type: type) -> Any:
  """`find_state`, raising a ValueError that names `where` when there is none."""
  found = find_state(state, state_type)
  if found is None:
    raise ValueError(f"optlab.{where}: no {state_type.__name__} found in the given state; "
                     "pass the optimizer state of a transformation built with it")
  return found


# --------------------------------------------------------------- dot products
def saturating_vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """sum over leaves of <a, b>, accumulated in `dtype`, clipped to finite values.

  A leaf whose plain sum is not finite (huge products of mixed sign sum to
  inf - inf = nan) is summed again from products clipped to finite values and
  divided by the leaf's size, which cannot overflow."""
  top = jnp.finfo(dtype).max

  def saturated(x, y):
    n = max(x.size, 1)
    prod = jnp.clip(x.astype(dtype) * y.astype(dtype), -top, top)
    return jnp.clip(jnp.sum(prod / n) * n, -top, top)

  def leaf_dot(x, y):
    plain = jnp.sum(x.astype(dtype) * y.astype(dtype))
    # lax.cond on the inputs, not where: the plain sum keeps its own reduction,
    # so pmap / sharded runs keep matching a single device.
    return jax.lax.cond(jnp.isfinite(plain), lambda x, y: plain, saturated, x, y)

  parts = [leaf_dot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  if not parts:
    return jnp.zeros([], dtype)
  total = jnp.sum(jnp.clip(jnp.stack(parts), -top, top))
  return jnp.clip(total, -top, top)


def norms_and_cosine(a: Any, b: Any, norm_fn: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(||a||, ||b||, cos(a, b)) over whole trees, without overflow (cos 0 if a norm is 0).

  `norm_fn` is the overflow-safe global norm (`clipping.safe_global_norm`). The
  inner product is taken as cos = <a / ||a||, b / ||b||>, which cannot overflow,
  where `saturating_vdot` gives the (clipped) inner product itself."""
  na, nb = norm_fn(a), norm_fn(b)
  dt = jnp.result_type(na, nb)
  inv = lambda n: jnp.where(n > 0, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)
  ia, ib = inv(na.astype(dt)), inv(nb.astype(dt))
  cos = sum((jnp.sum((x.astype(dt) * ia) * (y.astype(dt) * ib)) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.zeros([], dt))
  return na.astype(dt), nb.astype(dt), cos


# ----------------------------------------------------------- flat statistics
def pack_flat(arrays: Sequence[jax.Array], dtype: Any) -> jax.Array:
  """Concatenates `arrays`, flattened and cast to `dtype`, into one vector."""
  if not arrays:
    return jnp.zeros([0], dtype)
  return jnp.concatenate([jnp.reshape(a, [-1]).astype(dtype) for a in arrays])


def flat_zeros(n: int, dtype: Any, leaves: Sequence[Any]) -> Optional[jax.Array]:
  """A flat statistic of `n` zeros for the params `leaves`; None when it has no entries.

  None instead of a zero-size placeholder, which orbax refuses to save. With no
  params leaves at all (the placeholder tree `optax.tree_map_params` traces
  `init` with, or an empty tree) the size-0 array stays: the placeholder's state
  must be a tree prefix of every real one, and only a leaf is a prefix of both
  an array and None.
  """
  if n == 0 and len(leaves):
    return None
  return jnp.zeros([n], dtype)


def repack_flat(arrays: Sequence[jax.Array], like: Optional[jax.Array]) -> Optional[jax.Array]:
  """`pack_flat` into the dtype of the state field `like`; None where `like` is None
  (a statistic without entries, see `flat_zeros`), so the state keeps its tree."""
  return None if like is None else pack_flat(arrays, like.dtype)


def unpack_flat(flat: Optional[jax.Array], shapes: Sequence[tuple[int, ...]], tree: Any = None,
                where: str = "optlab") -> list[jax.Array]:
  """Splits a `pack_flat` vector back into arrays of `shapes` (`slicing.split`).

  A size mismatch (updates whose tree differs from the params the state was
  built for) raises a ValueError listing `tree`'s leaf paths when given. A
  None `flat` (`flat_zeros`) holds no entries.
  """
  if flat is None:
    flat = jnp.zeros([0], jnp.float32)
  sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
  start = sum(sizes)
  if start != flat.shape[0]:
    paths = ("" if tree is None else " " + ", ".join(
        "params" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)))
    raise ValueError(f"{where}: the state holds {flat.shape[0]} statistics but the updates'"
                     f" leaves{paths} need {start}: the updates' tree does not match the params"
                     " the state was built for (pass params to update() to name the leaf)")
  return [jnp.reshape(v, shape) for v, shape in zip(slicing.split(flat, sizes), shapes)]


def flat_dtype(leaves: Sequence[Any]) -> Any:
  """float32, or float64 when any leaf is float64 (the statistics' dtype)."""
  dtypes = [jnp.result_type(x) for x in leaves]
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32) if dtypes else jnp.float32

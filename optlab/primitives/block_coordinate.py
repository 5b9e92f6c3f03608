"""Block-coordinate updating: only one block of parameters is trained at a time.

`with_block_coordinate(inner, ...)` (BAdam, arXiv:2404.02827) runs `inner` on
the active block only; the other blocks get a zero update, and when the active
block changes, `inner`'s state is re-initialised (BAdam clears the Adam state
on every switch).

What JAX forces, and what this does about it. A compiled step has static
shapes, so the state cannot be freed and re-allocated as blocks come and go
(PyTorch's BAdam keeps Adam state for the active block only). Keeping
param-shaped moments for every block would save nothing. Instead the active
block's leaves are packed into one flat buffer sized to the *largest* block,
and `inner` runs on that buffer: its state costs (state per entry) x (largest
block), the same as BAdam's peak. Choosing the block inside the compiled step
is a `lax.switch` over the blocks (one packing / unpacking branch each). The
buffer is a flat vector, so it is not sharded like the params (replicated
under jit sharding); its first (inactive) entries after a switch are zeros.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _validate as V
from optlab._src.random import new_key
from optlab._src.tree import flat_dtype
from optlab.primitives.basis import COUNT, INVARIANT_STAT, OPAQUE_STAT, declare_state
from optlab.primitives.blockwise import path_names

__all__ = ["BlockCoordinateState", "with_block_coordinate", "block_by_layer"]


def block_by_layer(names: tuple[str, ...], shape: tuple[int, ...]) -> Hashable:
  """Default blocks: the first path key below a leading 'params' (one block per
  top-level module or leaf: embedding, each layer, the head)."""
  names = names[1:] if names and names[0] == "params" and len(names) > 1 else names
  return names[0] if names else ""


# inner_state lives on a flat buffer of the active block, not in the params'
# coordinates: OPAQUE, so that no walker takes it for a param-shaped moment.
@declare_state(count=COUNT, key=INVARIANT_STAT, sizes=INVARIANT_STAT, inner_state=OPAQUE_STAT)
class BlockCoordinateState(NamedTuple):
  count: jax.Array    # [], int32: steps taken
  key: jax.Array      # [2], uint32: raw key of the random block order
  sizes: jax.Array    # [number of leaves], int32: leaf sizes (a shape witness of the tree)
  inner_state: Any    # {"buffer": inner's state on the active block's flat buffer
                      # ([largest block])}; a dict, so that recipe_chain's tree check
                      # does not take the buffer state for a param-shaped tree


def _layout(tree, blocks):
  """(leaf sizes, per block: list of leaf indices, largest block size)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  labels, order = {}, []
  for i, (path, x) in enumerate(leaves):
    lab = blocks(path_names(path), tuple(jnp.shape(x)))
    if lab not in labels:
      labels[lab] = []
      order.append(lab)
    labels[lab].append(i)
  sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for _, x in leaves]
  # A block without entries (zero-size leaves only) takes no turn: its leaves'
  # updates stay zero-size.
  groups = [labels[lab] for lab in order if sum(sizes[i] for i in labels[lab]) > 0]
  largest = max([sum(sizes[i] for i in g) for g in groups], default=0)
  return sizes, groups, largest


def with_block_coordinate(inner: optax.GradientTransformation, switch_every: int = 50,
                          order: str = "ascending", blocks: Optional[Callable] = None,
                          seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Trains one block of leaves at a time with `inner`; see the module docstring.

  Args:
    inner: the inner method (BAdam: AdamW with the learning rate).
    switch_every: steps between block switches (BAdam's K).
    order: "ascending" / "descending" (blocks in tree order, cycling) or
      "random" (a fresh random permutation of the blocks each epoch).
    blocks: ``blocks(names, shape) -> label``; leaves with the same label form
      a block, blocks ordered by first appearance. Default `block_by_layer`.
    seed: seeds the random order.
  """
  V.check_range("with_block_coordinate", "switch_every", switch_every, 1)
  V.check_choice("with_block_coordinate", "order", order, ("ascending", "descending", "random"))
  inner = optax.with_extra_args_support(inner)
  blocks = blocks or block_by_layer

  def buffer(tree, largest):
    return {"x": jnp.zeros([largest], flat_dtype(jax.tree.leaves(tree)))}

  def init(params):
    sizes, _, largest = _layout(params, blocks)
    return BlockCoordinateState(jnp.zeros([], jnp.int32),
                                new_key(seed),
                                jnp.asarray(sizes, jnp.int32).reshape([len(sizes)]),
                                {"buffer": inner.init(buffer(params, largest))})

  def active_block(count, key, n):
    k = count // switch_every
    if order == "ascending":
      return k % n
    if order == "descending":
      return n - 1 - k % n
    perm = jax.random.permutation(jax.random.fold_in(key, k // n), n)
    return perm[k % n]

  def update(updates, state, params=None, **extra):
    leaves, treedef = jax.tree.flatten(updates)
    sizes, groups, largest = _layout(updates, blocks)
    if state.sizes.shape[0] != len(leaves):
      raise ValueError(f"optlab.with_block_coordinate: the state was built for "
                       f"{state.sizes.shape[0]} leaves but the updates have {len(leaves)}: "
                       "the updates' tree does not match the params")
    dt = flat_dtype(leaves)
    p_leaves = jax.tree.leaves(params) if params is not None else None

    def gather(idx, xs):
      parts = [jnp.reshape(xs[i], [-1]).astype(dt) for i in idx]
      pad = largest - sum(sizes[i] for i in idx)
      return jnp.concatenate(parts + [jnp.zeros([pad], dt)]) if parts or pad else jnp.zeros([0], dt)

    def scatter(idx, buf):
      out = [jnp.zeros_like(x) for x in leaves]
      start = 0
      for i in idx:
        out[i] = jnp.reshape(buf[start:start + sizes[i]], jnp.shape(leaves[i])).astype(
            leaves[i].dtype)
        start += sizes[i]
      return out

    n = len(groups)
    b = active_block(state.count, state.key, n) if n else 0
    fresh = inner.init(buffer(updates, largest))
    switch = (state.count % switch_every == 0) & (state.count > 0)
    inner_state = jax.tree.map(lambda f, s: jnp.where(switch, f, s), fresh,
                               state.inner_state["buffer"])
    if n == 0:
      return updates, state
    g_buf = jax.lax.switch(b, [lambda i=i: gather(groups[i], leaves) for i in range(n)])
    p_buf = None if p_leaves is None else {"x": jax.lax.switch(
        b, [lambda i=i: gather(groups[i], p_leaves) for i in range(n)])}
    u, inner_state = inner.update({"x": g_buf}, inner_state, p_buf, **extra)
    out = jax.lax.switch(b, [lambda i=i: scatter(groups[i], u["x"]) for i in range(n)])
    return (jax.tree.unflatten(treedef, out),
            BlockCoordinateState(optax.safe_increment(state.count), state.key, state.sizes,
                                 {"buffer": inner_state}))

  return optax.GradientTransformationExtraArgs(init, update)

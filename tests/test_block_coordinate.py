"""Unit tests of block-coordinate updating (BAdam)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optlab
from optlab.primitives import block_coordinate as BC


def _params():
  return {"params": {"embed": {"embedding": jnp.ones((10, 4))},
                     "layer_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))},
                     "head": {"kernel": jnp.ones((4, 3))}}}


def test_state_is_sized_to_the_largest_block():
  tx = optlab.badam(0.1, switch_every=2)
  state = tx.init(_params())[0]
  # blocks: embed (40), head (12), layer_0 (16 + 4): Adam's m and v on 40 entries
  assert state.sizes.shape == (4,)
  mom = [x for x in jax.tree.leaves(state.inner_state) if x.ndim == 1]
  assert mom and all(x.shape == (40,) for x in mom)
  assert optlab.state_bytes(tx, _params()).total < 2 * 4 * 40 + 64


def test_only_the_active_block_moves_and_blocks_cycle():
  params = _params()
  tx = optlab.badam(0.1, switch_every=2, order="ascending")
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  g = jax.tree.map(jnp.ones_like, params)
  moved = []
  for _ in range(6):
    u, state = step(g, state, params)
    moved.append(tuple(k for k, v in u["params"].items()
                       if any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(v))))
  assert moved == [("embed",)] * 2 + [("head",)] * 2 + [("layer_0",)] * 2
  # Adam restarts on a switch: the first step of a block is -lr * sign(g)
  np.testing.assert_allclose(u["params"]["layer_0"]["kernel"], -0.1, rtol=1e-4)


def test_random_order_visits_every_block_once_per_epoch():
  params = _params()
  tx = BC.with_block_coordinate(optlab.sgd(1.0), switch_every=1, order="random", seed=3)
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  seen = []
  for _ in range(3):
    u, state = tx.update(g, state, params)
    seen += [k for k, v in u["params"].items() if np.any(np.asarray(v[next(iter(v))]) != 0)]
  assert sorted(seen) == ["embed", "head", "layer_0"]


def test_zero_size_blocks_take_no_turn():
  # Issue 12, item 5: an empty leaf contributes nothing, so it is not a block.
  params = {"a": jnp.ones(2), "b": jnp.zeros((0, 3)), "c": jnp.ones(2)}
  tx = BC.with_block_coordinate(optlab.sgd(1.0), switch_every=1)
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  moved = []
  for _ in range(4):
    u, state = tx.update(g, state, params)
    assert u["b"].shape == (0, 3)
    moved.append(tuple(k for k, v in u.items() if np.any(np.asarray(v) != 0)))
  assert moved == [("a",), ("c",), ("a",), ("c",)]

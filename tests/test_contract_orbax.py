"""Contract, checkpoints: every recipe's state saves and restores with orbax (issue 12, item 7).

orbax's `StandardCheckpointer` refuses zero-size arrays ("Cannot save arrays with
zero size"), so a state must not hold empty placeholders: a statistic that no
leaf has is None (`storage.flat_zeros`). Two checks, for every recipe:

* a mid-run round trip on the contract problem: save params and state after 3
  steps, restore them against `jax.eval_shape` of the tree, run 3 more steps:
  bit-identical to 6 straight steps (test_contract's flax check, with orbax);
* on trees that leave some kind of statistic without entries (vectors and a
  scalar only, matrices only, one scalar), `init` builds no zero-size leaf and
  one traced update keeps the state's tree, shapes and dtypes (so a None field
  stays None). This part only traces (`jax.eval_shape`): nothing is compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tests.test_contract import by_recipe, extra_for, jitted_update, make_params, plain, run


@pytest.fixture(scope="module")
def checkpointer():
  """One checkpointer per test process, closed at the end so that its async
  threads do not outlive the module."""
  ckpt = ocp.StandardCheckpointer()
  yield ckpt
  ckpt.close()


def _signature(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _bits(x):
  return np.asarray(x).tobytes()


@by_recipe
def test_orbax_save_restore_mid_run(recipe, checkpointer, tmp_path):
  tx, params = plain(recipe), make_params()
  straight, straight_state, _ = run(tx, recipe, params, 6)
  p3, s3, _ = run(tx, recipe, params, 3)
  tree = {"params": p3, "opt_state": s3}
  path = tmp_path / "ckpt"
  checkpointer.save(path, tree)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(path, jax.eval_shape(lambda: tree))

  assert jax.tree.structure(restored) == jax.tree.structure(tree), "restored tree differs"
  assert _signature(restored) == _signature(tree), "restored shapes/dtypes differ"
  for (where, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(restored)):
    assert _bits(a) == _bits(b), f"restored{jax.tree_util.keystr(where)} differs"

  # orbax returns arrays committed to their device; jit keys its cache on that, and
  # the shared update was compiled for uncommitted ones: hand over the same bytes
  # uncommitted, so that it is reused rather than compiled again.
  restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
  update = jitted_update(tx, recipe)
  compiled = update._cache_size()
  resumed, resumed_state, _ = run(tx, recipe, restored["params"], 3,
                                  state=restored["opt_state"], start=3)
  # Same avals as the state it was saved from: no new compile. (orbax keeps no weak
  # types; a weak-typed state leaf would come back strong, recompile, promote otherwise.)
  assert update._cache_size() == compiled, "the restored state made the update recompile"
  for (where, a), b in zip(jax.tree_util.tree_leaves_with_path((resumed, resumed_state)),
                           jax.tree.leaves((straight, straight_state))):
    assert _bits(a) == _bits(b), (
        f"resumed run is not bit-identical at {jax.tree_util.keystr(where)}")


# Trees for which some flat statistic has no entries: no factored / preconditioned /
# projected matrix (vectors and a scalar), nothing element-wise or unprojected
# (matrices only), nothing large enough to quantise or precondition (one scalar).
ODD_TREES = {
    "vectors": {"v": (16,), "s": ()},
    "matrices": {"w": (8, 6), "u": (6, 8)},
    "scalar": {"s": ()},
}


@by_recipe
def test_state_has_no_empty_arrays(recipe):
  tx = plain(recipe)
  for name, shapes in ODD_TREES.items():
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    state = jax.eval_shape(tx.init, params)
    for where, leaf in jax.tree_util.tree_leaves_with_path(state):
      assert np.prod(leaf.shape) > 0, (
          f"{name} params: state{jax.tree_util.keystr(where)} is a zero-size array "
          f"{leaf.shape}, which orbax cannot save")

    def step(p, s):
      grads = jax.tree.map(jnp.ones_like, p)
      return tx.update(grads, s, p, **extra_for(recipe, p))[1]

    new = jax.eval_shape(step, params, state)
    assert jax.tree.structure(new) == jax.tree.structure(state), (
        f"{name} params: the update changed the state's tree")
    assert _signature(new) == _signature(state), (
        f"{name} params: the update changed the state's shapes/dtypes")
    # The placeholder state of optax.tree_map_params stays a prefix of this one (a
    # None field lies under one of its leaves), so sharding specs can be mapped.
    seen = []
    optax.tree_map_params(tx, lambda x: seen.append(tuple(x.shape)), state,
                          transform_non_params=lambda _: None)
    assert set(seen) <= set(shapes.values()), (
        f"{name} params: tree_map_params took a non-param-shaped leaf for a param")

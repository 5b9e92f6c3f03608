"""`optlab.primitives.routing.route` (issue 14, item 3): each branch keeps only its own
leaves' state, and `optax.tree_map_params` still maps the state to the params.

Everything here is small: the per-recipe sharding check reuses the contract's
recipe (`plain`) and traces its init once per recipe, and the rest runs on
trees of a few tiny leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optlab
from optlab.primitives.routing import route
from optlab.primitives.storage import state_bytes
from tests.test_contract import RECIPES, make_params, plain, run

F32 = jnp.float32


def _sds(shape):
  return jax.ShapeDtypeStruct(shape, F32)


def _by_ndim(tree):
  return jax.tree.map(lambda x: "m" if jnp.ndim(x) == 2 else "o", tree)


def _params():
  rng = np.random.default_rng(0)
  shapes = {"w": (4, 3), "v": (3,), "k": (3, 2), "s": (), "z": (0,)}
  return {k: jnp.asarray(rng.normal(size=s), F32) for k, s in shapes.items()}


def _grads(params, t):
  return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * (t + 1), params)


def _tx():
  return route({"m": optax.trace(0.9), "o": optax.adam(0.1)}, _by_ndim)


# ----------------------------------------------------------------- state bytes
def test_muon_keeps_one_buffer_per_matrix_entry():
  mats = {f"w{i}": _sds((256, 256)) for i in range(4)}
  got = state_bytes(optlab.muon(0.02), mats)
  assert got.per_param <= 4.1, got.per_param  # was 8.0 with the padded layout
  # every momentum buffer is mapped to its own matrix
  assert got.by_param == {k: 256 * 256 * 4 for k in mats}


def test_muon_bytes_on_a_transformer_like_tree():
  d, vocab = 64, 100
  block = {"qkv": _sds((d, 3 * d)), "o": _sds((d, d)), "up": _sds((d, 4 * d)),
           "down": _sds((4 * d, d)), "ln": _sds((d,)), "bias": _sds((4 * d,))}
  tree = {"emb": _sds((vocab, d)), "blocks": [block, block], "ln_f": _sds((d,))}
  got = state_bytes(optlab.muon(0.02), tree)
  n = got.num_params
  vec = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if len(x.shape) != 2)
  # matrices: momentum (4 bytes); the rest: Adam's m (mapped) and v (packed, in `other`)
  assert got.total - 4 * n - 4 * vec < 64, (got.total, n, vec)  # plus a few step counts
  assert got.per_param < 4.1


# --------------------------------------------------------------- same as partition
def test_matches_optax_partition():
  params = _params()
  tx = _tx()
  ref = optax.partition({"m": optax.trace(0.9), "o": optax.adam(0.1)}, _by_ndim(params))
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  s, s_ref = tx.init(params), ref.init(params)
  for t in range(3):
    g = _grads(params, t)
    u, s = step(g, s, params)
    u_ref, s_ref = ref.update(g, s_ref, params)
    for k in params:
      np.testing.assert_allclose(u[k], u_ref[k], rtol=1e-6, err_msg=k)
  # the matrices' branch holds one buffer: trace's; Adam two, the second packed
  assert len(s.shared) == 1 and len(s.packed) == 1
  nu = s_ref.inner_states["o"].inner_state[0].nu  # packed in leaf order: s, v, z
  assert len(s.packed[0].tree) == 3
  for held, k in zip(s.packed[0].tree, ("s", "v", "z")):
    np.testing.assert_array_equal(held, nu[k])


# --------------------------------------------------------------- tree_map_params
def test_tree_map_params_maps_each_branch_to_its_own_param():
  params = _params()
  tx = _tx()
  state = tx.init(params)
  names = {k: k for k in params}
  got = optax.tree_map_params(tx, lambda x, name: (name, jnp.shape(x)), state, names,
                              transform_non_params=lambda _: None)
  # the shared slot: trace's buffer for the matrices, Adam's m for the rest
  for k, p in params.items():
    assert got.shared[0].tree[k] == (k, p.shape)
  marked = optax.tree_map_params(tx, lambda _: "P", state, transform_non_params=lambda v: (
      jax.tree.map(lambda _: "N", v)))
  assert jax.tree.structure(marked) == jax.tree.structure(state)
  # one mapped leaf per param (the zero-size z too); Adam's packed v is not mapped
  assert jax.tree.leaves(marked).count("P") == len(params)
  assert marked.packed[0].tree == ("N",) * 3


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()[:8]), ("d",))


def _spec(x):
  for axis, n in enumerate(jnp.shape(x)):
    if n % 8 == 0:
      return P(*([None] * axis + ["d"]))
  return P()


ROUTED = [r for r in RECIPES if r.name in ("muon", "mars_adamw", "mars_lion", "mars_shampoo")]


@pytest.mark.parametrize("recipe", ROUTED, ids=[r.name for r in ROUTED])
def test_sharding_specs_reach_each_branch(recipe, mesh):
  """The contract's sharding check (test_contract, point 7) for the routed recipes,
  on its own: each branch's params-shaped state keeps its param's sharding."""
  tx, params = plain(recipe), make_params()
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, _spec(x)), params)
  p_sh = jax.device_put(params, shardings)
  state = jax.jit(tx.init)(p_sh)
  want = optax.tree_map_params(tx, lambda _, sh: sh, state, shardings,
                               transform_non_params=lambda _: None)
  pairs = list(zip(jax.tree.leaves(want, is_leaf=lambda x: x is None),
                   jax.tree.leaves(state, is_leaf=lambda x: x is None)))
  sharded = [(w, leaf) for w, leaf in pairs if w is not None]
  # both branches' leaves are mapped: a 2-d weight and a vector
  assert {np.ndim(leaf) for _, leaf in sharded} >= {1, 2}
  p_sh, state, _ = run(tx, recipe, p_sh, 2, state=state)
  for w, leaf in zip(jax.tree.leaves(want, is_leaf=lambda x: x is None),
                     jax.tree.leaves(state, is_leaf=lambda x: x is None)):
    if w is not None:
      assert leaf.sharding.is_equivalent_to(w, leaf.ndim)


# ------------------------------------------------------------------- errors
def test_unknown_label_and_mismatched_labels_are_named():
  params = {"a": jnp.ones(2), "b": jnp.ones((2, 2))}
  tx = route({"x": optax.trace(0.5)}, {"a": "x", "b": "nope"})
  with pytest.raises(ValueError, match=r"params\['b'\].*'nope'"):
    tx.init(params)
  tx = route({"x": optax.trace(0.5)}, {"a": "x", "c": "x"})
  with pytest.raises(ValueError, match="labels tree does not match"):
    tx.init(params)
  with pytest.raises(ValueError, match="at least one"):
    route({}, {})


# ------------------------------------------------- empty branches and empty trees
def test_one_branch_empty():
  params = {"w": jnp.ones((3, 2)), "u": jnp.ones((2, 2))}
  tx = _tx()  # every leaf is a matrix: Adam's branch has no leaves
  state = jax.eval_shape(tx.init, params)
  assert all(np.prod(x.shape) > 0 for x in jax.tree.leaves(state))  # orbax saves it
  assert state.packed[0].tree == ()  # Adam's v has no entries
  u, new = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  want, _ = optax.trace(0.9).update(_grads(params, 0), optax.trace(0.9).init(params))
  for k in params:
    np.testing.assert_allclose(u[k], want[k], rtol=1e-6)
  assert jax.tree.structure(new) == jax.tree.structure(state)


def test_empty_tree():
  tx = _tx()
  state = tx.init({})
  u, new = tx.update({}, state, {})
  assert u == {}
  assert jax.tree.structure(new) == jax.tree.structure(state)
  optax.tree_map_params(tx, lambda x: x, state)


def test_inside_masked_multisteps_and_inject():
  params = _params()
  inner = _tx()
  masked = optax.masked(_tx(), {k: k != "v" for k in params})
  ms = optax.MultiSteps(_tx(), every_k_schedule=2)
  inj = optax.inject_hyperparams(lambda lr: route(
      {"m": optax.trace(0.9), "o": optax.adam(lr)}, _by_ndim))(lr=0.1)
  g = _grads(params, 0)
  u_ref, _ = inner.update(g, inner.init(params), params)
  u_m, _ = masked.update(g, masked.init(params), params)
  u_i, _ = inj.update(g, inj.init(params), params)
  s = ms.init(params)
  _, s = ms.update(g, s, params)
  u_ms, _ = ms.update(g, s, params)
  for k in params:
    np.testing.assert_allclose(u_i[k], u_ref[k], rtol=1e-6)
    np.testing.assert_allclose(u_ms[k], u_ref[k], rtol=1e-6)
    np.testing.assert_allclose(u_m[k], g[k] if k == "v" else u_ref[k], rtol=1e-6)

"""Unit tests of optlab.primitives.bases: in_eigenbasis / SOAP against the official
algorithm through several basis refreshes, state shapes, and numerical safety."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from tests import harness
from tests.reference import matrix as ref


def _problem(shapes, seed=0):
  """Params and a NumPy gradient whose matrices are full rank from the first step.

  Exact comparisons need every factor to be full rank at the first eigh: the
  eigenvectors of a degenerate (null) eigenspace are arbitrary and differ
  between LAPACK builds."""
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  centre = {k: rng.normal(size=s) for k, s in shapes.items()}
  noise = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(16)]

  def grad_fn(p, t):
    return {k: 0.7 * (np.asarray(p[k]) - centre[k]) + noise[t % 16][k] for k in p}

  return params, grad_fn


SHAPES = {"a": (5, 5), "c": (3, 4, 3), "v": (4,), "s": ()}


@pytest.mark.parametrize("kwargs", [
    {},
    {"b1": 0.9, "b2": 0.99, "shampoo_beta": 0.8, "weight_decay": 0.1},
])
def test_soap_matches_official_algorithm_through_refreshes(kwargs):
  # 14 calls with precondition_frequency=3: the basis is refreshed after
  # Adam steps 3, 6, 9 and 12, each time rotating m and permuting v.
  params, grad_fn = _problem(SHAPES)
  kw = {"learning_rate": 0.05, "precondition_frequency": 3, **kwargs}
  want = ref.soap(params, grad_fn, 14, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.soap(**kw), params, grad_fn, 14)
  harness.assert_trajectories_close(got, want, 1e-7, 1e-10, f"soap{kwargs}")
  assert np.all(want[0]["a"] == params["a"])  # the first step only builds the basis
  assert not np.allclose(want[-1]["a"], want[-2]["a"])


def test_soap_merge_dims_matches_official():
  params, grad_fn = _problem({"k": (2, 2, 4), "m": (6, 3, 2)}, seed=1)
  # (2, 2, 4) merges to (4, 4); (6, 3, 2) stays (6, 3, 2) (3 * 2 > 4), and its
  # dimension 6, above max_precond_dim, stays unrotated.
  kw = {"learning_rate": 0.05, "precondition_frequency": 2, "merge_dims": True,
        "max_precond_dim": 4}
  want = ref.soap(params, grad_fn, 8, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.soap(**kw), params, grad_fn, 8)
  harness.assert_trajectories_close(got, want, 1e-7, 1e-10, "soap merge_dims")


@pytest.mark.parametrize("precondition_1d", [False, True])
def test_size_one_dims_without_a_factor_match_official(precondition_1d):
  # The official code keeps a 1 x 1 factor for every dimension of size 1; here
  # such a dimension has none. (Every other factor is full rank at the first
  # eigh, as `_problem` needs.)
  shapes = {"cube": (1, 4, 4), "mid": (5, 1, 5), "conv": (1, 1, 3, 3), "one": (1,), "a": (3, 3)}
  params, grad_fn = _problem(shapes, seed=3)
  kw = {"learning_rate": 0.05, "precondition_frequency": 2, "precondition_1d": precondition_1d}
  want = ref.soap(params, grad_fn, 9, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.soap(**kw), params, grad_fn, 9)
    state = optlab.soap(**kw).init(jax.tree.map(jnp.asarray, params))
  harness.assert_trajectories_close(got, want, 1e-7, 1e-10, f"soap size-1 dims {kw}")
  factors = jax.tree.leaves(state[0].stats)
  assert factors and all(f.shape[-1] > 1 for f in factors)


@pytest.mark.parametrize("name", ["soap_lion", "soap_adopt", "soap_ademamix", "soap_laprop"])
def test_soap_variants_match_reference_with_full_rotation(name):
  params, grad_fn = _problem({"a": (4, 4), "c": (3, 2, 3)}, seed=2)
  kw = {"learning_rate": 0.02, "precondition_frequency": 2}
  want = getattr(ref, name)(params, grad_fn, 7, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(getattr(optlab, name)(**kw), params, grad_fn, 7)
  harness.assert_trajectories_close(got, want, 1e-7, 1e-10, name)


def test_in_eigenbasis_accepts_optax_adam():
  params, grad_fn = _problem({"a": (4, 4)}, seed=3)
  mine = optlab.in_eigenbasis(optlab.scale_by_adam(0.9, 0.95), 2, 0.9)
  theirs = optlab.in_eigenbasis(optax.scale_by_adam(0.9, 0.95), 2, 0.9)
  with jax.enable_x64(True):
    a = harness.run_jax(mine, params, grad_fn, 6)
    b = harness.run_jax(theirs, params, grad_fn, 6)
  harness.assert_trajectories_close(a, b, 1e-10, 1e-12, "optax inner")


# ------------------------------------------------------------------ state shapes
def test_no_factor_for_huge_1d_or_large_dims():
  params = {"v": jax.ShapeDtypeStruct((10 ** 6,), jnp.float32),
            "m": jax.ShapeDtypeStruct((64, 20000), jnp.float32),
            "s": jax.ShapeDtypeStruct((), jnp.float32)}
  for tx in (optlab.soap(1e-3), optlab.soap(1e-3, precondition_1d=True),
             optlab.soap_lion(1e-3)):
    state = jax.eval_shape(tx.init, params)
    basis = state[0]
    shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
    assert shapes(basis.stats) == (((1, 64, 64),),) == shapes(basis.basis)
    for leaf in jax.tree.leaves(state):
      assert leaf.size <= 64 * 20000, leaf.shape  # nothing n x n for n = 10^6 or 20000
  small = jax.eval_shape(optlab.soap(1e-3, precondition_1d=True).init,
                         {"v": jax.ShapeDtypeStruct((30,), jnp.float32)})
  assert jax.tree.map(lambda x: x.shape, small[0].stats) == (((1, 30, 30),),)


# ------------------------------------------------------------ numerical safety
def test_soap_never_nan():
  rng = np.random.default_rng(0)
  shapes = {"w": (6, 4), "v": (5,)}
  tx = optlab.soap(1e-3, precondition_frequency=2, precondition_1d=True)
  step = jax.jit(tx.update)
  for kind in ("zero", "rank1", "huge"):
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    state = tx.init(params)
    for t in range(6):
      u, state = step(_stress_grads(kind, shapes, t), state, params)
      for leaf in jax.tree.leaves((u, state)):
        assert np.all(np.isfinite(np.asarray(leaf))), (kind, t)
      params = optax.apply_updates(params, u)


def _stress_grads(kind, shapes, t):
  if kind == "zero":
    return {k: jnp.zeros(s) for k, s in shapes.items()}
  if kind == "rank1":
    return {k: (jnp.outer(jnp.arange(1.0, s[0] + 1), jnp.ones(s[1])) if len(s) == 2
                else jnp.ones(s)) * (t + 1) for k, s in shapes.items()}
  sign = 1.0 if t % 2 else -1.0
  return {k: jnp.full(s, 1e30).at[(0,) * len(s)].set(sign * 1e30) for k, s in shapes.items()}


@pytest.mark.parametrize("name", ["shampoo", "muon", "mars_shampoo"])
def test_matrix_recipes_never_nan(name):
  shapes = {"w": (6, 4), "v": (5,)}
  kw = {"shampoo": dict(block_size=4, start_preconditioning_step=1,
                        graft_type="rmsprop_normalized")}.get(name, {})
  tx = getattr(optlab, name)(1e-3, **kw)
  params = {k: jnp.ones(s) for k, s in shapes.items()}
  step = jax.jit(tx.update)
  for kind in ("zero", "rank1", "huge"):
    state = tx.init(params)
    for t in range(4):
      u, state = step(_stress_grads(kind, shapes, t), state, params)
      for leaf in jax.tree.leaves((u, state)):
        assert np.all(np.isfinite(np.asarray(leaf))), (name, kind, t)


def test_shampoo_state_shapes_and_blocking():
  params = {"v": jax.ShapeDtypeStruct((10 ** 6,), jnp.float32),   # above max_precond_dim
            "m": jax.ShapeDtypeStruct((300, 20), jnp.float32),
            "u": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  state = jax.eval_shape(optlab.shampoo(1e-3, block_size=128).init, params)[0]
  # m: (300, 20) -> 3 x 1 blocks of (128, 20), kept in that orientation (no other
  # block shares its stack), one factor per dimension; u: 8 blocks of 128 (1000
  # padded to 1024).
  shapes = jax.tree.map(lambda x: x.shape, state.stats)
  assert sorted(shapes) == sorted((((3, 128, 128), (3, 20, 20)), ((8, 128, 128),)))
  assert jax.tree.map(lambda x: x.shape, state.roots) == shapes
  # block_multiple pads every stack to a multiple of that many blocks
  padded = jax.eval_shape(optlab.scale_by_shampoo(128, block_multiple=8).init, params)
  assert sorted(jax.tree.map(lambda x: x.shape, padded.stats)) == sorted(
      (((8, 128, 128), (8, 20, 20)), ((8, 128, 128),)))


@pytest.mark.parametrize("name", ["soap", "shampoo"])
def test_transposed_matrices_share_a_stack_and_match_alone(name):
  # A (6, 4) and a (4, 6) matrix (an MLP's in and out) are one stack of two
  # (4, 6) blocks; each leaf's updates equal those of a run on that leaf alone.
  params, grad_fn = _problem({"a": (6, 4), "b": (4, 6)}, seed=5)
  kw = {"learning_rate": 0.05, "precondition_frequency": 2} if name == "soap" else {
      "learning_rate": 0.05, "block_size": 8, "start_preconditioning_step": 1}
  tx = getattr(optlab, name)(**kw)
  with jax.enable_x64(True):
    state = jax.eval_shape(tx.init, params)
    stats = jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "stats"))
    shapes = [x.shape for s in stats if hasattr(s, "stats") for x in jax.tree.leaves(s.stats)]
    assert sorted(shapes) == [(2, 4, 4), (2, 6, 6)]
    both = harness.run_jax(tx, params, grad_fn, 6)
    for k in params:
      alone = harness.run_jax(getattr(optlab, name)(**kw), {k: params[k]},
                              lambda p, t, k=k: {k: grad_fn({**params, **p}, t)[k]}, 6)
      harness.assert_trajectories_close([{k: x[k]} for x in both], alone, 1e-9, 1e-12,
                                        f"{name} {k}")


def test_shampoo_preconditions_by_default():
  """From step 5 on the update is the preconditioned direction, not the graft."""
  params, grad_fn = _problem({"a": (6, 5)}, seed=4)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.shampoo(0.1), params, grad_fn, 8)
    plain = harness.run_jax(optlab.sgd(0.1, momentum=0.9, nesterov=True), params, grad_fn, 8)
  np.testing.assert_allclose(got[4]["a"], plain[4]["a"], rtol=1e-10)  # grafting only
  assert not np.allclose(got[5]["a"], plain[5]["a"], rtol=1e-3)


def test_muon_matrices_override():
  params = {"w": jnp.ones((4, 3)), "k": jnp.ones((2, 2, 3)), "b": jnp.ones(3)}
  g = {k: jnp.asarray(np.random.default_rng(0).normal(size=v.shape), jnp.float32)
       for k, v in params.items()}
  default = optlab.muon(0.1)
  as_tree = optlab.muon(0.1, matrices={"w": True, "k": True, "b": False})
  as_fn = optlab.muon(0.1, matrices=lambda p: {k: v.ndim >= 2 for k, v in p.items()})
  u0, _ = default.update(g, default.init(params), params)
  u1, _ = as_tree.update(g, as_tree.init(params), params)
  u2, _ = as_fn.update(g, as_fn.init(params), params)
  np.testing.assert_allclose(u1["w"], u0["w"], rtol=1e-6)
  np.testing.assert_allclose(u1["b"], u0["b"], rtol=1e-6)
  assert not np.allclose(u1["k"], u0["k"])  # the 3-d kernel is orthogonalised now
  flat = np.asarray(u1["k"]).reshape(4, 3) / -0.1
  s = np.linalg.svd(flat, compute_uv=False)
  assert np.all((s > 0.4) & (s < 1.6))
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------ compute_dtype
@pytest.mark.parametrize("name", ["soap", "shampoo", "muon"])
def test_compute_dtype_bfloat16_rotations(name):
  """bfloat16 inputs, float32 accumulation: the update moves by ~1e-2 relative (8 bits
  of mantissa), the statistics stay float32."""
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.normal(size=(24, 16)), jnp.float32),
            "b": jnp.zeros((16,), jnp.float32)}
  kw = {"start_preconditioning_step": 0} if name == "shampoo" else {}
  full = getattr(optlab, name)(1e-2, **kw)
  half = getattr(optlab, name)(1e-2, compute_dtype=jnp.bfloat16, **kw)
  s_full, s_half = full.init(params), half.init(params)
  for t in range(3):
    g = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
    u_full, s_full = full.update(g, s_full, params)
    u_half, s_half = half.update(g, s_half, params)
  rel = float(jnp.linalg.norm(u_half["w"] - u_full["w"]) / jnp.linalg.norm(u_full["w"]))
  assert 1e-4 < rel < 5e-2, rel  # it takes effect, and stays close
  assert u_half["w"].dtype == jnp.float32
  for x in jax.tree.leaves(s_half):
    assert x.dtype != jnp.bfloat16
  with pytest.raises(ValueError, match="compute_dtype"):
    getattr(optlab, name)(1e-2, compute_dtype=jnp.int32)

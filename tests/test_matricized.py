"""Unit tests of the square-matricized rank-1 moments (SMMF)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optlab
from optlab.primitives import matricized as M


def test_square_shape_is_the_most_nearly_square_factorisation():
  assert M.square_shape(48) == (8, 6)
  assert M.square_shape(12) == (4, 3)
  assert M.square_shape(7) == (7, 1)          # a prime stays a column
  assert M.square_shape(1) == (1, 1)
  assert M.square_shape(1024 * 1024) == (1024, 1024)
  assert M.square_shape(4096 * 1024) == (2048, 2048)


def test_nnmf_is_exact_for_rank_one_and_safe_for_zero_and_huge():
  rng = np.random.default_rng(0)
  a = np.outer(rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 4))
  r, c = M.nnmf_rank1(jnp.asarray(a))
  np.testing.assert_allclose(np.outer(r, c), a, rtol=1e-5)
  np.testing.assert_allclose(c.sum(), 1.0, rtol=1e-6)   # the shorter side is normalised
  r, c = M.nnmf_rank1(jnp.zeros((3, 2)))
  assert not np.any(r) and not np.any(c)
  r, c = M.nnmf_rank1(jnp.full((3, 2), 3e38, jnp.float32))
  assert np.all(np.isfinite(r)) and np.all(np.isfinite(np.outer(r, c)))


def test_sign_bits_round_trip():
  rng = np.random.default_rng(1)
  s = rng.uniform(size=(5, 3)) > 0.5
  bits = M.pack_signs(jnp.asarray(s))
  assert bits.shape == (2,) and bits.dtype == jnp.uint8
  np.testing.assert_array_equal(M.unpack_signs(bits, (5, 3)), s)


def test_first_step_and_state_layout():
  g = {"w": jnp.asarray([[1.0, -2.0, 3.0], [-0.5, 0.25, 4.0]]), "b": jnp.asarray([2.0, -1.0])}
  tx = M.scale_by_smmf(b1=0.9, eps=0.0)
  state = tx.init(g)
  # w: 6 entries -> (3, 2); b: 2 -> (2, 1)
  assert state.m_row.shape == (5,) and state.m_col.shape == (3,)
  assert state.sign.shape == (2,) and state.m is None  # no element-wise moments: None
  u, state = tx.update(g, state)
  # t = 1: b2_1 = 0, so v = g^2 and m = 0.1 g: the step is 0.1 sign(g)
  for k in g:
    np.testing.assert_allclose(u[k], 0.1 * np.sign(g[k]), rtol=1e-6)
  # after compression the signs are those of m (leaves in key order: b, then w)
  np.testing.assert_array_equal(M.unpack_signs(state.sign[1:], (3, 2)),
                                np.asarray(g["w"]).reshape(3, 2) > 0)


def test_second_step_uses_the_rank_one_moments():
  g1, g2 = jnp.asarray([[1.0, 3.0], [-2.0, -6.0]]), jnp.asarray([[-1.0, 0.5], [2.0, 1.0]])
  tx = M.scale_by_smmf(b1=0.5, eps=1e-8, decay_rate=0.5, growth_rate=1.0)
  state = tx.init({"w": g1})
  _, state = tx.update({"w": g1}, state)
  u, _ = tx.update({"w": g2}, state)
  m1, v1 = 0.5 * np.asarray(g1), np.asarray(g1) ** 2       # |g1| is rank 1: exact
  b2 = 1 - 2 ** -0.5
  m = 0.5 * m1 + 0.5 * np.asarray(g2)
  v = b2 * v1 + (1 - b2) * np.asarray(g2) ** 2
  np.testing.assert_allclose(u["w"], m / (np.sqrt(v) + 1e-8), rtol=1e-5)


def test_no_momentum_and_element_wise_vectors():
  g = {"w": jnp.asarray([[1.0, -2.0], [3.0, 4.0]]), "b": jnp.asarray([[2.0, -1.0, 0.5]])}
  tx = M.scale_by_smmf(b1=None, eps=0.0, vector_reshape=False)
  state = tx.init(g)
  assert state.m_row is None and state.sign is None and state.m is None  # no momentum
  assert state.v.shape == (3,)          # b is a vector once its size-1 dim is dropped
  u, _ = tx.update(g, state)
  for k in g:
    np.testing.assert_allclose(u[k], np.sign(g[k]), rtol=1e-6)


def test_zero_and_huge_gradients_stay_finite():
  params = {"w": jnp.zeros((4, 3)), "s": jnp.zeros(())}
  tx = optlab.smmf(0.1)
  state = tx.init(params)
  u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  assert all(not np.any(x) for x in jax.tree.leaves(u))
  huge = {"w": jnp.full((4, 3), 1e30).at[0, 0].set(-1e30), "s": jnp.asarray(3e38)}
  for _ in range(2):
    u, state = tx.update(huge, state, params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((u, state)))


def test_state_is_sublinear():
  params = {f"w{i}": jax.ShapeDtypeStruct((1024, 1024), jnp.float32) for i in range(4)}
  smmf = optlab.state_bytes(optlab.smmf(1e-3), params)
  adamw = optlab.state_bytes(optlab.adamw(1e-3), params)
  # per matrix: 4 float32 vectors of 1024 and 2^20 sign bits
  assert smmf.total <= 4 * (4 * 1024 * 4 + 2 ** 17) + 64
  assert smmf.total < 0.02 * adamw.total

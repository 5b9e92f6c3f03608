"""Unit tests of the factored second moments (Adafactor, CAME, AdaLomo)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optlab
from optlab.primitives import factored as F


def test_factored_dims_follow_optax():
  assert F.factored_dims((256, 128)) == (1, 0)
  assert F.factored_dims((64, 256, 128)) == (2, 1)
  assert F.factored_dims((256, 64)) is None          # second-largest dim below 128
  assert F.factored_dims((256,)) is None
  assert F.factored_dims((256, 128), factored=False) is None
  assert F.last_two_dims((3, 4, 5)) == (1, 2) and F.last_two_dims((7,)) is None


def test_adafactor_keeps_only_row_and_column_statistics():
  params = {"w": jnp.zeros((256, 128)), "t": jnp.zeros((4, 256, 130)), "b": jnp.zeros((128,))}
  state = optlab.adafactor(0.01).init(params)[0]
  # optax's naming: v_row averages over the largest dim, v_col over the second largest.
  # w (256, 128): v_row (128,), v_col (256,); t (4, 256, 130): v_row (4, 130), v_col (4, 256)
  assert state.v_row.shape == (128 + 4 * 130,)
  assert state.v_col.shape == (256 + 4 * 256,)
  assert state.v.shape == (128,)                     # only the 1-D bias is element-wise
  n = sum(x.size for x in jax.tree.leaves(params))
  assert optlab.state_bytes(optlab.adafactor(0.01), params).total < 0.02 * 4 * n


def test_reconstruction_is_exact_for_a_rank_one_second_moment():
  rng = np.random.default_rng(0)
  r, c = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 5)
  v = np.outer(r, c)
  stat = (jnp.asarray(v.mean(axis=1)), jnp.asarray(v.mean(axis=0)), None)
  np.testing.assert_allclose(F.factored_reconstruct(stat, (0, 1)), v, rtol=1e-5)


def test_first_adafactor_step_is_g_over_sqrt_g2_for_rank_one_g2():
  g = np.outer([1.0, 2.0, 3.0], [1.0, -0.5]).astype(np.float32)   # |g|^2 is rank 1
  tx = F.scale_by_factored_rms(min_dim_size_to_factor=1)
  u, _ = tx.update({"w": jnp.asarray(g)}, tx.init({"w": jnp.zeros((3, 2))}))
  np.testing.assert_allclose(u["w"], np.sign(g), rtol=1e-5)       # beta2_1 = 0


def test_came_state_shapes_and_confidence_is_factored():
  params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros((4,))}
  s = optlab.came(0.01).init(params)[0]
  assert s.v_row.shape == (6,) and s.v_col.shape == (4,) and s.v.shape == (4,)
  assert s.r_row.shape == (6,) and s.r_col.shape == (4,)
  assert s.mu["w"].shape == (6, 4)


def test_zero_and_huge_gradients_stay_finite():
  params = {"w": jnp.ones((6, 4)), "b": jnp.ones((4,))}
  for tx in (optlab.adafactor(0.01, min_dim_size_to_factor=2), optlab.came(0.01),
             optlab.adalomo(0.01)):
    s = tx.init(params)
    u, s = tx.update(jax.tree.map(jnp.zeros_like, params), s, params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    big = {"w": jnp.full((6, 4), 1e30).at[0, 0].set(-3e38), "b": jnp.full((4,), 1e-30)}
    u, s = tx.update(big, s, params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, s)))

"""Unit tests of the primitives behind the Adam variants, Ranger21, IVON and
complex momentum: hand-computed values and edge cases (zeros, 1e30)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _update(tx, g, p=None, **extra):
  return tx.update(g, tx.init(p if p is not None else g), p, **extra)


# ------------------------------------------------------------------------ AGC
def test_agc_clips_each_unit_to_its_share_of_the_param_norm():
  p = {"w": jnp.array([[3.0, 4.0], [0.0, 0.0]]), "b": jnp.array([1.0, 0.0])}
  g = {"w": jnp.array([[0.3, 0.4], [1.0, 0.0]]), "b": jnp.array([0.0, 0.005])}
  u, _ = _update(optlab.clip_by_agc(0.01, 1e-3), g, p)
  # row 0: |w|=5, limit 0.05, |g|=0.5 -> scaled by 0.1; row 1: |w|=0 -> eps 1e-3,
  # limit 1e-5; b: whole-vector norm 1, limit 0.01, |g|=0.005 -> kept.
  np.testing.assert_allclose(u["w"], [[0.03, 0.04], [1e-5, 0.0]], rtol=1e-5)
  np.testing.assert_allclose(u["b"], g["b"])
  huge = {"w": jnp.full((2, 2), 1e30), "b": jnp.zeros(2)}
  u, _ = _update(optlab.clip_by_agc(), huge, p)
  assert np.all(np.isfinite(np.asarray(u["w"])))
  with pytest.raises(ValueError, match="params"):
    _update(optlab.clip_by_agc(), g)


# ---------------------------------------------------- centralise / normalise
def test_centralize_and_normalize_gradient():
  g = {"w": jnp.array([[1.0, 3.0], [2.0, 2.0]]), "v": jnp.array([1.0, 2.0, 3.0]),
       "s": jnp.array(5.0)}
  u, _ = _update(optlab.centralize_gradient(), g)
  np.testing.assert_allclose(u["w"], [[-1.0, 1.0], [0.0, 0.0]])
  np.testing.assert_allclose(u["v"], g["v"])  # 1-d: untouched
  u, _ = _update(optlab.normalize_gradient_std(eps=0.0), g)
  np.testing.assert_allclose(u["v"], np.array([1.0, 2.0, 3.0]) / 1.0, rtol=1e-6)  # std 1
  np.testing.assert_allclose(u["w"], g["w"] / np.std(np.asarray(g["w"]), ddof=1), rtol=1e-6)
  assert float(u["s"]) == 5.0
  u, _ = _update(optlab.normalize_gradient_std(), {"x": jnp.full((3,), 1e30)})
  assert np.all(np.isfinite(np.asarray(u["x"])))  # constant tensor: std 0, finite
  z, _ = _update(optlab.normalize_gradient_std(), {"x": jnp.zeros(4)})
  assert np.all(np.asarray(z["x"]) == 0)


# ------------------------------------------------------------------------ PNM
def test_pnm_adam_alternates_its_two_momenta():
  b1, b2, eps = 0.9, 0.999, 0.0
  tx = optlab.scale_by_pnm_adam(b1, b2, eps, softplus_beta=None)
  g1, g2 = {"x": jnp.array([1.0, -2.0])}, {"x": jnp.array([0.5, 1.0])}
  s = tx.init(g1)
  u1, s = tx.update(g1, s)
  u2, s = tx.update(g2, s)
  noise = math.sqrt((1 + b2) ** 2 + b2 ** 2)
  ma = (1 - b1 ** 2) * np.array([1.0, -2.0])
  v1 = (1 - b2) * np.array([1.0, 4.0])
  np.testing.assert_allclose(u1["x"], 2 * ma / noise / (1 - b1) / (np.sqrt(v1) / math.sqrt(1 - b2)),
                             rtol=1e-5)
  mb = (1 - b1 ** 2) * np.array([0.5, 1.0])
  v2 = b2 * v1 + (1 - b2) * np.array([0.25, 1.0])
  want = (2 * mb - ma) / noise / (1 - b1 ** 2) / (np.sqrt(v2) / math.sqrt(1 - b2 ** 2))
  np.testing.assert_allclose(u2["x"], want, rtol=1e-5)
  z, _ = _update(optlab.scale_by_pnm_adam(), {"x": jnp.zeros(3)})
  assert np.all(np.asarray(z["x"]) == 0)


def test_stable_weight_decay_divides_by_the_root_mean_second_moment():
  b2 = 0.9
  tx = optlab.with_stable_weight_decay(optlab.scale_by_adam(b2=b2), 0.1, b2)
  g = {"a": jnp.array([1.0, 3.0]), "b": jnp.array(2.0)}
  p = {"a": jnp.array([1.0, -1.0]), "b": jnp.array(4.0)}
  u, _ = _update(tx, g, p)
  adam, _ = _update(optlab.scale_by_adam(b2=b2), g, p)
  scale = 0.1 / math.sqrt((1 + 9 + 4) / 3)  # v_hat = g^2 at step 1
  np.testing.assert_allclose(u["a"], adam["a"] + scale * p["a"], rtol=1e-5)
  np.testing.assert_allclose(u["b"], adam["b"] + scale * p["b"], rtol=1e-5)
  z, _ = _update(tx, jax.tree.map(jnp.zeros_like, g), p)  # zero moment: no decay, no NaN
  np.testing.assert_array_equal(np.asarray(z["a"]), 0.0)
  with pytest.raises(TypeError, match="second-moment"):
    _update(optlab.with_stable_weight_decay(optax.identity()), g, p)


def test_norm_loss_pulls_units_towards_norm_one():
  p = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]]), "z": jnp.zeros(2)}
  u, _ = _update(optlab.add_norm_loss(0.5, eps=0.0), jax.tree.map(jnp.zeros_like, p), p)
  np.testing.assert_allclose(u["w"][0], (1 - 1 / 5) * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(u["w"][1], (1 - 1 / 0.5) * np.array([0.3, 0.4]), rtol=1e-6)
  u, _ = _update(optlab.add_norm_loss(), jax.tree.map(jnp.zeros_like, p), p)
  assert np.all(np.asarray(u["z"]) == 0)  # a zero unit stays finite


# ------------------------------------------------------------- Coupled Adam
def test_coupled_second_moment_averages_over_the_vocabulary():
  rule = optlab.rules.coupled_ema_sq(0.5, {"embed": True, "w": False})
  g = {"embed": jnp.array([[1.0, 2.0], [3.0, 0.0]]), "w": jnp.array([[1.0, 2.0], [3.0, 0.0]])}
  _, scale = rule.update(rule.init(g), g, jnp.asarray(1))
  np.testing.assert_allclose(scale["embed"], np.sqrt([[5.0, 2.0], [5.0, 2.0]]), rtol=1e-6)
  np.testing.assert_allclose(scale["w"], np.abs(np.asarray(g["w"])), rtol=1e-6)
  paths = optlab.rules.embedding_paths({"Embed_0": {"embedding": jnp.zeros((4, 2))},
                                        "Dense_0": {"kernel": jnp.zeros((2, 2))}})
  assert paths == {"Embed_0": {"embedding": True}, "Dense_0": {"kernel": False}}


# ----------------------------------------------------------- complex momentum
def test_complex_momentum_is_heavy_ball_for_a_real_beta_and_rotates_otherwise():
  g = {"x": jnp.array([1.0, -2.0])}
  tx = optlab.scale_by_complex_momentum(0.5, 0.0)
  s = tx.init(g)
  u, s = tx.update(g, s)
  u, s = tx.update(g, s)
  np.testing.assert_allclose(u["x"], 1.5 * np.array([1.0, -2.0]))  # trace: g + 0.5 g
  tx = optlab.scale_by_complex_momentum(0.5, math.pi / 2)  # beta = 0.5 i
  s = tx.init(g)
  u, s = tx.update(g, s)   # mu = -g
  u, s = tx.update(g, s)   # mu = 0.5i(-g) - g: Re = -g
  np.testing.assert_allclose(u["x"], np.array([1.0, -2.0]), atol=1e-7)
  np.testing.assert_allclose(s.mu_im["x"], -0.5 * np.array([1.0, -2.0]), atol=1e-7)


# ----------------------------------------------------------------------- IVON
def test_ivon_sample_params_matches_the_noise_of_the_update():
  """The helper's sample is the one the update differentiates at: with a linear
  loss l(p) = sum(c p), grad = c everywhere, and f = ess (h + wd) noise * c."""
  p = {"w": jnp.array([0.5, -1.0, 2.0])}
  c = jnp.array([1.0, 2.0, -1.0])
  tx = optlab.scale_by_ivon(ess=4.0, hess_init=1.0, b2=0.5, weight_decay=1e-4, seed=7)
  s = tx.init(p)
  sample = optlab.ivon_sample_params(s, p)
  noise = sample["w"] - p["w"]
  # std 1 / sqrt(ess (h + wd)) ~ 0.5; reproducible from the seed
  np.testing.assert_array_equal(np.asarray(optlab.ivon_sample_params(tx.init(p), p)["w"]),
                                np.asarray(sample["w"]))
  _, s1 = tx.update(p, s, p, obj_fn=lambda q: jnp.sum(c * q["w"]))
  f = 4.0 * (1.0 + 1e-4) * noise * c
  h = 0.5 * 1.0 + 0.5 * f + 0.5 * 0.25 * (1.0 - f) ** 2 / (1.0 + 1e-4)
  np.testing.assert_allclose(s1.hess["w"], h, rtol=1e-5)
  # Without obj_fn (use_obj_fn=False) the incoming gradient is used with the same noise.
  tx2 = optlab.scale_by_ivon(ess=4.0, hess_init=1.0, b2=0.5, weight_decay=1e-4, seed=7,
                             use_obj_fn=False)
  _, s2 = tx2.update({"w": c}, tx2.init(p), p)
  np.testing.assert_allclose(s2.hess["w"], s1.hess["w"], rtol=1e-6)
  with pytest.raises(TypeError, match="obj_fn"):
    tx.update(p, s, p)


# -------------------------------------------------------------------- Gravity
def test_gravity_two_steps_match_the_official_keras_formula():
  lr, beta = 0.1, 0.9
  tx = optlab.scale_by_gravity(lr, alpha=0.0, beta=beta)  # alpha = 0: V_0 = 0
  g1, g2 = jnp.array([0.5, -2.0, 0.0]), jnp.array([1.0, 0.25, -0.5])
  state = tx.init({"w": jnp.zeros(3)})
  u1, state = tx.update({"w": g1}, state)
  u2, _ = tx.update({"w": g2}, state)
  zeta = lambda g: g / (1 + (g * np.abs(g).max()) ** 2)
  v1 = 0.5 * zeta(np.asarray(g1))                 # b_0 = 1 / 2
  b1 = (beta + 1) / 3
  np.testing.assert_allclose(u1["w"], v1, rtol=1e-6)
  np.testing.assert_allclose(u2["w"], b1 * v1 + (1 - b1) * zeta(np.asarray(g2)), rtol=1e-6)


def test_gravity_initial_velocity_and_edge_cases():
  tx = optlab.scale_by_gravity(0.5, alpha=0.02, seed=3)
  v0 = tx.init({"w": jnp.zeros((200, 50))}).velocity["w"]
  assert abs(float(jnp.std(v0)) - 0.04) < 2e-3 and abs(float(jnp.mean(v0))) < 2e-3
  tx = optlab.scale_by_gravity(0.5, alpha=0.0)
  state = tx.init({"w": jnp.zeros(3)})
  u, state = tx.update({"w": jnp.zeros(3)}, state)
  np.testing.assert_array_equal(u["w"], 0.0)
  u, _ = tx.update({"w": jnp.array([1e30, -3e38, 1.0])}, state)
  assert np.all(np.isfinite(np.asarray(u["w"])))

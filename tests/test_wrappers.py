"""Wrappers around any inner chain: lookahead, schedule_free, with_gradient_noise,
switch (+ SWATS trigger), xgrad and sgg.

Each is run around several inner chains (AdamW, Lion, heavy-ball SGD and the
second-order SOAP) and checked against optax's own wrapper where optax has
one, or against its defining property.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

INNERS = {
    "adamw": lambda: optlab.adamw(0.01, weight_decay=0.01),
    "lion": lambda: optlab.lion(0.003),
    "sgd_momentum": lambda: optlab.sgd(0.05, momentum=0.9),
    "soap": lambda: optlab.soap(0.01, precondition_frequency=2),
}
# Every wrapper runs around the three first-order chains; the weight-averaging
# wrappers also around the second-order SOAP (its compilation dominates this
# file's run time, so the other wrappers, which touch the inner chain only
# through its updates, skip it).
by_inner = pytest.mark.parametrize("inner", ["adamw", "lion", "sgd_momentum"])
by_inner_2nd = pytest.mark.parametrize("inner", sorted(INNERS))


def _params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}


def _loss(p):
  return jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum(jnp.sin(p["b"]))


def _grad(p, t):
  return jax.tree.map(lambda g: g + 0.1 * jnp.cos(t + 1.0), jax.grad(_loss)(p))


def _run(tx, steps, params=None, grad=_grad, **extra):
  """Jitted steps; returns (params after each step, updates, final state)."""
  p = _params() if params is None else params
  s = tx.init(p)
  step = jax.jit(lambda p, s, t: tx.update(grad(p, t), s, p, **extra))
  ps, us = [], []
  for t in range(steps):
    u, s = step(p, s, t)
    p = optax.apply_updates(p, u)
    ps.append(p)
    us.append(u)
  return ps, us, s


def _close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ lookahead
@by_inner_2nd
def test_lookahead_matches_optax_fast_and_slow_weights(inner):
  tx = optlab.with_lookahead(INNERS[inner](), 3, 0.4)
  ref = optax.lookahead(INNERS[inner](), 3, 0.4)
  ps, _, s = _run(tx, 7)
  lp = optax.LookaheadParams.init_synced(_params())
  ls = ref.init(lp)
  step = jax.jit(lambda lp, ls, t: ref.update(_grad(lp.fast, t), ls, lp))
  for t in range(7):
    u, ls = step(lp, ls, t)
    lp = optax.apply_updates(lp, u)
    _close(ps[t], lp.fast)
  _close(optlab.lookahead_params(s), lp.slow)


def test_lookahead_syncs_params_to_slow_weights_and_can_reset():
  tx = optlab.with_lookahead(optlab.sgd(0.1, momentum=0.9), 2, 0.5, reset_state=True)
  ps, _, s = _run(tx, 4)
  _close(ps[-1], optlab.lookahead_params(s), rtol=0, atol=0)
  inner = optlab.find_state(s, optlab.WithLookaheadState).inner_state
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(inner)
             if jnp.ndim(x) > 0), "reset_state left a momentum"


def test_lookahead_rejects_bad_hyperparameters():
  with pytest.raises(ValueError, match="sync_period"):
    optlab.with_lookahead(optlab.sgd(0.1), 0)
  with pytest.raises(ValueError, match="slow_step_size"):
    optlab.with_lookahead(optlab.sgd(0.1), 5, 1.5)
  with pytest.raises(ValueError, match="params"):
    tx = optlab.with_lookahead(optlab.sgd(0.1))
    tx.update(_params(), tx.init(_params()))


# ------------------------------------------------------------- schedule_free
@by_inner_2nd
def test_schedule_free_matches_optax(inner):
  tx = optlab.schedule_free(INNERS[inner](), 0.01, b1=0.9)
  ref = optax.contrib.schedule_free(INNERS[inner](), 0.01, b1=0.9)
  ps, _, s = _run(tx, 6)
  qs, _, s2 = _run(ref, 6)
  for a, b in zip(ps, qs):
    _close(a, b)
  _close(optlab.schedule_free_eval_params(s, ps[-1]),
         optax.contrib.schedule_free_eval_params(s2, qs[-1]))


def test_schedule_free_sgd_is_an_average_of_the_base_sequence():
  """With b1 = 1 the params are x itself, the uniform average of z_1..z_t (r = 0,
  constant lr): check against the plain SGD sequence of the same gradients."""
  lr = 0.1
  tx = optlab.schedule_free(optlab.sgd(lr), lr, b1=1.0)
  const = lambda p, t: jax.tree.map(jnp.ones_like, p)  # z_t = z_0 - lr t
  ps, _, s = _run(tx, 4, grad=const)
  z0 = _params()
  # x_t = mean(z_1..z_t) = z_0 - lr (t + 1) / 2
  _close(ps[-1], jax.tree.map(lambda z: z - lr * 2.5, z0))
  _close(optlab.schedule_free_eval_params(s, ps[-1]), ps[-1])


def test_schedule_free_eval_params_needs_its_state():
  with pytest.raises(ValueError, match="ScheduleFreeState"):
    optlab.schedule_free_eval_params(optax.EmptyState(), _params())


# ------------------------------------------------------------- gradient noise
@by_inner
def test_gradient_noise_zero_eta_is_the_inner_chain(inner):
  ps, _, _ = _run(optlab.with_gradient_noise(INNERS[inner](), eta=0.0), 3)
  qs, _, _ = _run(INNERS[inner](), 3)
  _close(ps[-1], qs[-1], rtol=0, atol=0)


def test_gradient_noise_has_the_annealed_variance_and_is_reproducible():
  eta, gamma = 0.5, 0.55
  tx = optlab.with_gradient_noise(optax.identity(), eta, gamma, seed=3)
  big = {"x": jnp.zeros((200, 100))}
  s = tx.init(big)
  step = jax.jit(tx.update)
  for t in range(3):
    u, s = step(big, s)
    var = float(jnp.var(u["x"]))
    want = eta / (1 + t) ** gamma
    assert abs(var / want - 1) < 0.03, (t, var, want)
  again = tx.init(big)
  u1, _ = step(big, again)
  u2, _ = step(big, tx.init(big))
  assert np.array_equal(np.asarray(u1["x"]), np.asarray(u2["x"]))
  other = optlab.with_gradient_noise(optax.identity(), eta, gamma, seed=4)
  u3, _ = jax.jit(other.update)(big, other.init(big))
  assert not np.array_equal(np.asarray(u1["x"]), np.asarray(u3["x"]))


def test_gradient_noise_keeps_bf16():
  tx = optlab.with_gradient_noise(optax.identity(), 0.1)
  p = {"x": jnp.zeros((3,), jnp.bfloat16)}
  u, s = tx.update(p, tx.init(p))
  assert u["x"].dtype == jnp.bfloat16 and s.key.dtype == jnp.uint32 and s.key.shape == (2,)


def test_unzip_tree_also_for_an_empty_tree():
  from optlab.primitives.wrappers import unzip_tree
  a, b = unzip_tree({"x": 0, "y": 0}, {"x": (1, 2), "y": (3, 4)}, 2)
  assert a == {"x": 1, "y": 3} and b == {"x": 2, "y": 4}
  assert unzip_tree({}, {}, 3) == ({}, {}, {})  # jax.tree.transpose cannot do this one


# --------------------------------------------------------------------- switch
@by_inner
def test_switch_after_steps_runs_first_then_second(inner):
  second = lambda: optlab.sgd(0.02)
  tx = optlab.switch(INNERS[inner](), second(), optlab.after_steps(2))
  ps, us, s = _run(tx, 4)
  first_ps, first_us, _ = _run(INNERS[inner](), 2)
  _close(us[:2], first_us)
  # From step 3 on: plain SGD (scale 1) from where the first phase ended.
  _close(us[2], jax.tree.map(lambda g: -0.02 * g, _grad(ps[1], 2)))
  _close(us[3], jax.tree.map(lambda g: -0.02 * g, _grad(ps[2], 3)))
  st = optlab.find_state(s, optlab.SwitchState)
  assert bool(st.switched) and int(st.count) == 4


def test_swats_trigger_gamma_for_sgd_is_the_learning_rate():
  """For an SGD step p = -lr g, gamma = p.p / (-p.g) = lr, so lambda_hat = lr and
  the trigger fires on step 2 with scale lr."""
  trig = optlab.swats_trigger(b2=0.999, tol=1e-6)
  g = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
  p = jax.tree.map(lambda x: -0.3 * x, g)
  lam = trig.init()
  lam, fire, scale = trig.update(lam, g, p, jnp.asarray(1))
  assert not bool(fire)
  np.testing.assert_allclose(float(scale), 0.3, rtol=1e-6)
  lam, fire, scale = trig.update(lam, g, p, jnp.asarray(2))
  assert bool(fire)
  np.testing.assert_allclose(float(scale), 0.3, rtol=1e-6)
  # Orthogonal step and gradient: no estimate, lambda unchanged, no switch.
  lam2, fire, _ = trig.update(lam, {"a": jnp.array([2.0, 1.0]), "b": jnp.array(0.0)},
                              {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.0)},
                              jnp.asarray(3))
  assert not bool(fire) and float(lam2) == float(lam)
  # Huge entries: no overflow.
  huge = jax.tree.map(lambda x: x * 1e30, g)
  _, _, scale = trig.update(trig.init(), huge, jax.tree.map(lambda x: -x, huge), jnp.asarray(1))
  assert np.isfinite(float(scale))


# ---------------------------------------------------------------------- xgrad
@by_inner
def test_xgrad_with_zero_steps_is_the_inner_chain(inner):
  ps, _, _ = _run(optlab.xgrad(INNERS[inner](), steps=0.0), 3)
  qs, _, _ = _run(INNERS[inner](), 3)
  _close(ps[-1], qs[-1], rtol=0, atol=0)


def test_xgrad_takes_the_gradient_at_the_predicted_weights():
  lr = 0.1
  tx = optlab.xgrad(optlab.sgd(lr, momentum=0.9), steps=2.0, use_obj_fn=True)
  ps, us, s = _run(tx, 3, obj_fn=_loss)
  # By hand: the second step's gradient is taken at p1 + 2 u1.
  inner = optlab.sgd(lr, momentum=0.9)
  p0 = _params()
  u1, st = inner.update(jax.grad(_loss)(p0), inner.init(p0), p0)
  p1 = optax.apply_updates(p0, u1)
  predicted = jax.tree.map(lambda p, u: p + 2.0 * u, p1, u1)
  u2, _ = inner.update(jax.grad(_loss)(predicted), st, p1)
  _close(us[0], u1)
  _close(us[1], u2)
  _close(optlab.xgrad_params(optlab.find_state(s, optlab.XGradState), ps[-1], 2.0),
         jax.tree.map(lambda p, u: p + 2.0 * u, ps[-1], us[-1]))
  with pytest.raises(TypeError, match="obj_fn"):
    tx.update(_params(), tx.init(_params()), _params())


# ------------------------------------------------------------------------ sgg
def test_sgg_scales_each_group_to_the_tensor_mean():
  """With zero EMA decays, one clustering step gives s_i = mean|g| / mean_i|g|
  (identity inner: the statistic is |u| = |g|)."""
  tx = optlab.sgg(optax.identity(), n_clusters=2, recluster_interval=1,
                  ema_decay_clusters=0.0, ema_decay_scale=0.0, scale_min=0.01, scale_max=100.0)
  g = {"x": jnp.array([1.0, -1.0, 1.0, 10.0, -10.0, 10.0]), "s": jnp.array(2.0)}
  u, s = jax.jit(tx.update)(g, tx.init(g))
  np.testing.assert_array_equal(np.asarray(s.labels["x"]), [0, 0, 0, 1, 1, 1])
  np.testing.assert_allclose(np.asarray(u["x"]), [5.5, -5.5, 5.5, 5.5, -5.5, 5.5], rtol=1e-6)
  np.testing.assert_allclose(float(u["s"]), 2.0, rtol=1e-6)
  # Clipped into [scale_min, scale_max]; zero gradients give no NaN.
  tx = optlab.sgg(optax.identity(), n_clusters=2, recluster_interval=1,
                  ema_decay_clusters=0.0, ema_decay_scale=0.0)
  g = {"x": jnp.array([1e-3, 1e-3, 1e30, 1e30]), "s": jnp.array(0.0)}
  u, s = jax.jit(tx.update)(g, tx.init(g))
  assert np.all(np.isfinite(np.asarray(u["x"]))) and float(u["s"]) == 0.0
  assert np.all(np.asarray(s.scales) <= 10.0) and np.all(np.asarray(s.scales) >= 0.1)


@by_inner
def test_sgg_is_the_inner_chain_until_the_first_clustering(inner):
  ps, _, _ = _run(optlab.sgg(INNERS[inner](), recluster_interval=1000), 3)
  qs, _, _ = _run(INNERS[inner](), 3)
  _close(ps[-1], qs[-1], rtol=0, atol=0)
  ps, _, s = _run(optlab.sgg(INNERS[inner](), recluster_interval=2, ema_decay_scale=0.5), 4)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(ps[-1]))
  assert not np.allclose(np.asarray(s.scales), 1.0), "no clustering happened"

"""Unit tests of optlab.primitives.clipping (and MARS's clipped correction), with
values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives.clipping import safe_global_norm, safe_norm


def _update(tx, grads, params=None, state=None):
  state = tx.init(params if params is not None else grads) if state is None else state
  return jax.jit(tx.update)(grads, state, params)


def _close(a, b, rtol=1e-6, atol=0.0):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


# ------------------------------------------------------------------ norms
def test_safe_norm_plain_huge_tiny_and_zero():
  _close(safe_norm(jnp.array([3.0, 4.0])), 5.0)
  _close(safe_norm(jnp.array([3e30, -4e30], jnp.float32)), 5e30)   # squares overflow
  _close(safe_norm(jnp.array([3e-30, 4e-30], jnp.float32)), 5e-30)  # squares underflow
  assert float(safe_norm(jnp.zeros(3))) == 0.0
  rows = safe_norm(jnp.array([[3e30, 4e30], [0.0, 0.0], [6.0, 8.0]], jnp.float32), axis=1)
  _close(rows, [5e30, 0.0, 10.0])


def test_safe_global_norm():
  tree = {"a": jnp.array([3e30, 0.0], jnp.float32), "b": jnp.array([4e30], jnp.float32)}
  _close(safe_global_norm(tree), 5e30)
  _close(safe_global_norm({"a": jnp.array([1.0, 2.0]), "b": jnp.array(2.0)}), 3.0)
  assert float(safe_global_norm({})) == 0.0
  assert float(safe_global_norm({"a": jnp.zeros((2, 2))})) == 0.0


# ------------------------------------------------------------ element-wise
def test_clip_elementwise_and_dtype():
  u, _ = _update(optlab.clip(1.0), {"a": jnp.array([-3.0, 0.5, 2.0])})
  _close(u["a"], [-1.0, 0.5, 1.0])
  u, _ = _update(optlab.clip(1.0), {"a": jnp.array([-3.0, 0.5], jnp.bfloat16)})
  assert u["a"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="max_delta"):
    optlab.clip(-1.0)


# ------------------------------------------------------------- global norm
def test_clip_by_global_norm_values():
  g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}       # norm 5
  u, _ = _update(optlab.clip_by_global_norm(1.0), g)
  _close(u["a"], [0.6, 0.0])
  _close(u["b"], [0.8])
  u, _ = _update(optlab.clip_by_global_norm(10.0), g)            # below the limit
  _close(u["a"], [3.0, 0.0])
  _close(u["b"], [4.0])


def test_clip_by_global_norm_zero_huge_tiny():
  tx = optlab.clip_by_global_norm(1.0)
  u, _ = _update(tx, {"a": jnp.zeros(3), "b": jnp.zeros(())})
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  huge = {"a": jnp.array([3e30, 0.0], jnp.float32), "b": jnp.array([4e30], jnp.float32)}
  u, _ = _update(tx, huge)
  _close(u["a"], [0.6, 0.0], rtol=1e-6)
  _close(u["b"], [0.8], rtol=1e-6)
  tiny = {"a": jnp.array([3e-30, 0.0], jnp.float32), "b": jnp.array([4e-30], jnp.float32)}
  u, _ = _update(optlab.clip_by_global_norm(1e-30), tiny)       # norm 5e-30 -> factor 0.2
  _close(u["a"], [6e-31, 0.0], rtol=1e-5)
  _close(u["b"], [8e-31], rtol=1e-5)


def test_clip_by_global_norm_bf16_and_bad_max():
  u, _ = _update(optlab.clip_by_global_norm(1.0),
                 {"a": jnp.array([3.0, 4.0], jnp.bfloat16)})
  assert u["a"].dtype == jnp.bfloat16
  _close(u["a"], [0.6, 0.8], rtol=1e-2)
  with pytest.raises(ValueError, match="max_norm"):
    optlab.clip_by_global_norm(0.0)


# ------------------------------------------------------------- tensor norm
def test_clip_by_tensor_norm_per_leaf():
  g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4]), "s": jnp.array(-7.0),
       "z": jnp.zeros((2, 2)), "h": jnp.array([[3e30], [4e30]], jnp.float32)}
  u, _ = _update(optlab.clip_by_tensor_norm(1.0), g)
  _close(u["a"], [0.6, 0.8])
  _close(u["b"], [0.3, 0.4])      # norm 0.5: untouched
  _close(u["s"], -1.0)
  assert np.all(np.asarray(u["z"]) == 0)
  _close(u["h"], [[0.6], [0.8]], rtol=1e-6)


# ------------------------------------------------------------- clip_spikes
def _rms_inner(b2, eps=0.0):
  """u = g / (sqrt(v) + eps) with v <- b2 v + (1 - b2) g^2, no bias correction."""
  return optlab.scale_by_moments(None, optlab.rules.ema_sq(b2, debias=False), eps=eps)


def test_clip_spikes_by_hand():
  tx = optlab.clip_spikes(_rms_inner(0.5), threshold=4.0, delay=2)
  p = {"x": jnp.zeros(2)}
  state = tx.init(p)
  step = jax.jit(tx.update)
  # step 1 (t < delay): no clipping; v1 = 0.5 * g^2 = [0.5, 2].
  u, state = step({"x": jnp.array([1.0, -2.0])}, state)
  _close(state.inner_state.second.nu["x"], [0.5, 2.0])
  # step 2: limits theta * v1 = [2, 8]; g^2 = [1, 100] -> the second is clipped
  # to -sqrt(8); v2 = 0.5 * v1 + 0.5 * [1, 8] = [0.75, 5].
  u, state = step({"x": jnp.array([1.0, -10.0])}, state)
  _close(state.inner_state.second.nu["x"], [0.75, 5.0])
  _close(u["x"], [1.0 / np.sqrt(0.75), -np.sqrt(8.0) / np.sqrt(5.0)])
  assert int(state.count) == 2


def test_clip_spikes_gating_with_period():
  # period 3, delay 2: clipping is on at steps t with t % 3 >= 2, i.e. t = 2, 5, 8.
  tx = optlab.clip_spikes(_rms_inner(0.5), threshold=1.0, delay=2, period=3)
  state = tx.init({"x": jnp.zeros(1)})
  step = jax.jit(tx.update)
  clipped = []
  for t in range(1, 9):
    v_before = float(state.inner_state.second.nu["x"][0])
    g = 100.0 * t  # always a spike once v > 0
    _, state = step({"x": jnp.array([g])}, state)
    v_after = float(state.inner_state.second.nu["x"][0])
    g_seen = np.sqrt((v_after - 0.5 * v_before) / 0.5)
    clipped.append(bool(g_seen < 0.99 * g))
  assert clipped == [False, True, False, False, True, False, False, True]


def test_clip_spikes_threshold_zero_disables_and_edge_values():
  tx = optlab.clip_spikes(_rms_inner(0.5), threshold=0.0)
  state = tx.init({"x": jnp.zeros(2)})
  u, state = jax.jit(tx.update)({"x": jnp.array([1.0, -2.0])}, state)
  _close(state.inner_state.second.nu["x"], [0.5, 2.0])           # nothing clipped at v = 0
  # Zero and huge gradients stay finite; a huge spike is clipped to sqrt(theta v).
  tx = optlab.clip_spikes(_rms_inner(0.5, eps=1e-8), threshold=4.0, delay=2)
  state = tx.init({"x": jnp.zeros(2)})
  step = jax.jit(tx.update)
  u, state = step({"x": jnp.array([0.0, 1.0], jnp.float32)}, state)
  u, state = step({"x": jnp.array([0.0, 1e30], jnp.float32)}, state)
  assert np.all(np.isfinite(np.asarray(u["x"])))
  _close(state.inner_state.second.nu["x"], [0.0, 0.25 + 0.5 * 4.0 * 0.5])


def test_clip_spikes_needs_a_second_moment():
  tx = optlab.clip_spikes(optax.identity())
  with pytest.raises(TypeError, match="second-moment"):
    tx.update({"x": jnp.ones(2)}, tx.init({"x": jnp.ones(2)}))
  with pytest.raises(ValueError, match="threshold"):
    optlab.clip_spikes(optlab.scale_by_adam(), threshold=-1.0)


# --------------------------------------------------------- momentum reset
def _momentum_inner():
  return optlab.scale_by_moments(optlab.rules.ema(0.5, debias=False), None)


def test_momentum_reset_zeroes_moments_keeps_count():
  tx = optlab.with_momentum_reset(_momentum_inner(), interval=3, warmup_steps=0)
  state = tx.init({"x": jnp.zeros(())})
  step = jax.jit(tx.update)
  outs = []
  for _ in range(6):
    u, state = step({"x": jnp.array(1.0)}, state)
    outs.append(float(u["x"]))
  # m: .5, .75, reset -> .5, .75, .875, reset -> .5
  _close(outs, [0.5, 0.75, 0.5, 0.75, 0.875, 0.5])
  assert int(state.inner_state.count) == 6   # the inner step count is not reset


def test_momentum_reset_cosine_warmup():
  tx = optlab.with_momentum_reset(optax.identity(), interval=3, warmup_steps=2)
  state = tx.init({"x": jnp.zeros(())})
  step = jax.jit(tx.update)
  factors = []
  for _ in range(7):
    u, state = step({"x": jnp.array(1.0)}, state)
    factors.append(float(u["x"]))
  c1 = 1 - 0.99 * (1 + np.cos(np.pi / 3)) / 2        # = 0.2575
  _close(factors, [1.0, 1.0, 0.01, c1, 1.0, 0.01, c1], rtol=1e-6)


def test_momentum_reset_traced_interval_matches_static():
  g = {"x": jnp.array([1.0, -2.0])}

  def run(interval, warmup):
    tx = optlab.with_momentum_reset(_momentum_inner(), interval, warmup)
    state, outs = tx.init(g), []
    for _ in range(5):
      u, state = tx.update(g, state)
      outs.append(u["x"])
    return jnp.stack(outs)

  want = run(2, 1)
  got = jax.jit(run)(jnp.asarray(2), jnp.asarray(1))   # as optax.inject_hyperparams does
  _close(got, want)


def test_momentum_reset_rejects_undeclared_state():
  from typing import NamedTuple

  class Undeclared(NamedTuple):
    buf: jax.Array

  inner = optax.GradientTransformation(lambda p: Undeclared(jax.tree.map(jnp.zeros_like, p)),
                                       lambda u, s, p=None: (u, s))
  tx = optlab.with_momentum_reset(inner, interval=2)
  with pytest.raises(TypeError, match="with_momentum_reset.*declare_state"):
    tx.update({"x": jnp.ones(2)}, tx.init({"x": jnp.ones(2)}))


# --------------------------------------------------------------------- MARS
def test_mars_correction_by_hand():
  # b1 = 0.5, gamma = 1: c = g + 1 * (g - g_prev) = 2 g - g_prev.
  tx = optlab.add_mars_correction(0.5, 1.0, max_norm=1.0)
  state = tx.init({"w": jnp.zeros(2)})
  step = jax.jit(tx.update)
  u, state = step({"w": jnp.array([0.3, 0.4])}, state)      # c = [.6, .8], norm 1: kept
  _close(u["w"], [0.6, 0.8])
  _close(state.prev_grad["w"], [0.3, 0.4])
  u, state = step({"w": jnp.array([0.1, 0.0])}, state)      # c = [-.1, -.4]
  _close(u["w"], [-0.1, -0.4])
  u, state = step({"w": jnp.array([3.0, 4.0])}, state)      # c = [5.9, 8], clipped
  c = np.array([5.9, 8.0])
  _close(u["w"], c / np.linalg.norm(c))


def test_mars_matrices_only_and_no_clip():
  tx = optlab.add_mars_correction(0.5, 1.0, max_norm=None, matrices_only=True)
  g = {"m": jnp.full((2, 2), 3.0), "v": jnp.array([3.0, 4.0]), "s": jnp.array(2.0)}
  u, state = _update(tx, g)
  _close(u["m"], np.full((2, 2), 6.0))           # corrected, not clipped
  _close(u["v"], [3.0, 4.0])                     # 1-d: passed through
  _close(u["s"], 2.0)
  _close(state.prev_grad["v"], [3.0, 4.0])       # but remembered
  z, _ = _update(optlab.add_mars_correction(), {"m": jnp.zeros((2, 2))})
  assert np.all(np.asarray(z["m"]) == 0)


def test_mars_state_is_linear_for_the_basis_protocol():
  from optlab.primitives.basis import LINEAR_STAT, state_declaration
  state = optlab.add_mars_correction().init({"w": jnp.zeros((2, 2))})
  assert state_declaration(state) == {"prev_grad": LINEAR_STAT}


def test_adamp_first_moment_rules():
  # nesterov_ema, b1 = 0.5: m1 = .5 g; out = (.5 m1 + .5 g) / (1 - .5) = 1.5 g.
  tx = optlab.scale_by_moments(optlab.rules.nesterov_ema(0.5), None)
  u, _ = _update(tx, {"x": jnp.array([2.0])})
  _close(u["x"], [3.0])
  # heavy_ball(0.5, nesterov, dampening=0.2): buf = .8 g; out = g + .5 buf = 1.4 g.
  tx = optlab.scale_by_moments(optlab.rules.heavy_ball(0.5, nesterov=True, dampening=0.2), None)
  u, _ = _update(tx, {"x": jnp.array([2.0])})
  _close(u["x"], [2.8])


# --------------------------------------------------- decay after the step
def test_decay_after_step_scales_the_updated_weights():
  p = {"w": jnp.array([2.0, -4.0]), "b": jnp.array(1.0)}
  d = {"w": jnp.array([0.5, 1.0]), "b": jnp.array(-0.25)}
  # with a learning rate: new weights are (p + d) * (1 - lr * wd)
  tx = optlab.add_decayed_weights_after_step(0.1, 0.5)
  out, _ = _update(tx, d, p)
  for k in p:
    _close(np.asarray(p[k]) + np.asarray(out[k]),
           (np.asarray(p[k]) + np.asarray(d[k])) * (1 - 0.05))
  # without one (LaProp): (p + d) * (1 - wd)
  out, _ = _update(optlab.add_decayed_weights_after_step(0.1), d, p)
  _close(np.asarray(p["w"]) + np.asarray(out["w"]), (np.array([2.5, -3.0])) * 0.9)
  # masked leaves pass through
  out, _ = _update(optlab.add_decayed_weights_after_step(0.1, 0.5, mask={"w": False, "b": True}),
                   d, p)
  _close(out["w"], d["w"])
  _close(out["b"], -0.25 - 0.05 * 0.75)
  with pytest.raises(ValueError, match="params"):
    optlab.add_decayed_weights_after_step(0.1).update(d, optlab.add_decayed_weights_after_step(
        0.1).init(p))


def test_decay_after_step_follows_a_schedule_with_the_zero_based_step():
  sched = lambda step: 0.1 * (step + 1)
  tx = optlab.add_decayed_weights_after_step(1.0, sched)
  p, d = {"w": jnp.array([1.0])}, {"w": jnp.array([0.0])}
  state = tx.init(p)
  for step in range(3):
    out, state = tx.update(d, state, p)
    _close(out["w"], [-0.1 * (step + 1)])

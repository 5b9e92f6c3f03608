"""Unit tests of `scale_by_core` / `core` (the CoRe optimizer, arXiv:2307.15663):
hand-computed steps, the Rprop-like step sizes, the plasticity factors and edge
cases (zero gradients, 1e30 entries, bad hyperparameters)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _steps(tx, grads, params):
  state = tx.init(params)
  outs = []
  for g in grads:
    u, state = tx.update(g, state, params)
    outs.append(u)
  return outs, state


def test_first_step_is_signed_step_size_plus_step_scaled_decay():
  # Step 0: m' = (1 - b1a) g and v = (1 - b2) g^2 with b1 = b1a, so the bias
  # corrections cancel: u = lr * g / (|g| + eps) and s stays lr (m = 0: no sign).
  p = {"w": jnp.array([1.0, -2.0, 3.0])}
  g = {"w": jnp.array([2.0, -3.0, 0.0])}
  (u,), state = _steps(optlab.core(0.01, weight_decay=0.1), [g], p)
  step = np.array([0.01, -0.01, 0.0])
  want = -(step + 0.1 * np.abs(step) * np.array([1.0, -2.0, 3.0]))
  np.testing.assert_allclose(u["w"], want, rtol=1e-6)
  np.testing.assert_allclose(state[0].step_size["w"], [0.01] * 3)


def test_step_sizes_grow_on_agreement_shrink_on_flips_and_are_clipped():
  p = {"w": jnp.zeros(3)}
  tx = optlab.core(0.01, step_size_min=0.008, step_size_max=0.0125, weight_decay=0.0)
  g1 = {"w": jnp.array([1.0, 1.0, 0.0])}
  g2 = {"w": jnp.array([1.0, -5.0, 0.0])}  # keeps, flips (m' ~ 0.74*0.26 - 0.26*5 < 0), zero
  g3 = {"w": jnp.array([1.0, -5.0, 0.0])}
  _, state = _steps(tx, [g1, g2], p)
  # 0.01 * 0.7375 is clipped to 0.008.
  np.testing.assert_allclose(state[0].step_size["w"], [0.012, 0.008, 0.01], rtol=1e-6)
  _, state = _steps(tx, [g1, g2, g3], p)
  # 0.012 * 1.2 clipped to 0.0125; 0.008 * 1.2 (the sign is kept now); unchanged.
  np.testing.assert_allclose(state[0].step_size["w"], [0.0125, 0.0096, 0.01], rtol=1e-6)


def test_two_steps_match_the_official_formula():
  b1a, b1b, b1c, b2, eps, lr = 0.7375, 0.8125, 250.0, 0.99, 1e-8, 1e-3
  g = [np.array([0.5, -1.0]), np.array([0.25, 2.0])]
  (_, u2), _ = _steps(optlab.core(lr, weight_decay=0.0), [{"w": jnp.asarray(x)} for x in g],
                      {"w": jnp.zeros(2)})
  m1, v1 = (1 - b1a) * g[0], (1 - b2) * g[0] ** 2
  b1 = b1b + (b1a - b1b) * np.exp(-(1 / b1c) ** 2)
  m2, v2 = b1 * m1 + (1 - b1) * g[1], b2 * v1 + (1 - b2) * g[1] ** 2
  s = lr * np.where(m2 * m1 > 0, 1.2, 0.7375)
  want = -s * (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
  np.testing.assert_allclose(u2["w"], want, rtol=1e-5)


def test_plasticity_freezes_the_most_important_weights():
  # score_history=1, frozen=0.5: from step 1 the two weights with the largest
  # scores (largest |g| here, since score = m' u after step 0) do not move.
  p = {"w": jnp.zeros(4)}
  g = {"w": jnp.array([4.0, 1.0, 3.0, 2.0])}
  tx = optlab.core(0.005, score_history=1, frozen=0.5, weight_decay=0.0)
  (u0, u1), state = _steps(tx, [g, g], p)
  assert np.all(np.asarray(u0["w"]) != 0)
  np.testing.assert_array_equal(np.asarray(u1["w"]) == 0, [True, False, True, False])
  # Frozen weights keep their step size (P = 0: no sign information).
  np.testing.assert_allclose(state[0].step_size["w"], [0.005, 0.006, 0.005, 0.006], rtol=1e-6)
  # Without plasticity every weight moves.
  (_, u1), _ = _steps(optlab.core(0.005, weight_decay=0.0), [g, g], p)
  assert np.all(np.asarray(u1["w"]) != 0)


def test_sign_variant_uses_no_second_moment():
  p = {"w": jnp.zeros(3)}
  g = {"w": jnp.array([1e-6, -7.0, 0.0])}
  (u,), state = _steps(optlab.core(0.01, adam_like=False, weight_decay=0.0), [g], p)
  np.testing.assert_allclose(u["w"], [-0.01, 0.01, 0.0])
  assert state[0].nu == ()


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_zero_and_huge_gradients_stay_finite(eps):
  p = {"w": jnp.ones((2, 3)), "s": jnp.array(2.0)}
  zero = jax.tree.map(jnp.zeros_like, p)
  huge = {"w": jnp.array([[1e30, -1e30, 0.0], [3e38, 1.0, -1.0]]), "s": jnp.array(-1e30)}
  tx = optlab.core(1e-3, eps=eps, score_history=1, frozen=0.5)
  outs, state = _steps(tx, [zero, huge, huge, zero], p)
  for tree in outs + [state]:
    for leaf in jax.tree.leaves(tree):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  np.testing.assert_array_equal(outs[0]["w"], 0.0)
  assert float(outs[1]["s"]) > 0  # a step against the (negative) huge gradient


def test_bfloat16_and_jit_keep_dtypes():
  p = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optlab.core(1e-3)
  state = tx.init(p)
  u, state2 = jax.jit(tx.update)({"w": jnp.ones(3, jnp.bfloat16)}, state, p)
  assert u["w"].dtype == jnp.bfloat16
  dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]
  assert dtypes(state) == dtypes(state2)


def test_bad_hyperparameters_are_named():
  for kw, name in [({"b2": 1.0}, "b2"), ({"eta_plus": 0.5}, "eta_plus"),
                   ({"eta_minus": 1.5}, "eta_minus"), ({"frozen": 2.0}, "frozen"),
                   ({"step_size_min": 0.1, "step_size_max": 0.01}, "step_size_min"),
                   ({"b1c": 0.0}, "b1c"), ({"eps": -1.0}, "eps")]:
    with pytest.raises(ValueError, match=name):
      optlab.core(1e-3, **kw)
  with pytest.raises(TypeError, match="score_history"):  # a traced fraction
    jax.jit(lambda f: optlab.scale_by_core(frozen=f).init({"w": jnp.ones(2)}))(0.1)
  tx = optlab.core(1e-3)
  g = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="params"):
    tx.update(g, tx.init(g))
  no_decay = optlab.core(1e-3, weight_decay=0.0)
  u, _ = no_decay.update(g, no_decay.init(g))  # no decay: params not needed
  np.testing.assert_allclose(u["w"], -1e-3 * np.ones(2), rtol=1e-5)


def test_inject_hyperparams_reads_the_initial_step_size():
  p = {"w": jnp.array([1.0, 2.0])}
  g = {"w": jnp.array([0.3, -0.1])}
  plain, _ = _steps(optlab.core(0.005), [g, g, g], p)
  injected, _ = _steps(optax.inject_hyperparams(optlab.core)(learning_rate=0.005), [g, g, g], p)
  for a, b in zip(plain, injected):
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)

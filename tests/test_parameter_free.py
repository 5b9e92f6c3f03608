"""Unit tests of the step-size-free primitives (optlab.primitives.parameter_free):
DoG / LDoG, D-Adaptation, MoMo, preconditioned Polyak steps and SANIA.

Values are computed by hand or with small NumPy loops written here; the
recipes' full trajectories are checked against tests/reference in
test_reference.py, and options whose optax counterpart differs (so they cannot
sit in the catalog's ``cases``) are checked against the reference below.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives import parameter_free as PF
from tests import harness, problems
from tests import recipe_config as cfg


def _run(tx, grads, params, **extra):
  """Applies `tx` to a list of gradients, moving params; returns (updates, state, params)."""
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = tx.update(g, state, params, **extra)
    params = optax.apply_updates(params, u)
    out.append(u)
  return out, state, params


def _check_reference(name, steps=25, **kwargs):
  """The recipe `name` with `kwargs` against its NumPy reference (float64)."""
  recipe = optlab.get_recipe(name)
  kwargs = {**cfg.hparams(recipe), **kwargs}
  params, grad_fn, loss_fn = problems.reference_problem()
  want = harness.reference_fn(recipe)(params, grad_fn, steps, **kwargs)
  with jax.enable_x64(True):
    got = harness.run_jax(recipe.factory(**kwargs), params, grad_fn, steps, loss_fn=loss_fn,
                          recipe=recipe)
  harness.assert_trajectories_close(got, want, 1e-5, 1e-9, f"{name}{kwargs}")


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------ DoG
def test_dog_first_steps_by_hand():
  params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
  tx = PF.scale_by_dog(("heuristic", 0.1), eps=0.0)
  g1 = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([2.0])}
  (u1,), state, p1 = _run(tx, [g1], params)
  # r_eps = 0.1 * (1 + ||x0||) = 0.6; sum = ||g1||^2 = 5
  eta1 = 0.6 / math.sqrt(5.0)
  np.testing.assert_allclose(u1["a"], [eta1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(u1["b"], [2 * eta1], rtol=1e-6)
  # The update is a step size, not a descent step: the caller negates it.
  p1 = jax.tree.map(lambda p, u: p - u, params, u1)
  g2 = {"a": jnp.array([0.0, 3.0]), "b": jnp.array([0.0])}
  u2, state = tx.update(g2, state, p1)
  dist = eta1 * math.sqrt(5.0)  # ||x1 - x0||, equal to 0.6: rbar stays 0.6
  eta2 = max(0.6, dist) / math.sqrt(5.0 + 9.0)
  np.testing.assert_allclose(u2["a"], [0.0, 3 * eta2], rtol=1e-6)
  assert state.count == 2 and state.rbar.shape == (1,)


def test_ldog_has_one_step_size_per_tensor():
  params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
  tx = PF.scale_by_dog(("heuristic", 0.1), eps=0.0, layerwise=True)
  g = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([2.0])}
  (u,), state, _ = _run(tx, [g], params)
  np.testing.assert_allclose(u["a"], [0.1 * 6 / 1.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(u["b"], [0.1 * 1 / 2.0 * 2.0], rtol=1e-6)
  assert state.rbar.shape == (2,) and state.sum_sq.shape == (2,)


def test_dog_takes_x0_from_the_first_update():
  tx = PF.scale_by_dog(("distance", 1.0), eps=0.0)
  state = tx.init({"a": jnp.zeros(2)})  # init sees other params than the first step
  p = {"a": jnp.array([5.0, 5.0])}
  _, state = tx.update({"a": jnp.array([1.0, 0.0])}, state, p)
  np.testing.assert_allclose(state.x0["a"], [5.0, 5.0])
  np.testing.assert_allclose(state.rbar, [1.0])  # the distance to x0 is 0, not ||p||


def test_dog_learning_rate_init_step_and_zero_gradients():
  params = {"a": jnp.array([1.0, 2.0])}
  tx = PF.scale_by_dog(("learning_rate", 0.25), eps=0.0)
  (u1, u2), _, _ = _run(tx, [{"a": jnp.array([2.0, 0.0])}, {"a": jnp.zeros(2)}], params)
  np.testing.assert_allclose(u1["a"], [0.5, 0.0])
  np.testing.assert_array_equal(u2["a"], [0.0, 0.0])
  # All-zero gradients with eps = 0: a zero step, not 0/0.
  tx = PF.scale_by_dog(eps=0.0, layerwise=True)
  (u,), _, _ = _run(tx, [{"a": jnp.zeros(2)}], params)
  np.testing.assert_array_equal(u["a"], [0.0, 0.0])


@pytest.mark.parametrize("layerwise", [False, True])
def test_dog_huge_gradients_stay_finite(layerwise):
  params = {"a": jnp.array([1.0, -1.0], jnp.float32), "b": jnp.ones((2, 2), jnp.bfloat16)}
  g = {"a": jnp.array([1e30, -1e30], jnp.float32), "b": jnp.full((2, 2), 1e30, jnp.bfloat16)}
  tx = PF.scale_by_dog(layerwise=layerwise)
  us, state, _ = _run(tx, [g, g], params)
  assert _finite(us) and _finite(state)
  assert us[0]["b"].dtype == jnp.bfloat16
  assert float(jnp.abs(us[0]["a"][0])) > 0  # not flushed to zero: ||g|| ~ 1.4e30 is finite


# --------------------------------------------------------------- D-Adaptation
def test_dadapt_bound_by_hand():
  d = jnp.asarray(0.5)
  # d_hat = 2 * 3 / 4 = 1.5 > d: it grows, capped by growth_rate * d
  np.testing.assert_allclose(PF.dadapt_bound(d, 3.0, 4.0, scale=2.0), 1.5)
  np.testing.assert_allclose(PF.dadapt_bound(d, 3.0, 4.0, scale=2.0, growth_rate=2.0), 1.0)
  # it never shrinks, and stays put with nothing learned or a zero learning rate
  np.testing.assert_allclose(PF.dadapt_bound(d, -3.0, 4.0), 0.5)
  np.testing.assert_allclose(PF.dadapt_bound(d, 3.0, 0.0), 0.5)
  np.testing.assert_allclose(PF.dadapt_bound(d, 3.0, 4.0, live=False), 0.5)


def test_dadapt_adam_growth_rate_matches_reference():
  # growth_rate has no optax counterpart, so it is not among the catalog's cases
  _check_reference("dadapt_adam", growth_rate=1.05)
  _check_reference("dadapt_adam", growth_rate=1.05, use_bias_correction=False,
                   decouple=True, weight_decay=0.1)


def test_dadapt_sgd_first_step_by_hand():
  # k = 0: dlr = d0 lr / ||g0||; numerator = 0 (s = 0), so d stays d0;
  # s = dlr g; x1 = x0 - s (momentum 0).
  tx = PF.scale_by_dadapt_sgd(learning_rate=2.0, d0=0.1)
  params = {"a": jnp.array([1.0, 1.0])}
  g = {"a": jnp.array([3.0, 4.0])}
  (u,), state, _ = _run(tx, [g], params)
  np.testing.assert_allclose(u["a"], -0.2 / 5.0 * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(state.d, 0.1)
  np.testing.assert_allclose(state.g0_norm, 5.0)


@pytest.mark.parametrize("which", ["sgd", "adam", "lion"])
def test_dadapt_zero_then_huge_gradients_stay_finite(which):
  tx = {"sgd": PF.scale_by_dadapt_sgd(momentum=0.9), "adam": PF.scale_by_dadapt_adam(eps=0.0),
        "lion": PF.scale_by_dadapt_lion()}[which]
  params = {"a": jnp.array([1.0, -1.0], jnp.float32), "b": jnp.ones((2, 2), jnp.bfloat16)}
  zero = jax.tree.map(jnp.zeros_like, params)
  huge = {"a": jnp.array([1e30, -1e30], jnp.float32), "b": jnp.full((2, 2), 1e30, jnp.bfloat16)}
  us, state, _ = _run(tx, [zero, huge, huge], params)
  assert _finite(us) and _finite(state)
  if which != "lion":  # nothing learned yet: no step (Lion's decay-free sign step of 0 is 0 too)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(us[0]))
  assert us[1]["b"].dtype == jnp.bfloat16


# ------------------------------------------------------------------------ MoMo
def test_momo_first_step_by_hand():
  # First step without bias correction: fbar = f, d = g, gamma = <g, x>, so the
  # model's numerator is f - lb + <x, g> - <g, x> = f - lb and
  # tau = min(lr, (f - lb) / ||g||^2): the Polyak step.
  params = {"a": jnp.array([1.0, 2.0])}
  g = {"a": jnp.array([3.0, 4.0])}
  tx = PF.scale_by_momo(learning_rate=10.0, lower_bound=1.0)
  (u,), state, _ = _run(tx, [g], params, value=jnp.asarray(6.0))
  np.testing.assert_allclose(u["a"], -(5.0 / 25.0) * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose([state.barf, state.gamma], [6.0, 11.0], rtol=1e-6)
  # The cap: with lr = 0.1 the step is 0.1 g
  (u,), _, _ = _run(PF.scale_by_momo(learning_rate=0.1), [g], params, value=jnp.asarray(6.0))
  np.testing.assert_allclose(u["a"], -0.1 * np.array([3.0, 4.0]), rtol=1e-6)
  # Below the lower bound: no step
  (u,), _, _ = _run(PF.scale_by_momo(lower_bound=7.0), [g], params, value=jnp.asarray(6.0))
  np.testing.assert_array_equal(u["a"], [0.0, 0.0])


def test_momo_preconditioned_and_proximal_decay_by_hand():
  # One MoMo-Adam step: bias-corrected EMAs from 0 (rho = 1 - b1), D = |g| + eps
  # (v_hat = g^2), d = (1 - b1) g; numerator (1 - b1)(f - lb); tau = min(lr / rho, t1).
  b1, lr, wd = 0.5, 100.0, 0.1
  params = {"a": jnp.array([1.0, 2.0])}
  g = {"a": jnp.array([3.0, -4.0])}
  tx = PF.scale_by_momo(lr, b1, weight_decay=wd, bias_correction=True,
                        preconditioner=PF.adam_diagonal(0.999, eps=0.0))
  (u,), _, _ = _run(tx, [g], params, value=jnp.asarray(6.0))
  d = (1 - b1) * np.array([3.0, -4.0])
  c = 1 + lr * wd
  nom = c * (1 - b1) * 6.0 + np.dot([1.0, 2.0], d) - c * (1 - b1) * (3.0 - 8.0)
  norm = np.sum(d * d / np.array([3.0, 4.0]))
  tau = min(lr / (1 - b1), nom / norm)
  x = np.array([1.0, 2.0])
  want = (x - tau * d / np.array([3.0, 4.0])) / c - x
  np.testing.assert_allclose(u["a"], want, rtol=1e-5)


@pytest.mark.parametrize("name,kwargs", [
    ("momo", {"weight_decay": 0.01}),
    ("momo", {"bias_correction": True, "adapt_lower_bound": True, "lower_bound": -5.0}),
    ("momo", {"weight_decay": 0.05, "learning_rate": 0.01, "bias_correction": True}),
    ("momo_adam", {"weight_decay": 0.01}),
    ("momo_adam", {"weight_decay": 0.05, "divide": False, "adapt_lower_bound": True}),
])
def test_momo_options_without_optax_counterpart_match_reference(name, kwargs):
  _check_reference(name, **kwargs)


def test_momo_needs_value_and_zero_direction_is_safe():
  tx = optlab.momo()
  params = {"a": jnp.array([1.0, 2.0])}
  with pytest.raises(TypeError, match="value"):
    tx.update(params, tx.init(params), params)
  # zero gradients: ||d|| = 0 gives a zero step, not NaN; 1e30 stays finite
  zero = {"a": jnp.zeros(2)}
  huge = {"a": jnp.array([1e30, -1e30])}
  us, state, _ = _run(optlab.momo_adam(0.1), [zero, huge, huge], params, value=jnp.asarray(1.0))
  assert _finite(us) and _finite(state)
  np.testing.assert_array_equal(us[0]["a"], [0.0, 0.0])
  us, _, _ = _run(optlab.momo(), [huge, huge], params, value=jnp.asarray(1e30))
  assert _finite(us)


# ------------------------------------------------- Polyak steps: SPS, SANIA
def test_diagonal_preconditioners_by_hand():
  g = {"a": jnp.array([3.0, -0.1])}
  rule = PF.adam_diagonal(0.5, eps=0.0, floor=0.04, power=0.5)
  nu, d = rule.update(rule.init(g), g, jnp.asarray(1))
  np.testing.assert_allclose(nu["a"], [4.5, 0.005])           # (1 - b2) g^2
  np.testing.assert_allclose(d["a"], [3.0, 0.2], rtol=1e-6)    # sqrt(max(0.04, g^2))
  rule = PF.adagrad_diagonal(floor=0.1, power=1.0)
  nu, d = rule.update(rule.init(g), g, jnp.asarray(1))
  nu, d = rule.update(nu, g, jnp.asarray(2))
  np.testing.assert_allclose(d["a"], [18.0, 0.1], rtol=1e-6)   # max(0.1, sum g^2)


def test_hutchinson_preconditioner_is_exact_on_a_diagonal_hessian():
  h = jnp.array([0.05, 2.0, -3.0])
  obj_fn = lambda p: 0.5 * jnp.sum(h * p["a"] ** 2)
  params = {"a": jnp.array([1.0, 1.0, 1.0])}
  rule = PF.hutchinson_diagonal_ema(b2=0.9, floor=0.1, init_probes=3)
  nu, d = rule.update(rule.init(params), params, jnp.asarray(1), params=params,
                      extra={"obj_fn": obj_fn}, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(nu["a"], h, rtol=1e-6)
  np.testing.assert_allclose(d["a"], [0.1, 2.0, 3.0], rtol=1e-6)  # max(floor, |H_ii|)
  with pytest.raises(TypeError, match="obj_fn"):
    rule.update(nu, params, jnp.asarray(2), params=params, extra={}, key=jax.random.PRNGKey(1))


def test_polyak_steps_by_hand():
  g = {"a": jnp.array([3.0, 4.0])}
  params = {"a": jnp.zeros(2)}
  # SPS without preconditioner: gamma = f / ||g||^2 = 5 / 25
  (u,), _, _ = _run(PF.scale_by_polyak_step(), [g], params, value=jnp.asarray(5.0))
  np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
  # L2 slack (l = 1 / 1.01): gamma = f / (G + l) at s = 0
  l = 1 / 1.01
  (u,), state, _ = _run(PF.scale_by_polyak_step(slack="l2"), [g], params, value=jnp.asarray(5.0))
  np.testing.assert_allclose(u["a"], 5.0 / (25 + l) * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(state.slack, l * 5.0 / (25 + l), rtol=1e-6)
  # SANIA: gamma = 1 - sqrt(1 - 2 f / G) for 2 f <= G, else 1 (here G = 25)
  (u,), _, _ = _run(PF.scale_by_polyak_step(rule="sania"), [g], params, value=jnp.asarray(8.0))
  np.testing.assert_allclose(u["a"], (1 - math.sqrt(1 - 16 / 25)) * np.array([3.0, 4.0]),
                             rtol=1e-6)
  (u,), _, _ = _run(PF.scale_by_polyak_step(rule="sania"), [g], params, value=jnp.asarray(20.0))
  np.testing.assert_allclose(u["a"], [3.0, 4.0], rtol=1e-6)
  # Zero gradient: skipped (SPS) / zero (SANIA), never NaN.
  zero = {"a": jnp.zeros(2)}
  for rule in ("sps", "sania"):
    (u,), _, _ = _run(PF.scale_by_polyak_step(rule=rule), [zero], params, value=jnp.asarray(1.0))
    np.testing.assert_array_equal(u["a"], [0.0, 0.0])


@pytest.mark.parametrize("name", ["sps", "sania"])
def test_missing_value_or_obj_fn_is_named(name):
  tx = getattr(optlab, name)(preconditioner="hutchinson", probes=(1, 2))
  params = {"a": jnp.array([1.0, 2.0])}
  obj_fn = lambda p: jnp.sum(p["a"] ** 2)
  state = tx.init(params)
  with pytest.raises(TypeError, match="`value`"):
    tx.update(params, state, params, obj_fn=obj_fn)
  with pytest.raises(TypeError, match="`obj_fn`"):
    tx.update(params, state, params, value=jnp.asarray(1.0))
  u, _ = tx.update(params, state, params, value=jnp.asarray(5.0), obj_fn=obj_fn)
  assert _finite(u)


def test_polyak_huge_gradients_stay_finite():
  params = {"a": jnp.array([1.0, -1.0], jnp.float32), "b": jnp.ones((2, 2), jnp.bfloat16)}
  huge = {"a": jnp.array([1e30, -1e30], jnp.float32), "b": jnp.full((2, 2), 1e30, jnp.bfloat16)}
  for tx in (optlab.sps(preconditioner="adam"), optlab.sania(), optlab.sania(preconditioner="adagrad")):
    us, state, _ = _run(tx, [huge, huge], params, value=jnp.asarray(3.0))
    assert _finite(us) and _finite(state)

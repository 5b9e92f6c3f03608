"""Unit tests of the step-size primitives: learning rate, RAdam rectification,
AdaBound's dynamic bound and AdaMod's momental bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives import step_size as S
from optlab.primitives.basis import rebase_state
from optlab.rules import ema, ema_sq, max_ema_sq
from tests import harness, problems
from tests.reference import adaptive_bounds as ref
from tests import recipe_config as cfg


def _tree(*values, dtype=jnp.float32):
  return {"a": jnp.asarray(values, dtype)}


def _run(tx, grads, params=None):
  state = tx.init(grads[0] if params is None else params)
  out = []
  for g in grads:
    u, state = tx.update(g, state, params)
    out.append(u)
  return out, state


# ----------------------------------------------------------------- learning rate
def test_scale_by_learning_rate_follows_schedule():
  tx = S.scale_by_learning_rate(lambda t: 0.5 * (t + 1))
  (u1, u2), _ = _run(tx, [_tree(2.0, -4.0)] * 2)
  np.testing.assert_allclose(u1["a"], [-1.0, 2.0])
  np.testing.assert_allclose(u2["a"], [-2.0, 4.0])


# ------------------------------------------------------------ RAdam rectification
def test_radam_rectification_known_values():
  with jax.enable_x64(True):
    for b2 in (0.9, 0.99, 0.999):  # rho_1 = 1 whatever b2: below any sensible threshold
      rho, _ = optlab.radam_rectification(b2, jnp.asarray(1, jnp.int32))
      np.testing.assert_allclose(rho, 1.0, rtol=1e-12)
    # 2 < rho_t < 4 (b2 = 0.999, t = 3): the root is undefined and r_t is 0, not NaN
    rho, r = optlab.radam_rectification(0.999, jnp.asarray(3, jnp.int32))
    assert 2 < float(rho) < 4 and float(r) == 0.0
    # b2 = 0.9, t = 20, in plain Python: rho_inf = 19, rho = 19 - 40 b2^20 / (1 - b2^20)
    rho_20 = 19 - 40 * 0.9 ** 20 / (1 - 0.9 ** 20)
    assert abs(rho_20 - 13.46387) < 1e-5
    rho, r = optlab.radam_rectification(0.9, jnp.asarray(20, jnp.int32))
    np.testing.assert_allclose(rho, rho_20, rtol=1e-12)
    want = math.sqrt((rho_20 - 4) * (rho_20 - 2) * 19 / (15 * 17 * rho_20))
    np.testing.assert_allclose(r, want, rtol=1e-12)
    # Far out rho_t -> rho_inf and r_t -> 1.
    rho, r = optlab.radam_rectification(0.9, jnp.asarray(10_000, jnp.int32))
    np.testing.assert_allclose([rho, r], [19.0, 1.0], rtol=1e-12)


def test_radam_rectification_never_nan():
  counts = jnp.arange(1, 50, dtype=jnp.int32)
  for b2 in (0.0, 1 / 3, 0.5, 0.9, 0.999):  # rho_inf - 2 = 0 at b2 = 1/3
    _, r = jax.vmap(lambda c: optlab.radam_rectification(b2, c))(counts)
    assert np.all(np.isfinite(np.asarray(r))) and np.all(np.asarray(r) >= 0)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("threshold", [5.0, 3.0])
def test_scale_by_radam_matches_optax(nesterov, threshold):
  rng = np.random.default_rng(0)
  grads = [{"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "s": jnp.asarray(rng.normal(), jnp.float32)} for _ in range(12)]
  kw = dict(b1=0.8, b2=0.95, eps=1e-6, threshold=threshold, nesterov=nesterov)
  got, _ = _run(optlab.scale_by_radam(**kw), grads)
  want, _ = _run(optax.scale_by_radam(**kw), grads)
  nan_steps = 0
  for a, b in zip(got, want):
    if np.isnan(b["s"]):  # threshold < 4: optax takes sqrt of a negative number
      nan_steps += 1
      assert all(np.all(a[k] == 0) for k in a)  # here: r_t = 0, a zero step
      continue
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-6, atol=1e-7)
  assert nan_steps == (1 if threshold < 4 else 0)


def test_scale_by_radam_falls_back_to_momentum():
  # rho_t < 5 for t <= 5 (b2 = 0.999): the update is m_hat itself, no denominator.
  g = [_tree(3.0, -1e-3), _tree(1.0, 2.0)]
  (u1, u2), _ = _run(optlab.scale_by_radam(b1=0.5), g)
  np.testing.assert_allclose(u1["a"], [3.0, -1e-3], rtol=1e-6)  # m_hat_1 = g_1
  np.testing.assert_allclose(u2["a"], (0.25 * np.array([3.0, -1e-3]) + 0.5 * np.array([1.0, 2.0]))
                             / 0.75, rtol=1e-6)


def test_rectified_moments_takes_b2_from_the_rule():
  rng = np.random.default_rng(1)
  grads = [_tree(*rng.normal(size=5)) for _ in range(10)]
  got, _ = _run(optlab.scale_by_rectified_moments(ema(0.9), ema_sq(0.95), threshold=4.0), grads)
  want, _ = _run(optlab.scale_by_radam(0.9, 0.95, threshold=4.0), grads)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a["a"], b["a"])
  assert any(np.any(u["a"] != g["a"]) for u, g in zip(got, grads))


def test_rectified_moments_rejects_rules_it_cannot_use():
  with pytest.raises(TypeError, match="b2"):
    optlab.scale_by_rectified_moments(ema(0.9), object())
  # a rule keeping several trees (AMSGrad's EMA and running max) composes too
  tx = optlab.scale_by_rectified_moments(ema(0.9), max_ema_sq(0.99))
  u, _ = tx.update(_tree(1.0, -2.0), tx.init(_tree(0.0, 0.0)))
  assert np.all(np.isfinite(np.asarray(u["a"])))
  with pytest.raises(ValueError, match="threshold"):
    optlab.scale_by_radam(threshold=float("nan"))


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_scale_by_radam_zero_and_huge_gradients(eps):
  tx = optlab.scale_by_radam(eps=eps, b2=0.9)
  grads = [_tree(0.0, 1e30, -1e30, 1e-30)] * 3 + [_tree(0.0, 0.0, 0.0, 0.0)] * 10
  out, _ = _run(tx, grads)
  for u in out:
    assert np.all(np.isfinite(u["a"]))
    assert u["a"][0] == 0.0


# ----------------------------------------------------------- dynamic bound
@jax.enable_x64(True)
def test_dynamic_bound_clips_into_the_bounds():
  a = _tree(1e-9, 1.0, 1e9, dtype=jnp.float64)
  # final_lr 0.1 at base lr 0.5: per unit lr the bounds are 0.2 (1 -/+ ...).
  _, out = S.dynamic_bound(0.1, 1e-3).update((), a, jnp.asarray(1), 0.5, 0.5)
  lower, upper = 0.2 * (1 - 1 / 1.001), 0.2 * (1 + 1 / 1e-3)
  np.testing.assert_allclose(out["a"], [lower, 1.0, upper], rtol=1e-6)
  # gamma = 0.5, t = 4: bounds 0.2 * [2/3, 1.5] = [0.1333, 0.3]
  _, out = S.dynamic_bound(0.1, 0.5).update((), a, jnp.asarray(4), 0.5, 0.5)
  np.testing.assert_allclose(out["a"], [0.2 * 2 / 3, 0.3, 0.3], rtol=1e-6)
  # an explicit base_lr replaces the learning rate at step 0
  _, out = S.dynamic_bound(0.1, 0.5, base_lr=0.1).update((), a, jnp.asarray(4), 0.5, 0.5)
  np.testing.assert_allclose(out["a"], [2 / 3, 1.0, 1.5], rtol=1e-6)


def test_dynamic_bound_edge_cases_stay_finite():
  a = _tree(0.0, 1.0, 1e30)
  _, out = S.dynamic_bound(0.1, 0.0).update((), a, jnp.asarray(3), 0.5, 0.5)  # no bound
  np.testing.assert_array_equal(out["a"], a["a"])
  _, out = S.dynamic_bound(0.1, 1e-3).update((), a, jnp.asarray(3), 0.0, 0.0)  # lr 0
  np.testing.assert_array_equal(out["a"], [0.0, 0.0, 0.0])
  _, out = S.dynamic_bound(0.1, 0.0).update((), a, jnp.asarray(3), 0.0, 0.0)
  assert np.all(np.isfinite(out["a"]))


# ----------------------------------------------------------- momental bound
def test_momental_bound_by_hand():
  rule = S.momental_bound(beta3=0.9)
  state = rule.init(_tree(0.0, 0.0))
  # step 1: s = 0.1 * 0.5 * [2, 4] = [0.1, 0.2]; min([2, 4], s / 0.5) = [0.2, 0.4]
  state, out = rule.update(state, _tree(2.0, 4.0), jnp.asarray(1), 0.5, 0.5)
  np.testing.assert_allclose(state["a"], [0.1, 0.2], rtol=1e-6)
  np.testing.assert_allclose(out["a"], [0.2, 0.4], rtol=1e-6)
  # step 2: s = 0.9 [0.1, 0.2] + 0.05 [0.1, 8] = [0.095, 0.58]; min([0.1, 8], [0.19, 1.16])
  state, out = rule.update(state, _tree(0.1, 8.0), jnp.asarray(2), 0.5, 0.5)
  np.testing.assert_allclose(state["a"], [0.095, 0.58], rtol=1e-6)
  np.testing.assert_allclose(out["a"], [0.1, 1.16], rtol=1e-6)
  # a learning rate of 0: no division by 0, the state decays
  state, out = rule.update(state, _tree(0.1, 8.0), jnp.asarray(3), 0.0, 0.5)
  np.testing.assert_allclose(out["a"], [0.1, 8.0])
  np.testing.assert_allclose(state["a"], [0.0855, 0.522], rtol=1e-6)


# -------------------------------------------------- scale_by_bounded_step_size
def test_bounded_step_size_without_bound_is_official_adam():
  rng = np.random.default_rng(2)
  b1, b2, eps = 0.8, 0.9, 1e-3
  with jax.enable_x64(True):
    grads = [_tree(*rng.normal(size=4), dtype=jnp.float64) for _ in range(6)]
    got, _ = _run(optlab.scale_by_bounded_step_size(None, b1, b2, eps, learning_rate=0.1),
                  grads)
  m = v = 0.0
  for t, (g, u) in enumerate(zip(grads, got), start=1):
    g = np.asarray(g["a"])
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    want = math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(u["a"], want, rtol=1e-12)


def test_amsgrad_keeps_the_running_max():
  grads = [_tree(3.0, 0.1), _tree(0.0, 0.1), _tree(0.0, 5.0)]
  tx = optlab.scale_by_bounded_step_size(None, 0.9, 0.5, learning_rate=1.0, amsgrad=True)
  _, state = _run(tx, grads)
  nu = np.array([0.25 * 0.5 * 9, 0.5 * (0.5 * (0.5 * 0.01) + 0.5 * 0.01) + 0.5 * 25])
  np.testing.assert_allclose(state.nu["a"], nu, rtol=1e-6)
  np.testing.assert_allclose(state.nu_max["a"], [0.5 * 9, nu[1]], rtol=1e-6)


def test_bounded_state_declares_its_basis():
  tx = optlab.scale_by_bounded_step_size(S.momental_bound(), learning_rate=0.1, amsgrad=True)
  _, state = _run(tx, [_tree(1.0, -2.0)] * 2)

  class Flip:  # linear fields change sign, second-moment fields double
    def linear(self, tree):
      return jax.tree.map(lambda x: -x, tree)

    def second(self, tree):
      return jax.tree.map(lambda x: 2 * x, tree)

  new = rebase_state(state, Flip())
  np.testing.assert_array_equal(new.mu["a"], -state.mu["a"])
  for field in ("nu", "nu_max", "bound"):
    np.testing.assert_array_equal(getattr(new, field)["a"], 2 * getattr(state, field)["a"])
  assert new.count == state.count


@pytest.mark.parametrize("name", ["radam", "adabound", "amsbound", "adamod"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recipes_zero_and_huge_gradients(name, dtype):
  tx = cfg.build(name, weight_decay=0.01)
  params = _tree(1.0, -1.0, 0.5, 2.0, dtype=dtype)
  state = tx.init(params)
  step = jax.jit(tx.update)
  big = float(jnp.finfo(dtype).max) / 4
  for g in [_tree(0.0, 0.0, 0.0, 0.0, dtype=dtype), _tree(0.0, big, -big, 1e-30, dtype=dtype),
            _tree(0.0, 0.0, 0.0, 0.0, dtype=dtype)] * 4:
    u, state = step(g, state, params)
    assert u["a"].dtype == dtype
    assert np.all(np.isfinite(np.asarray(u["a"], np.float32)))
    for leaf in jax.tree.leaves(state):
      assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


# --------------------------------------------------- learning-rate schedules
def _schedule(t):
  """A linear decay that stays float64 under x64 (optax's schedules of an int32
  step return float32, rounded differently under jit and eagerly)."""
  return 0.05 - 0.0018 * t


@pytest.mark.parametrize("name,kwargs", [
    ("adabound", {"gamma": 0.1}),
    ("amsbound", {"gamma": 0.1, "base_lr": 0.02}),
    ("adamod", {"beta3": 0.9}),
])
def test_schedules_match_the_official_semantics(name, kwargs):
  """With a schedule the AdaBound bounds follow lr_t / base_lr and AdaMod averages
  lr_t-scaled step sizes, as the official code does when a scheduler changes lr."""
  recipe = optlab.get_recipe(name)
  params, grad_fn, _ = problems.reference_problem()
  want = getattr(ref, name)(params, grad_fn, 25, learning_rate=_schedule, **kwargs)
  with jax.enable_x64(True):
    got = harness.run_jax(recipe.factory(learning_rate=_schedule, **kwargs), params, grad_fn,
                          25)
  harness.assert_trajectories_close(got, want, 1e-5, 1e-9, name)
  # ... and the schedule does matter: a constant lr gives another trajectory.
  const = getattr(ref, name)(params, grad_fn, 25, learning_rate=0.05, **kwargs)
  assert not np.allclose(const[-1]["w1"], want[-1]["w1"], rtol=1e-3)


def test_dynamic_bound_needs_a_base_for_a_schedule_from_zero():
  warmup = optax.linear_schedule(0.0, 0.01, 10)
  with pytest.raises(ValueError, match="base_lr"):
    optlab.adabound(warmup)
  tx = optlab.adabound(warmup, base_lr=0.01)
  (u1, u2), _ = _run(tx, [_tree(1.0, -1.0)] * 2, params=_tree(0.0, 0.0))
  np.testing.assert_array_equal(u1["a"], [0.0, 0.0])  # lr_0 = 0
  assert np.all(np.isfinite(u2["a"])) and np.all(u2["a"] != 0)
  with pytest.raises(ValueError, match="base_lr"):
    optlab.adabound(0.01, base_lr=0.0)


@pytest.mark.parametrize("name,bad", [
    ("adabound", {"gamma": 1.0}), ("adabound", {"final_lr": -0.1}),
    ("amsbound", {"gamma": -1e-3}), ("adamod", {"beta3": 1.0}), ("radam", {"eps_root": -1.0}),
])
def test_out_of_range_hyperparameters_are_named(name, bad):
  (arg,) = bad
  with pytest.raises(ValueError, match=arg):
    cfg.build(name, **bad)


def test_inject_hyperparams_traced_learning_rate_and_bounds():
  """Under inject_hyperparams the lr is traced; the bounds use it as the base."""
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  g = {"w": jnp.asarray([0.5, 0.1, -4.0])}
  for name in ("adabound", "adamod"):
    plain = optlab.get_recipe(name).factory(learning_rate=0.03, gamma=0.3) if name == "adabound" \
        else optlab.get_recipe(name).factory(learning_rate=0.03, beta3=0.5)
    factory = optlab.get_recipe(name).factory
    extra = {"gamma": 0.3} if name == "adabound" else {"beta3": 0.5}
    injected = optax.inject_hyperparams(factory)(learning_rate=0.03, **extra)
    s1, s2 = plain.init(params), injected.init(params)
    step1, step2 = jax.jit(plain.update), jax.jit(injected.update)
    for _ in range(4):
      u1, s1 = step1(g, s1, params)
      u2, s2 = step2(g, s2, params)
      np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-5)

"""Unit tests of the moment rules and the primitives built on them.

Expected values are computed by hand (or with plain Python arithmetic written
out in the test), one or two steps at a time.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import rules as R
from optlab.primitives import moments as M
from tests import harness, problems
from tests import recipe_config as cfg


def _run(tx, grads, params=None):
  """Feeds `grads` (a list of trees) through `tx`; returns (updates list, final state)."""
  params = grads[0] if params is None else params
  state = tx.init(params)
  outs = []
  for g in grads:
    u, state = tx.update(g, state, params)
    outs.append(u)
  return outs, state


def _vec(*xs):
  return {"w": jnp.asarray(xs, jnp.float32)}


def _close(a, b, rtol=1e-6, atol=0.0):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=atol)


# ----------------------------------------------------------------- first rules
def test_ema_nesterov_without_debias_is_plain_lookahead():
  rule = R.ema(0.5, debias=False, nesterov=True)
  state = rule.init(_vec(0.0))
  state, out = rule.update(state, _vec(2.0), 1)
  _close(state.mu["w"], [1.0])                # m = 0.5 * 0 + 0.5 * 2
  _close(out["w"], [0.5 * 1.0 + 0.5 * 2.0])


def test_dual_ema_mixes_debiased_fast_and_raw_slow():
  rule = R.dual_ema(b1=0.5, b3=0.75, alpha=2.0)
  state = rule.init(_vec(0.0))
  state, out = rule.update(state, _vec(4.0), 1)
  _close(state.mu["w"], [2.0])          # fast: 0.5 * 4
  _close(state.mu_slow["w"], [1.0])     # slow: 0.25 * 4
  _close(out["w"], [2.0 / 0.5 + 2.0 * 1.0])
  state, out = rule.update(state, _vec(0.0), 2)
  _close(out["w"], [1.0 / 0.75 + 2.0 * 0.75])


def test_dual_ema_calls_schedules_with_the_zero_based_step():
  seen = []
  alpha = lambda step: (seen.append(int(step)), 1.0)[1]
  rule = R.dual_ema(0.5, 0.5, alpha)
  state = rule.init(_vec(0.0))
  for t in (1, 2, 3):
    state, _ = rule.update(state, _vec(1.0), jnp.asarray(t))
  assert seen == [0, 1, 2]


# ---------------------------------------------------------------- second rules
def test_ema_sq_initial_power_and_init_first():
  rule = R.ema_sq(0.5, debias=False, initial=0.5, power=0.25)
  nu = rule.init(_vec(0.0))
  _close(nu.nu["w"], [0.5])
  nu, s = rule.update(nu, _vec(2.0), 1)
  _close(nu.nu["w"], [0.25 + 2.0])         # 0.5 * 0.5 + 0.5 * 4
  _close(s["w"], [2.25 ** 0.25])

  first = R.ema_sq(0.9, debias=False, init_first=True)
  nu = first.init(_vec(0.0))
  nu, s = first.update(nu, _vec(3.0), 1)
  _close(nu.nu["w"], [9.0])             # starts at g_1^2
  nu, s = first.update(nu, _vec(1.0), 2)
  _close(nu.nu["w"], [0.9 * 9.0 + 0.1 * 1.0])
  _close(first.scale(nu, 2)["w"], [math.sqrt(8.2)])


def test_max_ema_sq_keeps_the_running_max_of_debiased_v():
  rule = R.max_ema_sq(0.9)
  state = rule.init(_vec(0.0))
  state, s = rule.update(state, _vec(3.0), 1)
  _close(state.nu["w"], [0.9], rtol=1e-5)   # (1 - 0.9) * 9
  _close(s["w"], [3.0], rtol=1e-5)          # sqrt(v / (1 - 0.9)) = 3
  state, s = rule.update(state, _vec(0.0), 2)
  _close(state.nu["w"], [0.81], rtol=1e-5)  # v_hat = 0.81 / 0.19 < 9
  _close(s["w"], [3.0], rtol=1e-5)

  raw = R.max_ema_sq(0.9, debias=False)
  state = raw.init(_vec(0.0))
  state, _ = raw.update(state, _vec(3.0), 1)
  state, s = raw.update(state, _vec(0.0), 2)
  _close(s["w"], [math.sqrt(0.9)], rtol=1e-5)


def test_belief_uses_the_updated_first_moment_and_accumulates_eps():
  tx = M.scale_by_moments(R.ema(0.5), R.belief(0.75, eps_root=0.01), eps=0.0)
  (u,), state = _run(tx, [_vec(2.0)])
  m = 0.5 * 2.0                             # m_1
  s = 0.25 * (2.0 - m) ** 2 + 0.01          # s_1
  _close(state.second.nu["w"], [s])
  _close(u["w"], [(m / 0.5) / math.sqrt(s / 0.25)], rtol=1e-5)


def test_momentum_sq_tracks_the_momentum():
  tx = M.scale_by_moments(R.ema(0.5), R.momentum_sq(0.75, eps_root=0.0), eps=0.0)
  (u1, u2), state = _run(tx, [_vec(2.0), _vec(-2.0)])
  m1, m2 = 1.0, 0.5 * 1.0 + 0.5 * -2.0      # -0.5
  v1 = 0.25 * m1 ** 2
  v2 = 0.75 * v1 + 0.25 * m2 ** 2
  _close(state.second.nu["w"], [v2])
  _close(u1["w"], [(m1 / 0.5) / math.sqrt(v1 / 0.25)], rtol=1e-5)
  _close(u2["w"], [(m2 / 0.75) / math.sqrt(v2 / (1 - 0.75 ** 2))], rtol=1e-5)


def test_abs_max_and_sum_sq():
  rule = R.abs_max(0.5, eps=0.0)
  nu = rule.init(_vec(0.0, 0.0))
  nu, _ = rule.update(nu, _vec(4.0, -1.0), 1)
  nu, s = rule.update(nu, _vec(1.0, -3.0), 2)
  _close(s["w"], [2.0, 3.0])            # max(0.5 * 4, 1), max(0.5 * 1, 3)

  acc = R.sum_sq(0.1, eps_root=0.0)
  nu = acc.init(_vec(0.0))
  nu, _ = acc.update(nu, _vec(1.0), 1)
  nu, s = acc.update(nu, _vec(2.0), 2)
  _close(nu.nu["w"], [5.1])
  _close(s["w"], [math.sqrt(5.1)])


def test_centered_ema_sq_is_the_standard_deviation():
  rule = R.centered_ema_sq(0.5)
  state = rule.init(_vec(0.0))
  state, _ = rule.update(state, _vec(2.0), 1)
  state, s = rule.update(state, _vec(4.0), 2)
  mean_sq = 0.5 * (0.5 * 4.0) + 0.5 * 16.0  # 9
  mean = 0.5 * (0.5 * 2.0) + 0.5 * 4.0      # 2.5
  _close(s["w"], [math.sqrt(mean_sq - mean ** 2)])
  # Rounding can push E[g^2] - E[g]^2 below zero; that is read as zero.
  state = R.CenteredSecondMomentState({"w": jnp.asarray([1.0])}, {"w": jnp.asarray([1.0 + 1e-6])})
  _close(rule.scale(state, 3)["w"], [0.0])


# ------------------------------------------------------------------- orders
def test_laprop_order_is_momentum_of_the_normalised_gradient():
  tx = M.scale_by_moments(R.ema(0.5), R.ema_sq(0.75), eps=0.0, order="laprop")
  (u1, u2), _ = _run(tx, [_vec(2.0), _vec(1.0)])
  _close(u1["w"], [1.0])                    # m = 0.5 * 2/2, debiased by 0.5
  v2 = (0.75 * 0.25 * 4.0 + 0.25 * 1.0) / (1 - 0.75 ** 2)
  m2 = 0.5 * 0.5 + 0.5 * (1.0 / math.sqrt(v2))
  _close(u2["w"], [m2 / 0.75], rtol=1e-5)


def test_adopt_order_first_step_only_initialises_v_and_clips_later():
  tx = M.scale_by_adopt(b1=0.5, b2=0.75, eps=1e-6)
  (u1, u2, u3), state = _run(tx, [_vec(2.0, -1.0), _vec(6.0, 0.5), _vec(1.0, 1.0)])
  _close(u1["w"], [0.0, 0.0])
  # step 2: x = clip(g2 / |g1|, 1 ** 0.25 = 1) = [1, 0.5]; m = 0.5 x
  _close(u2["w"], [0.5, 0.25])
  # step 3: v = [0.75 * 4 + 0.25 * 36, 0.75 + 0.25 * 0.25]; bound 2 ** 0.25
  v = np.array([0.75 * 4 + 0.25 * 36, 0.75 * 1 + 0.25 * 0.25])
  x = np.clip(np.array([1.0, 1.0]) / np.sqrt(v), -2 ** 0.25, 2 ** 0.25)
  _close(u3["w"], 0.5 * np.array([0.5, 0.25]) + 0.5 * x, rtol=1e-5)
  _close(state.second.nu["w"], 0.75 * v + 0.25 * np.array([1.0, 1.0]), rtol=1e-6)


def test_adopt_without_clipping_still_returns_zero_first():
  tx = M.scale_by_adopt(use_clipping=False)
  (u1,), state = _run(tx, [_vec(3.0)])
  _close(u1["w"], [0.0])
  _close(state.first.mu["w"], [0.0])
  _close(state.second.nu["w"], [9.0])


def test_rules_validate_their_hyperparameters_and_orders_check_their_needs():
  with pytest.raises(ValueError, match=r"rules\.ema: b1 must be in \[0\.0, 1\.0\), got 1\.5"):
    M.scale_by_moments(R.ema(1.5), R.ema_sq(-2.0))
  with pytest.raises(ValueError, match=r"rules\.ema_sq: b2"):
    R.ema_sq(-2.0)
  with pytest.raises(ValueError, match=r"rules\.dual_ema: b3"):
    R.dual_ema(b3=1.0)
  with pytest.raises(ValueError, match=r"rules\.sum_sq: eps_root"):
    R.sum_sq(eps_root=float("nan"))
  with pytest.raises(TypeError, match="first must be a moment rule"):
    M.scale_by_moments(optlab.scale_by_adam(), R.ema_sq())
  # Any two rules combine now that each owns its state (no shared slots).
  M.scale_by_moments(R.dual_ema(), R.centered_ema_sq()).init(_vec(1.0))
  with pytest.raises(ValueError, match="order"):
    M.scale_by_moments(R.ema(), R.ema_sq(), order="sideways")
  with pytest.raises(ValueError, match="clip_value_fn"):
    M.scale_by_moments(R.ema(), R.ema_sq(), clip_value_fn=lambda s: s)

  class NoScale:
    def init(self, params):
      return R.SecondMomentState(M.tree_zeros_like(params))

    def update(self, state, g, count, first=None):
      return state, state.nu

  with pytest.raises(ValueError, match="scale"):
    M.scale_by_moments(R.ema(), NoScale(), order="adopt")
  tx = M.scale_by_moments(None, R.belief())
  with pytest.raises(ValueError, match="first-moment"):
    tx.update(_vec(1.0), tx.init(_vec(1.0)))


def test_rules_own_their_declared_states():
  params = _vec(1.0, 2.0)
  state = M.scale_by_moments(R.dual_ema(), R.max_ema_sq()).init(params)
  assert type(state) is M.MomentsState
  assert type(state.first) is R.DualMomentumState
  assert type(state.second) is R.MaxSecondMomentState
  fields = {f.path: (f.kind, f.role) for f in optlab.iter_fields(state)}
  assert fields == {"state.count": ("invariant", "counter"),
                    "state.first.mu": ("linear", "moment"),
                    "state.first.mu_slow": ("linear", "moment"),
                    "state.second.nu": ("second", "moment"),
                    "state.second.nu_max": ("second", "moment")}

  class Recorder:
    def __init__(self):
      self.seen = []

    def linear(self, tree):
      self.seen.append(("linear", jax.tree.structure(tree).num_leaves))
      return jax.tree.map(lambda x: -x, tree)

    def second(self, tree):
      self.seen.append(("second", jax.tree.structure(tree).num_leaves))
      return tree

  tx = M.scale_by_moments(R.dual_ema(), R.max_ema_sq())
  _, state = _run(tx, [_vec(1.0, -1.0)])
  change = Recorder()
  rebased = optlab.rebase_state(state, change)
  assert change.seen == [("linear", 1), ("linear", 1), ("second", 1), ("second", 1)]
  _close(rebased.first.mu_slow["w"], -np.asarray(state.first.mu_slow["w"]))


# --------------------------------------------------------- AdEMAMix schedules
def test_ademamix_warmup_schedules():
  alpha = M.ademamix_alpha_warmup(8.0, 4)
  _close([alpha(s) for s in range(6)], [2.0, 4.0, 6.0, 8.0, 8.0, 8.0])
  b3 = M.ademamix_b3_warmup(0.999, 0.9, 4)
  values = [float(b3(s)) for s in range(6)]
  assert values[3:] == [pytest.approx(0.999)] * 3
  assert values[0] > 0.9 and all(a < b for a, b in zip(values[:3], values[1:4]))
  # Half-life interpolation: at t / T = 1/2 the half-life is the mean of the ends.
  h = lambda b: math.log(0.5) / math.log(b + 1e-8)
  mid = M.ademamix_b3_warmup(0.999, 0.9, 4)(1)
  _close(h(float(mid)), 0.5 * (h(0.9) + h(0.999)), rtol=1e-4)


# --------------------------------------------------- EXAdam and FAdam by hand
def test_exadam_first_step_by_hand():
  b1, b2, eps, g = 0.9, 0.99, 1e-8, 2.0
  (u,), _ = _run(M.scale_by_exadam(b1, b2, eps, dynamic_step_size=True), [_vec(g)])
  m, v = (1 - b1) * g, (1 - b2) * g * g
  d1 = 1 + v / (v + eps) * b2
  d2 = 1 + m * m / (m * m + eps) * b1
  num = (m + g) * d1 / (1 - b1)
  want = math.log(math.sqrt(2 * 2)) * num / (math.sqrt(v / (1 - b2) * d2) + eps)
  _close(u["w"], [want], rtol=1e-5)
  (u,), _ = _run(M.scale_by_exadam(b1, b2, eps), [_vec(g)])  # default: s_t = 1
  _close(u["w"], [want / math.log(2.0)], rtol=1e-5)


def test_fadam_first_step_by_hand():
  g = np.array([0.3, -0.4], np.float32)          # rms = sqrt(0.125)
  theta = np.array([2.0, 1.0], np.float32)
  tx = M.scale_by_fadam(b1=0.9, eps=0.1, clip=1.0, weight_decay=0.5)
  state = tx.init({"w": jnp.asarray(theta)})
  u, state = tx.update({"w": jnp.asarray(g)}, state, {"w": jnp.asarray(theta)})
  den = np.abs(g) + 0.1 * min(1.0, math.sqrt(0.125))   # f = g^2 after one step
  nat = g / den
  nat = nat / max(1.0, float(np.sqrt(np.mean(nat ** 2))))
  w = theta / den
  w = w / max(1.0, float(np.sqrt(np.mean(w ** 2))))
  _close(u["w"], 0.1 * nat + 0.5 * w, rtol=1e-5)
  _close(state.first.mu["w"], 0.1 * nat, rtol=1e-5)


def test_fadam_mask_and_params_required():
  theta = {"a": jnp.ones(2), "b": jnp.ones(2)}
  g = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
  tx = M.scale_by_fadam(weight_decay=1.0, eps=0.1, adaptive_eps=False,
                        mask={"a": True, "b": False})
  u, _ = tx.update(g, tx.init(theta), theta)
  assert np.all(np.asarray(u["a"]) > 0) and np.all(np.asarray(u["b"]) == 0)
  with pytest.raises(ValueError, match="params"):
    tx.update(g, tx.init(theta))


def test_rms_does_not_overflow():
  x = jnp.full((4,), 3e30, jnp.float32)
  _close(M._rms(x), 3e30, rtol=1e-6)
  assert float(M._rms(jnp.zeros(3))) == 0.0


# ------------------------------------------------------- extreme gradients
NEW_RECIPES = ("adagrad", "rmsprop", "adamax", "amsgrad", "nadam", "adabelief", "laprop",
               "adopt", "ademamix", "exadam", "fadam", "adamomentum")


@pytest.mark.parametrize("name", NEW_RECIPES)
@pytest.mark.parametrize("value", [0.0, 1e30, -1e30, 1e-30])
def test_extreme_gradients_give_finite_updates_and_state(name, value):
  recipe = optlab.get_recipe(name)
  params = {"w": jnp.ones((3, 2), jnp.float32), "s": jnp.asarray(0.5, jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, value), params)
  for case in ({},) + tuple(cfg.cases(recipe)):
    tx = cfg.build(recipe, **case)
    step = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(3):
      u, state = step(grads, state, params)
      for leaf in jax.tree.leaves((u, state)):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
          assert np.all(np.isfinite(np.asarray(leaf))), f"{name}{case} with g={value}"
    decays = name == "fadam" or case.get("weight_decay")  # these still move the weights
    if value == 0.0 and not decays:  # no gradient, no move
      assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u)), f"{name}{case}"


@pytest.mark.parametrize("name", NEW_RECIPES)
def test_bfloat16_updates_keep_dtype(name):
  recipe = optlab.get_recipe(name)
  params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
  tx = cfg.build(recipe)
  u, state = tx.update({"w": jnp.full((3, 2), 0.25, jnp.bfloat16)}, tx.init(params), params)
  assert u["w"].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(u["w"], np.float32)))


def test_zero_scale_never_divides_by_zero():
  # eps = 0 and a zero gradient: 0 / 0 would be NaN; the update is 0 instead.
  tx = M.scale_by_moments(R.ema(), R.ema_sq(), eps=0.0)
  (u,), _ = _run(tx, [_vec(0.0, 1.0)])
  _close(u["w"], [0.0, 1.0], rtol=1e-4)  # 1 - b^t is rounded in float32


def test_rules_compose_across_orders():
  """Any rule pair runs in any order: e.g. AMSGrad's max in LaProp, AdEMAMix in ADOPT."""
  grads = [_vec(1.0, -2.0, 0.5), _vec(0.5, 1.0, -1.0), _vec(-1.0, 0.25, 2.0)]
  combos = [
      M.scale_by_moments(R.dual_ema(), R.max_ema_sq(), order="laprop"),
      M.scale_by_moments(R.dual_ema(0.9, 0.99, 2.0), R.ema_sq(0.99, debias=False,
                                                              init_first=True), order="adopt",
                         clip_value_fn=lambda s: s ** 0.25),
      M.scale_by_moments(R.ema(0.9), R.belief(0.99), order="adopt"),
      M.scale_by_moments(R.heavy_ball(0.9), R.centered_ema_sq(0.9, eps_root=1e-8)),
  ]
  for tx in combos:
    outs, state = _run(tx, grads)
    for u in outs:
      assert np.all(np.isfinite(np.asarray(u["w"])))
    assert int(state.count) == 3
  # LaProp with the AMSGrad max: the first step is m_hat = g / sqrt(g^2) = sign(g).
  (u,), _ = _run(M.scale_by_moments(R.ema(), R.max_ema_sq(), eps=0.0, order="laprop"),
                 [_vec(3.0, -0.5)])
  _close(u["w"], [1.0, -1.0], rtol=1e-4)


# ------------------------------------------------ eps before the bias correction
def test_ema_sq_eps_before_debias_scale_by_hand():
  rule = R.ema_sq(0.9, eps_before_debias=0.5)
  nu = R.SecondMomentState({"a": jnp.array([0.0, 4.0])})
  # count 2: c = sqrt(1 - 0.81) = sqrt(0.19); scale = (sqrt(v) + 0.5) / c
  got = rule.scale(nu, jnp.asarray(2))["a"]
  c = math.sqrt(1 - 0.81)
  np.testing.assert_allclose(np.asarray(got), [0.5 / c, 2.5 / c], rtol=1e-6)
  # without debiasing the eps is simply added to the root
  got = R.ema_sq(0.9, debias=False, eps_before_debias=0.5).scale(nu, jnp.asarray(2))["a"]
  np.testing.assert_allclose(np.asarray(got), [0.5, 2.5], rtol=1e-6)
  # power != 1/2: ((v)^p + eps) / (1 - b2^t)^p
  got = R.ema_sq(0.9, power=0.25, eps_before_debias=0.5).scale(nu, jnp.asarray(1))["a"]
  np.testing.assert_allclose(np.asarray(got), [0.5 / 0.1 ** 0.25, (math.sqrt(2) + 0.5) / 0.1 ** 0.25],
                             rtol=1e-6)


def test_scale_by_adam_eps_before_debias_is_the_hf_adamw_form():
  b1, b2, eps = 0.9, 0.99, 0.3
  grads = [{"w": jnp.array([1.0, -2.0, 0.0])}, {"w": jnp.array([3.0, 0.5, 0.0])}]
  outs, _ = _run(optlab.scale_by_adam(b1, b2, eps, eps_before_debias=True), grads)
  paper, _ = _run(optlab.scale_by_adam(b1, b2, eps), grads)
  m = v = np.zeros(3)
  for t, (g, u, u_paper) in enumerate(zip(grads, outs, paper), start=1):
    g = np.asarray(g["w"], np.float64)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    step_size = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)       # HF-transformers AdamW
    np.testing.assert_allclose(np.asarray(u["w"]), step_size * m / (np.sqrt(v) + eps),
                               rtol=1e-5)
    # and it is not the paper's form (eps after the correction) for this large eps
    assert not np.allclose(np.asarray(u["w"])[:2], np.asarray(u_paper["w"])[:2], rtol=1e-3)
  # a zero gradient with eps = 0 gives a zero step, never NaN
  zero, _ = _run(optlab.scale_by_adam(eps=0.0, eps_before_debias=True),
                 [{"w": jnp.zeros(2)}] * 2)
  assert np.all(np.asarray(zero[-1]["w"]) == 0)


def test_ema_sq_eps_before_debias_stays_finite_at_huge_gradients():
  tx = optlab.scale_by_adam(0.9, 0.999, 1e-8, eps_before_debias=True)
  outs, state = _run(tx, [{"w": jnp.array([1e30, -1e30, 1.0], jnp.float32)}] * 3)
  assert np.all(np.isfinite(np.asarray(outs[-1]["w"])))
  assert np.all(np.isfinite(np.asarray(state.second.nu["w"])))


# ------------------------------------------------------------------------ Adan
def test_adan_matches_optax_where_optax_follows_the_paper():
  """optax.adan (0.2.8) weighs g - g_prev by 1 - b2 where the paper and the
  official code use b2 (optax PR #1715); at b2 = 0.5 the two coincide."""
  params, grad_fn, loss_fn = problems.reference_problem()
  recipe = optlab.get_recipe("adan")

  def run(tx):
    with jax.enable_x64(True):
      return harness.run_jax(tx, params, grad_fn, 25, loss_fn=loss_fn, recipe=recipe)

  ours, theirs = run(optlab.adan(0.02, b2=0.5)), run(optax.adan(0.02, b2=0.5))
  harness.assert_trajectories_close(ours, theirs, 1e-5, 1e-9, "adan vs optax.adan, b2 = 0.5")
  # at the default b2 = 0.92 they part from the second step on (optax's weighting)
  ours, theirs = run(optlab.adan(0.02)), run(optax.adan(0.02))
  gap = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
            for a, b in zip(ours, theirs) for k in a)
  assert gap > 1e-3


def test_adan_rules_compose_with_a_basis_and_8bit_storage():
  """Adan's rules run inside SOAP's basis (every field rotates by its kind) and
  under 8-bit storage, which quantises the moments and keeps g_prev exact."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)}
  grads = [{"w": jnp.asarray(rng.normal(size=(64, 80)), jnp.float32)} for _ in range(4)]
  adan = lambda: M.scale_by_moments(R.adan_momentum(), R.ema_sq(0.99))
  soap_adan = optlab.in_eigenbasis(adan(), precondition_frequency=2)
  outs, state = _run(soap_adan, grads, params)
  assert all(np.all(np.isfinite(np.asarray(u["w"]))) for u in outs)
  assert np.any(np.asarray(outs[-1]["w"]) != 0)

  tx = optlab.with_quantized_state(adan(), min_size=1)
  _, state = _run(tx, grads, params)
  inner = state.inner_state
  assert inner.first.mu["w"].dtype == jnp.uint8        # a moment: quantised
  assert inner.second.nu["w"].dtype == jnp.uint8
  np.testing.assert_array_equal(inner.first.prev_grad["w"], grads[-1]["w"])  # exact

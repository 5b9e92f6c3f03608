"""Unit tests of the normalisation and layer-wise primitives: tensor norms, RMS
normalisation, trust ratio, NovoGrad's per-layer second moment and MADGRAD's
dual averaging. Expected values are computed by hand (shown in comments) or by
NumPy / optax independently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab.primitives import normalize
from tests import harness, problems
from tests.reference import layerwise as ref
from tests import recipe_config as cfg

F32_MAX = float(np.finfo(np.float32).max)


def _step(tx, grads, params=None, state=None):
  state = tx.init(params if params is not None else grads) if state is None else state
  return jax.jit(tx.update)(grads, state, params)


# ------------------------------------------------------------- tensor norms
BOTH_BRANCHES = [normalize._sum_sq_one_pass, normalize._sum_sq_with_fallback]
BRANCH_IDS = ["one_pass", "fallback"]


def _norm_via(branch, x):
  t, k = jax.jit(branch)(jnp.asarray(x))
  return float(jnp.sqrt(t) * k)


@pytest.mark.parametrize("x,want", [
    ([3.0, 4.0], 5.0),                      # 3-4-5
    ([[1.0, 2.0], [2.0, 4.0]], 5.0),        # sqrt(1 + 4 + 4 + 16)
    (-2.5, 2.5),                            # a scalar: |x|
    ([1e30] * 4, 2e30),                     # x^2 = 1e60 overflows float32
    ([-1e30, 1e30, 0.0, 0.0], np.sqrt(2.0) * 1e30),
    ([1e-30] * 4, 2e-30),                   # x^2 = 1e-60 underflows float32
    ([3e-30, 4e-30], 5e-30),
    ([1e30, 1.0, 1e-30], 1e30),
    ([0.0, 0.0, 0.0], 0.0),                 # all zero: 0, not NaN
])
def test_tensor_norm_hand_values(x, want):
  x = jnp.asarray(x, jnp.float32)
  got = normalize.tensor_norm(x)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  np.testing.assert_allclose(float(jax.jit(normalize.tensor_norm)(x)), want, rtol=1e-6)
  for branch in BOTH_BRANCHES:  # the GPU/TPU path is checked here on CPU too
    np.testing.assert_allclose(_norm_via(branch, x), want, rtol=1e-6, err_msg=branch.__name__)


@pytest.mark.parametrize("branch", BOTH_BRANCHES, ids=BRANCH_IDS)
def test_tensor_norm_matches_numpy_on_ordinary_values(branch):
  rng = np.random.default_rng(0)
  for shape, scale in [((1000,), 1.0), ((17, 33), 1e-3), ((5, 4, 3), 1e4), ((), 0.7)]:
    x = (scale * rng.normal(size=shape)).astype(np.float32)
    want = np.linalg.norm(x.astype(np.float64).ravel())
    np.testing.assert_allclose(_norm_via(branch, x), want, rtol=2e-6)


def test_tensor_norm_saturates_instead_of_overflowing():
  x = jnp.full((16,), F32_MAX, jnp.float32)  # the true norm, 4 * max, is not representable
  assert float(normalize.tensor_norm(x)) == F32_MAX
  assert float(normalize.tensor_sq_norm(x)) == F32_MAX
  for branch in BOTH_BRANCHES:
    assert np.isfinite(_norm_via(branch, x / 4))


def test_tensor_sq_norm_values():
  np.testing.assert_allclose(float(normalize.tensor_sq_norm(jnp.array([3.0, 4.0]))), 25.0)
  assert float(normalize.tensor_sq_norm(jnp.zeros((3, 2)))) == 0.0
  assert float(normalize.tensor_sq_norm(jnp.array([1e30, 1e30]))) == F32_MAX  # saturates
  np.testing.assert_allclose(float(normalize.tensor_sq_norm(jnp.array([1e15, 1e15]))), 2e30,
                             rtol=1e-6)  # representable, though x^2 sums near the limit


def test_tensor_norm_low_precision_and_float64():
  x = jnp.array([3.0, 4.0], jnp.bfloat16)
  assert normalize.tensor_norm(x).dtype == jnp.float32  # accumulated in float32
  assert float(normalize.tensor_norm(jnp.full((4,), 1e30, jnp.bfloat16))) == pytest.approx(
      2 * float(jnp.asarray(1e30, jnp.bfloat16)), rel=1e-6)
  assert float(normalize.tensor_norm(jnp.array([3.0, 4.0], jnp.float16))) == 5.0
  with jax.enable_x64(True):
    for x, want in [([1e200] * 4, 2e200), ([1e-200] * 4, 2e-200), ([3.0, 4.0], 5.0)]:
      x = jnp.asarray(x, jnp.float64)
      assert normalize.tensor_norm(x).dtype == jnp.float64
      np.testing.assert_allclose(float(normalize.tensor_norm(x)), want, rtol=1e-12)
      for branch in BOTH_BRANCHES:
        np.testing.assert_allclose(_norm_via(branch, x), want, rtol=1e-12)


def test_tensor_norm_empty_and_non_finite():
  assert float(normalize.tensor_norm(jnp.zeros((0, 3)))) == 0.0
  assert float(normalize.tensor_rms(jnp.zeros((0,)))) == 0.0
  for branch in BOTH_BRANCHES:
    assert not np.isfinite(_norm_via(branch, jnp.array([1.0, jnp.nan])))
    assert not np.isfinite(_norm_via(branch, jnp.array([1.0, jnp.inf])))


def test_tensor_norm_under_vmap():
  x = jnp.array([[3.0, 4.0], [1e30, 1e30], [0.0, 0.0], [1e-30, 0.0]])
  want = [5.0, np.sqrt(2.0) * 1e30, 0.0, 1e-30]
  np.testing.assert_allclose(jax.jit(jax.vmap(normalize.tensor_norm))(x), want, rtol=1e-6)


def test_statistics_dtype_widens_float16_only():
  assert normalize.statistics_dtype(jnp.float16) == jnp.float32
  for dt in (jnp.bfloat16, jnp.float32):
    assert normalize.statistics_dtype(dt) == dt


def test_tensor_rms():
  np.testing.assert_allclose(float(normalize.tensor_rms(jnp.array([3.0, 4.0]))),
                             np.sqrt(12.5), rtol=1e-6)  # sqrt((9 + 16) / 2)
  assert float(normalize.tensor_rms(jnp.asarray(-3.0))) == 3.0


# ------------------------------------------------------ scale_by_rms_normalize
def test_rms_normalize_hand_values():
  tx = optlab.scale_by_rms_normalize()
  g = {"v": jnp.array([3.0, 4.0]), "s": jnp.asarray(-3.0), "z": jnp.zeros((2, 2))}
  u, _ = _step(tx, g)
  r = np.sqrt(12.5)
  np.testing.assert_allclose(u["v"], [3 / r, 4 / r], rtol=1e-6)  # RMS becomes 1
  assert float(u["s"]) == -1.0  # a scalar becomes its sign
  assert np.all(np.asarray(u["z"]) == 0)  # zero stays zero, no 0/0
  u, _ = _step(optlab.scale_by_rms_normalize(eps=1.0), {"v": jnp.array([3.0, 4.0])})
  np.testing.assert_allclose(u["v"], [3 / (r + 1), 4 / (r + 1)], rtol=1e-6)


def test_rms_normalize_extremes_and_dtype():
  tx = optlab.scale_by_rms_normalize()
  u, _ = _step(tx, {"a": jnp.array([1e30, -1e30, 0.0, 0.0]), "b": jnp.full((3,), 1e-30)})
  np.testing.assert_allclose(u["a"], [np.sqrt(2), -np.sqrt(2), 0, 0], rtol=1e-6)
  np.testing.assert_allclose(u["b"], [1.0, 1.0, 1.0], rtol=1e-6)
  u, _ = _step(tx, {"a": jnp.array([3.0, 4.0], jnp.bfloat16)})
  assert u["a"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="eps"):
    optlab.scale_by_rms_normalize(eps=-1.0)


# -------------------------------------------------------- scale_by_trust_ratio
def test_trust_ratio_hand_values():
  p = {"w": jnp.array([3.0, 4.0]), "s": jnp.asarray(-2.0)}
  g = {"w": jnp.array([0.0, 2.0]), "s": jnp.asarray(0.5)}
  u, _ = _step(optlab.scale_by_trust_ratio(), g, p)
  np.testing.assert_allclose(u["w"], [0.0, 5.0], rtol=1e-6)  # ratio 5 / 2
  np.testing.assert_allclose(float(u["s"]), 2.0, rtol=1e-6)  # ratio 2 / 0.5 on a scalar
  u, _ = _step(optlab.scale_by_trust_ratio(trust_coefficient=0.1, eps=1.0), g, p)
  np.testing.assert_allclose(u["w"], [0.0, 1 / 3], rtol=1e-6)  # 0.1 * 5 / (2 + 1) = 1/6


def test_trust_ratio_zero_norms():
  tx = optlab.scale_by_trust_ratio(trust_coefficient=0.001)
  g = {"zero_p": jnp.array([1.0, -2.0]), "zero_u": jnp.zeros(2)}
  p = {"zero_p": jnp.zeros(2), "zero_u": jnp.array([1.0, 1.0])}
  u, _ = _step(tx, g, p)
  np.testing.assert_array_equal(u["zero_p"], [1.0, -2.0])  # ratio 1: a zero param moves
  np.testing.assert_array_equal(u["zero_u"], [0.0, 0.0])  # no NaN from 0/0
  # With min_norm both norms are at least min_norm, so the ratio is no longer forced to 1.
  u, _ = _step(optlab.scale_by_trust_ratio(min_norm=0.5), {"a": jnp.array([2.0, 0.0])},
               {"a": jnp.zeros(2)})
  np.testing.assert_allclose(u["a"], [0.5, 0.0], rtol=1e-6)  # 0.5 / 2 * 2


def test_trust_ratio_extremes_stay_finite():
  tx = optlab.scale_by_trust_ratio()
  # Huge update, ordinary params: u / ||u|| * ||p||, exactly.
  u, _ = _step(tx, {"a": jnp.array([1e30, 1e30])}, {"a": jnp.array([1.0, 1.0])})
  np.testing.assert_allclose(u["a"], [1.0, 1.0], rtol=1e-6)
  # Huge params, tiny update: the ratio (2e30 / 1e-30) is capped; the result is finite.
  u, _ = _step(tx, {"a": jnp.array([1e-30, 0.0, 0.0, 0.0])}, {"a": jnp.full((4,), 1e30)})
  assert np.all(np.isfinite(np.asarray(u["a"]))) and float(u["a"][0]) > 1e7
  u, _ = _step(tx, {"a": jnp.array([1e30, -1e30], jnp.bfloat16)},
               {"a": jnp.array([1e30, 1e30], jnp.bfloat16)})
  assert u["a"].dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(u["a"], np.float32)))


@pytest.mark.parametrize("kw", [{}, {"trust_coefficient": 0.001, "eps": 1e-3},
                                {"min_norm": 0.3}])
def test_trust_ratio_matches_optax(kw):
  rng = np.random.default_rng(1)
  p = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in problems.SHAPES.items()}
  g = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in problems.SHAPES.items()}
  p["b1"] = jnp.zeros_like(p["b1"])
  got, _ = _step(optlab.scale_by_trust_ratio(**kw), g, p)
  want, _ = _step(optax.scale_by_trust_ratio(**kw), g, p)
  for k in p:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


def test_trust_ratio_needs_params_and_checks_arguments():
  tx = optlab.scale_by_trust_ratio()
  with pytest.raises(ValueError, match="params"):
    tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}), None)
  for name in ("min_norm", "trust_coefficient", "eps"):
    with pytest.raises(ValueError, match=name):
      optlab.scale_by_trust_ratio(**{name: -1.0})


# --------------------------------------------- scale_by_layerwise_second_moment
def test_layerwise_second_moment_hand_values():
  tx = optlab.scale_by_layerwise_second_moment(b2=0.5, eps=0.0, eps_root=0.0)
  g1 = {"a": jnp.array([3.0, 4.0]), "b": jnp.asarray(2.0)}
  state = tx.init(g1)
  assert state.nu.shape == (2,) and state.nu.dtype == jnp.float32  # one scalar per leaf
  u, state = jax.jit(tx.update)(g1, state)
  np.testing.assert_allclose(state.nu, [25.0, 4.0])  # v = ||g||^2 at first sight
  np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)  # g / 5
  np.testing.assert_allclose(float(u["b"]), 1.0, rtol=1e-6)  # 2 / 2
  g2 = {"a": jnp.array([0.0, 1.0]), "b": jnp.asarray(-4.0)}
  u, state = jax.jit(tx.update)(g2, state)
  np.testing.assert_allclose(state.nu, [13.0, 10.0])  # 0.5 * 25 + 0.5 * 1; 0.5 * 4 + 0.5 * 16
  np.testing.assert_allclose(u["a"], [0.0, 1 / np.sqrt(13.0)], rtol=1e-6)
  np.testing.assert_allclose(float(u["b"]), -4 / np.sqrt(10.0), rtol=1e-6)
  # eps outside, eps_root inside the root: 2 / (sqrt(4 + 5) + 1) on a fresh state.
  tx = optlab.scale_by_layerwise_second_moment(eps=1.0, eps_root=5.0)
  u, _ = _step(tx, {"b": jnp.asarray(2.0)})
  np.testing.assert_allclose(float(u["b"]), 0.5, rtol=1e-6)


def test_layerwise_second_moment_zero_then_nonzero():
  tx = optlab.scale_by_layerwise_second_moment(b2=0.9, eps=0.0, eps_root=0.0)
  zero = {"a": jnp.zeros(3)}
  state = tx.init(zero)
  u, state = jax.jit(tx.update)(zero, state)
  np.testing.assert_array_equal(u["a"], np.zeros(3))  # no 0/0
  assert float(state.nu[0]) == 0.0
  u, state = jax.jit(tx.update)({"a": jnp.array([0.0, 0.0, 2.0])}, state)
  assert float(state.nu[0]) == 4.0  # still 0, so initialised (not 0.1 * 4)
  np.testing.assert_allclose(u["a"], [0.0, 0.0, 1.0], rtol=1e-6)


def test_layerwise_second_moment_extremes_and_dtypes():
  tx = optlab.scale_by_layerwise_second_moment()
  g = {"a": jnp.full((4,), 1e30, jnp.bfloat16), "s": jnp.asarray(-1e30, jnp.bfloat16)}
  state = tx.init(g)
  for _ in range(2):
    u, state = jax.jit(tx.update)(g, state)
  assert state.nu.dtype == jnp.float32 and u["a"].dtype == jnp.bfloat16
  # g enters through bound_gradient (|g| <= 2^63): ||a||^2 = 4 * 2^126 saturates
  # (at ~2^128), the scalar's square is exactly 2^126, and u = g / ||g|| per leaf,
  # 1 / sqrt(4) and -1, as for ordinary values.
  np.testing.assert_array_equal(np.asarray(state.nu), [F32_MAX, 2.0 ** 126])
  np.testing.assert_allclose(np.asarray(u["a"], np.float32), 0.5, rtol=1e-2)
  np.testing.assert_allclose(np.asarray(u["s"], np.float32), -1.0, rtol=1e-2)
  for leaf in jax.tree.leaves(u):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
  # The per-leaf vector is not mistaken for a param-shaped tree.
  marked = optax.tree_map_params(tx, lambda _: "P", state, transform_non_params=lambda _: "N")
  assert marked.nu == "N"
  with pytest.raises(ValueError, match="leaves"):
    tx.update({"a": g["a"]}, state)


def test_novograd_matches_optax_with_its_defaults():
  params, grad_fn, _ = problems.reference_problem()
  want = harness.run_jax(optax.novograd(0.01), params, grad_fn, 10)
  got = harness.run_jax(optlab.novograd(0.01), params, grad_fn, 10)
  harness.assert_trajectories_close(got, want, 2e-5, 1e-6, "novograd(0.01) vs optax f32")


# ------------------------------------------------------------ scale_by_madgrad
def test_madgrad_hand_values():
  # k = 0, lr = 0.1, eps = 0: lambda = 0.1; nu = 0.1 * 4; s = 0.1 * 2;
  # z = 1 - 0.2 / cbrt(0.4); momentum 0: x <- z; momentum 0.9: x <- 0.9 + 0.1 z.
  p, g = {"x": jnp.array([1.0])}, {"x": jnp.array([2.0])}
  z = 1 - 0.2 / np.cbrt(0.4)
  u, state = _step(optlab.scale_by_madgrad(0.1, momentum=0.0, eps=0.0), g, p)
  np.testing.assert_allclose(u["x"], [z - 1], rtol=1e-6)
  u, state = _step(optlab.scale_by_madgrad(0.1, momentum=0.9, eps=0.0), g, p)
  np.testing.assert_allclose(u["x"], [0.1 * (z - 1)], rtol=1e-5)
  # k = 1, same gradient: lambda = 0.1 sqrt(2); x1 = 0.9 + 0.1 z.
  x1 = 0.9 + 0.1 * z
  lam = 0.1 * np.sqrt(2.0)
  nu, s = 0.4 + lam * 4, 0.2 + lam * 2
  z2 = 1 - s / np.cbrt(nu)
  u, state = jax.jit(optlab.scale_by_madgrad(0.1, momentum=0.9, eps=0.0).update)(
      g, state, {"x": jnp.array([x1], jnp.float32)})
  np.testing.assert_allclose(u["x"], [0.1 * (z2 - x1)], rtol=1e-5)
  np.testing.assert_allclose(state.s["x"], [s], rtol=1e-6)
  np.testing.assert_allclose(state.nu["x"], [nu], rtol=1e-6)
  assert int(state.count) == 2


def test_madgrad_zero_gradient_zero_lr_and_eps():
  p = {"x": jnp.array([1.0, -2.0]), "s": jnp.asarray(3.0)}
  zero = jax.tree.map(jnp.zeros_like, p)
  u, _ = _step(optlab.scale_by_madgrad(0.1, eps=0.0), zero, p)  # cbrt(0) + 0: no 0/0
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  ones = jax.tree.map(jnp.ones_like, p)
  u, _ = _step(optlab.scale_by_madgrad(0.0), ones, p)  # lr 0: eps is not added, no move
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))


def test_madgrad_extremes_and_dtypes():
  tx = optlab.scale_by_madgrad(0.05)
  p = {"w": jnp.ones((2, 3), jnp.bfloat16), "s": jnp.asarray(1.0, jnp.bfloat16)}
  g = {"w": jnp.full((2, 3), 1e30, jnp.bfloat16), "s": jnp.asarray(-1e30, jnp.bfloat16)}
  state = tx.init(p)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.s, state.nu, state.x0)))
  for _ in range(3):
    u, state = jax.jit(tx.update)(g, state, p)
    p = optax.apply_updates(p, u)
  assert u["w"].dtype == jnp.bfloat16
  for leaf in jax.tree.leaves((u, state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
  with pytest.raises(ValueError, match="params"):
    tx.update(g, state, None)
  with pytest.raises(ValueError, match="momentum"):
    optlab.scale_by_madgrad(0.1, momentum=1.0)


def test_madgrad_anchor_is_a_copy_so_state_and_params_can_both_be_donated():
  # x0 starts equal to the params; sharing their buffer (as optax's identity map does)
  # makes a step that donates both params and state fail with "donate the same buffer".
  tx = optlab.madgrad(0.05)
  p = {"w": jnp.ones((4, 3)), "s": jnp.asarray(2.0)}
  state = tx.init(p)  # eager, not jitted

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p2, _ = jax.jit(step, donate_argnums=(0, 1))(p, state, jax.tree.map(jnp.ones_like, p))
  assert np.all(np.isfinite(np.asarray(p2["w"])))


def test_madgrad_momentum_zero_decoupled_decay_matches_official_code():
  # The official code rebuilds x0 from x when momentum is 0, so the decoupled decay
  # accumulates; optax has no such mode, hence this case is not in the catalog.
  params, grad_fn, _ = problems.reference_problem()
  kw = {"learning_rate": 0.05, "momentum": 0.0, "weight_decay": 0.1, "decouple_decay": True}
  want = ref.madgrad(params, grad_fn, 25, **kw)
  with jax.enable_x64(True):
    got = harness.run_jax(optlab.madgrad(**kw), params, grad_fn, 25)
  harness.assert_trajectories_close(got, want, 1e-5, 1e-9, "madgrad momentum 0, decoupled")


def test_madgrad_matches_optax_in_float32():
  params, grad_fn, _ = problems.reference_problem()
  want = harness.run_jax(optax.contrib.madgrad(0.05, weight_decay=0.01), params, grad_fn, 10)
  got = harness.run_jax(optlab.madgrad(0.05, weight_decay=0.01), params, grad_fn, 10)
  harness.assert_trajectories_close(got, want, 1e-4, 1e-6, "madgrad vs optax f32")


@pytest.mark.parametrize("name", ["novograd", "lamb", "lars", "madgrad"])
def test_injected_zero_weight_decay_keeps_the_state_shape(name):
  # inject_hyperparams hands weight_decay=0.0 over as a concrete array at init and as
  # a tracer inside jit: the recipe must build the same chain both times.
  recipe = optlab.get_recipe(name)
  tx = optax.inject_hyperparams(recipe.factory)(**cfg.hparams(recipe), weight_decay=0.0)
  params = {"w": jnp.ones((3, 2)), "s": jnp.asarray(0.5)}
  state = tx.init(params)
  u, state = jax.jit(tx.update)(jax.tree.map(lambda p: 0.1 * p, params), state, params)
  want, _ = _step(cfg.build(recipe), jax.tree.map(lambda p: 0.1 * p, params), params)
  for k in params:
    np.testing.assert_allclose(u[k], want[k], rtol=1e-5, atol=1e-7)


def test_segment_norms_match_per_tensor_norms():
  from optlab.primitives.normalize import segment_norms
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 4, 3)).astype(np.float32)
  x[4:] *= 1e30  # segment 2 overflows a plain sum of squares; segment 1 underflows
  x[2:4] *= 1e-30
  ids = np.array([0, 0, 1, 1, 2, 2])
  got = np.asarray(segment_norms(jnp.asarray(x), ids, 3))
  want = [np.linalg.norm(x[ids == s].astype(np.float64).ravel()) for s in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(segment_norms(jnp.zeros((2, 3)), np.array([0, 1]), 2)),
                                [0.0, 0.0])

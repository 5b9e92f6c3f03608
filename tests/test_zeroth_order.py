"""Zeroth-order estimators: the SPSA estimate's expectation, the documented key
schedule, memory, masks, and `zo_step`."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab
from optlab.primitives import zeroth_order as Z

D = 10
A = jnp.linspace(0.5, 3.0, D)
B = jnp.linspace(-1.0, 1.0, D)


def quadratic(p):
  x = p["x"]
  return 0.5 * jnp.sum(A * x * x) + jnp.sum(B * x)


def test_spsa_expectation_matches_true_gradient():
  """E[(z.g) z] = g for z ~ N(0, I). On a quadratic the two-point difference is
  exactly z.g, so the estimate is (z.g) z, whose covariance is ||g||^2 I + g g^T.

  With n = 4096 samples each coordinate's mean has standard deviation
  sigma_i = sqrt((||g||^2 + g_i^2) / n) (about 0.05 here); we require
  |mean_i - g_i| <= 5 sigma_i (a 1 in 1.7 million chance per coordinate for a
  correct estimator). A biased or mis-scaled estimator (e.g. missing the 1/(2 eps),
  or a factor 2) fails by many sigma. The mean squared normalised error must
  also look like a chi-square with D degrees of freedom divided by D (between
  0.1 and 3), which a wrong variance (e.g. reusing one direction) fails.
  """
  n = 4096
  with jax.enable_x64(True):
    x = jnp.linspace(1.0, -0.5, D, dtype=jnp.float64)
    params = {"x": x}
    g_true = np.asarray(A * x + B)
    est, loss = jax.jit(lambda p, k: Z.spsa_gradient(quadratic, p, k, 1e-3, n))(
        params, Z.zo_step_key(Z.zo_new_key(0), 0))
    true_loss = float(quadratic(params))
  sigma = np.sqrt((np.sum(g_true ** 2) + g_true ** 2) / n)
  err = (np.asarray(est["x"]) - g_true) / sigma
  assert np.all(np.abs(err) <= 5.0), err
  assert 0.1 <= np.mean(err ** 2) <= 3.0, err
  np.testing.assert_allclose(float(loss), true_loss, rtol=1e-5)


def test_key_schedule_is_the_documented_one():
  """One step of n = 2 samples equals the hand-built estimate from the documented draws."""
  params = {"a": jnp.array([0.3, -0.2, 1.0]), "b": jnp.array([[0.5, 2.0]])}
  f = lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(jnp.sin(p["b"]))
  eps, seed, t = 0.01, 4, 3
  tx = Z.scale_by_spsa(eps, 2, seed=seed)
  state = tx.init(params)._replace(count=jnp.array(t, jnp.int32))
  got, new = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=f))(
      jax.tree.map(jnp.zeros_like, params), state, params)
  assert int(new.count) == t + 1
  want = {k: np.zeros(np.shape(v)) for k, v in params.items()}
  for s in range(2):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), s)
    leaf_key = lambda name: jax.random.fold_in(k, np.uint32(zlib.crc32(f"['{name}']".encode())))
    z = {name: np.asarray(jax.random.normal(leaf_key(name), np.shape(params[name]), jnp.float32))
         for name in ("a", "b")}  # each leaf keyed by crc32 of its path
    plus = {k_: params[k_] + eps * z[k_] for k_ in z}
    minus = {k_: params[k_] - eps * z[k_] for k_ in z}
    c = (float(f(plus)) - float(f(minus))) / (2 * eps)
    for k_ in want:
      want[k_] += c * z[k_] / 2
  for k_ in want:
    np.testing.assert_allclose(np.asarray(got[k_]), want[k_], rtol=2e-3, atol=1e-5)


def test_mean_direction_is_the_mean_of_the_documented_draws_and_leaves_the_estimate():
  """`mean_direction=True` adds mean_s z_s, summed in the first pass, and changes
  nothing else: the estimate and loss equal those of the call without it."""
  params = {"a": jnp.array([0.3, -0.2, 1.0]), "b": jnp.array([[0.5, 2.0]])}
  f = lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(jnp.sin(p["b"]))
  key, n = Z.zo_step_key(Z.zo_new_key(7), 2), 3
  est, loss = jax.jit(lambda p: Z.spsa_gradient(f, p, key, 0.01, n))(params)
  est2, loss2, mean = jax.jit(
      lambda p: Z.spsa_gradient(f, p, key, 0.01, n, mean_direction=True))(params)
  draws = [Z.zo_normals(Z.zo_sample_key(key, s), params) for s in range(n)]
  for name in params:
    np.testing.assert_array_equal(np.asarray(est2[name]), np.asarray(est[name]))
    want = np.mean([np.asarray(d[name], np.float64) for d in draws], axis=0)
    np.testing.assert_allclose(np.asarray(mean[name]), want, rtol=1e-6, atol=1e-7)
  assert float(loss2) == float(loss)


def test_incoming_gradient_is_ignored_and_dtype_kept():
  params = {"x": jnp.ones(D, jnp.bfloat16)}
  tx = optlab.mezo(0.1)
  s = tx.init(params)
  f = lambda p: quadratic({"x": p["x"].astype(jnp.float32)})
  u0, _ = tx.update({"x": jnp.zeros(D, jnp.bfloat16)}, s, params, obj_fn=f)
  u1, _ = tx.update({"x": jnp.full(D, 1e30, jnp.bfloat16)}, s, params, obj_fn=f)
  assert u0["x"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(u0["x"], np.float32), np.asarray(u1["x"], np.float32))


def test_zero_and_constant_objectives_give_zero_updates():
  params = {"x": jnp.ones(D)}
  tx = optlab.mezo(0.1, n_samples=3)
  u, s = tx.update(params, tx.init(params), params, obj_fn=lambda p: jnp.float32(2.0))
  np.testing.assert_array_equal(np.asarray(u["x"]), 0.0)
  assert float(optlab.find_state(s, Z.ZerothOrderState).loss) == 2.0


def test_huge_parameters_stay_finite():
  params = {"x": jnp.full(D, 1e30)}
  tx = optlab.mezo(1e-3)
  f = lambda p: jnp.sum(jnp.tanh(p["x"]))
  u, _ = tx.update(params, tx.init(params), params, obj_fn=f)
  assert np.all(np.isfinite(np.asarray(u["x"])))


def test_small_magnitude_mask():
  p = {"w": jnp.array([[0.1, -3.0], [2.0, -0.05]]), "s": jnp.array(5.0)}
  m = Z.small_magnitude_mask(p, 0.5)
  np.testing.assert_array_equal(np.asarray(m["w"]), [[True, False], [False, True]])
  assert bool(m["s"])
  assert bool(jnp.all(Z.small_magnitude_mask(p, 0.0)["w"]))
  np.testing.assert_array_equal(np.asarray(Z.small_magnitude_mask(p, 0.75)["w"]),
                                [[False, False], [False, True]])


def test_sparse_spsa_leaves_large_weights_untouched():
  params = {"w": jnp.array([0.1, -3.0, 2.0, -0.05, 0.2, 4.0])}
  tx = optlab.scale_by_spsa(sparsity=0.5)
  f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
  u, _ = tx.update(params, tx.init(params), params, obj_fn=f)
  u = np.asarray(u["w"])
  assert np.all(u[[1, 2, 5]] == 0) and np.all(u[[0, 3, 4]] != 0)


def test_sparse_spsa_thresholds_are_fixed_at_init():
  # Thresholds come from the params at init (0.2 for w, at sparsity 0.5); later
  # steps compare the current |p| with them, so a weight that has grown past
  # 0.2 is frozen and every weight still below 0.2 is perturbed.
  params = {"w": jnp.array([0.1, -3.0, 2.0, -0.05, 0.2, 4.0]), "s": jnp.array(7.0)}
  tx = optlab.scale_by_spsa(sparsity=0.5)
  state = tx.init(params)
  np.testing.assert_allclose(np.asarray(state.threshold), [np.finfo(np.float32).max, 0.2])
  moved = {"w": jnp.array([0.3, 0.01, -0.15, -0.05, 0.19, 0.02]), "s": jnp.array(7.0)}
  f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + p["s"] ** 2
  u, state = tx.update(moved, state, moved, obj_fn=f)
  u = np.asarray(u["w"])
  assert u[0] == 0 and np.all(u[1:] != 0)
  np.testing.assert_allclose(np.asarray(state.threshold)[1], 0.2)
  with pytest.raises(ValueError, match="do not match the params"):
    tx.update({"w": moved["w"]}, state, {"w": moved["w"]}, obj_fn=f)


def test_zo_step_trains_without_backward_pass():
  params = {"x": jnp.zeros(D)}
  tx = optlab.mezo(0.05, n_samples=4)
  step = jax.jit(lambda p, s: optlab.zo_step(tx, quadratic, p, s))
  s = tx.init(params)
  p = params
  for _ in range(150):
    p, s, loss = step(p, s)
  opt = float(quadratic({"x": -B / A}))
  assert float(quadratic(p)) - opt < 0.05 * (float(quadratic(params)) - opt)
  # No transpose (backward) op is ever built: the jaxpr has no reverse-mode pieces.
  jaxpr = str(jax.make_jaxpr(lambda p, s: optlab.zo_step(tx, quadratic, p, s))(params, s))
  assert "transpose" not in jaxpr and "pjit[name=vjp" not in jaxpr


def _temp_bytes(tx, params, f):
  s = tx.init(params)
  compiled = jax.jit(lambda p, s: optlab.zo_step(tx, f, p, s)).lower(params, s).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_peak_memory_does_not_grow_with_samples():
  """The perturbations are regenerated, never stored: the compiled step's scratch
  memory does not grow with n_samples. Measured on XLA:CPU for a 1 MiB parameter:
  about 3 parameter copies of scratch for n = 1 (perturbed point, regenerated
  direction, estimate) and about 6 for the looped n > 1 path (the loop's
  double-buffered accumulator), the same for n = 2 and n = 32."""
  params = {"w": jnp.zeros((512, 512))}  # 1 MiB of f32
  f = lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2)
  size = 512 * 512 * 4
  one = _temp_bytes(optlab.mezo(0.1, n_samples=1), params, f)
  two = _temp_bytes(optlab.mezo(0.1, n_samples=2), params, f)
  many = _temp_bytes(optlab.mezo(0.1, n_samples=32), params, f)
  assert many <= two + size // 4, (two, many)
  assert one <= 4 * size and many <= 7 * size, (one, two, many)


def _leaf_normals(key, name, shape):
  """The documented draw of the leaf `name` from a raw sample key."""
  leaf_id = np.uint32(zlib.crc32(f"['{name}']".encode()))
  k = jax.random.fold_in(jax.random.wrap_key_data(key), leaf_id)
  return np.asarray(jax.random.normal(k, shape, jnp.float32), np.float64)


def test_zo_adamu_step_by_hand():
  """alpha = b1 = b2 = 1: m = n1 (the draw folded with 0), v = n1^2, u = c m / sqrt(v^2 + sigma).
  The stored m is the perturbation used, and the next step's z2 is centred on it."""
  params = {"x": jnp.array([0.3, -1.2, 2.0])}
  f = lambda p: jnp.sum(p["x"] ** 2) + p["x"][0]
  eps, sigma = 1e-2, 0.5
  tx = Z.scale_by_zo_adamu(eps, alpha=1.0, b1=1.0, b2=1.0, sigma=sigma, seed=3)
  s = tx.init(params)
  u, s1 = tx.update(jax.tree.map(jnp.zeros_like, params), s, params, obj_fn=f)
  sample = Z.zo_sample_key(Z.zo_step_key(Z.zo_new_key(3), 0), 0)
  n1 = _leaf_normals(Z.zo_sample_key(sample, 0), "x", (3,))
  x = np.asarray(params["x"], np.float64)
  fx = lambda y: np.sum(y ** 2) + y[0]
  c = (fx(x + eps * n1) - fx(x - eps * n1)) / (2 * eps)
  np.testing.assert_allclose(np.asarray(u["x"]), c * n1 / np.sqrt(n1 ** 4 + sigma), rtol=1e-3)
  np.testing.assert_allclose(np.asarray(s1.m["x"]), n1, rtol=1e-6)
  assert int(s1.count) == 1


def test_zo_adamu_without_noise_or_momentum_gives_zero_update():
  """alpha = 1 and b1 = 0 perturb along z2 = m without noise; m starts at zero: no step,
  no NaN (0 / sqrt(0 + sigma))."""
  params = {"x": jnp.array([1.0, 2.0])}
  tx = Z.scale_by_zo_adamu(0.1, alpha=1.0, b1=0.0, b2=0.5)
  u, s = tx.update(params, tx.init(params), params, obj_fn=lambda p: jnp.sum(p["x"] ** 2))
  np.testing.assert_array_equal(np.asarray(u["x"]), 0.0)
  np.testing.assert_array_equal(np.asarray(s.m["x"]), 0.0)


def test_cge_is_the_forward_difference_on_selected_coordinates():
  """On f = sum(a x^2 / 2 + b x) the forward difference is exactly a x + b + mu a / 2."""
  a = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  params = {"w": jnp.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]), "s": jnp.array(0.7)}
  f = lambda p: jnp.sum(0.5 * a * p["w"] ** 2 + p["w"]) + p["s"] ** 2
  mu = 0.25
  tx = Z.scale_by_cge(mu, sparsity=0.5, mask_interval=2, seed=1)
  step = jax.jit(lambda s: tx.update(jax.tree.map(jnp.zeros_like, params), s, params, obj_fn=f))
  s0 = tx.init(params)
  u0, s1 = step(s0)
  u1, s2 = step(s1)
  u2, _ = step(s2)
  full = np.asarray(a * params["w"] + 1.0 + mu * a / 2)
  w0 = np.asarray(u0["w"])
  chosen = w0 != 0
  assert chosen.sum() == 3  # ceil(0.5 * 6) coordinates
  np.testing.assert_allclose(w0[chosen], full[chosen], rtol=1e-5)
  np.testing.assert_allclose(float(u0["s"]), 2 * 0.7 + mu, rtol=1e-5)  # scalars: one coordinate
  np.testing.assert_array_equal(np.asarray(u1["w"]) != 0, chosen)  # same set within an interval
  coords = Z.random_coordinates(Z.zo_step_key(Z.zo_new_key(1), 1), params, 0.5)
  np.testing.assert_array_equal(np.sort(np.flatnonzero(np.asarray(u2["w"]))),
                                np.sort(np.asarray(coords["w"])))


def test_cge_skips_zero_size_leaves():
  # Issue 12, item 5: a (0, 3) leaf has no coordinate, so no forward pass and a
  # (0, 3) estimate; the other leaves' coordinates (keyed by path) are unchanged.
  params = {"w": jnp.arange(6.0).reshape(2, 3), "z": jnp.zeros((0, 3))}
  key = Z.zo_step_key(Z.zo_new_key(1), 0)
  coords = Z.random_coordinates(key, params, 0.5)
  assert coords["z"].shape == (0,)
  np.testing.assert_array_equal(coords["w"], Z.random_coordinates(key, {"w": params["w"]}, 0.5)["w"])
  calls = []
  f = lambda p: calls.append(1) or jnp.sum(p["w"] ** 2) + jnp.sum(p["z"])
  g, _ = Z.cge_gradient(f, params, coords)
  assert g["z"].shape == (0, 3) and len(calls) == 2  # f(params) and the traced map for "w"


def test_quantize_stochastic_grid_range_and_unbiased():
  x = {"w": jnp.array([0.3, -1.0, 0.0, 0.77, 1e-3]), "z": jnp.zeros(3), "h": jnp.full(2, 1e30)}
  bits, qmax, n = 4, 7, 2000
  keys = jax.vmap(lambda i: Z.zo_sample_key(Z.zo_new_key(0), i))(jnp.arange(n))
  q = jax.jit(jax.vmap(lambda k: Z.quantize_stochastic(x, k, bits)))(keys)
  w = np.asarray(q["w"], np.float64)
  scale = 1.0 / qmax  # max|w| / qmax
  np.testing.assert_allclose(w / scale, np.round(w / scale), atol=1e-4)  # on the grid
  assert np.all(np.abs(w) <= 1.0 + 1e-6)
  assert np.all(w[:, 2] == 0.0)  # zero is on the grid
  np.testing.assert_array_equal(np.asarray(q["z"]), 0.0)
  assert np.all(np.isfinite(np.asarray(q["h"])))
  # Each entry rounds to one of its two neighbours on the grid.
  lo = np.floor(np.asarray(x["w"]) / scale) * scale
  assert np.all((np.abs(w - lo) < 1e-6) | (np.abs(w - lo - scale) < 1e-6))
  # Unbiased: the mean over n roundings is within 5 standard errors (<= scale / 2 / sqrt(n)).
  np.testing.assert_allclose(w.mean(0), np.asarray(x["w"]), atol=5 * 0.5 * scale / np.sqrt(n))


def test_zo_step_runs_every_zeroth_order_recipe():
  params = {"x": jnp.linspace(-1.0, 1.0, 4), "b": jnp.array(0.5)}
  f = lambda p: jnp.sum(p["x"] ** 2) + p["b"] ** 2
  for tx in (optlab.mezo(0.05), optlab.sparse_mezo(0.05), optlab.zo_adamu(0.05, sigma=1.0),
             optlab.deepzero(0.05), optlab.quzo(0.05, eps=0.1)):
    s = tx.init(params)
    p, s, loss = jax.jit(lambda p, s: optlab.zo_step(tx, f, p, s))(params, s)
    assert np.isfinite(float(loss)) and abs(float(loss) - float(f(params))) < 0.1
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(p))

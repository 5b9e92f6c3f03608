"""Unit tests of optlab.primitives.curvature: the Hessian-diagonal estimators, the
refresh schedule, pmap averaging, spatial averaging, M-FAC's inverse-Fisher
product, Lanczos, and numerical safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab
from optlab.primitives import curvature as C

KEY = jax.random.PRNGKey(3)


def _quad(a):
  return lambda p: 0.5 * sum(jnp.sum(a[k] * p[k] ** 2) for k in p)


# ------------------------------------------------------------------- estimators
def test_hutchinson_is_exact_for_a_diagonal_hessian():
  a = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "s": jnp.array(0.5)}
  params = {"w": jnp.ones((2, 2)), "s": jnp.array(2.0)}
  for key in (KEY, jax.random.PRNGKey(7)):
    est = C.hutchinson_diagonal(_quad(a), params, key, n_probes=3)
    for k in a:
      np.testing.assert_allclose(est[k], a[k], rtol=1e-6)


def test_hutchinson_is_unbiased_for_a_dense_hessian():
  rng = np.random.default_rng(0)
  b = rng.normal(size=(5, 5))
  h = b @ b.T + np.eye(5)
  obj = lambda p: 0.5 * p["x"] @ jnp.asarray(h, jnp.float32) @ p["x"]
  n = 4000
  est = C.hutchinson_diagonal(obj, {"x": jnp.zeros(5)}, KEY, n_probes=n)["x"]
  # z_i (Hz)_i = H_ii + sum_{j != i} H_ij z_i z_j: the noise has variance
  # sum_{j != i} H_ij^2 per probe; allow 5 standard errors of the mean.
  se = np.sqrt((np.sum(h ** 2, 1) - np.diag(h) ** 2) / n)
  assert np.all(np.abs(np.asarray(est) - np.diag(h)) < 5 * se + 1e-5), (est, np.diag(h), se)


def _softmax_regression():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 4)).astype(np.float32)
  w = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  return x, w, (lambda p: jnp.asarray(x) @ p["w"])


def test_gnb_matches_numpy_with_the_same_sampled_labels():
  x, w, logits_fn = _softmax_regression()
  est = C.gnb_diagonal(logits_fn, w, KEY)["w"]
  logits = np.asarray(logits_fn(w), np.float64)
  y = np.asarray(jax.random.categorical(KEY, jnp.asarray(logits, jnp.float32), axis=-1))
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  onehot = np.eye(3)[y]
  grad = x.T @ (prob - onehot) / 6  # gradient of the mean cross-entropy against y
  np.testing.assert_allclose(est, 6 * grad ** 2, rtol=1e-4, atol=1e-7)


def test_gnb_is_the_gauss_newton_diagonal_in_expectation():
  x, w, logits_fn = _softmax_regression()
  n = 3000
  ests = jax.vmap(lambda k: C.gnb_diagonal(logits_fn, w, k)["w"])(jax.random.split(KEY, n))
  logits = np.asarray(logits_fn(w), np.float64)
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  gn_diag = (x.astype(np.float64) ** 2).T @ (prob * (1 - prob)) / 6
  ests = np.asarray(ests, np.float64)
  se = ests.std(0) / np.sqrt(n)
  assert np.all(np.abs(ests.mean(0) - gn_diag) < 5 * se + 1e-6)


def test_spatial_average_only_touches_4d_leaves():
  k = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5) - 50
  tree = {"conv": k, "dense": -jnp.ones((3, 4))}
  out = C.spatial_average(tree)
  want = np.broadcast_to(np.abs(np.asarray(k)).mean((0, 1), keepdims=True), k.shape)
  np.testing.assert_allclose(out["conv"], want, rtol=1e-6)
  np.testing.assert_array_equal(out["dense"], tree["dense"])


# ------------------------------------------------------------- refresh schedule
def test_estimate_refreshes_every_k_steps_and_key_moves_only_then():
  a = {"x": jnp.array([1.0, 4.0])}
  tx = C.scale_by_sophia(b2=0.5, update_interval=3)
  params = {"x": jnp.ones(2)}
  state = tx.init(params)
  step = jax.jit(lambda s: tx.update({"x": jnp.ones(2)}, s, params, obj_fn=_quad(a)))
  nus, keys = [], []
  for _ in range(7):
    _, state = step(state)
    nus.append(np.asarray(state.nu["x"]))
    keys.append(np.asarray(state.key))
  # refreshed on steps 1, 4, 7 (0-based calls 0, 3, 6): h = 0.5 h + 0.5 a
  expect = [0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.875]
  for nu, e in zip(nus, expect):
    np.testing.assert_allclose(nu, e * np.array([1.0, 4.0]), rtol=1e-6)
  moved = [not np.array_equal(keys[i], keys[i - 1]) for i in range(1, 7)]
  assert moved == [False, False, True, False, False, True]


def test_before_refresh_skips_the_first_step():
  a = {"x": jnp.array([2.0])}
  tx = C.scale_by_sophia(b2=0.0, update_interval=2, refresh="before", debias=False,
                         gamma=1.0, clip_threshold=None)
  params, g = {"x": jnp.ones(1)}, {"x": jnp.ones(1)}
  state = tx.init(params)
  u1, state = tx.update(g, state, params, obj_fn=_quad(a))
  assert float(state.nu["x"][0]) == 0.0  # official Sophia-G: no estimate on step 1
  u2, state = tx.update(g, state, params, obj_fn=_quad(a))
  assert float(state.nu["x"][0]) == 0.0
  u3, state = tx.update(g, state, params, obj_fn=_quad(a))  # refreshed, then used at once
  np.testing.assert_allclose(state.nu["x"], [2.0])
  np.testing.assert_allclose(u3["x"], np.asarray(state.mu["x"]) / 2.0, rtol=1e-6)


# ----------------------------------------------------------------- pmap average
def test_pmap_average_keeps_replicas_identical_with_different_data():
  n = jax.device_count()
  assert n == 8, "conftest sets 8 host devices"
  curv = jnp.arange(1.0, n + 1.0)[:, None] * jnp.ones((n, 3))  # different per device
  params = {"x": jnp.ones(3)}
  mean_c = np.mean(np.arange(1.0, n + 1.0))
  # b2 = 0: Sophia keeps h = mean(c); AdaHessian keeps D^2 = mean(c)^2
  for tx, want in ((C.scale_by_sophia(b2=0.0, axis_name="i"), mean_c),
                   (C.scale_by_adahessian(b2=0.0, axis_name="i"), mean_c ** 2)):
    rep = jax.tree.map(lambda x: jnp.stack([x] * n), (params, tx.init(params)))

    def step(p, s, c):
      return tx.update({"x": jnp.ones(3)}, s, p,
                       obj_fn=lambda q: 0.5 * jnp.sum(c * q["x"] ** 2))

    _, state = jax.pmap(step, axis_name="i")(rep[0], rep[1], curv)
    nu = np.asarray(state.nu["x"])
    assert all(np.array_equal(nu[0], nu[i]) for i in range(n)), "replicas diverged"
    np.testing.assert_allclose(nu[0], want, rtol=1e-6)


# ---------------------------------------------------------------------- M-FAC
def test_mfac_product_is_the_inverse_damped_fisher():
  rng = np.random.default_rng(2)
  m, damp = 3, 0.1
  gs = [rng.normal(size=5).astype(np.float32) for _ in range(5)]
  tx = C.scale_by_mfac(m, damp)
  state = tx.init({"x": jnp.zeros(5)})
  for t, g in enumerate(gs):
    u, state = tx.update({"x": jnp.asarray(g)}, state)
    window = np.stack([gs[i] for i in range(max(0, t - m + 1), t + 1)]).astype(np.float64)
    fisher = damp * np.eye(5) + window.T @ window / m  # zero rows add nothing
    np.testing.assert_allclose(u["x"], np.linalg.solve(fisher, g), rtol=2e-4, atol=1e-5)


# --------------------------------------------------------------------- Lanczos
def test_lanczos_finds_the_top_eigenpairs():
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  w = np.array([9.0, 7.0, 5.0] + list(np.linspace(-1, 1, 9)))
  a = (q * w) @ q.T
  evals, evecs = C.lanczos_top_eigs(lambda v: jnp.asarray(a, jnp.float32) @ v, 12, KEY, 12, 3)
  np.testing.assert_allclose(evals, [9.0, 7.0, 5.0], rtol=1e-4)
  for i in range(3):
    assert abs(abs(float(np.dot(evecs[i], q[:, i]))) - 1.0) < 1e-3


# ------------------------------------------------------------- numerical safety
STRESS = {
    "zero": lambda: {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)},
    "rank1": lambda: {"w": jnp.outer(jnp.arange(4.0), jnp.ones(3)), "b": jnp.ones(3)},
    "huge": lambda: {"w": jnp.full((4, 3), 1e30), "b": jnp.array([1e30, -1e30, 0.0])},
}


@pytest.mark.slow  # five curvature recipes, 3 steps op by op each (~4-7 s a stress)
@pytest.mark.parametrize("name", sorted(STRESS))
def test_no_nan_on_extreme_gradients_and_curvature(name):
  g = STRESS[name]()
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  # the curvature of obj_fn is the gradient's magnitude (zero / rank-1 / 1e30 entries)
  obj = lambda p: 0.5 * sum(jnp.sum(jnp.abs(g[k]) * p[k] ** 2) for k in p)
  logits = lambda p: jnp.stack([p["w"].sum(1) * 1e15 if name == "huge" else p["w"].sum(1),
                                jnp.zeros(4)], -1)
  for tx in (optlab.sophia_h(0.1, update_interval=1), optlab.sophia_g(0.1, update_interval=1),
             optlab.adahessian(0.1), optlab.mfac(0.1, ngrads=3, damp=1e-5),
             optlab.fosi(0.1, k=2, num_iters=6, update_interval=1)):
    state = tx.init(params)
    for _ in range(3):
      u, state = tx.update(g, state, params, obj_fn=obj, logits_fn=logits)
      for leaf in jax.tree.leaves((u, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
          assert np.all(np.isfinite(np.asarray(leaf))), (name, tx)


# ---------------------------------------------------------------- missing args
@pytest.mark.parametrize("factory,arg", [
    (lambda: optlab.sophia_h(0.1), "obj_fn"), (lambda: optlab.sophia_g(0.1), "logits_fn"),
    (lambda: optlab.adahessian(0.1), "obj_fn"), (lambda: optlab.fosi(0.1), "obj_fn")])
def test_missing_extra_arg_is_named(factory, arg):
  tx, params = factory(), {"x": jnp.ones(3)}
  with pytest.raises(TypeError, match=arg):
    tx.update({"x": jnp.ones(3)}, tx.init(params), params)


def test_bad_counts_name_the_argument_passed():
  """Issue 12, item 9: NaN probe counts are refused, and FOSI's num_iters < k names
  both (a k above the default num_iters was reported as a bad num_iters alone)."""
  with pytest.raises(ValueError, match="hutchinson: n_probes"):
    optlab.hutchinson(float("nan"))
  with pytest.raises(ValueError, match="sophia_h: n_probes"):
    optlab.sophia_h(0.1, n_probes=float("nan"))
  with pytest.raises(ValueError, match=r"num_iters must be at least k .*num_iters=8, k=9"):
    optlab.fosi(0.1, k=9, num_iters=8)
  optlab.fosi(0.1, k=9)  # num_iters defaults to 4k


def test_adahessian_weight_decay_is_not_bias_corrected():
  """The official step (amirgholami/adahessian) is p - lr * (m / (1 - b1^t) / denom
  + wd * p): at step 1 the decay term is lr * wd * p0, not lr * wd * p0 / (1 - b1)."""
  lr, wd, b1, eps = 0.1, 0.5, 0.9, 1e-4
  p0 = {"w": jnp.array([2.0, -1.0, 0.5])}
  curv = jnp.array([1.0, 3.0, 0.5])
  obj_fn = lambda p: 0.5 * jnp.sum(curv * p["w"] ** 2)
  g = jax.grad(obj_fn)(p0)

  def run(decay):
    tx = optlab.adahessian(lr, b1=b1, eps=eps, weight_decay=decay)
    return tx.update(g, tx.init(p0), p0, obj_fn=obj_fn)[0]

  # Hutchinson's z * Hz is exact for a diagonal Hessian: m_hat = g, denom = |curv| + eps.
  want = -lr * (np.asarray(g["w"]) / (np.asarray(curv) + eps) + wd * np.asarray(p0["w"]))
  np.testing.assert_allclose(run(wd)["w"], want, rtol=1e-6)
  # the old (bias-corrected decay) step differed by exactly -lr * wd * p0 * (1 / (1 - b1) - 1)
  diff = np.asarray(run(wd)["w"]) - np.asarray(run(0.0)["w"])
  np.testing.assert_allclose(diff, -lr * wd * np.asarray(p0["w"]), rtol=1e-6)

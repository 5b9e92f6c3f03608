"""AdaFisher and EGN (optlab.primitives.gauss_newton, optlab.recipes.gauss_newton):
bad extra args, AdaFisher's rule for leaves without statistics, and EGN's
Woodbury solve against the dense p x p solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import optlab
from tests.extras import synthetic_layer_stats
from tests.test_contract import grads_at, make_params, plain

ADAFISHER, EGN = optlab.get_recipe("adafisher"), optlab.get_recipe("egn")


def _trace(tx, params, **extra):
  return jax.eval_shape(lambda: tx.update(grads_at(params, 0), tx.init(params), params, **extra))


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("recipe", [ADAFISHER], ids=["adafisher"])
def test_adafisher_bad_layer_stats_name_the_argument_and_path(recipe):
  params, tx = make_params(), plain(recipe)
  stats = synthetic_layer_stats(params)
  with pytest.raises(TypeError, match="layer_stats"):
    _trace(tx, params)
  w1 = stats["['w1']"]
  bad = {  # each names the argument and the parameter path
      "['b1']": {**stats, "['b1']": w1},  # a 1-D leaf has no factors
      "['nope']": {**stats, "['nope']": w1},  # no such leaf
      "['w2']": {**stats, "['w2']": w1},  # inputs of width 8 for a (6, 8) kernel
  }
  for path, layer_stats in bad.items():
    with pytest.raises(ValueError, match=r"layer_stats.*" + path.replace("[", r"\[").replace(
        "]", r"\]")):
      _trace(tx, params, layer_stats=layer_stats)


@pytest.mark.parametrize("recipe", [EGN], ids=["egn"])
def test_egn_bad_logits_fn_is_named(recipe):
  params, tx = make_params(), plain(recipe)
  with pytest.raises(TypeError, match="logits_fn"):
    _trace(tx, params)
  with pytest.raises(ValueError, match="logits_fn"):  # one row per example: (..., c)
    _trace(tx, params, logits_fn=lambda p: jnp.sum(p["w1"], 0))
  with pytest.raises(ValueError, match="loss"):
    optlab.egn(0.1, loss="hinge")
  with pytest.raises(ValueError, match="regularizer"):
    optlab.egn(0.1, regularizer=0.0)


# --------------------------------------------- AdaFisher: leaves without stats
def _min_max(x):
  return (x - x.min()) / (x.max() - x.min() + 1e-6)


@pytest.mark.parametrize("recipe", [ADAFISHER], ids=["adafisher"])
def test_adafisher_leaves_without_statistics_take_momentum_sgd(recipe):
  """Only w2 has statistics: w1, b1 and scale follow the official fallback
  (F = 1: the bias-corrected momentum, -lr * g on the first step), and w2 is
  divided by (h sᵀ + damping) with h = 0.08 + 0.008 minmax(mean a²) (no bias:
  over its 6 inputs) and s likewise from the output gradients."""
  lr, damping = 0.1, 0.05
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), make_params())
  grads = jax.tree.map(lambda x: np.asarray(x, np.float64), grads_at(make_params(), 0))
  st = synthetic_layer_stats(params, xp=np)["['w2']"]  # a layer without bias
  with jax.enable_x64(True):
    stats = {"['w2']": optlab.LayerStats(jnp.asarray(st.inputs), jnp.asarray(st.out_grads))}
    tx = optlab.adafisher(lr, damping=damping, weight_decay=0.0)
    p = jax.tree.map(jnp.asarray, params)
    u, _ = jax.jit(lambda g, s: tx.update(g, s, p, layer_stats=stats))(
        jax.tree.map(jnp.asarray, grads), tx.init(p))
  for k in ("w1", "b1", "scale"):
    np.testing.assert_allclose(u[k], -lr * grads[k], rtol=1e-12, err_msg=k)
  a, g = np.asarray(st.inputs), np.asarray(st.out_grads)
  h = 0.08 + 0.008 * _min_max(np.mean(a * a, 0))
  s = 0.08 + 0.008 * _min_max(np.mean(g * g, 0))
  np.testing.assert_allclose(u["w2"], -lr * grads["w2"] / (np.outer(h, s) + damping),
                             rtol=1e-12)
  assert not np.allclose(u["w2"], -lr * grads["w2"], rtol=0.1)  # the layer is preconditioned


# ------------------------------------------------------ EGN: Woodbury vs dense
def _mlp_logits(x):
  def logits(p):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] * p["scale"]
  return logits


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "squared_error"])
def test_gauss_newton_woodbury_equals_the_dense_solve(loss):
  """The (n c)-dimensional Woodbury solve equals (JᵀQJ / n + λ I)⁻¹ g solved as a
  p x p system, for a gradient g that is not Jᵀ∇ℓ; and, for the gradient of the
  same rows, the official residual form Jᵀ (n λ I + Q J Jᵀ)⁻¹ r."""
  lam = 0.3
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), make_params())
    x = jnp.asarray(rng.normal(size=(5, 8)))
    logits = _mlp_logits(x)
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacrev(lambda f: logits(unravel(f)))(flat))  # (n, c, p)
    n, c, size = jac.shape
    out = np.asarray(logits(params))
    if loss == "squared_error":
      q = np.broadcast_to(np.eye(c), (n, c, c))
      targets = rng.normal(size=(n, c))
      residual = out - targets  # gradient of ½‖f - y‖² per row
    else:
      e = np.exp(out - out.max(-1, keepdims=True))
      prob = e / e.sum(-1, keepdims=True)
      q = np.stack([np.diag(r) - np.outer(r, r) for r in prob])
      targets = np.eye(c)[rng.integers(0, c, n)]
      residual = prob - targets
    gn = np.einsum("ica,icd,idb->ab", jac, q, jac) / n
    tx = optlab.scale_by_gauss_newton(lam, loss)
    update = jax.jit(lambda g: tx.update(g, tx.init(params), params, logits_fn=logits)[0])

    noisy = jax.tree.map(lambda a: a.astype(jnp.float64), grads_at(make_params(), 3))
    got = ravel_pytree(update(noisy))[0]
    want = np.linalg.solve(gn + lam * np.eye(size), np.asarray(ravel_pytree(noisy)[0]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)

    grad = np.einsum("icp,ic->p", jac, residual) / n  # the mean loss's gradient on the rows
    got = ravel_pytree(update(unravel(jnp.asarray(grad))))[0]
    j2 = jac.reshape(n * c, size)
    block_q = np.zeros((n * c, n * c))
    for i in range(n):
      block_q[i * c:(i + 1) * c, i * c:(i + 1) * c] = q[i]
    official = j2.T @ np.linalg.solve(n * lam * np.eye(n * c) + block_q @ j2 @ j2.T,
                                      residual.reshape(-1))
    np.testing.assert_allclose(got, official, rtol=1e-9, atol=1e-12)

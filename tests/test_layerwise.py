"""Unit tests of the layer-wise recipes' behaviour outside the contract: LARS
(arXiv:1708.03888) from zero-initialised weights."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _params(w1=None):
  rng = np.random.default_rng(0)
  return {"w1": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) if w1 is None else w1,
          "b1": jnp.zeros(3), "w2": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}


def _init_warnings(tx, params):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tx.init(params)
  return [w for w in caught if "optlab.lars" in str(w.message)]


def test_lars_zero_kernel_takes_the_full_step():
  """The documented behaviour: a zero tensor's trust ratio falls back to 1, so its
  first update is -lr * g, against -lr * trust_coefficient * ||p|| / ||g|| * g."""
  lr, eta = 0.5, 0.02
  tx = optlab.lars(lr, trust_coefficient=eta, momentum=0.0)
  params = _params(jnp.zeros((4, 3)))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(u["w1"], -lr * 0.3 * np.ones((4, 3)), rtol=1e-6)
  w2, g2 = np.asarray(params["w2"]), np.full((3, 2), 0.3)
  want = -lr * eta * np.linalg.norm(w2) / np.linalg.norm(g2) * g2
  np.testing.assert_allclose(u["w2"], want, rtol=1e-5)


def test_lars_warns_at_init_on_zero_kernels_naming_them():
  tx = optlab.lars(0.5)
  zero = _params(jnp.zeros((4, 3)))
  caught = _init_warnings(tx, zero)
  assert len(caught) == 1 and caught[0].category is UserWarning
  msg = str(caught[0].message)
  assert "params['w1']" in msg and "non-zero-initialised" in msg
  assert "w2" not in msg and "b1" not in msg      # a zero bias (ndim 1) is usual
  both = {**zero, "w2": jnp.zeros((3, 2))}
  msg = str(_init_warnings(tx, both)[0].message)
  assert "params['w1']" in msg and "params['w2']" in msg
  # NumPy params are checked too
  assert _init_warnings(tx, jax.tree.map(np.asarray, zero))


def test_lars_is_silent_on_normal_params_tracers_and_masked_out_kernels():
  tx = optlab.lars(0.5)
  assert not _init_warnings(tx, _params())
  zero = _params(jnp.zeros((4, 3)))
  # under tracing (jit, eval_shape) nothing is read and nothing is said
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.jit(tx.init)(zero)
    jax.eval_shape(tx.init, zero)
    jax.eval_shape(lambda: tx.init(zero))      # concrete params closed over by a trace
    jax.jit(lambda: tx.init(zero))()
    # and update never checks
    state = jax.eval_shape(tx.init, zero)
    jax.eval_shape(tx.update, zero, state, zero)
  # a kernel the trust ratio does not apply to is not reported (tree or callable mask)
  mask = {"w1": False, "b1": True, "w2": True}
  assert not _init_warnings(optlab.lars(0.5, trust_ratio_mask=mask), zero)
  assert not _init_warnings(optlab.lars(0.5, trust_ratio_mask=lambda p: mask), zero)
  assert _init_warnings(optlab.lars(0.5, trust_ratio_mask={**mask, "w1": True}), zero)
  # zero-size kernels have no weights to be zero
  assert not _init_warnings(tx, _params(jnp.zeros((0, 3))))


def test_lars_warning_keeps_the_optax_match():
  """The warning changes nothing: from zero kernels LARS still equals optax.lars."""
  params = _params(jnp.zeros((4, 3)))
  grads = jax.tree.map(lambda p: jnp.full_like(p, -0.2), params)
  ours, ref = optlab.lars(0.5, trust_coefficient=0.02), optax.lars(0.5, trust_coefficient=0.02)
  with pytest.warns(UserWarning, match="optlab.lars"):
    s = ours.init(params)
  u, _ = jax.jit(ours.update)(grads, s, params)
  want, _ = jax.jit(ref.update)(grads, ref.init(params), params)
  for k in params:
    np.testing.assert_allclose(u[k], want[k], rtol=1e-6)
